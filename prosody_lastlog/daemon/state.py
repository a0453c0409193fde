"""The daemon's live state: every source's accounts in an ActivityIndex, and health.

Refreshes write it; scrapes read it and never cause I/O. It is the collector's CountsView.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace

from prosody_lastlog.core.connected import NOBODY, ConnectedMode, ConnectedUsers
from prosody_lastlog.core.counting import HostCounts, zero_counts
from prosody_lastlog.core.health import SourceHealth
from prosody_lastlog.core.index import ActivityIndex, HostIndex
from prosody_lastlog.core.model import CountingChoice
from prosody_lastlog.core.windows import DEFAULT_AGES, Window


class LiveCounts:
    """Counts of every source as of any moment, safe to read from scrape threads while refreshes write."""

    def __init__(
        self,
        *,
        windows: Sequence[Window],
        source_names: Sequence[str],
        file_sources: Collection[str] = (),
        ages: Sequence[Window] = DEFAULT_AGES,
    ) -> None:
        self.windows = windows  # those counts() gives unless asked for others
        self.ages = ages  # the inactive windows
        self._file_sources = set(file_sources)  # the sources whose counts include connected users
        self.index = ActivityIndex()
        self._lock = threading.Lock()
        self._stored_hosts: dict[str, set[str]] = {}  # per source counting stored activity only (SQL): its hosts
        self._health = {name: SourceHealth(name) for name in source_names}
        self._counted: set[str] = set()  # sources with at least one successful refresh
        self._known_hosts: dict[str, tuple[str, CountingChoice]] = {}  # host -> (source, how counted), from the config
        self.connected = NOBODY  # the current answer to "who is connected"

    def declare_hosts(self, source: str, hosts: Sequence[tuple[str, CountingChoice]]) -> None:
        """Hosts the config declares for a source: exported with zeros once the source has counted."""
        with self._lock:
            for host, choice in hosts:
                self._known_hosts[host] = (source, choice)

    def set_connected(self, connected: ConnectedUsers) -> None:
        """Applies a new answer to "who is connected" (file sources only; SQL counts are of stored activity)."""
        with self._lock:
            self.connected = connected
        self.index.set_connected(connected)

    def connected_detection(self) -> Mapping[str, ConnectedMode]:
        """How each source finds connected users."""
        with self._lock:
            mode = self.connected.mode
            return {name: mode if name in self._file_sources else ConnectedMode.NONE for name in self._health}

    def swap_in_stored(self, source: str, indexes: Sequence[HostIndex]) -> None:
        """Replaces what a source of stored activity only (SQL) holds with a full read of it."""
        hosts = {index.host for index in indexes}
        self.index.swap_in(indexes, stored_only=True)
        with self._lock:
            gone = self._stored_hosts.get(source, set()) - hosts
            self._stored_hosts[source] = hosts
        self.index.remove_hosts(gone)

    def succeeded(self, source: str, *, at: float, duration: float, problems: Mapping[str, int]) -> None:
        """Records a successful full refresh (problems: this refresh's read problems by kind)."""
        with self._lock:
            health = self._health[source]
            total = _added(health.problems, problems)
            self._health[source] = replace(
                health, up=True, last_success=at, duration_seconds=duration, problems=total, error=None
            )
            self._counted.add(source)

    def read_in_full(self, source: str, *, at: float, how: str) -> None:
        """Records a full read of a source read incrementally in between, and how it finds changes."""
        with self._lock:
            health = self._health[source]
            self._health[source] = replace(health, changes_found=how, last_full_read=at)

    def changes_found_by(self, source: str, how: str) -> None:
        """Records how changes to a source read incrementally are found now."""
        with self._lock:
            self._health[source] = replace(self._health[source], changes_found=how)

    def looked(self, source: str, *, changed: int) -> None:
        """Records an incremental refresh that read `changed` accounts again."""
        with self._lock:
            health = self._health[source]
            self._health[source] = replace(health, accounts_reread=health.accounts_reread + changed)

    def failed(self, source: str, error: str) -> None:
        """Records a failed refresh; the last good counts stay served."""
        with self._lock:
            self._health[source] = replace(self._health[source], up=False, error=error)

    def set_watch_problem(self, source: str, problem: str | None) -> None:
        """Says what of a file source's data directory is not watched as it should be (None: all of it is)."""
        with self._lock:
            self._health[source] = replace(self._health[source], has_watcher=True, unwatched=problem)

    def add_problems(self, source: str, problems: Mapping[str, int]) -> None:
        """Counts read problems met outside a full refresh (a changed file that does not load)."""
        with self._lock:
            health = self._health[source]
            self._health[source] = replace(health, problems=_added(health.problems, problems))

    def counts(
        self, *, now: float, windows: Sequence[Window] | None = None, hosts: Collection[str] | None = None
    ) -> dict[str, HostCounts]:
        """Counts per host (of `hosts`; default: every one) as of `now`, for `windows` (default: `self.windows`);
        nothing for a source that has never counted (no sentinel values)."""
        windows = self.windows if windows is None else windows
        counts = self.index.counts(now=now, windows=windows, ages=self.ages, hosts=hosts)
        with self._lock:
            for host, (source, choice) in self._known_hosts.items():
                if host not in counts and source in self._counted and (hosts is None or host in hosts):
                    counts[host] = zero_counts(choice, windows, self.ages)
        return dict(sorted(counts.items()))

    def keep_sql_counts_of(self, previous: LiveCounts) -> None:
        """After a reload: an SQL source that has not counted here yet (its database is down) keeps serving what
        it last held under the previous configuration; its health still says it is down."""
        with previous._lock:
            kept = {name: set(hosts) for name, hosts in previous._stored_hosts.items() if name in previous._counted}
        for name, hosts in kept.items():
            with self._lock:
                keep = name in self._health and name not in self._counted and name not in self._file_sources
                if keep:
                    self._counted.add(name)
            if keep:
                self.swap_in_stored(name, previous.index.held(hosts))

    def health(self) -> Sequence[SourceHealth]:
        """One entry per source, in the order they were configured."""
        with self._lock:
            return list(self._health.values())

    def tracked_users(self) -> Mapping[str, int]:
        """Users held in the index, per host."""
        return self.index.tracked_users()


def _added(total: Mapping[str, int], more: Mapping[str, int]) -> dict[str, int]:
    result = dict(total)
    for kind, count in more.items():
        result[kind] = result.get(kind, 0) + count
    return result

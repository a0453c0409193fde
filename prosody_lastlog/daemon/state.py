"""The daemon's live state: file sources in an ActivityIndex, SQL sources as their last counts, and health.

Refreshes write it; scrapes read it and never cause I/O. It is the collector's CountsView.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace

from prosody_lastlog.core.connected import NOBODY, ConnectedMode, ConnectedUsers
from prosody_lastlog.core.counting import HostCounts, for_windows, zero_counts
from prosody_lastlog.core.health import SourceHealth
from prosody_lastlog.core.index import ActivityIndex
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
        also_counted: Sequence[Window] = (),
    ) -> None:
        self.windows = windows  # those counts() gives unless asked for others
        self.counted_windows = tuple(sorted(set(windows) | set(also_counted)))  # those SQL sources count
        self.ages = ages  # the inactive windows
        self._file_sources = set(file_sources)  # the sources whose counts include connected users
        self.index = ActivityIndex()
        self._lock = threading.Lock()
        self._sql_counts: dict[str, dict[str, HostCounts]] = {}
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

    def set_sql_counts(self, source: str, counts: Mapping[str, HostCounts]) -> None:
        """Replaces what an SQL source counted."""
        with self._lock:
            self._sql_counts[source] = dict(counts)

    def succeeded(self, source: str, *, at: float, duration: float, problems: Mapping[str, int]) -> None:
        """Records a successful full refresh (problems: this refresh's read problems by kind)."""
        with self._lock:
            health = self._health[source]
            total = _added(health.problems, problems)
            self._health[source] = replace(
                health, up=True, last_success=at, duration_seconds=duration, problems=total, error=None
            )
            self._counted.add(source)

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
        """Counts per host (of `hosts`; default: every one) as of `now`, for `windows` (of counted_windows; default:
        `self.windows`); nothing for a source that has never counted (no sentinel values)."""
        windows = self.windows if windows is None else windows
        counts = self.index.counts(now=now, windows=windows, ages=self.ages, hosts=hosts)
        with self._lock:
            for sql_counts in self._sql_counts.values():
                counts.update(
                    (host, for_windows(c, windows)) for host, c in sql_counts.items() if hosts is None or host in hosts
                )
            for host, (source, choice) in self._known_hosts.items():
                if host not in counts and source in self._counted and (hosts is None or host in hosts):
                    counts[host] = zero_counts(choice, windows, self.ages)
        return dict(sorted(counts.items()))

    def keep_sql_counts_of(self, previous: LiveCounts) -> None:
        """After a reload: an SQL source that has not counted here yet (its database is down) keeps serving what
        it last counted under the previous configuration, if that counted every window counted now; its health
        still says it is down."""
        if not set(self.counted_windows) <= set(previous.counted_windows):
            return
        with previous._lock:
            kept = {name: dict(counts) for name, counts in previous._sql_counts.items() if name in previous._counted}
        with self._lock:
            for name, counts in kept.items():
                if name in self._health and name not in self._counted and name not in self._file_sources:
                    self._sql_counts[name] = counts
                    self._counted.add(name)

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

"""The kinds of source (the file store, SQL databases), each with its refresh policy, and counting them all."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TypeAlias

from prosody_lastlog.core.cohorts import Cohort, sign_up_cohorts
from prosody_lastlog.core.connected import NOBODY, ConnectedUsers
from prosody_lastlog.core.counting import HostCounts, count_hosts, zero_counts
from prosody_lastlog.core.health import SourceHealth
from prosody_lastlog.core.model import AccountRule, CountingChoice, HostData
from prosody_lastlog.core.rules import Policy, ServerFacts
from prosody_lastlog.core.windows import DEFAULT_AGES, Window
from prosody_lastlog.sources.files import FileStoreReader
from prosody_lastlog.sources.policy import Cadence, Intervals, store_suffix
from prosody_lastlog.sources.results import ReadResult, SourceCount

if TYPE_CHECKING:
    from prosody_lastlog.sources.sql_source import SqlSource

log = logging.getLogger(__name__)
_NAMED_HOSTS = 10  # hosts a log line names; the others are counted


@dataclass
class FileSource:
    """Prosody's internal file store under a data directory."""

    data_dir: Path
    hosts: Collection[str] = ()
    policy: Policy = field(default_factory=Policy)
    workers: int | None = None  # processes reading at once; None: FileStoreReader's default
    name: str = field(init=False)
    reader: FileStoreReader = field(init=False, repr=False)

    counts_connected: ClassVar[bool] = True  # users connected now count as active (their files may lag)

    def __post_init__(self) -> None:
        self.name = f"files {self.data_dir}" + store_suffix(self.policy)
        self.reader = FileStoreReader(self.data_dir, hosts=self.hosts, policy=self.policy, workers=self.workers)

    @property
    def watch_dir(self) -> Path | None:
        """The directory whose file events change the counts between full reads: the data directory."""
        return self.data_dir

    def cadence(self, intervals: Intervals) -> Cadence:
        """A full resync, which repairs what file events missed: rare and heavy, so logged, and spread apart between
        servers by the jitter (a short interval stays short); health allows two missed."""
        jitter = min(intervals.resync_jitter_seconds, intervals.resync_seconds / 12)
        max_age = 2 * (intervals.resync_seconds + intervals.resync_jitter_seconds)
        return Cadence(intervals.resync_seconds, jitter, max_age, logged=True)

    def count(
        self,
        *,
        now: int,
        windows: Sequence[Window],
        connected: ConnectedUsers = NOBODY,
        ages: Sequence[Window] = DEFAULT_AGES,
    ) -> SourceCount:
        """Reads every file of the chosen hosts and counts them, connected users active in every window."""
        result = self.reader.read()
        counts = count_hosts(result.hosts.values(), now=now, windows=windows, connected=connected, ages=ages)
        return SourceCount(counts, dict.fromkeys(counts, "files"), result.problems, result.server)

    def read(self) -> ReadResult:
        """Every file of the chosen hosts, as activity records (for listing accounts, not counting)."""
        return self.reader.read()

    def cancel(self) -> None:
        """Nothing to cut here: a full read runs in processes its caller owns and ends (the daemon's scans)."""


# Every kind has a name, the hosts it reads (empty: all), `count` and `read` (raising DataDirError or DatabaseError
# when it cannot be read at all), and its refresh policy: `watch_dir`, `counts_connected`, `cadence` and `cancel`.
# The union is closed: a new kind is added here, and where the daemon reads each kind (daemon/refresh.py, one
# match). The SQL kind is in its own module, imported only where a database is read.
Source: TypeAlias = "FileSource | SqlSource"


def count_all(
    sources: Sequence[Source],
    *,
    now: int,
    windows: Sequence[Window],
    known_hosts: Collection[tuple[str, CountingChoice]] = (),
    connected: ConnectedUsers = NOBODY,
    clock: Callable[[], float] = time.monotonic,
    ages: Sequence[Window] = DEFAULT_AGES,
) -> tuple[SourceCount, list[SourceHealth]]:
    """Counts every source; hosts known from the config but without data get zeros rather than nothing."""
    totals = SourceCount()
    health = []
    for source in sources:
        started = clock()
        result = source.count(now=now, windows=windows, connected=connected, ages=ages)
        kinds = Counter(problem.kind for problem in result.problems)
        health.append(SourceHealth(source.name, True, now, clock() - started, dict(kinds), server=result.server))
        log_choices(source.name, result.server, {host: c.counting for host, c in result.counts.items()})
        totals.counts.update(result.counts)
        totals.methods.update(result.methods)
        totals.problems.extend(result.problems)
        log.debug("%s: %d host(s) counted", source.name, len(result.counts))
    for host, choice in known_hosts:
        if host not in totals.counts:
            totals.counts[host] = zero_counts(choice, windows, ages)
    totals.counts = dict(sorted(totals.counts.items()))
    return totals, health


def with_cohorts(
    sources: Sequence[Source], counts: Mapping[str, HostCounts], *, now: int, connected: ConnectedUsers = NOBODY
) -> dict[str, HostCounts]:
    """The counts with each host's sign-up cohorts, from one more read of every source's records (an SQL source's
    counts are made in the database, which keeps no per-account result); its problems were reported by the count."""
    cohorts: dict[str, tuple[Cohort, ...]] = {}
    for source in sources:
        online = connected if source.counts_connected else NOBODY
        for host, data in source.read().hosts.items():
            cohorts[host] = tuple(sign_up_cohorts(data, now=now, connected=online))
    return {
        host: replace(c, cohorts=cohorts.get(host) or tuple(sign_up_cohorts(HostData(host, c.store), now=now)))
        for host, c in counts.items()
    }


def log_choices(source: str, server: ServerFacts | None, choices: Mapping[str, CountingChoice]) -> None:
    """Says (at info level) which Prosody a source's data is taken to come from and how each host is counted;
    warns of hosts where, as in Prosody 13, only connected users count."""
    if server is not None:
        version = "13" if server.thirteen else "0.12"
        log.info("%s: written by Prosody %s (%s); module: %s", source, version, server.evidence, server.module_note)
    by_choice: dict[CountingChoice, list[str]] = {}
    for host, choice in choices.items():
        by_choice.setdefault(choice, []).append(host)
    for choice, hosts in by_choice.items():
        named = ", ".join(hosts[:_NAMED_HOSTS]) + (
            f" and {len(hosts) - _NAMED_HOSTS} more" if len(hosts) > _NAMED_HOSTS else ""
        )
        log.info("%s: counting %s (%s: %s); accounts: %s", named, choice.store, choice.basis, choice.reason,
                 choice.accounts_reason)  # fmt: skip
        if choice.accounts is AccountRule.NOBODY:
            log.warning("%s: only connected users count, as in Prosody 13: %s", named, choice.accounts_reason)

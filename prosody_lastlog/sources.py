"""Sources of counts (the file store, SQL databases) and the one place that decides which to read."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prosody_lastlog.connected import NOBODY, ConnectedUsers
from prosody_lastlog.counting import HostCounts, count_hosts
from prosody_lastlog.database import SqlSettings
from prosody_lastlog.readers import SourceCount
from prosody_lastlog.readers.files import FileStoreReader
from prosody_lastlog.readers.sql import SqlReader
from prosody_lastlog.records import Store
from prosody_lastlog.windows import Window

log = logging.getLogger(__name__)


@dataclass
class SourceHealth:
    """How the last refresh of one source went."""

    name: str
    up: bool = False
    last_success: float | None = None
    duration_seconds: float | None = None
    problems: Mapping[str, int] = field(default_factory=dict)  # read problems so far, by kind
    error: str | None = None


class Source(Protocol):
    """Something that counts active users per host."""

    name: str
    hosts: Collection[str]  # the hosts it reads; empty for all

    def count(self, *, now: int, windows: Sequence[Window], connected: ConnectedUsers = NOBODY) -> SourceCount:
        """Counts as of `now`; raises DataDirError or DatabaseError if the source cannot be read at all."""


@dataclass
class FileSource:
    """Prosody's internal file store under a data directory."""

    data_dir: Path
    hosts: Collection[str] = ()
    store: Store | None = None
    count_disabled: bool = False
    workers: int | None = None  # processes reading at once; None: FileStoreReader's default
    name: str = field(init=False)
    reader: FileStoreReader = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = f"files {self.data_dir}" + (f" ({self.store.value})" if self.store else "")
        self.reader = FileStoreReader(
            self.data_dir,
            hosts=self.hosts,
            store=self.store,
            count_disabled=self.count_disabled,
            workers=self.workers,
        )

    def count(self, *, now: int, windows: Sequence[Window], connected: ConnectedUsers = NOBODY) -> SourceCount:
        """Reads every file of the chosen hosts and counts them, connected users active in every window."""
        result = self.reader.read()
        counts = count_hosts(result.hosts.values(), now=now, windows=windows, connected=connected)
        return SourceCount(counts, dict.fromkeys(counts, "files"), result.problems)


@dataclass
class SqlSource:
    """Prosody's SQL table in one database."""

    settings: SqlSettings
    hosts: Collection[str] = ()
    store: Store | None = None
    count_disabled: bool = False
    method: str = "auto"
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.settings.describe() + (f" ({self.store.value})" if self.store else "")

    def count(self, *, now: int, windows: Sequence[Window], connected: ConnectedUsers = NOBODY) -> SourceCount:
        """Counts in the database (or by streaming rows where it cannot); stored activity only, so `connected`
        is not used (see the README: connected users and SQL)."""
        reader = SqlReader(
            self.settings, hosts=self.hosts, store=self.store, count_disabled=self.count_disabled, method=self.method
        )
        return reader.count(now=now, windows=windows)


def count_all(
    sources: Sequence[Source],
    *,
    now: int,
    windows: Sequence[Window],
    known_hosts: Collection[tuple[str, Store]] = (),
    connected: ConnectedUsers = NOBODY,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[SourceCount, list[SourceHealth]]:
    """Counts every source; hosts known from the config but without data get zeros rather than nothing."""
    totals = SourceCount()
    health = []
    for source in sources:
        started = clock()
        result = source.count(now=now, windows=windows, connected=connected)
        kinds = Counter(problem.kind for problem in result.problems)
        health.append(SourceHealth(source.name, True, now, clock() - started, dict(kinds)))
        totals.counts.update(result.counts)
        totals.methods.update(result.methods)
        totals.problems.extend(result.problems)
        log.debug("%s: %d host(s) counted", source.name, len(result.counts))
    for host, store in known_hosts:
        if host not in totals.counts:
            totals.counts[host] = zero_counts(store, windows)
    totals.counts = dict(sorted(totals.counts.items()))
    return totals, health


def zero_counts(store: Store, windows: Sequence[Window]) -> HostCounts:
    """The counts of a host that exists but has no data yet."""
    zeros = dict.fromkeys((w.label for w in windows), 0)
    return HostCounts(store, 0, 0, 0, 0, zeros, dict(zeros))

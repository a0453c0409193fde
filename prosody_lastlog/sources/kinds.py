"""Sources of counts (the file store, SQL databases) and the one place that decides which to read."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prosody_lastlog.core.connected import NOBODY, ConnectedUsers
from prosody_lastlog.core.counting import count_hosts, zero_counts
from prosody_lastlog.core.health import SourceHealth
from prosody_lastlog.core.model import AccountRule, CountingChoice
from prosody_lastlog.core.rules import Policy, ServerFacts
from prosody_lastlog.core.windows import Window
from prosody_lastlog.prosody.sql_settings import SqlSettings
from prosody_lastlog.sources.database import Cancellation
from prosody_lastlog.sources.files import FileStoreReader
from prosody_lastlog.sources.results import SourceCount
from prosody_lastlog.sources.sql import SqlReader

log = logging.getLogger(__name__)
_NAMED_HOSTS = 10  # hosts a log line names; the others are counted


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
    policy: Policy = field(default_factory=Policy)
    workers: int | None = None  # processes reading at once; None: FileStoreReader's default
    name: str = field(init=False)
    reader: FileStoreReader = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = f"files {self.data_dir}" + _store_suffix(self.policy)
        self.reader = FileStoreReader(self.data_dir, hosts=self.hosts, policy=self.policy, workers=self.workers)

    def count(self, *, now: int, windows: Sequence[Window], connected: ConnectedUsers = NOBODY) -> SourceCount:
        """Reads every file of the chosen hosts and counts them, connected users active in every window."""
        result = self.reader.read()
        counts = count_hosts(result.hosts.values(), now=now, windows=windows, connected=connected)
        return SourceCount(counts, dict.fromkeys(counts, "files"), result.problems, result.server)


@dataclass
class SqlSource:
    """Prosody's SQL table in one database."""

    settings: SqlSettings
    hosts: Collection[str] = ()
    policy: Policy = field(default_factory=Policy)
    method: str = "auto"
    name: str = field(init=False)
    cancellation: Cancellation = field(init=False, repr=False, compare=False, default_factory=Cancellation)

    def __post_init__(self) -> None:
        self.name = self.settings.describe() + _store_suffix(self.policy)

    def count(self, *, now: int, windows: Sequence[Window], connected: ConnectedUsers = NOBODY) -> SourceCount:
        """Counts in the database (or by streaming rows where it cannot); stored activity only, so `connected`
        is not used (see the README: connected users and SQL)."""
        reader = SqlReader(
            self.settings, hosts=self.hosts, policy=self.policy, method=self.method, cancellation=self.cancellation
        )
        return reader.count(now=now, windows=windows)

    def cancel(self) -> None:
        """Ends the count running at once (it raises StoppedError), and every later one: the daemon is stopping."""
        self.cancellation.cancel()


def _store_suffix(policy: Policy) -> str:
    """A forced store in a source's name, which keeps two sources of one place apart."""
    return f" ({policy.forced_store.value})" if policy.forced_store else ""


def count_all(
    sources: Sequence[Source],
    *,
    now: int,
    windows: Sequence[Window],
    known_hosts: Collection[tuple[str, CountingChoice]] = (),
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
        health.append(SourceHealth(source.name, True, now, clock() - started, dict(kinds), server=result.server))
        log_choices(source.name, result.server, {host: c.counting for host, c in result.counts.items()})
        totals.counts.update(result.counts)
        totals.methods.update(result.methods)
        totals.problems.extend(result.problems)
        log.debug("%s: %d host(s) counted", source.name, len(result.counts))
    for host, choice in known_hosts:
        if host not in totals.counts:
            totals.counts[host] = zero_counts(choice, windows)
    totals.counts = dict(sorted(totals.counts.items()))
    return totals, health


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

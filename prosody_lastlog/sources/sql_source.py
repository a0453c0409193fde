"""The SQL kind of source: Prosody's SQL table in one database, counted where it is."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from prosody_lastlog.core.connected import NOBODY, ConnectedUsers
from prosody_lastlog.core.rules import Policy
from prosody_lastlog.core.windows import DEFAULT_AGES, Window
from prosody_lastlog.prosody.sql_settings import SqlSettings
from prosody_lastlog.sources.database import CONNECT_TIMEOUT_SECONDS, Cancellation
from prosody_lastlog.sources.files import Progress
from prosody_lastlog.sources.policy import Cadence, Intervals, store_suffix
from prosody_lastlog.sources.results import ReadResult, SourceCount
from prosody_lastlog.sources.sql import SqlReader


@dataclass
class SqlSource:
    """Prosody's SQL table in one database."""

    settings: SqlSettings
    hosts: Collection[str] = ()
    policy: Policy = field(default_factory=Policy)
    method: str = "auto"
    name: str = field(init=False)
    cancellation: Cancellation = field(init=False, repr=False, compare=False, default_factory=Cancellation)

    counts_connected: ClassVar[bool] = False  # the database counts stored activity only

    def __post_init__(self) -> None:
        self.name = self.settings.describe() + store_suffix(self.policy)

    @property
    def watch_dir(self) -> Path | None:
        """None: nothing tells of a change in the database, so it is looked at again every interval."""
        return None

    def cadence(self, intervals: Intervals) -> Cadence:
        """A look for changes every --sql-interval, not logged; health allows two missed: one that cannot connect
        fails within the connect timeout, one that hangs is caught by the age."""
        max_age = 2 * intervals.sql_interval_seconds + CONNECT_TIMEOUT_SECONDS + 60
        return Cadence(intervals.sql_interval_seconds, 0.0, max_age, logged=False)

    def count(
        self,
        *,
        now: int,
        windows: Sequence[Window],
        connected: ConnectedUsers = NOBODY,
        ages: Sequence[Window] = DEFAULT_AGES,
    ) -> SourceCount:
        """Counts in the database (or by streaming rows where it cannot); stored activity only, so `connected`
        is not used (see the README: connected users and SQL)."""
        return self.reader().count(now=now, windows=windows, ages=ages)

    def read(self) -> ReadResult:
        """Every row of the chosen hosts' stores, as activity records (for listing accounts, not counting)."""
        return self.reader().read()

    def full_read(self, *, now: int, binlog: bool = False) -> SqlSnapshot:
        """A full read to run in another process (index_build.scan_indexes): SqlReader.snapshot."""
        return SqlSnapshot(self.settings, tuple(self.hosts), self.policy, self.method, now, binlog, self.cancellation)

    def reader(self) -> SqlReader:
        """A reader of the table under the source's cancellation (serve's looks: read_changes, read_accounts)."""
        return SqlReader(
            self.settings, hosts=self.hosts, policy=self.policy, method=self.method, cancellation=self.cancellation
        )

    def cancel(self) -> None:
        """Ends the count running at once (it raises StoppedError), and every later one: the daemon is stopping."""
        self.cancellation.cancel()


@dataclass(frozen=True)
class SqlSnapshot:
    """SqlReader.snapshot as a job another process runs (a full read: index_build.FullRead); the mark to look for
    changes from is the result's change_mark."""

    settings: SqlSettings
    hosts: tuple[str, ...]
    policy: Policy
    method: str
    now: int
    binlog: bool
    # The source's, where the read runs in this process (no process to be had); a child gets its own.
    cancellation: Cancellation | None = field(default=None, compare=False)

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "cancellation": None}  # a lock does not travel; a child is ended by a signal

    def read(self, progress: Progress | None = None) -> ReadResult:
        """Every record, each host's registered accounts, and the mark (no progress to tell of)."""
        reader = SqlReader(
            self.settings, hosts=self.hosts, policy=self.policy, method=self.method, cancellation=self.cancellation
        )
        result, mark = reader.snapshot(now=self.now, binlog=self.binlog)
        result.change_mark = mark
        return result

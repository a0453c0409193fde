"""The one refresh: read a source, swap the result into the live state, tell the push exporters.

The periodic timer calls `refresh_all`/`refresh`; the file watcher calls `apply_change` for one user. An SQL source
is read in full at its first refresh and every `reconcile_seconds` after; in between, a refresh reads only the
accounts changed since the last (sources/sql_changes.py). With `binlog`, the binary log's follower (binlog_follow)
calls `apply_binlog` with the accounts changed, and a refresh between full reads looks only while it is down.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import assert_never

from prosody_lastlog.core.connected import NOBODY
from prosody_lastlog.core.model import CountingChoice, ReadProblem
from prosody_lastlog.core.rules import ServerFacts
from prosody_lastlog.daemon.state import LiveCounts
from prosody_lastlog.sources.files import RecordUnreadableError
from prosody_lastlog.sources.index_build import ScannedIndexes, ScanProcesses, scan_indexes
from prosody_lastlog.sources.kinds import FileSource, Source, log_choices
from prosody_lastlog.sources.processes import release_free_memory
from prosody_lastlog.sources.results import DatabaseError, DataDirError
from prosody_lastlog.sources.sql import ChangedAccounts
from prosody_lastlog.sources.sql_binlog import BinlogPosition
from prosody_lastlog.sources.sql_changes import ChangeMark
from prosody_lastlog.sources.sql_source import SqlSource

log = logging.getLogger(__name__)

RESYNC_NICE = 19  # added to the niceness of a resync's processes: the lowest priority, preempted by any other work
# An SQL reconcile's: less, as a starved child holds its snapshot open on the server (InnoDB purge, vacuum) as long,
# and PyMySQL decodes rows in Python (at 19, a reconcile at 1M under a saturating /metrics load did not end in 15
# minutes; at 10 it took 58 s, p99 8.4 ms; at 0, 59 s, p99 11 ms).
SQL_READ_NICE = 10


class Refresher:
    """Refreshes sources into a LiveCounts; failures leave the last good counts served and mark the source down."""

    def __init__(
        self,
        live: LiveCounts,
        sources: Sequence[Source],
        *,
        on_refresh: Callable[[], None] = lambda: None,
        progress: Callable[[int], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        reconcile_seconds: float = 3600.0,
        binlog: bool = False,
    ) -> None:
        self.live = live
        self.sources = list(sources)
        self.reconcile_seconds = reconcile_seconds  # between full reads of an SQL source
        self.binlog = binlog  # SQL sources (MariaDB, MySQL) are followed in their binary log
        self._followed: dict[str, _Followed] = {}  # per SQL source: where its last look left off
        self._following: dict[str, bool] = {}  # per SQL source, whether its binary log is followed now
        self._following_lock = threading.Lock()
        self._on_refresh = on_refresh
        self.progress = progress  # told of files read during a full scan (the startup progress bar)
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        # Per source: one full refresh at a time (`_refreshing`), and a short lock over its live data (`_locks`).
        # A full scan reads without the short lock, so file events keep flowing; users they change meanwhile are
        # noted and re-read as the scan is swapped in, so the scan never overwrites a newer change.
        self._refreshing = {source.name: threading.Lock() for source in self.sources}
        self._locks = {source.name: threading.Lock() for source in self.sources}
        self._changed_during_scan: dict[str, set[tuple[str, str]]] = {}  # (host, user) per scanning source
        self._file_hosts: dict[str, set[str]] = {}
        self._failing: set[str] = set()
        self._choices: dict[str, tuple[ServerFacts | None, dict[str, CountingChoice]]] = {}  # as last logged
        self._scans = ScanProcesses()
        self._reads: dict[str, Callable[[], list[ReadProblem]]] = {}  # what a full refresh of each source does
        self._file_sources: list[FileSource] = []
        for source in self.sources:
            match source:  # the one place the kinds are told apart; elsewhere a source's policy says what to do
                case FileSource():  # scanned into the live index, then read a user at a time after file events
                    self._file_sources.append(source)
                    self._reads[source.name] = partial(self._scan, source)
                case SqlSource():  # read into the live index, then only its changed accounts
                    self._reads[source.name] = partial(self._follow, source)
                case _:
                    assert_never(source)

    def stop(self) -> None:
        """Ends the refreshes running (they end without changing anything) and refuses new ones: a resync or a query
        (on a locked table, up to the query limit) would hold up the timer's thread for minutes."""
        self._scans.stop_all()
        for source in self.sources:
            # After the scans: the refresh a cancel ends is then taken as stopped on purpose, not logged as failed.
            source.cancel()

    def refresh_all(self) -> None:
        """Refreshes every source."""
        for source in self.sources:
            self.refresh(source)

    def refresh(self, source: Source) -> None:
        """Reads one source in full and swaps its data in."""
        with self._refreshing[source.name]:
            started = self._monotonic()
            try:
                problems = self._reads[source.name]()
            except Exception as exc:  # any failure: keep the last counts, mark the source down
                if self._scans.stopped:
                    return  # stopping: the scan was ended on purpose
                if not isinstance(exc, DataDirError | DatabaseError | OSError):
                    log.debug("refresh failure", exc_info=True)
                    exc = RuntimeError(f"unexpected {type(exc).__name__} while reading")
                self._failed(source, exc)
                return
            self._succeeded(source, self._monotonic() - started, problems)
            _log_problems(source.name, problems)
        self._on_refresh()

    def _failed(self, source: Source, exc: Exception) -> None:
        """The last counts stay served; the source is down, logged when it goes down."""
        self.live.failed(source.name, str(exc))
        if source.name not in self._failing:  # once per state change, not every attempt
            log.error("%s: refresh failed, serving the last good counts: %s", source.name, exc)
        self._failing.add(source.name)

    def _succeeded(self, source: Source, seconds: float, problems: Sequence[ReadProblem]) -> None:
        if source.name in self._failing:
            log.warning("%s: refresh works again", source.name)
            self._failing.discard(source.name)
        kinds = Counter(problem.kind for problem in problems)
        self.live.succeeded(source.name, at=self._wall_clock(), duration=seconds, problems=kinds)

    def apply_change(self, host: str, user: str) -> bool:
        """Re-reads one user's record (and account) after a file event. False if it could not be read (what was known
        of the user stands; try again later); True if applied, or if no file source counts the host.

        Call `changed()` after a batch of these.
        """
        source = self.file_source_for_host(host)
        choice = self.live.index.choice_of(host)
        if source is None or choice is None:
            return True
        problems: list[ReadProblem] = []
        applied = True
        with self._locks[source.name]:
            try:
                activity = source.reader.read_user(host, choice, user, problems)
            except RecordUnreadableError:
                applied = False
            else:
                self.live.index.update(host, choice, user, activity)
            changed = self._changed_during_scan.get(source.name)
            if changed is not None:
                changed.add((host, user))
        if problems:
            self.live.add_problems(source.name, Counter(problem.kind for problem in problems))
            _log_problems(source.name, problems)
        return applied

    def recount_accounts(self, host: str) -> bool:
        """Counts a host's registered accounts again after a change in its accounts store; False if the directory
        could not be listed (the last count stands; try again later)."""
        source = self.file_source_for_host(host)
        if source is None:
            return True
        problems: list[ReadProblem] = []
        with self._locks[source.name]:
            try:
                registered = source.reader.registered_accounts(host, problems)
            except RecordUnreadableError:
                listed = False
            else:
                listed = True
                self.live.index.set_registered_accounts(host, registered)
        if problems:
            self.live.add_problems(source.name, Counter(problem.kind for problem in problems))
            _log_problems(source.name, problems)
        return listed

    def note_change(self, host: str, user: str) -> bool:
        """While a full scan of the host's source runs: notes a user to re-read as the scan is swapped in (the
        scan may have read the file before it changed) and returns True; else False."""
        source = self.file_source_for_host(host)
        if source is None:
            return False
        with self._locks[source.name]:
            changed = self._changed_during_scan.get(source.name)
            if changed is None:
                return False
            changed.add((host, user))
            return True

    def changed(self) -> None:
        """Tells the push exporters that a batch of single-user changes has been applied."""
        self._on_refresh()

    def file_source_for_host(self, host: str) -> FileSource | None:
        """The file source that reads `host`, if any (hosts filtered by the config or --host)."""
        return next((s for s in self._file_sources if not s.hosts or host in s.hosts), None)

    def _log_choices(self, source: str, server: ServerFacts | None, choices: dict[str, CountingChoice]) -> None:
        """Logs how a source's hosts are counted, at the first refresh and whenever that changes."""
        if self._choices.get(source) != (server, choices):
            self._choices[source] = (server, choices)
            log_choices(source, server, choices)

    def _follow(self, source: SqlSource) -> list[ReadProblem]:
        """A full read when due (the first, then every reconcile_seconds, or a host not read before has rows);
        else, unless the binary log is followed now, the accounts changed since the last look, applied to the
        index."""
        followed = self._followed.get(source.name)
        now = int(self._wall_clock())
        if followed is None or self._monotonic() - followed.full_read_at >= self.reconcile_seconds:
            return self._read_in_full(source, now)
        if self._following.get(source.name) and source.name not in self._failing:
            return []  # the log's follower reads what changes
        found = source.reader().read_changes(followed.mark, followed.choices, followed.server, now=now)
        unexplained = {  # an account made or deleted with no change found (no time in its rows, or its rows gone)
            host
            for host, registered in found.registered.items()
            if registered != self.live.index.registered_of(host) and host not in found.accounts_changed
        }
        if found.new_hosts or unexplained:
            return self._read_in_full(source, now)
        self._apply(source, followed, found)
        return found.problems

    def apply_binlog(self, source: SqlSource, rows: set[tuple[str, str, str]]) -> bool:
        """Reads again the accounts of rows the binary log says changed, and applies them. False if not done: while
        a full read of the source runs (it holds older rows: keep these, and call again after it), before the
        first, or when they cannot be read (the source is then down, logged once, until a read works). A new host
        makes the next refresh a full read."""
        lock = self._refreshing[source.name]
        if not lock.acquire(timeout=0.1):
            return False
        try:
            followed = self._followed.get(source.name)
            if followed is None:
                return False
            now = int(self._wall_clock())
            started = self._monotonic()
            try:
                found = source.reader().read_accounts(rows, followed.choices, followed.server, followed.mark, now=now)
            except DatabaseError as exc:
                self._failed(source, exc)
                return False
            if found.new_hosts:
                followed.full_read_at = -self.reconcile_seconds  # due at the next refresh
            self._apply(source, followed, found)
            if source.name in self._failing:
                self._succeeded(source, self._monotonic() - started, found.problems)
        finally:
            lock.release()
        _log_problems(source.name, found.problems)
        self._on_refresh()
        return True

    def binlog_start(self, source: SqlSource) -> tuple[int, BinlogPosition] | None:
        """Where the binary log stood at the last full read of the source, and which full read that was (they are
        numbered); None before the first, or if that read could not find the log."""
        followed = self._followed.get(source.name)
        if followed is None or followed.binlog is None:
            return None
        return followed.number, followed.binlog

    def set_binlog_followed(self, source: SqlSource, following: bool, reason: str = "") -> None:
        """Records whether the source's binary log is followed now: while it is not, refreshes look for changes
        by time, as without --sql-binlog. Logged when that changes."""
        with self._following_lock:
            if self._following.get(source.name) == following:
                return
            self._following[source.name] = following
            self.live.changes_found_by(source.name, "binlog" if following else "by time")
        if following:
            log.info("%s: following the binary log", source.name)
        else:
            log.error("%s: cannot follow the binary log; looking for changes by time: %s", source.name, reason)

    def need_full_read(self, source: SqlSource) -> None:
        """Makes the source's next refresh a full read (the binary log lost changes)."""
        if (followed := self._followed.get(source.name)) is not None:
            followed.full_read_at = -self.reconcile_seconds

    def _apply(self, source: SqlSource, followed: _Followed, found: ChangedAccounts) -> None:
        with self._locks[source.name]:
            for host, user, activity in found.records:
                self.live.index.update(host, followed.choices[host], user, activity)
            for host, registered in found.registered.items():
                self.live.index.set_registered_accounts(host, registered)
        followed.mark = found.mark
        self.live.looked(source.name, changed=len(found.records))

    def _read_in_full(self, source: SqlSource, now: int) -> list[ReadProblem]:
        previous = self._followed.get(source.name)
        # In a child process, as a file scan: decoding a million rows here would hold up the scrapes.
        nice = SQL_READ_NICE if previous is not None else 0
        read = scan_indexes(source.full_read(now=now, binlog=self.binlog), NOBODY, nice=nice, processes=self._scans)
        mark = read.change_mark
        assert read.server is not None and mark is not None  # an SQL read says what the server is and its mark
        choices = {host: index.choice for host, index in read.hosts.items()}
        with self._locks[source.name]:
            self.live.swap_in_stored(source.name, list(read.hosts.values()))
        release_free_memory()  # the swapped-out indexes'
        number = previous.number + 1 if previous is not None else 1
        self._followed[source.name] = _Followed(mark, read.server, choices, self._monotonic(), number, mark.binlog)
        with self._following_lock:  # the follower's thread may say otherwise meanwhile
            how = "binlog" if self._following.get(source.name) else "by version" if mark.by_version else "by time"
            self.live.read_in_full(source.name, at=self._wall_clock(), how=how)
        if mark.binlog_error is not None:
            self.set_binlog_followed(source, False, mark.binlog_error)
        self._log_choices(source.name, read.server, choices)
        return read.problems

    def _scan(self, source: FileSource) -> list[ReadProblem]:
        with self._locks[source.name]:
            self._changed_during_scan[source.name] = set()
        # A resync is not urgent: its processes yield the CPUs to scrapes (and to Prosody); the first count is.
        nice = RESYNC_NICE if source.name in self._file_hosts else 0
        try:
            scanned = scan_indexes(
                source.reader, self.live.index.connected, progress=self.progress, nice=nice, processes=self._scans
            )
        except BaseException:
            with self._locks[source.name]:
                self._changed_during_scan.pop(source.name)
            raise
        with self._locks[source.name]:
            changed = self._changed_during_scan.pop(source.name)
            self._keep_what_was_not_read(scanned)
            self.live.index.swap_in(scanned.hosts.values())
            gone = self._file_hosts.get(source.name, set()) - set(scanned.hosts) - scanned.unreadable_hosts
            self.live.index.remove_hosts(gone)
            self._file_hosts[source.name] = set(scanned.hosts) | scanned.unreadable_hosts
            for host, user in changed:  # newer than what the scan read: read again
                if (choice := self.live.index.choice_of(host)) is not None:
                    with contextlib.suppress(RecordUnreadableError):  # then what the scan gave stands
                        activity = source.reader.read_user(host, choice, user, scanned.problems)
                        self.live.index.update(host, choice, user, activity)
            for host in {host for host, _ in changed}:  # an account made or deleted since the scan listed them
                with contextlib.suppress(RecordUnreadableError):
                    registered = source.reader.registered_accounts(host, scanned.problems)
                    self.live.index.set_registered_accounts(host, registered)
        release_free_memory()  # the swapped-out indexes'
        choices = {
            host: choice for host in self._file_hosts[source.name] if (choice := self.live.index.choice_of(host))
        }
        self._log_choices(source.name, scanned.server, choices)
        return scanned.problems

    def _keep_what_was_not_read(self, scanned: ScannedIndexes) -> None:
        """A read error never removes what was known: a host whose directories could not be listed keeps its index,
        a user whose files could not be read keeps their facts (only "no such file" means gone)."""
        for host in scanned.unreadable_hosts:
            if self.live.index.choice_of(host) is not None:
                scanned.hosts.pop(host, None)
        for host, users in scanned.unreadable_users.items():
            index = scanned.hosts.get(host)
            if index is None:
                continue
            for user in users:
                if (known := self.live.index.activity_of(host, user)) is not None:
                    index.set(known)


@dataclass
class _Followed:
    """Where the last look at an SQL source left off: its mark, the server and hosts its last full read found, and
    where that read found the binary log."""

    mark: ChangeMark
    server: ServerFacts
    choices: dict[str, CountingChoice]
    full_read_at: float  # monotonic
    number: int  # of the full read: 1 for the first
    binlog: BinlogPosition | None  # where the binary log stood as it began, if followed


def _log_problems(source: str, problems: Sequence[ReadProblem]) -> None:
    # Where a problem is names a user, so details are debug-level only.
    for problem in problems:
        log.debug("%s: %s: %s: %s", source, problem.where, problem.kind, problem.reason)
    if problems:
        log.warning("%s: %d problem(s) reading data; -v lists them", source, len(problems))

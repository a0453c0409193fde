"""`serve --sql-binlog`: a thread per SQL source follows its binary log and has the accounts it names read again at
once, so a login shows in /metrics about a second after Prosody commits it.

The log may tell of a commit a moment before the table shows it to other connections, so the accounts of each
batch are read again once more, at least RECHECK_SECONDS after the first time; the place to take up the log from
stays before every batch not read twice yet. While the log cannot be followed (the server is down, the connection
cut), the refreshes look for changes by time as without --sql-binlog, and the thread tries again every
RETRY_SECONDS from that place; if the log no longer holds it, the source is read in full and followed from there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass

from prosody_lastlog.daemon.refresh import Refresher
from prosody_lastlog.sources.database import StoppedError, first_line
from prosody_lastlog.sources.plan import Plan
from prosody_lastlog.sources.results import DatabaseError
from prosody_lastlog.sources.sql_binlog import BinlogFollower, BinlogLostError, BinlogPosition, BinlogSetupError
from prosody_lastlog.sources.sql_source import SqlSource

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # between attempts to follow the log again
RECHECK_SECONDS = 0.5  # at least this between the two reads of a batch's accounts
MOST_WAITING = 100_000  # changed rows kept to read again; past it, the source is read in full instead
WAIT_SECONDS = 0.5  # between checks for a full read that says where the log starts
_STOP_SECONDS = 2.0  # bound on joining the thread


def binlog_sources(plan: Plan, wanted: bool) -> list[SqlSource]:
    """The SQL sources to follow in their binary log: all of them if `wanted`; ValueError if one is not on
    MariaDB or MySQL (only they have one), or there is none."""
    if not wanted:
        return []
    sources = [source for source in plan.sources if isinstance(source, SqlSource)]
    if not sources:
        raise ValueError("--sql-binlog follows an SQL source's binary log, and there is none: use --sql or --config")
    for source in sources:
        if source.settings.driver != "MySQL":
            raise ValueError(f"--sql-binlog needs MariaDB or MySQL; {source.name} has no binary log to follow")
    return sources


@dataclass
class _Batch:
    """A batch's accounts, where it starts in the log, and when they were first read (None: not yet)."""

    rows: set[tuple[str, str, str]]
    start: BinlogPosition
    read_at: float | None = None  # monotonic


class BinlogFollow:
    """Follows one SQL source's binary log on a daemon thread of its own."""

    def __init__(
        self, refresher: Refresher, source: SqlSource, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._refresher = refresher
        self._monotonic = monotonic
        self._source = source
        self._follower = BinlogFollower(source.settings)
        self._position: BinlogPosition | None = None  # where to take up the log from; None: at the next full read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"binlog {source.name}", daemon=True)

    def check(self) -> None:
        """Before the first count: BinlogSetupError if the log cannot be followed (what to change); a server that
        cannot be reached only gets a warning: the source is then down until it can."""
        try:
            self._follower.check()
        except BinlogSetupError:
            raise
        except DatabaseError as exc:
            log.warning("%s: the binary log could not be checked: %s", self._source.name, exc)

    def start(self) -> None:
        """Starts following (from where the first full read found the log)."""
        self._thread.start()

    def stop(self) -> None:
        """Stops at once: the log's connection is cut."""
        self._stop.set()
        self._follower.stop()
        if self._thread.is_alive():
            self._thread.join(_STOP_SECONDS)

    def _run(self) -> None:
        read_from = 0  # the number of the full read the place came from
        while not self._stop.is_set():
            if self._position is None:
                start = self._refresher.binlog_start(self._source)
                if start is None or start[0] <= read_from:
                    self._stop.wait(WAIT_SECONDS)
                    continue
                read_from, self._position = start
            try:
                self._follow_from(self._position)
            except StoppedError:
                return
            except BinlogLostError as exc:
                self._refresher.set_binlog_followed(self._source, False, str(exc))
                self._refresher.need_full_read(self._source)
                self._position = None
                latest = self._refresher.binlog_start(self._source)  # its place is from before the loss: wait
                read_from = max(read_from, latest[0] if latest else 0)
            except DatabaseError as exc:
                self._refresher.set_binlog_followed(self._source, False, str(exc))
            except Exception as exc:  # the library's own surprises: keep the daemon serving, try again
                log.debug("binlog failure", exc_info=True)
                self._refresher.set_binlog_followed(self._source, False, f"{type(exc).__name__}: {first_line(exc)}")
            self._stop.wait(RETRY_SECONDS)

    def _follow_from(self, start: BinlogPosition) -> None:
        """Applies batches from `start` until the log fails (raises). Each batch's accounts are read at once and
        again with the first batch at least RECHECK_SECONDS later (a heartbeat comes every half second); the
        place moves on past a batch once both reads are done."""
        waiting: deque[_Batch] = deque()  # read once or not at all, oldest first
        with closing(self._follower.batches(start)) as batches:
            for batch in batches:
                self._refresher.set_binlog_followed(self._source, True)
                now = self._monotonic()
                if batch.rows:
                    waiting.append(_Batch(batch.rows, batch.start))
                due = [item for item in waiting if item.read_at is None or now - item.read_at >= RECHECK_SECONDS]
                rows = set().union(*(item.rows for item in due))
                if rows and not self._refresher.apply_binlog(self._source, rows):
                    if sum(len(item.rows) for item in waiting) > MOST_WAITING:  # the table cannot be read for long
                        self._refresher.need_full_read(self._source)  # which reads all of them
                        waiting.clear()
                        self._position = batch.end
                    continue  # a full read runs, or the table cannot be read: all of them again next time
                for item in due:
                    if item.read_at is None:
                        item.read_at = now
                    else:
                        waiting.remove(item)
                self._position = waiting[0].start if waiting else batch.end

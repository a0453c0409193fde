"""`serve --sql-binlog`: a thread per SQL source follows its binary log and has the accounts it names read again at
once, so a login shows in /metrics about a second after Prosody commits it.

The log may tell of a commit a moment before the table shows it to other connections, so each batch is read again
once more with the next one (a heartbeat, half a second, later at most). While the log cannot be followed (the
server is down, the account lacks a privilege), the refreshes look for changes by time as without --sql-binlog,
and the thread tries again every RETRY_SECONDS from where it stood; if the log no longer holds that place, the
source is read in full and followed from there.
"""

from __future__ import annotations

import logging
import threading

from prosody_lastlog.daemon.refresh import Refresher
from prosody_lastlog.sources.database import StoppedError, first_line
from prosody_lastlog.sources.plan import Plan
from prosody_lastlog.sources.results import DatabaseError
from prosody_lastlog.sources.sql_binlog import BinlogFollower, BinlogLostError, BinlogPosition
from prosody_lastlog.sources.sql_source import SqlSource

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # between attempts to follow the log again
WAIT_SECONDS = 0.5  # between checks for the first full read, which says where the log starts
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


class BinlogFollow:
    """Follows one SQL source's binary log on a daemon thread of its own."""

    def __init__(self, refresher: Refresher, source: SqlSource) -> None:
        self._refresher = refresher
        self._source = source
        self._follower = BinlogFollower(source.settings)
        self._position: BinlogPosition | None = None  # where the rows applied end; None: at the next full read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"binlog {source.name}", daemon=True)

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
        read_from = 0  # the full read the position came from
        while not self._stop.is_set():
            if self._position is None:
                start = self._refresher.binlog_start(self._source)
                if start is None or start[0] <= read_from:
                    self._stop.wait(WAIT_SECONDS)
                    continue
                read_from, self._position = start
            try:
                self._follow(self._position)
            except StoppedError:
                return
            except BinlogLostError as exc:
                self._refresher.binlog_followed(self._source, False, str(exc))
                self._refresher.need_full_read(self._source)
                self._position = None
            except DatabaseError as exc:
                self._refresher.binlog_followed(self._source, False, str(exc))
            except Exception as exc:  # the library's own surprises: keep the daemon serving, try again
                log.debug("binlog failure", exc_info=True)
                self._refresher.binlog_followed(self._source, False, f"{type(exc).__name__}: {first_line(exc)}")
            self._stop.wait(RETRY_SECONDS)

    def _follow(self, start: BinlogPosition) -> None:
        """Applies batches from `start` until the log fails (raises). The position moves on to each batch's end
        once its rows are applied, so that taking up again from it misses nothing."""
        recheck: set[tuple[str, str, str]] = set()  # the last batch applied, read once more with the next
        waiting: set[tuple[str, str, str]] = set()  # not applied yet: a full read ran
        for batch in self._follower.batches(start):
            self._refresher.binlog_followed(self._source, True)
            rows = recheck | waiting | batch.rows
            if rows and not self._refresher.apply_binlog(self._source, rows):
                waiting |= batch.rows
                continue
            recheck, waiting = waiting | batch.rows, set()
            self._position = batch.end or self._position

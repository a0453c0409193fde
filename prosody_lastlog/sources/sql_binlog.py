"""Which accounts changed, as MariaDB's (or MySQL's) row-based binary log tells the moment they do: `serve`'s
opt-in follow mode (--sql-binlog).

The tool connects as a replica does (with a server id of its own) and reads the binary log from a position. It
leaves nothing on the server: no slot, no table, no trigger; the server keeps its binary logs for its own
expiry (binlog_expire_logs_seconds), whether the tool runs or not. The server needs log_bin, binlog_format=ROW,
binlog_row_image=FULL (every column of each row, so host, user and store are where the table has them) and an
uncompressed log; the tool's account needs REPLICATION SLAVE and BINLOG MONITOR (MySQL: REPLICATION CLIENT)
besides SELECT on the table (docs/sql.md).

Every row written, changed or deleted is in the log, with its host, user and store: inserts, updates and
deletes are all found, whatever the row holds. The rows themselves are then read again from the table, by the
full read's own code, so there is one reading of Prosody's rows.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from prosody_lastlog.prosody.sql_settings import SqlSettings
from prosody_lastlog.sources import sql_queries as queries
from prosody_lastlog.sources.database import (
    CONNECT_TIMEOUT_SECONDS,
    Cancellation,
    Connection,
    StoppedError,
    connect,
    first_line,
)
from prosody_lastlog.sources.results import DatabaseError

HEARTBEAT_SECONDS = 0.5  # the server says it is there this often when the log is quiet: a batch ends then
BATCH_SECONDS = 0.25  # a busy log is handed on in batches at least this long, each ending at a commit
READ_TIMEOUT_SECONDS = 10.0  # no byte for this long (not even a heartbeat): the server is gone or frozen
RECONNECT_SECONDS = 1.0  # at least this between the reader's connections: a server dropping them is not hammered
CHECK_SECONDS = 60.0  # how often (at a batch's end) the server's position is compared with ours: behind is reset
_COLUMNS = ("host", "user", "store")
_LOG_GONE = 1236  # ER_MASTER_FATAL_ERROR_READING_BINLOG: the position asked for is no longer in the log
_DENIED = (1045, 1142, 1227)  # access denied: to the server, to a table, to a privileged operation
_SYNTAX = 1064  # SHOW MASTER STATUS where MySQL 8.4 only knows SHOW BINARY LOG STATUS
# The library warns of what is handled here (column names by position, a connection made again): its errors only.
logging.getLogger("pymysqlreplication").setLevel(logging.ERROR)


@dataclass(frozen=True)
class BinlogPosition:
    """A place in the server's binary log (its files are numbered in order: `binlog.000009` before
    `binlog.000010`, and `binlog.999999` before `binlog.1000000`)."""

    file: str
    position: int

    def __lt__(self, other: BinlogPosition) -> bool:
        return self._order() < other._order()

    def __le__(self, other: BinlogPosition) -> bool:
        return self._order() <= other._order()

    def _order(self) -> tuple[int, int]:
        suffix = self.file.rpartition(".")[2]
        return (int(suffix) if suffix.isdigit() else -1, self.position)


class BinlogSetupError(DatabaseError):
    """The server's log or the account's privileges do not let the log be followed: the message says what to
    change."""


class BinlogLostError(DatabaseError):
    """The binary log no longer holds the position asked for (purged, or the server's log was reset)."""


@dataclass
class Batch:
    """The (host, user, store) of the rows of Prosody's table written from `start` to `end` in the log."""

    start: BinlogPosition
    end: BinlogPosition
    rows: set[tuple[str, str, str]] = field(default_factory=set)


def binlog_position(connection: Connection, *, consistent: bool = False) -> BinlogPosition:
    """Where the server's binary log ends now. With `consistent`, the connection enters a snapshot transaction:
    on MariaDB the position is the one matching it exactly (what it reads next is what the log holds up to there);
    on MySQL the position is taken first (a change between the two is read twice, never missed).
    BinlogSetupError saying what to change if the log cannot be followed."""
    describe = connection.settings.describe()
    try:
        variables = dict(
            connection.query(
                "SHOW GLOBAL VARIABLES WHERE Variable_name IN "
                "('log_bin', 'binlog_format', 'binlog_row_image', 'log_bin_compress', 'binlog_transaction_compression')"
            )
        )
        if str(variables.get("log_bin", "OFF")).upper() not in ("ON", "1"):
            raise BinlogSetupError(f"{describe} keeps no binary log: --sql-binlog needs log_bin")
        wanted = {"binlog_format": "ROW", "binlog_row_image": "FULL"}
        wrong = [f"{name}={variables.get(name)}" for name, value in wanted.items() if variables.get(name) != value]
        wrong += [f"{name}=ON" for name in ("log_bin_compress", "binlog_transaction_compression")
                  if str(variables.get(name, "OFF")).upper() in ("ON", "1")]  # fmt: skip
        if wrong:
            raise BinlogSetupError(
                f"{describe} has {', '.join(wrong)}: --sql-binlog needs binlog_format=ROW, binlog_row_image=FULL "
                "(the default) and an uncompressed log"
            )
        if consistent and _has_snapshot_position(connection):
            return _snapshot_position(connection)
        rows = _log_status(connection)
        if consistent:  # MySQL: after the position, so that the snapshot sees all the log holds before it
            connection.query("START TRANSACTION WITH CONSISTENT SNAPSHOT")
    except connection.errors as exc:
        raise BinlogSetupError(
            f"cannot read the binary log position of {describe}: {first_line(exc)} "
            "(--sql-binlog needs BINLOG MONITOR, on MySQL REPLICATION CLIENT)"
        ) from exc
    if not rows:
        raise BinlogSetupError(f"{describe} shows no binary log: --sql-binlog needs log_bin")
    return BinlogPosition(str(rows[0][0]), int(rows[0][1]))


_SNAPSHOT_STATUS = "SHOW STATUS WHERE Variable_name IN ('Binlog_snapshot_file', 'Binlog_snapshot_position')"


def _has_snapshot_position(connection: Connection) -> bool:
    """Whether the server says which log position a snapshot matches (MariaDB does; MySQL does not)."""
    return bool(connection.query(_SNAPSHOT_STATUS))


def _snapshot_position(connection: Connection) -> BinlogPosition:
    """Starts a snapshot transaction; MariaDB's log position matching it exactly."""
    connection.query("START TRANSACTION WITH CONSISTENT SNAPSHOT")
    status = dict(connection.query(_SNAPSHOT_STATUS))
    return BinlogPosition(str(status["Binlog_snapshot_file"]), int(status["Binlog_snapshot_position"]))


def _log_status(connection: Connection) -> list[tuple[Any, ...]]:
    """SHOW MASTER STATUS, under the name MySQL 8.4 gives it where the old one is gone."""
    try:
        return connection.query("SHOW MASTER STATUS")
    except connection.errors as exc:
        if _code(exc) != _SYNTAX:
            raise
        return connection.query("SHOW BINARY LOG STATUS")


def column_positions(connection: Connection) -> tuple[int, int, int]:
    """Where host, user and store are among the table's columns: the log names them only with
    binlog_row_metadata=FULL, else gives them by position."""
    names = [
        str(name).lower()
        for (name,) in connection.query(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() "
            "AND table_name = 'prosody' ORDER BY ordinal_position"
        )
    ]
    missing = [name for name in _COLUMNS if name not in names]
    if missing:
        raise DatabaseError(f"{connection.settings.describe()}: the prosody table has no {', '.join(missing)} column")
    host, user, store = (names.index(name) for name in _COLUMNS)
    return host, user, store


class BinlogFollower:
    """Reads the binary log from a position, handing on the changed rows of Prosody's table in batches."""

    def __init__(self, settings: SqlSettings, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._monotonic = monotonic
        self._columns = (0, 1, 2)  # of host, user and store: column_positions at each start
        self._server_id = random.randint(2**30, 2**31 - 1)  # a replica's id, unlikely to be another's
        self._cancellation = Cancellation()  # of our own queries; stop() cancels it
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._open: list[Any] = []  # the connections the stream reader made, cut by stop()
        self._last_connect = 0.0  # monotonic

    def check(self) -> None:
        """Whether the log can be followed from where it ends now, as at start: BinlogSetupError saying what to
        change if not (no log, no privilege, the library missing); DatabaseError if the server cannot be reached."""
        with closing(connect(self.settings, self._cancellation)) as connection:
            start = binlog_position(connection)
        with closing(self.batches(start)) as batches:
            next(batches)  # the server's first heartbeat, at most HEARTBEAT_SECONDS away

    def batches(self, start: BinlogPosition) -> Generator[Batch, None, None]:
        """Batches from `start`, until stop(): each ends at a commit at least BATCH_SECONDS after it began, or when
        the log is quiet (then it may be empty). Raises BinlogLostError if the log no longer holds the place it
        reads from, BinlogSetupError if the account may not read the log, DatabaseError on any other failure,
        StoppedError once stopped."""
        with closing(connect(self.settings, self._cancellation)) as connection:
            self._columns = column_positions(connection)
        reader = self._reader(start)
        try:
            yield from self._batches(reader, start)
        except self._errors() as exc:
            if self._stopped.is_set():
                raise StoppedError(f"{self.settings.describe()}: stopped") from exc
            where = f"{reader.log_file or start.file}:{reader.log_pos or start.position}"
            if _code(exc) == _LOG_GONE:
                raise BinlogLostError(
                    f"{self.settings.describe()}: the binary log no longer holds {where} (purged or reset)"
                ) from exc
            if _code(exc) in _DENIED:
                raise BinlogSetupError(
                    f"{self.settings.describe()} does not let the account read its binary log: {first_line(exc)} "
                    "(--sql-binlog needs REPLICATION SLAVE)"
                ) from exc
            raise DatabaseError(f"lost the binary log of {self.settings.describe()}: {first_line(exc)}") from exc
        finally:
            reader.close()

    def stop(self) -> None:
        """Ends batches() at once, from another thread: its connections are cut and no new one is made."""
        self._stopped.set()
        self._cancellation.cancel()
        with self._lock:
            for connection in self._open:
                _cut(connection)

    def _batches(self, reader: Any, start: BinlogPosition) -> Iterator[Batch]:
        row_events, heartbeat, commit = _event_classes()
        batch, began = Batch(start, start), self._monotonic()
        checked = began
        for event in reader:
            if self._stopped.is_set():
                raise StoppedError(f"{self.settings.describe()}: stopped")
            if isinstance(event, row_events):
                batch.rows.update(self._changed(event))
                continue
            batch.end = BinlogPosition(reader.log_file, reader.log_pos)  # after a commit or at a heartbeat
            now = self._monotonic()
            quiet = isinstance(event, heartbeat)
            if quiet or (isinstance(event, commit) and now - began >= BATCH_SECONDS):
                if now - checked >= CHECK_SECONDS:
                    self._check_not_reset(batch.end)
                    checked = now
                yield batch
                batch, began = Batch(batch.end, batch.end), now

    def _check_not_reset(self, ours: BinlogPosition) -> None:
        """A server whose log ends before the place we read it from has reset it (RESET MASTER): what we would read
        next is not what follows our place."""
        with closing(connect(self.settings, self._cancellation)) as connection:
            theirs = binlog_position(connection)
        if theirs < ours:
            raise BinlogLostError(
                f"{self.settings.describe()}: the binary log ends at {theirs.file}:{theirs.position}, before "
                f"{ours.file}:{ours.position} (reset)"
            )

    def _changed(self, event: Any) -> Iterator[tuple[str, str, str]]:
        for row in event.rows:
            for values in (row.get("values"), row.get("before_values"), row.get("after_values")):
                if values is None:
                    continue
                cells = list(values.values())
                host, user, store = (cells[index] if index < len(cells) else None for index in self._columns)
                if isinstance(host, str) and isinstance(user, str) and store in queries.CHANGE_STORES:
                    yield host, user, store

    def _reader(self, start: BinlogPosition) -> Any:
        try:
            from pymysqlreplication import BinLogStreamReader  # noqa: PLC0415 (optional: the mysql extra)
        except ImportError as exc:
            raise BinlogSetupError(
                "--sql-binlog needs mysql-replication: pip install 'prosody-lastlog[mysql]'"
            ) from exc
        row_events, heartbeat, commit = _event_classes()
        return BinLogStreamReader(
            connection_settings={
                "host": self.settings.host or "localhost",
                "port": self.settings.port or 3306,
                "user": self.settings.username or "",
                "password": self.settings.password or "",
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                "read_timeout": READ_TIMEOUT_SECONDS,
            },
            server_id=self._server_id,
            resume_stream=True,
            blocking=True,
            log_file=start.file,
            log_pos=start.position,
            only_events=[*row_events, heartbeat, commit],
            only_schemas=[self.settings.database],
            only_tables=["prosody"],
            slave_heartbeat=HEARTBEAT_SECONDS,
            pymysql_wrapper=self._connect,
            ignore_decode_errors=True,  # a name that is not UTF-8 is read again wrongly, not a halt of the log
            enable_logging=False,
        )

    def _connect(self, **settings: Any) -> Any:
        """The stream reader's connections (it makes one again when the server drops it): at most one each
        RECONNECT_SECONDS, each cut by stop(), none once stopped."""
        import pymysql  # noqa: PLC0415 (present with mysql-replication)

        with self._lock:
            wait = self._last_connect + RECONNECT_SECONDS - time.monotonic()
        if self._stopped.wait(max(0.0, wait)):
            raise StoppedError(f"{self.settings.describe()}: stopped")
        if "db" in settings:  # the reader's name for it, which PyMySQL deprecates
            settings["database"] = settings.pop("db")
        connection = pymysql.connect(**settings)
        with self._lock:
            self._last_connect = time.monotonic()
            self._open = [c for c in self._open if c.open] + [connection]
            if self._stopped.is_set():  # stop() ran while it connected
                _cut(connection)
        return connection

    def _errors(self) -> tuple[type[BaseException], ...]:
        import pymysql  # noqa: PLC0415

        return (pymysql.Error, OSError)


def _event_classes() -> tuple[tuple[type, ...], type, type]:
    """The row events, the server's heartbeat, a commit."""
    from pymysqlreplication.event import HeartbeatLogEvent, XidEvent  # noqa: PLC0415
    from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent  # noqa: PLC0415

    return (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent), HeartbeatLogEvent, XidEvent


def _code(exc: BaseException) -> object:
    """A MySQL error's number."""
    return exc.args[0] if exc.args else None


def _cut(connection: Any) -> None:
    with contextlib.suppress(Exception):  # closed meanwhile
        connection._sock.shutdown(socket.SHUT_RDWR)

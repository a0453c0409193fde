"""Which accounts changed, as MariaDB's (or MySQL's) row-based binary log tells the moment they do: `serve`'s
opt-in follow mode (--sql-binlog).

The tool connects as a replica does (with a server id of its own) and reads the binary log from a position. It
leaves nothing on the server: no slot, no table, no trigger; the server keeps its binary logs for its own
expiry (binlog_expire_logs_seconds), whether the tool runs or not. The server needs log_bin, binlog_format=ROW and
binlog_row_image=FULL (every column of each row, so host, user and store are where the table has them);
the tool's account needs REPLICATION SLAVE and BINLOG MONITOR (MySQL: REPLICATION CLIENT) besides SELECT on the
table (docs/sql.md).

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
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from prosody_lastlog.prosody.sql_settings import SqlSettings
from prosody_lastlog.sources import sql_queries as queries
from prosody_lastlog.sources.database import CONNECT_TIMEOUT_SECONDS, Connection, StoppedError, connect, first_line
from prosody_lastlog.sources.results import DatabaseError

HEARTBEAT_SECONDS = 0.5  # the server says it is there this often when the log is quiet: a batch ends then
BATCH_SECONDS = 0.25  # a busy log is handed on in batches this long (each ends at a commit)
READ_TIMEOUT_SECONDS = 10.0  # no byte for this long (not even a heartbeat): the server is gone or frozen
_COLUMNS = ("host", "user", "store")
_LOG_GONE = 1236  # ER_MASTER_FATAL_ERROR_READING_BINLOG: the position asked for is no longer in the log
# The library warns of what is handled here (column names by position, a connection made again): its errors only.
logging.getLogger("pymysqlreplication").setLevel(logging.ERROR)


@dataclass(frozen=True, order=True)
class BinlogPosition:
    """A place in the server's binary log."""

    file: str
    position: int


class BinlogLostError(DatabaseError):
    """The binary log no longer holds the position asked for (purged, or the server's log was reset)."""


@dataclass
class Batch:
    """The (host, user, store) of the rows of Prosody's table written since the last batch, and where it ended."""

    rows: set[tuple[str, str, str]] = field(default_factory=set)
    end: BinlogPosition | None = None


def binlog_position(connection: Connection) -> BinlogPosition:
    """Where the server's binary log ends now; DatabaseError saying what to change if it has none a replica can
    follow (no log_bin, not row-based, or the account may not see it)."""
    try:
        ((log_bin, binlog_format, row_image),) = connection.query(
            "SELECT @@log_bin, @@binlog_format, @@binlog_row_image"
        )
        if not int(log_bin):
            raise DatabaseError(f"{connection.settings.describe()} keeps no binary log: --sql-binlog needs log_bin")
        if (str(binlog_format).upper(), str(row_image).upper()) != ("ROW", "FULL"):
            raise DatabaseError(
                f"{connection.settings.describe()} has binlog_format={binlog_format} and binlog_row_image="
                f"{row_image}: --sql-binlog needs binlog_format=ROW and binlog_row_image=FULL (the default)"
            )
        rows = _log_status(connection)
    except connection.errors as exc:
        raise DatabaseError(
            f"cannot read the binary log position of {connection.settings.describe()}: {first_line(exc)} "
            "(--sql-binlog needs BINLOG MONITOR, on MySQL REPLICATION CLIENT)"
        ) from exc
    if not rows:
        raise DatabaseError(f"{connection.settings.describe()} shows no binary log: --sql-binlog needs log_bin")
    return BinlogPosition(str(rows[0][0]), int(rows[0][1]))


def _log_status(connection: Connection) -> list[tuple[Any, ...]]:
    """SHOW MASTER STATUS, under the name MySQL 8.4 gives it where the old one is gone."""
    try:
        return connection.query("SHOW MASTER STATUS")
    except connection.errors:
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

    def __init__(self, settings: SqlSettings) -> None:
        self.settings = settings
        self._columns = (0, 1, 2)  # of host, user and store: column_positions at each start
        self._server_id = random.randint(2**30, 2**31 - 1)  # a replica's id, unlikely to be another's
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._open: list[Any] = []  # the connections the stream reader made, cut by stop()

    def batches(self, start: BinlogPosition) -> Iterator[Batch]:
        """Batches from `start`, until stop(): each ends at a commit at least BATCH_SECONDS after the batch began,
        or when the log is quiet (then it may be empty). Raises DatabaseError (BinlogLostError if `start` is no
        longer in the log), StoppedError once stopped."""
        with closing(connect(self.settings)) as connection:
            self._columns = column_positions(connection)
        reader = self._reader(start)
        try:
            yield from self._batches(reader, start)
        except self._errors() as exc:
            if self._stopped.is_set():
                raise StoppedError(f"{self.settings.describe()}: stopped") from exc
            if getattr(exc, "args", (None,))[0] == _LOG_GONE:
                raise BinlogLostError(
                    f"{self.settings.describe()}: the binary log no longer holds {reader.log_file}:{reader.log_pos} "
                    "(purged or reset): reading in full"
                ) from exc
            raise DatabaseError(f"lost the binary log of {self.settings.describe()}: {first_line(exc)}") from exc
        finally:
            reader.close()

    def stop(self) -> None:
        """Ends batches() at once, from another thread: its connections are cut and no new one is made."""
        self._stopped.set()
        with self._lock:
            for connection in self._open:
                with contextlib.suppress(Exception):  # closed meanwhile
                    connection._sock.shutdown(socket.SHUT_RDWR)

    def _batches(self, reader: Any, start: BinlogPosition) -> Iterator[Batch]:
        row_events, quiet = _event_classes()
        batch, began = Batch(end=start), time.monotonic()
        for event in reader:
            if self._stopped.is_set():
                raise StoppedError(f"{self.settings.describe()}: stopped")
            if isinstance(event, row_events):
                batch.rows.update(self._changed(event))
                continue
            batch.end = BinlogPosition(reader.log_file, reader.log_pos)
            if isinstance(event, quiet) or time.monotonic() - began >= BATCH_SECONDS:
                yield batch
                batch, began = Batch(end=batch.end), time.monotonic()

    def _changed(self, event: Any) -> Iterator[tuple[str, str, str]]:
        for row in event.rows:
            for values in (row.get("values"), row.get("before_values"), row.get("after_values")):
                if values is None:
                    continue
                cells = list(values.values())
                found = tuple(_text(cells[index]) if index < len(cells) else None for index in self._columns)
                host, user, store = found
                if host is not None and user is not None and store in queries.CHANGE_STORES:
                    yield host, user, store

    def _reader(self, start: BinlogPosition) -> Any:
        try:
            from pymysqlreplication import BinLogStreamReader  # noqa: PLC0415 (optional: the mysql extra)
        except ImportError as exc:
            raise DatabaseError("--sql-binlog needs mysql-replication: pip install 'prosody-lastlog[mysql]'") from exc
        row_events, quiet = _event_classes()
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
            only_events=[*row_events, *quiet],
            only_schemas=[self.settings.database],
            only_tables=["prosody"],
            slave_heartbeat=HEARTBEAT_SECONDS,
            pymysql_wrapper=self._connect,
            enable_logging=False,
        )

    def _connect(self, **settings: Any) -> Any:
        """The stream reader's connections, each cut by stop(); none once stopped."""
        import pymysql  # noqa: PLC0415 (present with mysql-replication)

        with self._lock:
            if self._stopped.is_set():
                raise StoppedError(f"{self.settings.describe()}: stopped")
        if "db" in settings:  # the reader's name for it, which PyMySQL deprecates
            settings["database"] = settings.pop("db")
        connection = pymysql.connect(**settings)
        with self._lock:
            self._open = [c for c in self._open if c.open] + [connection]
        return connection

    def _errors(self) -> tuple[type[BaseException], ...]:
        import pymysql  # noqa: PLC0415

        return (pymysql.Error, OSError)


def _event_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(the row events, the events a batch ends at: a commit or the server's heartbeat)."""
    from pymysqlreplication.event import HeartbeatLogEvent, XidEvent  # noqa: PLC0415
    from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent  # noqa: PLC0415

    return (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent), (HeartbeatLogEvent, XidEvent)


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        with contextlib.suppress(UnicodeDecodeError):
            return value.decode("utf-8")
    return None

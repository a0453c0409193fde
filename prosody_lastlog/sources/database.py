"""Connections to Prosody's SQL database (SQLite3, PostgreSQL, MySQL/MariaDB), read-only, with deadlines."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from prosody_lastlog.prosody.sql_settings import DRIVERS, SqlSettings
from prosody_lastlog.sources.results import DatabaseError

CONNECT_TIMEOUT_SECONDS = 5  # bound on opening a connection, the whole handshake with it
QUERY_TIMEOUT_SECONDS = 600  # bound on one query, all its rows read: a frozen server fails the count, not hangs it
CANCEL_REQUEST_SECONDS = 1.0  # bound on PostgreSQL's cancel request when stopping (a frozen server never answers)
# How long a connect given up at its deadline may take to end: MySQL's is cut, psycopg's ends at its own deadline.
_ENDING_SECONDS = 1.0
SQLITE_BUSY_SECONDS = 5.0


class NoAnswerError(DatabaseError):
    """A query got no answer within its time bound: the connection was cut (the server is frozen or overloaded)."""


class StoppedError(DatabaseError):
    """The work was cancelled (the daemon is stopping): its connection was cut, or never opened."""


class Cancellation:
    """Ends the database work done under it at once, from another thread: the connections being opened are given
    up, the queries running are cut, and no new work starts. A stopping daemon must not wait for a query (one
    waiting on a locked table waits up to the query limit) or for a server that answers a byte at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cuts: list[Callable[[], None]] = []
        self.cancelled = False

    def cancel(self) -> None:
        """Cuts all the work running, and refuses new work with StoppedError."""
        with self._lock:  # held while cutting: the work cannot end and close its connection meanwhile
            self.cancelled = True
            for cut in self._cuts:
                with contextlib.suppress(Exception):  # one that fails must not keep the others running
                    cut()

    @contextmanager
    def on_stop(self) -> Iterator[None]:
        """Cancels when a stop signal is handled in this thread while the body runs (SIGTERM during a count, raised
        as an exception that is not an Exception): unwinding alone would leave queries running on the server, e.g.
        waiting for a lock, and would wait for those of other threads."""
        try:
            yield
        except BaseException as exc:
            if not isinstance(exc, Exception | GeneratorExit):  # GeneratorExit: a stream the reader stopped reading
                self.cancel()
            raise

    @contextmanager
    def cutting(self, cut: Callable[[], None], settings: SqlSettings) -> Iterator[None]:
        """While the body runs, cancel() calls `cut`; StoppedError at once if cancel() came first."""
        with self._lock:
            if self.cancelled:
                raise StoppedError(f"{settings.describe()}: stopped")
            self._cuts.append(cut)
        try:
            yield
        finally:
            with self._lock:
                self._cuts = [other for other in self._cuts if other is not cut]


class Cursor(Protocol):
    """The part of a DB-API cursor we use."""

    def execute(self, query: str, params: Any = ..., /) -> Any: ...
    def fetchall(self) -> list[tuple[Any, ...]]: ...
    def fetchmany(self, size: int = ..., /) -> list[tuple[Any, ...]]: ...
    def close(self) -> Any: ...


@dataclass
class Connection:
    """An open read-only connection and the SQL dialect details of its engine."""

    settings: SqlSettings
    raw: Any
    placeholder: str
    errors: tuple[type[Exception], ...]  # the driver's exception classes
    socket_fd: Callable[[], int] | None = None  # a network connection's socket, cut when a query takes too long
    cancel_query: Callable[..., None] | None = None  # PostgreSQL's cancel request, where it cannot hang the daemon
    query_timeout: float = QUERY_TIMEOUT_SECONDS
    cancellation: Cancellation = field(default_factory=Cancellation)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Runs one query (written with `?` placeholders) and returns all rows; NoAnswerError past query_timeout."""
        with self._bounded(), self._cursor() as cursor:
            cursor.execute(self._adapt(sql), params)
            return cursor.fetchall()

    def stream(
        self, sql: str, params: tuple[Any, ...] = (), *, batch: int = 5000
    ) -> Generator[tuple[Any, ...], None, None]:
        """Runs one query and yields its rows without holding them all in memory; NoAnswerError if they are not
        all read within query_timeout."""
        # psycopg's server-side cursors live inside a transaction (read-only, per the session default).
        transaction = self.raw.transaction() if self.settings.driver == "PostgreSQL" else nullcontext()
        with self._bounded(), transaction, self._cursor(server_side=True) as cursor:
            cursor.execute(self._adapt(sql), params)
            while rows := cursor.fetchmany(batch):
                yield from rows

    def close(self) -> None:
        """Closes the connection."""
        self.raw.close()

    @contextmanager
    def _bounded(self) -> Iterator[None]:
        """Ends the body at once if cancelled (StoppedError); cuts a network connection if the body runs past
        query_timeout, and then raises NoAnswerError.

        A frozen server still accepts and acknowledges at the TCP level, so only the client can give up; psycopg has
        no read timeout, so the socket is shut down under the waiting driver, which then fails at once.
        """
        timed_out, stopped = threading.Event(), threading.Event()
        with self.cancellation.cutting(partial(self._stop, stopped), self.settings), self.cancellation.on_stop():
            if self.socket_fd is None:  # SQLite: a local file, no server to freeze
                with self._raising(stopped, timed_out):
                    yield
                return
            timer = threading.Timer(self.query_timeout, self._time_out, args=(timed_out,))
            timer.daemon = True
            timer.start()
            try:
                with self._raising(stopped, timed_out):
                    yield
            finally:
                timer.cancel()
                timer.join()  # gone before the caller goes on, so no query leaves a thread behind

    @contextmanager
    def _raising(self, stopped: threading.Event, timed_out: threading.Event) -> Iterator[None]:
        """The driver's error from a cut connection told as the reason it was cut."""
        try:
            yield
        except self.errors as exc:
            if stopped.is_set():
                raise StoppedError(f"{self.settings.describe()}: stopped") from exc
            if timed_out.is_set():
                raise NoAnswerError(
                    f"cannot read {self.settings.describe()}: no answer within {self.query_timeout:g} s "
                    "(server frozen or overloaded); connection closed"
                ) from exc
            raise

    def _time_out(self, timed_out: threading.Event) -> None:
        timed_out.set()
        self._cut_socket()

    def _stop(self, stopped: threading.Event) -> None:
        """Ends the query at once: the work is cancelled."""
        stopped.set()
        if self.socket_fd is None:
            self.raw.interrupt()  # SQLite stops the query at its next step
            return
        if self.cancel_query is not None:
            # Cutting the socket alone would leave the query running on the server, e.g. waiting for a lock.
            with contextlib.suppress(*self.errors):
                self.cancel_query(timeout=CANCEL_REQUEST_SECONDS)
        self._cut_socket()

    def _cut_socket(self) -> None:
        assert self.socket_fd is not None
        _shut_down(self.socket_fd, self.errors)

    def _adapt(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    @contextmanager
    def _cursor(self, *, server_side: bool = False) -> Iterator[Cursor]:
        cursor = _server_side_cursor(self) if server_side else self.raw.cursor()
        try:
            yield cursor
        except BaseException:
            self._abandon(cursor)
            raise
        cursor.close()

    def _abandon(self, cursor: Cursor) -> None:
        """Lets go of a cursor whose query failed, maybe on a lost connection, where closing it fails too."""
        if self.settings.driver == "MySQL" and self.raw._sock is None and self.raw._result is not None:
            # PyMySQL's unbuffered result would read the rest of its rows from the closed socket when collected.
            self.raw._result.unbuffered_active = False
        with contextlib.suppress(Exception):
            cursor.close()


def connect(settings: SqlSettings, cancellation: Cancellation | None = None) -> Connection:
    """Opens a read-only connection, the whole handshake within CONNECT_TIMEOUT_SECONDS; raises DatabaseError naming
    the database on any failure, StoppedError once `cancellation` is cancelled."""
    cancellation = cancellation or Cancellation()
    if settings.driver == "SQLite3":
        connection = _open_sqlite(settings)  # a local file: no handshake
    else:
        opener = _OPENERS.get(settings.driver)
        if opener is None:
            raise DatabaseError(f"unsupported SQL driver {settings.driver!r} (expected one of {', '.join(DRIVERS)})")
        connection = _open_in_time(opener, settings, cancellation)
    connection.cancellation = cancellation
    return connection


def _open_in_time(opener: _Opener, settings: SqlSettings, cancellation: Cancellation) -> Connection:
    """Opens a connection on a thread of its own, waiting for it CONNECT_TIMEOUT_SECONDS at most, or until
    cancelled. The drivers' own timeouts bound each read, not the handshake: a server that trickles its greeting a
    byte at a time (or a name of several addresses, each tried in turn) would keep them for much longer."""
    attempt = _Attempt(opener, settings)
    thread = threading.Thread(target=attempt.run, name="prosody-lastlog-connect", daemon=True)
    with cancellation.cutting(attempt.give_up, settings):
        thread.start()
        try:
            attempt.done.wait(CONNECT_TIMEOUT_SECONDS)
        except BaseException:  # raised by a signal's handler: nobody would take the connection
            attempt.give_up()
            raise
        outcome = attempt.outcome()
    if outcome is None and cancellation.cancelled:
        raise StoppedError(f"{settings.describe()}: stopped")  # the attempt ends by itself, not waited for
    thread.join(_ENDING_SECONDS)  # done, or given up at the deadline: no thread is left behind
    if isinstance(outcome, Connection):
        return outcome
    if outcome is not None:
        raise outcome
    raise DatabaseError(
        f"cannot connect to {settings.describe()}: no complete handshake within {CONNECT_TIMEOUT_SECONDS} s"
    )


class _Attempt:
    """One connection being opened on a thread of its own, which the caller may give up: the handshake is then cut
    where the driver lets us (the opener registers its socket in `cuts`), and a connection it opens anyway is
    closed at once."""

    def __init__(self, opener: _Opener, settings: SqlSettings) -> None:
        self.cuts = Cancellation()
        self.done = threading.Event()
        self._opener = opener
        self._settings = settings
        self._lock = threading.Lock()
        self._outcome: Connection | BaseException | None = None

    def run(self) -> None:
        """Opens the connection (the thread's body)."""
        outcome: Connection | BaseException
        try:
            outcome = self._opener(self._settings, self.cuts)
        except BaseException as exc:  # handed to the caller, whose thread raises it
            outcome = exc
        with self._lock:
            if not self.cuts.cancelled:
                self._outcome = outcome
                self.done.set()
                return
        if isinstance(outcome, Connection):
            outcome.close()

    def give_up(self) -> None:
        """Cuts the attempt, closes the connection it opened or opens, and wakes the caller (from any thread)."""
        with self._lock:
            self.cuts.cancel()
            outcome, self._outcome = self._outcome, None
        if isinstance(outcome, Connection):
            outcome.close()
        self.done.set()

    def outcome(self) -> Connection | BaseException | None:
        """What the attempt came to; None if nothing (yet), and then it is given up."""
        with self._lock:
            if self._outcome is None:
                self.cuts.cancel()
            return self._outcome


def _open_sqlite(settings: SqlSettings) -> Connection:
    path = Path(settings.database)
    if not path.is_file():
        raise DatabaseError(f"cannot read {settings.describe()}: no such file")
    # Read-only: we never write Prosody's data. The busy timeout retries while Prosody holds a write lock.
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        raw = sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_SECONDS, check_same_thread=False)
        raw.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise DatabaseError(
                f"cannot read {settings.describe()}: not an SQLite database, or encrypted with SQLCipher "
                "(Prosody 13 with sql.password), which is not supported"
            ) from exc
        raise DatabaseError(f"cannot read {settings.describe()}: {exc}") from exc
    return Connection(settings, raw, "?", (sqlite3.Error,))


def _open_postgres(settings: SqlSettings, _: Cancellation) -> Connection:
    """psycopg bounds the handshake with each address of the host by connect_timeout; there is no socket to cut
    meanwhile."""
    psycopg = _import_driver("psycopg", "postgres", settings)
    try:
        raw = psycopg.connect(
            host=settings.host or "localhost",
            port=settings.port or 5432,
            dbname=settings.database,
            user=settings.username,
            password=settings.password,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            autocommit=True,
            # Read-only, and no JIT, which costs more than it saves on our one query.
            options="-c default_transaction_read_only=on -c jit=off",
        )
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to {settings.describe()}: {first_line(exc)}") from exc
    # The cancel request waits for the server without blocking the interpreter only with libpq 17 on: before, one
    # sent to a frozen server would hang the whole daemon, so the query is then only cut.
    cancel_query = raw.cancel_safe if psycopg.capabilities.has_cancel_safe() else None
    return Connection(settings, raw, "%s", (psycopg.Error,), raw.fileno, cancel_query)


def _open_mysql(settings: SqlSettings, cuts: Cancellation) -> Connection:
    """PyMySQL's timeouts bound each read and write: the handshake runs on a socket of ours, which `cuts` can cut."""
    pymysql = _import_driver("pymysql", "mysql", settings)
    raw = pymysql.Connection(
        host=settings.host or "localhost",
        port=settings.port or 3306,
        user=settings.username,
        password=settings.password or "",
        database=settings.database,
        read_timeout=CONNECT_TIMEOUT_SECONDS,
        write_timeout=CONNECT_TIMEOUT_SECONDS,
        charset="utf8mb4",
        autocommit=True,
        defer_connect=True,
    )
    try:
        sock = socket.create_connection((raw.host, raw.port), CONNECT_TIMEOUT_SECONDS)
    except OSError as exc:
        raise DatabaseError(f"cannot connect to {settings.describe()}: {exc.strerror or exc}") from exc
    try:
        with cuts.cutting(partial(_shut_down, sock.fileno, (pymysql.Error,)), settings):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            raw.connect(sock)
            with raw.cursor() as cursor:
                # Standard identifier quoting, so one query text serves every engine.
                cursor.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')")
                cursor.execute("SET SESSION TRANSACTION READ ONLY")
        # Counting may take a while on a large server; PyMySQL applies these before every read and write.
        raw._read_timeout = raw._write_timeout = QUERY_TIMEOUT_SECONDS
    except BaseException as exc:
        if raw.open:
            raw.close()
        sock.close()
        if isinstance(exc, pymysql.Error):
            raise DatabaseError(f"cannot connect to {settings.describe()}: {first_line(exc)}") from exc
        raise
    return Connection(settings, raw, "%s", (pymysql.Error,), raw._sock.fileno)


def _server_side_cursor(connection: Connection) -> Cursor:
    if connection.settings.driver == "PostgreSQL":
        return connection.raw.cursor(name=f"prosody_lastlog_{time.monotonic_ns()}")  # type: ignore[no-any-return]
    if connection.settings.driver == "MySQL":
        import pymysql.cursors  # noqa: PLC0415 (optional driver, present once connected)

        return connection.raw.cursor(pymysql.cursors.SSCursor)  # type: ignore[no-any-return]
    return connection.raw.cursor()  # type: ignore[no-any-return]


def _import_driver(module: str, extra: str, settings: SqlSettings) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise DatabaseError(
            f"{settings.driver} support is not installed: pip install 'prosody-lastlog[{extra}]'"
        ) from exc


def _shut_down(socket_fd: Callable[[], int], errors: tuple[type[Exception], ...]) -> None:
    """Shuts a driver's socket down under it, from another thread: its wait ends at once, in failure."""
    closed_meanwhile: tuple[type[Exception], ...] = (OSError, ValueError, *errors)
    with contextlib.suppress(*closed_meanwhile), socket.socket(fileno=os.dup(socket_fd())) as sock:
        sock.shutdown(socket.SHUT_RDWR)  # shared with the driver's descriptor


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: drivers add context lines that may quote the query."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_Opener = Callable[[SqlSettings, Cancellation], Connection]
_OPENERS: dict[str, _Opener] = {
    "PostgreSQL": _open_postgres,
    "MySQL": _open_mysql,
}

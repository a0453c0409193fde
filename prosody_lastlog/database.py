"""Connections to Prosody's SQL database (SQLite3, PostgreSQL, MySQL/MariaDB), read-only, and SQL URLs."""

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
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

DRIVERS = ("SQLite3", "PostgreSQL", "MySQL")  # Prosody's names for them
CONNECT_TIMEOUT_SECONDS = 5
QUERY_TIMEOUT_SECONDS = 600  # bound on one query, all its rows read: a frozen server fails the count, not hangs it
SQLITE_BUSY_SECONDS = 5.0
_URL_SCHEMES = {
    "sqlite": "SQLite3",
    "postgresql": "PostgreSQL",
    "postgres": "PostgreSQL",
    "mysql": "MySQL",
    "mariadb": "MySQL",
}


class DatabaseError(Exception):
    """A database could not be reached or read; the message names it (never its password)."""


class NoAnswerError(DatabaseError):
    """A query got no answer within its time bound: the connection was cut (the server is frozen or overloaded)."""


class Cursor(Protocol):
    """The part of a DB-API cursor we use."""

    def execute(self, query: str, params: Any = ..., /) -> Any: ...
    def fetchall(self) -> list[tuple[Any, ...]]: ...
    def fetchmany(self, size: int = ..., /) -> list[tuple[Any, ...]]: ...
    def close(self) -> Any: ...


@dataclass(frozen=True)
class SqlSettings:
    """Where Prosody's `prosody` table lives, as in its `sql = {...}` option."""

    driver: str  # "SQLite3" | "PostgreSQL" | "MySQL"
    database: str  # for SQLite3: the file's path
    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """A name for logs and errors, without the password."""
        if self.driver == "SQLite3":
            return f"SQLite3 {self.database}"
        user = f"{self.username}@" if self.username else ""
        port = f":{self.port}" if self.port else ""
        return f"{self.driver} {user}{self.host or 'localhost'}{port}/{self.database}"


def parse_sql_url(url: str, *, password: str | None = None) -> SqlSettings:
    """Reads `sqlite:///path`, `postgresql://user[:pw]@host:port/db` or `mysql://user@host:port/db`.

    `password` (from --sql-password-file) wins over one written in the URL.
    """
    parts = urlsplit(url)
    driver = _URL_SCHEMES.get(parts.scheme.lower())
    if driver is None:
        raise ValueError(f"unsupported SQL URL scheme {parts.scheme!r}: use sqlite, postgresql or mysql")
    if driver == "SQLite3":
        if not parts.path.startswith("/"):
            raise ValueError("an sqlite URL needs an absolute file path: sqlite:///var/lib/prosody/prosody.sqlite")
        path = "/" + unquote(parts.path).lstrip("/")  # sqlite:///abs and sqlite:////abs both mean /abs
        if path == "/":
            raise ValueError("an sqlite URL needs a file path: sqlite:///var/lib/prosody/prosody.sqlite")
        return SqlSettings(driver, path)
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ValueError(f"the {parts.scheme} URL names no database: {parts.scheme}://user@host:port/prosody")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid port in the {parts.scheme} URL") from exc
    return SqlSettings(
        driver,
        database,
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=password if password is not None else (unquote(parts.password) if parts.password else None),
    )


@dataclass
class Connection:
    """An open read-only connection and the SQL dialect details of its engine."""

    settings: SqlSettings
    raw: Any
    placeholder: str
    errors: tuple[type[Exception], ...]  # the driver's exception classes
    socket_fd: Callable[[], int] | None = None  # a network connection's socket, cut when a query takes too long
    query_timeout: float = QUERY_TIMEOUT_SECONDS

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
        """Cuts the connection if the body runs past query_timeout, and then raises NoAnswerError.

        A frozen server still accepts and acknowledges at the TCP level, so only the client can give up; psycopg has
        no read timeout, so the socket is shut down under the waiting driver, which then fails at once.
        """
        if self.socket_fd is None:
            yield
            return
        cut = threading.Event()
        timer = threading.Timer(self.query_timeout, self._cut, args=(cut,))
        timer.daemon = True
        timer.start()
        try:
            yield
        except self.errors as exc:
            if cut.is_set():
                raise NoAnswerError(
                    f"cannot read {self.settings.describe()}: no answer within {self.query_timeout:g} s "
                    "(server frozen or overloaded); connection closed"
                ) from exc
            raise
        finally:
            timer.cancel()
            timer.join()  # gone before the caller goes on, so no query leaves a thread behind

    def _cut(self, cut: threading.Event) -> None:
        cut.set()
        assert self.socket_fd is not None
        closed_meanwhile: tuple[type[Exception], ...] = (OSError, ValueError, *self.errors)
        with contextlib.suppress(*closed_meanwhile), socket.socket(fileno=os.dup(self.socket_fd())) as sock:
            sock.shutdown(socket.SHUT_RDWR)  # shared with the driver's descriptor: its wait ends

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


def connect(settings: SqlSettings) -> Connection:
    """Opens a read-only connection; raises DatabaseError naming the database on any failure."""
    opener = _OPENERS.get(settings.driver)
    if opener is None:
        raise DatabaseError(f"unsupported SQL driver {settings.driver!r} (expected one of {', '.join(DRIVERS)})")
    return opener(settings)


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


def _open_postgres(settings: SqlSettings) -> Connection:
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
    return Connection(settings, raw, "%s", (psycopg.Error,), raw.fileno)


def _open_mysql(settings: SqlSettings) -> Connection:
    pymysql = _import_driver("pymysql", "mysql", settings)
    try:
        raw = pymysql.connect(
            host=settings.host or "localhost",
            port=settings.port or 3306,
            user=settings.username,
            password=settings.password or "",
            database=settings.database,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            # connect_timeout covers the TCP connect only: without these, a server that accepts but never
            # answers (frozen) would hang the handshake for ever.
            read_timeout=CONNECT_TIMEOUT_SECONDS,
            write_timeout=CONNECT_TIMEOUT_SECONDS,
            charset="utf8mb4",
            autocommit=True,
        )
        with raw.cursor() as cursor:
            # Standard identifier quoting, so one query text serves every engine.
            cursor.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')")
            cursor.execute("SET SESSION TRANSACTION READ ONLY")
        # Counting may take a while on a large server; PyMySQL applies these before every read and write.
        raw._read_timeout = raw._write_timeout = QUERY_TIMEOUT_SECONDS
    except pymysql.Error as exc:
        raise DatabaseError(f"cannot connect to {settings.describe()}: {first_line(exc)}") from exc
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


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: drivers add context lines that may quote the query."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_OPENERS: dict[str, Callable[[SqlSettings], Connection]] = {
    "SQLite3": _open_sqlite,
    "PostgreSQL": _open_postgres,
    "MySQL": _open_mysql,
}

"""Connections to Prosody's SQL database (SQLite3, PostgreSQL, MySQL/MariaDB), read-only, and SQL URLs."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

DRIVERS = ("SQLite3", "PostgreSQL", "MySQL")  # Prosody's names for them
CONNECT_TIMEOUT_SECONDS = 5
QUERY_TIMEOUT_SECONDS = 600  # MariaDB/MySQL: a silent server (e.g. frozen) fails the count instead of hanging it
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

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Runs one query (written with `?` placeholders) and returns all rows."""
        with self._cursor() as cursor:
            cursor.execute(self._adapt(sql), params)
            return cursor.fetchall()

    def stream(self, sql: str, params: tuple[Any, ...] = (), *, batch: int = 5000) -> Iterator[tuple[Any, ...]]:
        """Runs one query and yields its rows without holding them all in memory."""
        # psycopg's server-side cursors live inside a transaction (read-only, per the session default).
        transaction = self.raw.transaction() if self.settings.driver == "PostgreSQL" else nullcontext()
        with transaction, self._cursor(server_side=True) as cursor:
            cursor.execute(self._adapt(sql), params)
            while rows := cursor.fetchmany(batch):
                yield from rows

    def close(self) -> None:
        """Closes the connection."""
        self.raw.close()

    def _adapt(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    @contextmanager
    def _cursor(self, *, server_side: bool = False) -> Iterator[Cursor]:
        cursor = _server_side_cursor(self) if server_side else self.raw.cursor()
        try:
            yield cursor
        finally:
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
    return Connection(settings, raw, "%s", (psycopg.Error,))


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
    return Connection(settings, raw, "%s", (pymysql.Error,))


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

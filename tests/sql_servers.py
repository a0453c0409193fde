"""Throwaway databases on the real local PostgreSQL and MariaDB/MySQL servers, for tests.

    with fresh_postgres_database() as server:
        generate_case(scenario, tmp_path, sql=server.prosody_sql())
        reader = SqlReader(server.url())

Each context manager creates a uniquely named, empty database on 127.0.0.1 and drops it
afterwards, also when the body raises. A server that cannot be reached is an error, not a
skip: CI provides both servers, and a test that silently skips tests nothing.

Connection settings default to the CI services (PostgreSQL: role ``postgres``, trust auth,
port 5432; MariaDB: ``root`` without password, port 3306) and can be changed with
TEST_POSTGRES_USER / TEST_POSTGRES_PASSWORD / TEST_POSTGRES_PORT and
TEST_MYSQL_USER / TEST_MYSQL_PASSWORD / TEST_MYSQL_PORT. The host is always 127.0.0.1.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import psycopg
import pymysql
from psycopg import sql

HOST = "127.0.0.1"
CONNECT_TIMEOUT = 5  # seconds
URL_SCHEMES = {"PostgreSQL": "postgresql", "MySQL": "mysql"}


class SqlServerError(RuntimeError):
    """A test database server is unreachable, or a database could not be created or dropped."""


@dataclass(frozen=True)
class SqlServer:
    """One throwaway database on a local server; ``driver`` uses Prosody's names."""

    driver: str  # "PostgreSQL" or "MySQL"
    host: str
    port: int
    database: str
    username: str
    password: str = ""

    def prosody_sql(self) -> dict[str, Any]:
        """Prosody's ``sql = { ... }`` table for this database (for make_fixtures.generate_case)."""
        return {
            "driver": self.driver,
            "database": self.database,
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
        }

    def url(self) -> str:
        """``postgresql://user@127.0.0.1:5432/db`` or ``mysql://root@127.0.0.1:3306/db`` (password if set)."""
        userinfo = quote(self.username, safe="")
        if self.password:
            userinfo += ":" + quote(self.password, safe="")
        return f"{URL_SCHEMES[self.driver]}://{userinfo}@{self.host}:{self.port}/{quote(self.database, safe='')}"


def _setting(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _port(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise SqlServerError(f"{name}={value!r} is not a port number") from None


def unique_name() -> str:
    """A database name no other test run uses: lower case, no quoting needed, under 64 chars."""
    return f"prosody_lastlog_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- PostgreSQL


def _postgres_admin(server: SqlServer) -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection to the maintenance database (CREATE/DROP DATABASE need one)."""
    try:
        return psycopg.connect(
            host=server.host,
            port=server.port,
            user=server.username,
            password=server.password or None,
            dbname="postgres",
            connect_timeout=CONNECT_TIMEOUT,
            autocommit=True,
        )
    except psycopg.Error as err:
        raise SqlServerError(
            f"PostgreSQL is not reachable at {server.host}:{server.port} as role {server.username!r}. "
            "These tests need a running PostgreSQL server (CI provides one); set TEST_POSTGRES_USER / "
            f"TEST_POSTGRES_PASSWORD / TEST_POSTGRES_PORT if yours differs.\n{err}"
        ) from err


def _drop_postgres(server: SqlServer) -> None:
    name = sql.Identifier(server.database)
    with _postgres_admin(server) as conn:
        try:  # FORCE (PostgreSQL >= 13) ends connections a failed test may have left open
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        except psycopg.errors.SyntaxError:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(name))


@contextmanager
def fresh_postgres_database() -> Iterator[SqlServer]:
    """Create an empty UTF-8 database on the local PostgreSQL, yield it, drop it afterwards."""
    server = SqlServer(
        driver="PostgreSQL",
        host=HOST,
        port=_port("TEST_POSTGRES_PORT", 5432),
        database=unique_name(),
        username=_setting("TEST_POSTGRES_USER", "postgres"),
        password=_setting("TEST_POSTGRES_PASSWORD", ""),
    )
    with _postgres_admin(server) as conn:
        try:
            # template0 + C locale: UTF-8 whatever the cluster's default encoding and locale are.
            conn.execute(
                sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").format(
                    sql.Identifier(server.database)
                )
            )
        except psycopg.Error as err:
            raise SqlServerError(f"cannot create PostgreSQL database {server.database!r}: {err}") from err
    try:
        yield server
    finally:
        _drop_postgres(server)


# --------------------------------------------------------------------------- MariaDB / MySQL


def _mysql_admin(server: SqlServer) -> Any:
    """An autocommit pymysql connection without a default database."""
    try:
        return pymysql.connect(
            host=server.host,
            port=server.port,
            user=server.username,
            password=server.password,
            connect_timeout=CONNECT_TIMEOUT,
            autocommit=True,
            charset="utf8mb4",
        )
    except pymysql.MySQLError as err:
        raise SqlServerError(
            f"MariaDB/MySQL is not reachable at {server.host}:{server.port} as user {server.username!r}. "
            "These tests need a running MariaDB or MySQL server (CI provides one); set TEST_MYSQL_USER / "
            f"TEST_MYSQL_PASSWORD / TEST_MYSQL_PORT if yours differs.\n{err}"
        ) from err


def _mysql_execute(server: SqlServer, statement: str) -> None:
    conn = _mysql_admin(server)
    try:
        with conn.cursor() as cursor:
            cursor.execute(statement)
    finally:
        conn.close()


@contextmanager
def fresh_mysql_database() -> Iterator[SqlServer]:
    """Create an empty utf8mb4 database on the local MariaDB/MySQL, yield it, drop it afterwards."""
    server = SqlServer(
        driver="MySQL",
        host=HOST,
        port=_port("TEST_MYSQL_PORT", 3306),
        database=unique_name(),
        username=_setting("TEST_MYSQL_USER", "root"),
        password=_setting("TEST_MYSQL_PASSWORD", ""),
    )
    # unique_name() is [a-z0-9_] only, so backtick quoting is enough.
    try:
        _mysql_execute(server, f"CREATE DATABASE `{server.database}` CHARACTER SET utf8mb4")
    except pymysql.MySQLError as err:
        raise SqlServerError(f"cannot create MySQL database {server.database!r}: {err}") from err
    try:
        yield server
    finally:
        _mysql_execute(server, f"DROP DATABASE IF EXISTS `{server.database}`")

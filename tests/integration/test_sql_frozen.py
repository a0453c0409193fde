"""A database server frozen in the middle of a query (SIGSTOP: TCP still accepts and acknowledges, nothing answers)
fails that query within its time bound instead of hanging the refresh for ever: PostgreSQL and MariaDB, each a
private server (tests/integration/private_sql.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager

import pytest

from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.prosody.sql_settings import SqlSettings, parse_sql_url
from prosody_lastlog.sources import database
from prosody_lastlog.sources import sql as sql_reader
from prosody_lastlog.sources.database import Cancellation, Connection, NoAnswerError
from tests.integration.private_sql import PrivateServer, private_mariadb, private_postgres
from tests.integration.test_sql_restart import DATABASE, load_fixture

pytestmark = pytest.mark.integration

QUERY_TIMEOUT = 1.0
SERVERS: dict[str, Callable[[], AbstractContextManager[PrivateServer]]] = {
    "postgresql": private_postgres,
    "mariadb": private_mariadb,
}


@pytest.fixture(params=sorted(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[PrivateServer]:
    """A private server holding the sample case's rows."""
    with SERVERS[request.param]() as running:
        load_fixture(running)
        yield running


# More rows than socket buffers hold, so the reader must still be fetching when the server freezes.
MANY_ROWS = {
    "PostgreSQL": "SELECT repeat('x', 1000) FROM generate_series(1, 100000)",
    "MySQL": "SELECT REPEAT('x', 1000) FROM seq_1_to_100000",  # MariaDB's Sequence engine
}


@contextmanager
def frozen(server: PrivateServer) -> Iterator[None]:
    """The server and its backends stopped, continued afterwards whatever happens."""
    server.freeze()
    try:
        yield
    finally:
        server.thaw()


def settings_of(server: PrivateServer) -> SqlSettings:
    return parse_sql_url(server.url(DATABASE))


def quick(connection: Connection) -> Connection:
    connection.query_timeout = QUERY_TIMEOUT
    return connection


def test_a_query_to_a_frozen_server_fails_within_its_bound(server: PrivateServer) -> None:
    settings = settings_of(server)
    with closing(quick(database.connect(settings))) as connection:
        assert connection.query('SELECT count(*) FROM "prosody"')[0][0] > 0
        with frozen(server):
            started = time.monotonic()
            with pytest.raises(NoAnswerError, match=f"cannot read {settings.describe()}: no answer within 1 s"):
                connection.query('SELECT count(*) FROM "prosody"')
            assert QUERY_TIMEOUT <= time.monotonic() - started < QUERY_TIMEOUT + 2
    with closing(database.connect(settings)) as again:  # thawed: a new connection reads as before
        assert again.query('SELECT count(*) FROM "prosody"')[0][0] > 0


def test_a_stream_from_a_frozen_server_fails_within_its_bound(server: PrivateServer) -> None:
    with closing(quick(database.connect(settings_of(server)))) as connection:
        rows = connection.stream(MANY_ROWS[server.driver], batch=100)
        assert next(rows)
        with frozen(server):
            started = time.monotonic()
            with pytest.raises(NoAnswerError):
                list(rows)
            assert time.monotonic() - started < QUERY_TIMEOUT + 2


def test_a_count_frozen_in_its_aggregate_fails_at_once_instead_of_streaming(
    server: PrivateServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader's own connection is made; the server freezes once the aggregate's connection is open. Streaming
    instead, as for an aggregate the database refuses, would wait on the same silent server again."""
    opened: list[Connection] = []

    def connect_then_freeze_on_the_second(settings: SqlSettings, cancellation: Cancellation) -> Connection:
        connection = quick(database.connect(settings, cancellation))
        opened.append(connection)
        if len(opened) == 2:
            server.freeze()
        return connection

    monkeypatch.setattr(sql_reader, "connect", connect_then_freeze_on_the_second)
    reader = sql_reader.SqlReader(settings_of(server), method="pushdown", parts=1)
    started = time.monotonic()
    try:
        with pytest.raises(NoAnswerError):
            reader.count(now=int(time.time()), windows=DEFAULT_WINDOWS)
    finally:
        server.thaw()
    assert len(opened) == 2
    assert time.monotonic() - started < QUERY_TIMEOUT + 3

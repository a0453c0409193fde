"""`serve --sql-binlog`: MariaDB's row-based binary log tells which accounts changed, deletions too, on a private
MariaDB with log_bin (the machine's shared server has none).

The incremental read by the log gives what a new full read gives after any sequence of the writes Prosody makes,
deleted accounts and rows included; the privileges docs/sql.md lists are enough; a server without a log, an
account without the privileges and a log that lost its place each get a clear error; in `serve`, a change shows
within a second or two, a server that stops and starts is followed again, and the looks by time take over
meanwhile."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prosody_lastlog.core.counting import HostCounts
from prosody_lastlog.core.model import Store
from prosody_lastlog.core.rules import InstalledProsody, Policy
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon.binlog_follow import binlog_sources
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.prosody.sql_settings import SqlSettings
from prosody_lastlog.sources import sql_binlog
from prosody_lastlog.sources.database import connect
from prosody_lastlog.sources.plan import Plan, SourceOptions, plan_sources
from prosody_lastlog.sources.results import DatabaseError
from prosody_lastlog.sources.sql import SqlReader
from prosody_lastlog.sources.sql_binlog import (
    BinlogFollower,
    BinlogLostError,
    BinlogPosition,
    BinlogSetupError,
    binlog_position,
)
from tests import prosody_table
from tests.integration.private_sql import PrivateServer, private_mariadb
from tests.test_daemon import wait_for
from tests.test_sql_changes import (
    Table,
    apply_found,
    apply_write,
    first_rows,
    state_of,
    three_accounts,
    timestamp_value,
    write_all,
)
from tests.test_sql_reader import DAY, NOW

DATABASE = "prosody"
READER = "lastlog_reader"  # an account with only the privileges docs/sql.md lists


@pytest.fixture(scope="module")
def binlog_server() -> Iterator[PrivateServer]:
    with private_mariadb(binlog=True) as server:
        server.create_database(DATABASE)
        connection = server.connect(DATABASE, autocommit=True)
        prosody_table.create(connection, "MySQL")
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE USER '{READER}'@'127.0.0.1'")
            cursor.execute(f"GRANT SELECT ON `{DATABASE}`.`prosody` TO '{READER}'@'127.0.0.1'")
            cursor.execute(f"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{READER}'@'127.0.0.1'")
        connection.close()
        yield server


@pytest.fixture
def table(binlog_server: PrivateServer) -> Iterator[Any]:
    connection = binlog_server.connect(DATABASE)
    prosody_table.replace_rows(connection, "MySQL", [])
    yield connection
    with contextlib.suppress(pymysql.Error):  # a test may have stopped the server under it
        connection.close()


def reader_settings(server: PrivateServer) -> SqlSettings:
    """The least-privileged account's settings."""
    return SqlSettings("MySQL", DATABASE, host="127.0.0.1", port=server.port, username=READER)


def rows_until(settings_: SqlSettings, start: BinlogPosition, end: BinlogPosition) -> set[tuple[str, str, str]]:
    """Every changed (host, user, store) the log holds from `start` to `end`."""
    found: set[tuple[str, str, str]] = set()
    for batch in BinlogFollower(settings_).batches(start):
        found |= batch.rows
        if batch.end is not None and batch.end >= end:
            return found
    raise AssertionError("the log ended")


def log_end(settings_: SqlSettings) -> BinlogPosition:
    connection = connect(settings_)
    try:
        return binlog_position(connection)
    finally:
        connection.close()


# --------------------------------------------------------------------------- the read by the log is exact


writes_and_deletions = st.lists(
    st.tuples(
        st.sampled_from(["activity", "create", "disable", "enable", "delete account", "forget"]),
        st.sampled_from(("a.example", "b.example")),
        st.sampled_from(("alice", "bob", "carol", "dave", "erin")),
        st.sampled_from(["login", "logout"]),
    ),
    max_size=12,
)


def apply_any(table: Table, write: tuple[str, str, str, str], store: Store, stamp: int, thirteen: bool) -> bool:
    """apply_write, and the deletions Prosody makes: an account deleted (every row of the user), or the user's
    activity rows gone (mod_lastlog2's data removed); False if nothing was written."""
    what, host, user, _ = write
    cursor = table.connection.cursor()
    if what == "delete account":
        cursor.execute("DELETE FROM `prosody` WHERE `host` = %s AND `user` = %s", (host, user))
    elif what == "forget":
        cursor.execute(
            "DELETE FROM `prosody` WHERE `host` = %s AND `user` = %s AND `store` = %s", (host, user, store.value)
        )
    else:
        return apply_write(table, write, store, stamp, thirteen)
    table.connection.commit()
    return bool(cursor.rowcount)  # a user with no such rows: nothing written


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), thirteen=st.booleans(), changes=writes_and_deletions)
def test_incremental_by_the_log_equals_a_full_read(
    binlog_server: PrivateServer, table: Any, data: st.DataObject, thirteen: bool, changes: list[Any]
) -> None:
    settings_ = reader_settings(binlog_server)
    prosody_table.replace_rows(table, "MySQL", data.draw(first_rows(thirteen)))
    reader = SqlReader(settings_, policy=Policy(InstalledProsody("13.0.1" if thirteen else "0.12.3")), method="stream")
    first, mark = reader.snapshot(now=NOW, binlog=True)
    assert mark.binlog is not None
    records, registered, choices = state_of(first)
    assert first.server is not None
    writer = Table(settings_, table)
    written = write_all(changes, choices, partial(apply_any, writer), thirteen)
    changed = rows_until(settings_, mark.binlog, log_end(settings_))
    found = reader.read_accounts(changed, choices, first.server, mark, now=NOW + 1 + len(changes))
    assert written <= {(host, user) for host, user, _ in found.records}  # every account written to is found
    apply_found(found, records, registered)
    again, _ = reader.snapshot(now=NOW + 1 + len(changes))
    expected, expected_registered, expected_choices = state_of(again)
    if expected_choices != choices:  # every row of a host's store deleted: how it is counted may change
        return
    assert records == expected  # deletions too: the log tells of them
    assert registered == expected_registered
    assert found.mark.value == NOW + 1 + len(changes)  # a look by time would take up from here


# --------------------------------------------------------------------------- errors name what to change


def test_a_server_without_a_binary_log_is_refused_with_what_to_change(mysql_db: tuple[SqlSettings, Any]) -> None:
    settings_, _ = mysql_db  # the shared server: log_bin is off
    with pytest.raises(DatabaseError, match="keeps no binary log: --sql-binlog needs log_bin"):
        log_end(settings_)


def test_an_account_without_the_privileges_is_told_which(binlog_server: PrivateServer) -> None:
    connection = binlog_server.connect(autocommit=True)
    with connection.cursor() as cursor:
        cursor.execute("CREATE USER IF NOT EXISTS 'select_only'@'127.0.0.1'")
        cursor.execute(f"GRANT SELECT ON `{DATABASE}`.`prosody` TO 'select_only'@'127.0.0.1'")
    connection.close()
    settings_ = SqlSettings("MySQL", DATABASE, host="127.0.0.1", port=binlog_server.port, username="select_only")
    with pytest.raises(BinlogSetupError, match="BINLOG MONITOR"):
        log_end(settings_)
    start = log_end(reader_settings(binlog_server))
    with pytest.raises(BinlogSetupError, match=r"MySQL select_only@.* does not let .*REPLICATION SLAVE"):
        next(iter(BinlogFollower(settings_).batches(start)))


def test_a_compressed_log_is_refused(binlog_server: PrivateServer) -> None:
    """The library does not read MariaDB's compressed events: they would be skipped without a word."""
    root = binlog_server.connect(autocommit=True)
    with root.cursor() as cursor:
        cursor.execute("SET GLOBAL log_bin_compress = ON")
        try:
            with pytest.raises(BinlogSetupError, match=r"log_bin_compress=ON: .* an uncompressed log"):
                log_end(reader_settings(binlog_server))
        finally:
            cursor.execute("SET GLOBAL log_bin_compress = OFF")
    root.close()


def test_serve_refuses_to_start_on_a_server_without_a_log(mysql_db: tuple[SqlSettings, Any]) -> None:
    settings_, _ = mysql_db  # the shared server: log_bin is off
    url = f"mysql://{settings_.username}@{settings_.host}:{settings_.port}/{settings_.database}"
    options = ServeOptions(port=0, sql_binlog=True)
    daemon = Daemon(plan_sources(SourceOptions(sql_url=url), environ={}), windows=DEFAULT_WINDOWS, options=options)
    with pytest.raises(BinlogSetupError, match="keeps no binary log: --sql-binlog needs log_bin"):
        daemon.start()


def test_a_place_the_log_no_longer_holds_is_told(binlog_server: PrivateServer) -> None:
    with pytest.raises(BinlogLostError, match=r"no longer holds binlog\.999999:4 \(purged or reset\)"):
        next(iter(BinlogFollower(reader_settings(binlog_server)).batches(BinlogPosition("binlog.999999", 4))))


def test_only_mariadb_and_mysql_sources_can_be_followed(postgres_db: tuple[SqlSettings, Any]) -> None:
    settings_, _ = postgres_db
    url = f"postgresql://{settings_.username}@{settings_.host}:{settings_.port}/{settings_.database}"
    plan = plan_sources(SourceOptions(sql_url=url), environ={})
    with pytest.raises(ValueError, match=r"--sql-binlog needs MariaDB or MySQL; PostgreSQL .* has no binary log"):
        binlog_sources(plan, True)
    assert binlog_sources(plan, False) == []
    with pytest.raises(ValueError, match="there is none"):
        binlog_sources(Plan(sources=[]), True)


# --------------------------------------------------------------------------- serve --sql-binlog


def sample(daemon: Daemon, name: str, **labels: str) -> float | None:
    for family in daemon.registry.collect():
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return None


def test_serve_follows_the_log_within_seconds_and_through_a_restart(binlog_server: PrivateServer, table: Any) -> None:
    """A login, a new account and a deleted account show within 2 s with no look (the interval is an hour); the
    server stopping makes the looks by time take over, and its return the log again, nothing missed."""
    prosody_table.replace_rows(table, "MySQL", three_accounts(int(time.time())))
    writer = Table(reader_settings(binlog_server), table)
    url = f"mysql://{READER}@127.0.0.1:{binlog_server.port}/{DATABASE}"
    plan = plan_sources(SourceOptions(sql_url=url), environ={})
    options = ServeOptions(port=0, sql_interval_seconds=3600, resync_seconds=7200, sql_binlog=True)
    daemon = Daemon(plan, windows=DEFAULT_WINDOWS, options=options)
    daemon.start()
    [source] = [s.name for s in daemon.refresher.sources]

    def counts() -> HostCounts:
        return daemon.live.counts(now=time.time())["a.example"]

    def log_in(user: str) -> None:
        writer.set_key(("a.example", user, "lastlog2", *timestamp_value("lastlog2", "login", int(time.time()))))

    try:
        assert (counts().active["1d"], counts().active["30d"], counts().registered_accounts) == (0, 3, 3)
        wait_for(lambda: sample(daemon, "prosody_lastlog_sql_changes_info", source=source, found="binlog") == 1, 5)
        full_read = daemon.live.health()[0].last_full_read
        log_in("alice")
        assert wait_for(lambda: counts().active["1d"] == 1, 2.0) < 2.0
        writer.set_key(("a.example", "dave", "accounts", "password", "string", "a-password"))  # no time in it
        wait_for(lambda: counts().registered_accounts == 4, 2.0)
        cursor = table.cursor()
        cursor.execute("DELETE FROM `prosody` WHERE `user` = 'carol' AND `store` = 'lastlog2'")  # her account stays
        table.commit()
        wait_for(lambda: counts().active["30d"] == 2 and counts().never_active == 2, 2.0)
        assert daemon.live.health()[0].last_full_read == full_read  # all of it by the log
        binlog_server.stop()
        wait_for(lambda: sample(daemon, "prosody_lastlog_sql_changes_info", source=source, found="by_time") == 1, 15)
        assert counts().active["1d"] == 1  # what was known stays
        binlog_server.start()
        again = binlog_server.connect(DATABASE)
        writer = Table(reader_settings(binlog_server), again)
        log_in("bob")
        wait_for(lambda: sample(daemon, "prosody_lastlog_sql_changes_info", source=source, found="binlog") == 1, 15)
        wait_for(lambda: counts().active["1d"] == 2, 2.0)
        assert daemon.live.health()[0].up
    finally:
        stopping = time.monotonic()
        daemon.stop()
        assert time.monotonic() - stopping < 3.0


@pytest.mark.parametrize("reconnects", [True, False], ids=["reconnecting", "connected"])
def test_serve_reads_in_full_when_the_log_lost_its_place(
    binlog_server: PrivateServer, table: Any, reconnects: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RESET MASTER empties the log under the follower: the source is read in full and followed from there,
    whether the follower connects again (the server says the place is gone) or stays connected (the server's own
    position, looked at every CHECK_SECONDS, is before ours)."""
    monkeypatch.setattr(sql_binlog, "CHECK_SECONDS", 1.0)
    now = int(time.time())
    prosody_table.replace_rows(
        table, "MySQL", [("a.example", "alice", "lastlog2", *timestamp_value("lastlog2", "login", now - DAY * 3))]
    )
    writer = Table(reader_settings(binlog_server), table)
    url = f"mysql://{READER}@127.0.0.1:{binlog_server.port}/{DATABASE}"
    options = ServeOptions(port=0, sql_interval_seconds=0.5, resync_seconds=7200, sql_binlog=True)
    daemon = Daemon(plan_sources(SourceOptions(sql_url=url), environ={}), windows=DEFAULT_WINDOWS, options=options)
    daemon.start()
    try:
        [source] = [s.name for s in daemon.refresher.sources]
        wait_for(lambda: sample(daemon, "prosody_lastlog_sql_changes_info", source=source, found="binlog") == 1, 5)
        full_read = daemon.live.health()[0].last_full_read
        root = binlog_server.connect(autocommit=True)
        with root.cursor() as cursor:
            cursor.execute("RESET MASTER")
        root.close()
        if reconnects:
            kill_replica_connections(binlog_server)  # it takes up again from its place, which is gone
        wait_for(lambda: daemon.live.health()[0].last_full_read != full_read, 20)
        wait_for(lambda: sample(daemon, "prosody_lastlog_sql_changes_info", source=source, found="binlog") == 1, 15)
        writer.set_key(("a.example", "alice", "lastlog2", *timestamp_value("lastlog2", "login", int(time.time()))))
        wait_for(lambda: daemon.live.counts(now=time.time())["a.example"].active["1d"] == 1, 3.0)
    finally:
        daemon.stop()


def kill_replica_connections(server: PrivateServer) -> None:
    """Ends the binary log dump connections (as a server restart would), so the follower takes up again."""
    root = server.connect(autocommit=True)
    with root.cursor() as cursor:
        cursor.execute("SELECT id FROM information_schema.processlist WHERE command LIKE 'Binlog Dump%%'")
        for (number,) in cursor.fetchall():
            with contextlib.suppress(pymysql.Error):  # ended meanwhile
                cursor.execute(f"KILL {int(number)}")
    root.close()

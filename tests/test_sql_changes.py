"""The incremental SQL read: a full read, then only the accounts changed since (sql_changes), gives what a new full
read gives, after any sequence of the writes Prosody makes (logins, logouts, account_activity, new accounts,
disabled and enabled accounts), on SQLite, PostgreSQL and MariaDB. In `serve`, a deleted account makes a full read
at once; other deleted rows wait for the next full read (the reconcile)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prosody_lastlog.core.counting import HostCounts
from prosody_lastlog.core.model import CountingChoice, Store, UserActivity
from prosody_lastlog.core.rules import InstalledProsody, Policy
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.prosody.sql_settings import SqlSettings
from prosody_lastlog.sources import sql_queries as queries
from prosody_lastlog.sources.database import connect
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from prosody_lastlog.sources.results import ReadResult
from prosody_lastlog.sources.sql import ChangedAccounts, SqlReader
from prosody_lastlog.sources.sql_changes import SLACK_SECONDS, ChangeMark, changed_accounts
from tests import prosody_table
from tests.prosody_table import Row
from tests.test_daemon import wait_for
from tests.test_sql_reader import DAY, NOW

HOSTS = ("a.example", "b.example")
USERS = ("alice", "bob", "carol", "dave", "erin")
State = dict[str, dict[str, UserActivity]]  # host -> user -> record


def timestamp_value(store: str, key: str, stamp: int) -> tuple[str, str, str]:
    """(key, type, value) of a row Prosody writes at `stamp` into a store."""
    if store == "lastlog2":
        return key, "json", json.dumps({"timestamp": stamp}, separators=(",", ":"))
    return key, "number", str(stamp)


@st.composite
def first_rows(draw: st.DrawFn, thirteen: bool) -> list[Row]:
    """A table as Prosody 0.12 (lastlog2, account rows with no time) or 13 (account_activity, `created`) leaves it."""
    rows: list[Row] = []
    for host in HOSTS:
        for user in draw(st.lists(st.sampled_from(USERS), unique=True, max_size=4)):
            stamp = NOW - draw(st.integers(0, 200 * DAY))
            if thirteen:
                rows.append((host, user, "account_activity", *timestamp_value("account_activity", "timestamp", stamp)))
                if draw(st.booleans()):
                    rows.append((host, user, "accounts", *timestamp_value("accounts", "created", stamp - DAY)))
                    rows.append((host, user, "accounts", "stored_key", "string", "a-hash"))
            else:
                key = draw(st.sampled_from(["login", "logout", "registered"]))
                rows.append((host, user, "lastlog2", *timestamp_value("lastlog2", key, stamp)))
                if draw(st.booleans()):
                    rows.append((host, user, "accounts", "password", "string", "a-password"))
    if thirteen:
        rows.append((HOSTS[0], "", "cron", "task", "number", str(NOW - 60)))  # a Prosody 13 marker
    return rows


# A write Prosody makes: (what, host, user, which key); applied at a time after the first read.
writes = st.lists(
    st.tuples(
        st.sampled_from(["activity", "create", "disable", "enable"]),
        st.sampled_from(HOSTS),
        st.sampled_from(USERS),
        st.sampled_from(["login", "logout"]),
    ),
    max_size=12,
)


class Table:
    """Writes to the `prosody` table as mod_storage_sql does: a key's rows replaced in one transaction."""

    def __init__(self, settings_: SqlSettings, connection: Any) -> None:
        self.driver = settings_.driver
        self.connection = connection
        self.mark = "?" if self.driver == "SQLite3" else "%s"
        self.table = "`prosody`" if self.driver == "MySQL" else '"prosody"'
        self.quote = "`" if self.driver == "MySQL" else '"'

    def set_key(self, row: Row) -> None:
        """Replaces the rows of the row's (host, user, store, key) with it."""
        where = " AND ".join(f"{self.quote}{c}{self.quote} = {self.mark}" for c in ("host", "user", "store", "key"))
        cursor = self.connection.cursor()
        cursor.execute(f"DELETE FROM {self.table} WHERE {where}", row[:4])
        cursor.execute(f"INSERT INTO {self.table} VALUES ({', '.join([self.mark] * 6)})", row)
        self.connection.commit()

    def delete_key(self, host: str, user: str, store: str, key: str) -> None:
        where = " AND ".join(f"{self.quote}{c}{self.quote} = {self.mark}" for c in ("host", "user", "store", "key"))
        cursor = self.connection.cursor()
        cursor.execute(f"DELETE FROM {self.table} WHERE {where}", (host, user, store, key))
        self.connection.commit()


def apply_write(table: Table, write: tuple[str, str, str, str], store: Store, stamp: int, thirteen: bool) -> bool:
    """One write Prosody makes at `stamp` for a host counted from `store`; False if this Prosody makes none such."""
    what, host, user, key = write
    if what in ("disable", "enable") and not thirteen:
        return False
    if what == "activity":
        table.set_key(
            (
                host,
                user,
                store.value,
                *timestamp_value(store.value, key if store is Store.LASTLOG2 else "timestamp", stamp),
            )
        )
    elif what == "create" and thirteen:  # usermanager.create_user: created and updated, then the hash
        table.set_key((host, user, "accounts", *timestamp_value("accounts", "created", stamp)))
        table.set_key((host, user, "accounts", *timestamp_value("accounts", "updated", stamp)))
        table.set_key((host, user, "accounts", "stored_key", "string", "a-hash"))
    elif what == "create":  # 0.12, by mod_register_ibr: the account, and account_details' time
        table.set_key((host, user, "accounts", "password", "string", "a-password"))
        table.set_key((host, user, "account_details", *timestamp_value("account_details", "registered", stamp)))
    elif what in ("disable", "enable") and thirteen:  # usermanager.disable_user / enable_user
        if what == "disable":
            table.set_key((host, user, "accounts", "disabled", "boolean", "true"))
        else:
            table.delete_key(host, user, "accounts", "disabled")
        table.set_key((host, user, "accounts", *timestamp_value("accounts", "updated", stamp)))
    return True


def state_of(read: ReadResult) -> tuple[State, dict[str, int | None], dict[str, CountingChoice]]:
    """Records, registered accounts and choices of a full read, per host."""
    records = {host: {a.user: a for a in data.users} for host, data in read.hosts.items()}
    registered = {host: data.registered_accounts for host, data in read.hosts.items()}
    choices = {host: data.counting for host, data in read.hosts.items()}
    return records, registered, choices


def write_all(
    changes: list[tuple[str, str, str, str]],
    choices: dict[str, CountingChoice],
    write: Callable[[tuple[str, str, str, str], Store, int, bool], bool],
    thirteen: bool,
) -> set[tuple[str, str]]:
    """Makes the writes, a second apart from NOW + 1, on hosts that were read; the (host, user) written to."""
    written = set()
    for number, change in enumerate(changes):
        host = change[1]
        if host in choices and write(change, choices[host].store, NOW + 1 + number, thirteen):
            written.add((host, change[2]))
    return written


def apply_found(found: ChangedAccounts, records: State, registered: dict[str, int | None]) -> None:
    """Applies what an incremental read found to the records and registered counts of a full read, as serve does."""
    for host, user, activity in found.records:
        if activity is None:
            records[host].pop(user, None)
        else:
            records[host][user] = activity
    registered |= found.registered


def assert_incremental_equals_full(
    settings_: SqlSettings, connection: Any, rows: list[Row], changes: list[tuple[str, str, str, str]], thirteen: bool
) -> None:
    prosody_table.replace_rows(connection, settings_.driver, rows)
    policy = Policy(InstalledProsody("13.0.1" if thirteen else "0.12.3"))
    reader = SqlReader(settings_, policy=policy, method="stream")
    first, mark = reader.snapshot(now=NOW)
    records, registered, choices = state_of(first)
    assert first.server is not None
    table = Table(settings_, connection)
    written = write_all(changes, choices, partial(apply_write, table), thirteen)
    found = reader.read_changes(mark, choices, first.server, now=NOW + 1 + len(changes))
    assert written <= {(host, user) for host, user, _ in found.records}  # every account written to is found
    apply_found(found, records, registered)
    assert found.accounts_changed == {host for what, host, _, _ in changes if what != "activity" and host in choices
                                      and (thirteen or what == "create")}  # fmt: skip
    again, _ = reader.snapshot(now=NOW + 1 + len(changes))
    expected, expected_registered, expected_choices = state_of(again)
    assert expected_choices == choices  # the writes Prosody makes do not change how a host is counted
    assert records == expected
    assert registered == expected_registered
    assert not found.new_hosts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), thirteen=st.booleans(), changes=writes)
def test_incremental_equals_a_full_read_sqlite(
    sqlite_db: tuple[SqlSettings, Any], data: st.DataObject, thirteen: bool, changes: list[tuple[str, str, str, str]]
) -> None:
    assert_incremental_equals_full(*sqlite_db, data.draw(first_rows(thirteen)), changes, thirteen)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), thirteen=st.booleans(), changes=writes)
def test_incremental_equals_a_full_read_postgres(
    postgres_db: tuple[SqlSettings, Any], data: st.DataObject, thirteen: bool, changes: list[tuple[str, str, str, str]]
) -> None:
    assert_incremental_equals_full(*postgres_db, data.draw(first_rows(thirteen)), changes, thirteen)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), thirteen=st.booleans(), changes=writes)
def test_incremental_equals_a_full_read_mysql(
    mysql_db: tuple[SqlSettings, Any], data: st.DataObject, thirteen: bool, changes: list[tuple[str, str, str, str]]
) -> None:
    assert_incremental_equals_full(*mysql_db, data.draw(first_rows(thirteen)), changes, thirteen)


def test_time_prefixes_cover_the_span_and_nothing_far() -> None:
    for start, end in [(NOW - SLACK_SECONDS, NOW + 60 + SLACK_SECONDS), (NOW - 3600, NOW), (9, 12), (NOW, NOW)]:
        prefixes = queries.time_prefixes(start, end)
        assert len(prefixes) <= 8
        assert all(any(str(t).startswith(p) for p in prefixes) for t in range(start, end + 1))
    assert not any(str(NOW - DAY).startswith(p) for p in queries.time_prefixes(NOW - 240, NOW + 240))


def test_a_look_by_time_keeps_only_rows_written_since_with_the_slack(sqlite_db: tuple[SqlSettings, Any]) -> None:
    """The rows the time prefix finds are kept by their exact time: since the last look, less SLACK_SECONDS, up to
    now and SLACK_SECONDS; older rows in the same block of seconds are not read again."""
    settings_, connection = sqlite_db
    now = 1_796_671_500  # mid-block: the prefix 1796671 covers 1796671000 to 1796671999
    since = ChangeMark(now - 60, by_version=False)
    rows: list[Row] = [
        ("a.example", "old", "lastlog2", *timestamp_value("lastlog2", "login", now - 400)),  # same block, too old
        ("a.example", "slack", "lastlog2", *timestamp_value("lastlog2", "logout", now - 60 - SLACK_SECONDS)),
        ("a.example", "new", "account_activity", *timestamp_value("account_activity", "timestamp", now)),
        ("a.example", "ahead", "accounts", *timestamp_value("accounts", "created", now + SLACK_SECONDS)),
        ("a.example", "float", "account_details", "registered", "number", f"{now - 30}.5"),
        ("a.example", "far", "lastlog2", *timestamp_value("lastlog2", "login", now + SLACK_SECONDS + 1)),
    ]
    prosody_table.replace_rows(connection, "SQLite3", rows)
    with closing(connect(settings_)) as reading:
        found = changed_accounts(reading, [], since, now)
    assert {user for _, user, _ in found} == {"slack", "new", "ahead", "float"}


# --------------------------------------------------------------------------- the daemon: deletions, reconcile


def three_accounts(now: int) -> list[Row]:
    """alice, bob and carol on a.example, with an account each, last logged in 10 days before `now`."""
    rows: list[Row] = []
    for user in ("alice", "bob", "carol"):
        rows.append(("a.example", user, "lastlog2", *timestamp_value("lastlog2", "login", now - 10 * DAY)))
        rows.append(("a.example", user, "accounts", "password", "string", "a-password"))
    return rows


def test_serve_follows_an_sql_source_and_catches_deletions(tmp_path: Path) -> None:
    """In `serve`: a login shows at the next look; a deleted account (its registered count changed with no change
    found) makes the source read in full at once; rows deleted from a kept account wait for the reconcile."""
    path = tmp_path / "prosody.sqlite"
    connection = sqlite3.connect(path)
    prosody_table.create(connection, "SQLite3")
    prosody_table.replace_rows(connection, "SQLite3", three_accounts(int(time.time())))
    table = Table(SqlSettings("SQLite3", str(path)), connection)
    plan = plan_sources(SourceOptions(sql_url=f"sqlite://{path}"), environ={})
    options = ServeOptions(port=0, sql_interval_seconds=0.2, resync_seconds=3600)
    daemon = Daemon(plan, windows=DEFAULT_WINDOWS, options=options)
    daemon.start()

    def counts() -> HostCounts:
        return daemon.live.counts(now=time.time())["a.example"]

    def full_reads() -> float | None:
        return daemon.live.health()[0].last_full_read

    try:
        assert (counts().active["1d"], counts().active["30d"], counts().registered_accounts) == (0, 3, 3)
        first = full_reads()
        table.set_key(("a.example", "alice", "lastlog2", *timestamp_value("lastlog2", "login", int(time.time()))))
        wait_for(lambda: counts().active["1d"] == 1)
        assert full_reads() == first  # found by its time: no full read
        cursor = connection.cursor()
        cursor.execute("DELETE FROM prosody WHERE user = 'bob'")  # an account deleted: its rows go
        connection.commit()
        wait_for(lambda: counts().registered_accounts == 2 and counts().active["30d"] == 2)
        assert full_reads() != first  # read in full at once
        cursor.execute("DELETE FROM prosody WHERE user = 'carol' AND store = 'lastlog2'")  # her account stays
        connection.commit()
        time.sleep(1)
        assert counts().active["30d"] == 2  # nothing found: waits for the reconcile (every --resync-interval)
        daemon.refresher.reconcile_seconds = 0  # the reconcile comes
        wait_for(lambda: counts().active["30d"] == 1 and counts().never_active == 1)
    finally:
        daemon.stop()
        connection.close()

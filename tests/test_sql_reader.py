"""The SQL reader on real engines: counting in the database equals streaming rows, odd rows are reported."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prosody_lastlog.core.model import AccountRule, Store
from prosody_lastlog.core.rules import HostConfig, InstalledProsody, Policy
from prosody_lastlog.core.windows import DEFAULT_WINDOWS, parse_windows
from prosody_lastlog.prosody.sql_settings import SqlSettings, parse_sql_url
from prosody_lastlog.sources import sql_queries as queries
from prosody_lastlog.sources.results import DatabaseError
from prosody_lastlog.sources.sql import SqlReader
from tests import prosody_table
from tests.prosody_table import Row

NOW = 1_763_900_000
DAY = 86400


def lastlog2(host: str, user: str, key: str, timestamp: float, ip: str | None = None) -> Row:
    """A lastlog2 row; with an integer timestamp, in the canonical text Prosody's util.json writes."""
    value: dict[str, object] = {"timestamp": timestamp}
    if ip:
        value["ip"] = ip
    return (host, user, "lastlog2", key, "json", json.dumps(value, separators=(",", ":")))


BASIC_ROWS: list[Row] = [
    lastlog2("example.com", "alice", "login", NOW - 3600, "192.0.2.1"),
    lastlog2("example.com", "alice", "logout", NOW - 60),
    lastlog2("example.com", "alice", "registered", NOW - 40 * DAY),
    lastlog2("example.com", "bob", "registered", NOW - 2 * DAY),
    lastlog2("example.com", "carol", "login", NOW - 10 * DAY),
    lastlog2("example.com", "carol", "login", NOW - 5 * DAY),  # a duplicate row (0.12 has no unique index)
    ("conference.example.com", "room", "lastlog2", "conference.example.com", "string", "message"),
    ("old.example", "dave", "lastlog", "event", "string", "logout"),
    ("old.example", "dave", "lastlog", "timestamp", "number", f"{NOW - 100}.0"),
]
# Prosody 13's: account_activity, account records (password fields, `created`, `disabled`), mod_cron's row.
THIRTEEN_ROWS: list[Row] = [
    ("new.example", "erin", "account_activity", "timestamp", "number", str(NOW - 100)),
    ("new.example", "erin", "accounts", "stored_key", "string", "a-password-hash"),
    ("new.example", "erin", "accounts", "created", "number", str(NOW - 3 * DAY)),
    ("new.example", "frank", "account_activity", "timestamp", "number", str(NOW - 100)),
    ("new.example", "frank", "accounts", "created", "number", str(NOW - 40 * DAY)),
    ("new.example", "frank", "accounts", "disabled", "boolean", "true"),
    ("new.example", "gina", "account_activity", "timestamp", "number", str(NOW - 100)),  # no account
    ("new.example", "gina", "account_details", "registered", "number", str(NOW - 10)),
    ("new.example", "", "cron", "lastlog2_measure_active_users", "number", str(NOW - 60)),
]


@pytest.mark.parametrize("engine", ["sqlite_db", "postgres_db", "mysql_db"])
@pytest.mark.parametrize("method", ["pushdown", "stream"])
def test_counts_on_every_engine(engine: str, method: str, request: pytest.FixtureRequest) -> None:
    settings_, connection = request.getfixturevalue(engine)
    prosody_table.replace_rows(connection, settings_.driver, BASIC_ROWS)
    result = SqlReader(settings_, method=method).count(now=NOW, windows=DEFAULT_WINDOWS)
    assert set(result.methods.values()) == {method}
    assert not result.problems
    counts = result.counts
    assert list(counts) == ["conference.example.com", "example.com", "old.example"]
    assert (counts["example.com"].activity_records, counts["example.com"].never_active) == (3, 1)
    assert counts["example.com"].active == {"1d": 1, "7d": 2, "30d": 2}
    assert counts["example.com"].registered == {"1d": 0, "7d": 1, "30d": 1}
    assert counts["conference.example.com"].never_active == 1
    assert counts["old.example"].store is Store.LASTLOG and counts["old.example"].active["1d"] == 1
    assert result.server is not None and not result.server.thirteen


@pytest.mark.parametrize("engine", ["sqlite_db", "postgres_db", "mysql_db"])
@pytest.mark.parametrize("method", ["pushdown", "stream"])
def test_prosody_13_rows_count_enabled_accounts_and_registrations_from_created(
    engine: str, method: str, request: pytest.FixtureRequest
) -> None:
    settings_, connection = request.getfixturevalue(engine)
    prosody_table.replace_rows(connection, settings_.driver, BASIC_ROWS + THIRTEEN_ROWS)
    result = SqlReader(settings_, method=method).count(now=NOW, windows=DEFAULT_WINDOWS)
    assert set(result.methods.values()) == {method} and not result.problems
    assert result.server is not None and result.server.thirteen  # the whole table is Prosody 13's
    new = result.counts["new.example"]
    assert new.store is Store.ACCOUNT_ACTIVITY and new.counting.accounts is AccountRule.ENABLED
    # erin counts; frank is disabled, gina has no account. Registered: erin and frank by `created`, gina by
    # account_details.
    assert (dict(new.active), new.disabled, new.no_account) == ({"1d": 1, "7d": 1, "30d": 1}, 2, 1)
    assert new.registered == {"1d": 1, "7d": 2, "30d": 2}
    # Prosody 0.12's hosts of the same table now need an account too: they have none.
    assert result.counts["example.com"].active == {"1d": 0, "7d": 0, "30d": 0}
    everyone = SqlReader(settings_, method=method, policy=Policy(count_disabled=True))
    counts = everyone.count(now=NOW, windows=DEFAULT_WINDOWS).counts
    assert counts["new.example"].active["1d"] == 3 and counts["example.com"].active == {"1d": 1, "7d": 2, "30d": 2}
    plain = Policy(hosts={"new.example": HostConfig(auth_provider="internal_plain")})
    counts = SqlReader(settings_, method=method, policy=plain).count(now=NOW, windows=DEFAULT_WINDOWS).counts
    assert (counts["new.example"].active["1d"], counts["new.example"].counting.accounts) == (0, AccountRule.NOBODY)


@pytest.mark.parametrize("engine", ["postgres_db", "mysql_db"])
def test_a_stream_left_by_a_failing_count_ends_its_time_bound(
    engine: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each network query is watched by a timer thread until its rows are read; one the count stops reading
    must end with the count, not linger for the bound (10 minutes) and then cut a closed connection."""
    settings_, connection = request.getfixturevalue(engine)
    prosody_table.replace_rows(connection, settings_.driver, BASIC_ROWS)

    def failing_collect(self: SqlReader, rows: Iterator[Any], *args: Any, **kwargs: Any) -> None:
        next(rows)
        raise RuntimeError("a bug in collecting")

    monkeypatch.setattr(SqlReader, "_collect", failing_collect)
    with pytest.raises(RuntimeError, match="a bug in collecting") as failure:
        SqlReader(settings_, method="stream").count(now=NOW, windows=DEFAULT_WINDOWS)
    # The failure's traceback, as a caller logging it holds it, still refers to the stream.
    assert failure.traceback and not [t for t in threading.enumerate() if isinstance(t, threading.Timer)]


@pytest.mark.parametrize("engine", ["sqlite_db", "postgres_db", "mysql_db"])
def test_odd_rows_fall_back_to_streaming_and_are_named(engine: str, request: pytest.FixtureRequest) -> None:
    settings_, connection = request.getfixturevalue(engine)
    odd = [
        ("example.com", "mallory", "lastlog2", "login", "json", "{not json"),
        ("example.com", "trent", "lastlog2", "logout", "json", '{"timestamp": "yesterday"}'),
    ]
    prosody_table.replace_rows(connection, settings_.driver, BASIC_ROWS + odd)
    result = SqlReader(settings_).count(now=NOW, windows=DEFAULT_WINDOWS)
    assert result.methods["example.com"] == "stream"
    assert result.counts["example.com"].activity_records == 5
    assert result.counts["example.com"].active == {"1d": 1, "7d": 2, "30d": 2}
    wheres = sorted(p.where for p in result.problems)
    assert len(wheres) == 2 and "user=mallory key=login" in wheres[0] and "user=trent" in wheres[1]


# Rows as Prosody writes them, with the real-world oddities: duplicates, `1.0` numbers, "" keyval rows,
# component rows, disabled accounts, and sometimes a row no engine can check.
hosts = st.sampled_from(["a.example", "b.example"])
# Over 64 bytes: MariaDB/MySQL cannot key such a user exactly and must leave its host to the stream.
LONG_USER = "l" * 40 + "ö" * 20
users = st.sampled_from(["u1", "u2", "u3", "Ü4", "u5", LONG_USER])
stamps = st.one_of(st.integers(NOW - 60 * DAY, NOW + DAY), st.floats(NOW - 60 * DAY, NOW, allow_nan=False))


def lua_tostring(value: float) -> str:
    """Lua 5.4's tostring, which mod_storage_sql writes numbers with: `%.14g`, `.0` on integral floats."""
    if isinstance(value, int):
        return str(value)
    text = f"{value:.14g}"
    return text + ".0" if text.lstrip("-").isdigit() else text


def prosody_json(timestamp: int, ip: str | None, ip_first: bool) -> str:
    """A lastlog2 value as Prosody's util.json writes it: no spaces, keys in hash order."""
    members = [f'"timestamp":{timestamp}'] + ([f'"ip":"{ip}"'] if ip is not None else [])
    return "{" + ",".join(reversed(members) if ip_first else members) + "}"


# The edges of Prosody's canonical form (MariaDB/MySQL read it with string functions), then text close to
# it that is not it: every engine must read that as Python's json does, or leave the host to the stream.
CANONICAL_EDGES = [
    '{"timestamp":999999999999999}',
    '{"timestamp":0}',
    '{"timestamp":1763890000.25}',
    '{"ip":"::1","timestamp":17,"ip":"::2"}',
]
NEAR_CANONICAL_JSON = [
    '{"timestamp":0123}',  # a leading zero: not JSON
    '{"timestamp":1234567890123456}',  # 16 digits: 1e15 or more
    '{"timestamp":-5}',
    '{"timestamp":1.}',
    '{"timestamp":.5}',
    '{"timestamp":1e9}',
    '{"timestamp":"1700000000"}',
    '{"TIMESTAMP":1763890000}',
    '{"Timestamp":1763890000}',
    '{"timestamp":1763890000,"timestamp":1}',
    '{"timestamp": 1763890000}',
    '{"timestamp":1763890000}\n',
    ' {"timestamp":1763890000}',
    '{"timestamp":1763890000,"ip":"a\\"b"}',
    '{"timestamp":1763890000,"ip":"a\\u0041"}',
    '{"timestamp":1763890000,"ip":"ä"}',
    '{"timestamp":1763890000,"ip":1}',
    '{"timestamp":1763890000,"ipx":"1"}',
    '{"timestamp":1763890000,}',
    '{"timestamp":[1763890000]}',
    '{"timestamp":1763890000',
    # MariaDB's JSON functions get these wrong: it accepts the first two and reads the first of duplicate keys.
    '{"timestamp":1763890000,"ip":"\\x41"}',
    '{"timestamp":1763890000,"a":5.}',
    '{"timestamp":1763890000, "timestamp":1}',
    '{"timestamp":1,"time\\u0073tamp":1763890000}',
]
CANONICAL_NUMBERS = ["1763890000", "1763890000.0", "0", "999999999999999.5"]
NEAR_CANONICAL_NUMBER = ["01", "1e3", "-5", " 5", "5 ", "1.", ".5", "0x10", "1234567890123456", ""]

row_strategy = st.one_of(
    st.builds(
        lastlog2,
        hosts,
        users,
        st.sampled_from(["login", "logout", "registered"]),
        stamps,
    ),
    st.builds(
        lambda h, u, k, t, ip, first: (h, u, "lastlog2", k, "json", prosody_json(t, ip, first)),
        hosts,
        users,
        st.sampled_from(["login", "logout", "registered"]),
        st.integers(NOW - 60 * DAY, NOW + DAY),
        st.sampled_from([None, "192.0.2.1", "2001:db8::1", ""]),
        st.booleans(),
    ),
    st.builds(
        lambda h, u, k, v: (h, u, "lastlog2", k, "json", v),
        hosts,
        users,
        st.sampled_from(["login", "logout", "registered"]),
        st.sampled_from(CANONICAL_EDGES + NEAR_CANONICAL_JSON),
    ),
    st.builds(lambda h, u, t: (h, u, "account_activity", "timestamp", "number", lua_tostring(t)), hosts, users, stamps),
    st.builds(
        lambda h, u, v: (h, u, "account_activity", "timestamp", "number", v),
        hosts,
        users,
        st.sampled_from(NEAR_CANONICAL_NUMBER),
    ),
    st.builds(lambda h, u, t: (h, u, "lastlog", "timestamp", "number", lua_tostring(t)), hosts, users, stamps),
    st.builds(
        lambda h, u, e: (h, u, "lastlog", "event", "string", e),
        hosts,
        users,
        st.sampled_from(["login", "logout", "registered", "message"]),
    ),
    st.builds(lambda h, u: (h, u, "lastlog2", h, "string", "message"), hosts, users),
    st.builds(lambda h, u: (h, u, "accounts", "disabled", "boolean", "true"), hosts, users),
    # Prosody 13's account rows, mod_register_ibr's registration time, mod_cron's host row (a 13 marker).
    st.builds(
        lambda h, u, k, v: (h, u, "accounts", k, *v),
        hosts,
        users,
        st.sampled_from(["created", "disabled", "stored_key", "updated"]),
        st.sampled_from(
            [
                ("number", str(NOW - 3 * DAY)),
                ("number", f"{NOW - 20 * DAY}.0"),
                ("boolean", "true"),
                ("boolean", "false"),
                ("string", "a-hash"),
                ("number", "soon"),
            ]
        ),
    ),
    st.builds(lambda h, u, t: (h, u, "account_details", "registered", "number", lua_tostring(t)), hosts, users, stamps),
    st.builds(lambda h: (h, "", "cron", "task", "number", str(NOW)), hosts),
    st.builds(lambda h, u: (h, u, "lastlog2", "", "json", '{"1": true}'), hosts, users),
    st.builds(lambda h, u: (h, u, "lastlog2", "login", "json", '{"timestamp": 1e300}'), hosts, users),
)
window_sets = st.lists(st.sampled_from(["1h", "1d", "2d", "7d", "30d", "90d"]), min_size=1, max_size=4)
# Which Prosody wrote the table, what the user said, what the config says of each host.
policies = st.builds(
    Policy,
    installed=st.sampled_from([InstalledProsody(), InstalledProsody("13.0.1")]),
    forced_store=st.none() | st.sampled_from(list(Store)),
    count_disabled=st.booleans(),
    hosts=st.dictionaries(
        st.sampled_from(["a.example", "b.example"]),
        st.builds(HostConfig, st.sampled_from(["internal_hashed", "internal_plain"]), st.booleans()),
    ),
)


parts = st.integers(1, 3)  # accounts counted in this many partitions at once (PostgreSQL, MariaDB)


def _assert_pushdown_equals_stream(
    settings_: SqlSettings, connection: Any, rows: list[Row], windows: list[str], *, parts: int, policy: Policy
) -> None:
    prosody_table.replace_rows(connection, settings_.driver, rows)
    parsed = parse_windows(windows)
    pushed = SqlReader(settings_, method="auto", parts=parts, policy=policy).count(now=NOW, windows=parsed)
    streamed = SqlReader(settings_, method="stream", policy=policy).count(now=NOW, windows=parsed)
    assert pushed.counts == streamed.counts
    assert pushed.server == streamed.server


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row_strategy, max_size=40), windows=window_sets, policy=policies)
def test_pushdown_equals_streaming_sqlite(
    sqlite_db: tuple[SqlSettings, Any], rows: list[Row], windows: list[str], policy: Policy
) -> None:
    _assert_pushdown_equals_stream(*sqlite_db, rows, windows, parts=1, policy=policy)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row_strategy, max_size=30), windows=window_sets, parts=parts, policy=policies)
def test_pushdown_equals_streaming_postgres(
    postgres_db: tuple[SqlSettings, Any], rows: list[Row], windows: list[str], parts: int, policy: Policy
) -> None:
    _assert_pushdown_equals_stream(*postgres_db, rows, windows, parts=parts, policy=policy)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row_strategy, max_size=30), windows=window_sets, parts=parts, policy=policies)
def test_pushdown_equals_streaming_mysql(
    mysql_db: tuple[SqlSettings, Any], rows: list[Row], windows: list[str], parts: int, policy: Policy
) -> None:
    _assert_pushdown_equals_stream(*mysql_db, rows, windows, parts=parts, policy=policy)


# CANONICAL_MEMBER in Python's dialect of regular expressions (no global (?-i), \Z for \z).
PYTHON_CANONICAL = queries.CANONICAL_MEMBER.removeprefix("(?-i)").replace("\\z", "\\Z")


@given(st.from_regex(PYTHON_CANONICAL, fullmatch=True))
def test_canonical_text_is_json_holding_the_timestamp_it_shows(text: str) -> None:
    """What MariaDB/MySQL read with string functions is exactly what a JSON parser reads."""
    value = json.loads(text)
    assert set(value) <= {"timestamp", "ip"} and type(value["timestamp"]) in (int, float)
    assert 0 <= value["timestamp"] < 1e15
    shown = text.rsplit('"timestamp":', 1)[1].split(",", 1)[0].split("}", 1)[0]  # the three SUBSTRING_INDEX
    assert float(shown) == value["timestamp"]


def test_mysql_reads_prosody_canonical_text_with_string_functions(mysql_db: tuple[SqlSettings, Any]) -> None:
    _, connection = mysql_db
    canonical = [prosody_json(1763890000, ip, bool(f)) for ip in (None, "192.0.2.1", "2001:db8::1") for f in (0, 1)]
    canonical += CANONICAL_EDGES
    with connection.cursor() as cursor:
        for text, expected in [*((t, 1) for t in canonical), *((t, 0) for t in NEAR_CANONICAL_JSON)]:
            cursor.execute("SELECT CAST(%s AS CHAR CHARACTER SET utf8mb4) REGEXP %s", (text, queries.CANONICAL_MEMBER))
            assert cursor.fetchone() == (expected,), text
        for text, expected in [*((t, 1) for t in CANONICAL_NUMBERS), *((t, 0) for t in NEAR_CANONICAL_NUMBER)]:
            cursor.execute("SELECT CAST(%s AS CHAR CHARACTER SET utf8mb4) REGEXP %s", (text, queries.CANONICAL_NUMBER))
            assert cursor.fetchone() == (expected,), text


@pytest.mark.parametrize("engine", ["sqlite_db", "postgres_db", "mysql_db"])
def test_text_near_the_canonical_form_counts_as_streamed(engine: str, request: pytest.FixtureRequest) -> None:
    settings_, connection = request.getfixturevalue(engine)
    cases = [[lastlog2("a.example", "u", "registered", NOW - DAY)]]
    cases += [[("a.example", "u", "lastlog2", "login", "json", text)] for text in CANONICAL_EDGES + NEAR_CANONICAL_JSON]
    numbers = CANONICAL_NUMBERS + NEAR_CANONICAL_NUMBER
    cases += [[("a.example", "u", "account_activity", "timestamp", "number", text)] for text in numbers]
    for rows in cases:
        prosody_table.replace_rows(connection, settings_.driver, rows)
        pushed = SqlReader(settings_).count(now=NOW, windows=DEFAULT_WINDOWS)
        streamed = SqlReader(settings_, method="stream").count(now=NOW, windows=DEFAULT_WINDOWS)
        assert pushed.counts == streamed.counts, rows


def test_a_host_name_too_long_to_key_streams_every_host_on_mysql(mysql_db: tuple[SqlSettings, Any]) -> None:
    settings_, connection = mysql_db
    long_host = "h" * 60 + ".example"
    rows = [*BASIC_ROWS, lastlog2(long_host, "ann", "login", NOW - 60)]
    prosody_table.replace_rows(connection, settings_.driver, rows)
    pushed = SqlReader(settings_).count(now=NOW, windows=DEFAULT_WINDOWS)
    assert set(pushed.methods.values()) == {"stream"}
    assert pushed.counts[long_host].active["1d"] == 1
    assert pushed.counts == SqlReader(settings_, method="stream").count(now=NOW, windows=DEFAULT_WINDOWS).counts


def test_unreachable_server_is_named_without_password() -> None:
    target = parse_sql_url("postgresql://prosody:s3cret@127.0.0.1:1/prosody")
    with pytest.raises(DatabaseError) as error:
        SqlReader(target).count(now=NOW, windows=DEFAULT_WINDOWS)
    assert "127.0.0.1:1/prosody" in str(error.value) and "s3cret" not in str(error.value)
    assert "s3cret" not in repr(target)


def test_missing_table_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    sqlite3.connect(path).close()
    with pytest.raises(DatabaseError, match="no readable `prosody` table"):
        SqlReader(SqlSettings("SQLite3", str(path)), method="stream").count(now=NOW, windows=DEFAULT_WINDOWS)


def test_encrypted_sqlite_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "cipher.sqlite"
    path.write_bytes(bytes(range(256)) * 64)  # what an SQLCipher file looks like to sqlite3: no header
    with pytest.raises(DatabaseError, match="SQLCipher"):
        SqlReader(SqlSettings("SQLite3", str(path))).count(now=NOW, windows=DEFAULT_WINDOWS)


def test_sqlite_is_opened_read_only(sqlite_db: tuple[SqlSettings, Any]) -> None:
    settings_, connection = sqlite_db
    prosody_table.replace_rows(connection, "SQLite3", BASIC_ROWS)
    before = Path(settings_.database).stat().st_mtime_ns
    SqlReader(settings_).count(now=NOW, windows=DEFAULT_WINDOWS)
    assert Path(settings_.database).stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///var/lib/prosody/prosody.sqlite", SqlSettings("SQLite3", "/var/lib/prosody/prosody.sqlite")),
        (
            "postgresql://prosody@db.example:5433/prosody",
            SqlSettings("PostgreSQL", "prosody", host="db.example", port=5433, username="prosody"),
        ),
        (
            "mysql://root:p%40ss@127.0.0.1:3306/prosody",
            SqlSettings("MySQL", "prosody", host="127.0.0.1", port=3306, username="root", password="p@ss"),
        ),
        ("mariadb://u@h/db", SqlSettings("MySQL", "db", host="h", username="u")),
        ("sqlite:////var/lib/prosody/prosody.sqlite", SqlSettings("SQLite3", "/var/lib/prosody/prosody.sqlite")),
    ],
)
def test_parse_sql_url(url: str, expected: SqlSettings) -> None:
    parsed = parse_sql_url(url)
    assert parsed == expected and parsed.password == expected.password


@pytest.mark.parametrize("url", ["oracle://x/y", "sqlite://", "postgresql://host:5432/", "mysql://h:port/db"])
def test_parse_sql_url_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        parse_sql_url(url)


def test_password_file_wins_over_url() -> None:
    assert parse_sql_url("mysql://u:inurl@h/db", password="fromfile").password == "fromfile"


def test_sqlite_in_wal_mode_is_read_while_prosody_has_it_open(sqlite_db: tuple[SqlSettings, Any]) -> None:
    settings_, connection = sqlite_db
    connection.execute("PRAGMA journal_mode=WAL")  # what Prosody 13's sqlite_tune does
    prosody_table.replace_rows(connection, "SQLite3", BASIC_ROWS)
    result = SqlReader(settings_).count(now=NOW, windows=DEFAULT_WINDOWS)
    assert result.counts["example.com"].activity_records == 3


def test_sqlite_locked_for_a_moment_is_waited_for(sqlite_db: tuple[SqlSettings, Any]) -> None:
    settings_, connection = sqlite_db
    prosody_table.replace_rows(connection, "SQLite3", BASIC_ROWS)
    locked = threading.Event()

    def writer_holding_the_lock() -> None:  # as Prosody does mid-transaction
        writer = sqlite3.connect(settings_.database, isolation_level=None)
        writer.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(0.5)
        writer.execute("ROLLBACK")
        writer.close()

    thread = threading.Thread(target=writer_holding_the_lock)
    thread.start()
    locked.wait(5)
    try:
        started = time.monotonic()
        result = SqlReader(settings_).count(now=NOW, windows=DEFAULT_WINDOWS)
    finally:
        thread.join()
    assert result.counts["example.com"].activity_records == 3
    assert time.monotonic() - started >= 0.3  # it waited for the lock rather than failing


@pytest.mark.parametrize("engine", ["sqlite_db", "postgres_db", "mysql_db"])
def test_duplicates_resolve_the_same_in_any_row_order(engine: str, request: pytest.FixtureRequest) -> None:
    settings_, connection = request.getfixturevalue(engine)
    rows = [
        lastlog2("a.example", "u", "login", NOW - 60),
        ("a.example", "u", "lastlog2", "login", "json", '{"timestamp": "x"}'),
    ]
    results = []
    for ordered in (rows, rows[::-1]):
        prosody_table.replace_rows(connection, settings_.driver, ordered)
        results.append(SqlReader(settings_, method="stream").count(now=NOW, windows=DEFAULT_WINDOWS).counts)
    assert results[0] == results[1]
    assert results[0]["a.example"].active["1d"] == 1


@pytest.mark.parametrize("method", ["auto", "pushdown", "stream"])
def test_a_host_filter_matching_nothing_counts_nothing(sqlite_db: tuple[SqlSettings, Any], method: str) -> None:
    settings_, connection = sqlite_db
    prosody_table.replace_rows(connection, "SQLite3", BASIC_ROWS)
    result = SqlReader(settings_, hosts=["nodata.example"], method=method).count(now=NOW, windows=DEFAULT_WINDOWS)
    assert result.counts == {}


def test_relative_sqlite_url_is_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        parse_sql_url("sqlite:relative.sqlite")


@pytest.mark.parametrize("engine", ["sqlite_db", "postgres_db", "mysql_db"])
def test_duplicate_disabled_rows_disable_the_account_on_every_path(engine: str, request: pytest.FixtureRequest) -> None:
    """Prosody 0.12's table has no unique index: of two `disabled` rows, any true one disables (as MAX does)."""
    settings_, connection = request.getfixturevalue(engine)
    rows = [
        *THIRTEEN_ROWS,
        ("new.example", "hal", "accounts", "disabled", "boolean", "true"),
        ("new.example", "hal", "accounts", "disabled", "boolean", "false"),
        ("new.example", "hal", "account_activity", "timestamp", "number", str(NOW - 100)),
    ]
    for order in (rows, rows[::-1]):
        _assert_pushdown_equals_stream(settings_, connection, order, ["1d"], parts=1, policy=Policy())
        counted = SqlReader(settings_, method="stream").count(now=NOW, windows=parse_windows(["1d"]))
        assert counted.counts["new.example"].disabled == 3  # frank and hal disabled, gina without an account

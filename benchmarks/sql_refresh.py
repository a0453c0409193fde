"""What one refresh of an SQL source costs and moves, and how long a row change takes to show in the counts.

Used by sql_count.py on its loaded databases (run it). Per engine, beside one another in one run:

  transfer  the rows and bytes each way of counting moves from the database to the tool: the seed's pattern
            (users(), a get per user), the pushdown (`count`, and `serve` before it read incrementally)
  full read what `serve` does at start and every --resync-interval: every row read into records (seconds)
  steady    one of `serve`'s refreshes between full reads after --changes logins (SqlReader.read_changes: find the
            changed accounts, read their rows by the table's index, count registered accounts): seconds, rows,
            bytes, and the seconds of its first and last parts alone; the logins are undone afterwards
  follow    what `serve --sql-binlog` asks of the database for the same logins: the accounts the binary log names
            read again by the index (SqlReader.read_accounts; no look, no recount: no account store changed)
  /metrics  p99 under the daemon benchmark's client load while `serve --sql` looks every few seconds with logins
            written meanwhile, and while its reconcile (a full read) runs
  latency   seconds from a login written to the table, at a random point of the interval, to the counts showing it:
            `serve --sql` as it is (the next look), and the pushdown every interval as `serve` did before

Bytes are those of the values returned (text as UTF-8, numbers as their text), not of the wire protocol.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from functools import partial
from http.client import HTTPConnection
from typing import Any

from prosody_lastlog.prosody.sql_settings import parse_sql_url
from prosody_lastlog.sources import database
from prosody_lastlog.sources.database import Connection, connect
from prosody_lastlog.sources.sql import SqlReader
from prosody_lastlog.sources.sql_changes import changed_accounts
from prosody_lastlog.sources.sql_queries import CHANGE_STORES, registered_accounts
from tests.integration.servers import free_port, stop_process
from tests.sql_servers import SqlServer

_IN_STORES = "(" + ", ".join(f"'{store}'" for store in CHANGE_STORES) + ")"


@dataclass
class Transfer:
    """Rows and bytes returned by the queries made meanwhile."""

    rows: int = 0
    bytes: int = 0

    def add(self, rows: list[tuple[Any, ...]] | tuple[Any, ...], *, one: bool = False) -> None:
        """Counts a result (or, with `one`, a single row)."""
        for row in [rows] if one else rows:
            self.rows += 1
            self.bytes += sum(len(str(value).encode()) for value in row if value is not None)


@contextmanager
def counting_transfer() -> Iterator[Transfer]:
    """Counts every row the reader's connections return while the block runs."""
    transfer = Transfer()
    query, stream = Connection.query, Connection.stream

    def counted_query(self: Connection, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        rows = query(self, sql, params)
        transfer.add(rows)
        return rows

    def counted_stream(self: Connection, sql: str, params: tuple[Any, ...] = (), **kwargs: Any) -> Iterator[Any]:
        for row in stream(self, sql, params, **kwargs):
            transfer.add(row, one=True)
            yield row

    database.Connection.query = counted_query  # type: ignore[method-assign]
    database.Connection.stream = counted_stream  # type: ignore[method-assign,assignment]
    try:
        yield transfer
    finally:
        database.Connection.query = query  # type: ignore[method-assign]
        database.Connection.stream = stream  # type: ignore[method-assign]


@contextmanager
def buffer_pool_for(server: SqlServer) -> Iterator[str]:
    """MariaDB: an InnoDB buffer pool at least twice the table, as a DBA gives a server whose table is read every
    minute (restored afterwards); yields what was done. PostgreSQL reads through the OS page cache: nothing."""
    if server.driver != "MySQL":
        yield "PostgreSQL: shared_buffers as installed (the table is read through the page cache)"
        return
    connection = connect(parse_sql_url(server.url()))
    try:
        ((pool, table),) = connection.query(
            "SELECT @@innodb_buffer_pool_size, (SELECT data_length + index_length FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = 'prosody')"
        )
        wanted = max(int(pool), -(-2 * int(table) // 2**27) * 2**27)  # a multiple of 128 MiB
        connection.query(f"SET GLOBAL innodb_buffer_pool_size = {wanted}")
        connection.query(f"SELECT COUNT(*) FROM `prosody` WHERE `store` IN {_IN_STORES}")  # into the pool
        yield f"MariaDB: innodb_buffer_pool_size {wanted / 2**20:.0f} MiB for a table of {int(table) / 2**20:.0f} MiB"
        connection.query(f"SET GLOBAL innodb_buffer_pool_size = {int(pool)}")
    finally:
        connection.close()


@dataclass(frozen=True)
class Steady:
    """One steady-state refresh: seconds, what it moved, accounts read again; its parts (finding the changed
    accounts, recounting registered accounts); and what --sql-binlog's reading of the same accounts costs."""

    seconds: float
    moved: Transfer
    accounts: int
    find_seconds: float
    registered_seconds: float
    follow_seconds: float
    follow_moved: Transfer


def time_steady(server: SqlServer, users: int, changes: int, repeat: int) -> tuple[float, Steady]:
    """Seconds of a full read (as serve's first), then the median of `repeat` steady-state refreshes, each after
    `changes` logins at the clock's time (undone afterwards)."""
    settings = parse_sql_url(server.url())
    reader = SqlReader(settings)
    started = time.perf_counter()
    read, mark = reader.snapshot(now=int(time.time()))
    full_s = time.perf_counter() - started
    choices = {host: data.counting for host, data in read.hosts.items()}
    assert read.server is not None
    server_facts = read.server
    del read
    runs = []
    with _writer(server) as writer, closing(connect(settings)) as connection:
        for number in range(repeat):
            picked = [f"user{i}" for i in random.Random(number).sample(range(users), min(changes, users // 2))]
            undo = _log_in(writer, picked, int(time.time()))
            try:
                find_s = _timed(partial(changed_accounts, connection, [], mark, int(time.time())))
                registered_s = _timed(partial(connection.query, *registered_accounts([])))
                named = {(host, user, "lastlog2") for host, user, _ in undo}  # what the binary log names
                with counting_transfer() as follow_moved:
                    follow_s = _timed(partial(reader.read_accounts, named, choices, server_facts, mark, now=0))
                with counting_transfer() as moved:
                    started = time.perf_counter()
                    found = reader.read_changes(mark, choices, server_facts, now=int(time.time()))
                    seconds = time.perf_counter() - started
                mark = found.mark
                runs.append(Steady(seconds, moved, len(found.records), find_s, registered_s, follow_s, follow_moved))
            finally:
                _put_back(writer, undo)
            mark = reader.read_changes(mark, choices, server_facts, now=int(time.time())).mark  # past the undo
    return full_s, sorted(runs, key=lambda run: run.seconds)[len(runs) // 2]


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


class _Writer:
    """A writable DB-API connection (the reader's are read-only) and the engine's quoting."""

    def __init__(self, raw: Any, quote: str) -> None:
        self.raw = raw
        self._quote = quote

    def run(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """One statement (written with "identifiers" and %s), committed; its rows, if any."""
        cursor = self.raw.cursor()
        cursor.execute(sql.replace('"', self._quote), params)
        rows = list(cursor.fetchall()) if cursor.description else []
        self.raw.commit()
        return rows


@contextmanager
def _writer(server: SqlServer) -> Iterator[_Writer]:
    if server.driver == "PostgreSQL":
        import psycopg  # noqa: PLC0415

        raw: Any = psycopg.connect(server.url())
        quote = '"'
    else:
        import pymysql  # noqa: PLC0415

        raw = pymysql.connect(host=server.host, port=server.port, user=server.username, database=server.database)
        quote = "`"
    try:
        yield _Writer(raw, quote)
    finally:
        raw.close()


_LOGIN = '"host" = %s AND "user" = %s AND "store" = \'lastlog2\' AND "key" = \'login\''


def _log_in(writer: _Writer, users: list[str], now: int) -> list[tuple[Any, ...]]:
    """Writes a login at `now` for each of sql_count's users (`user<i>`, on host HOSTS[i % 3]), one transaction
    each as mod_storage_sql does, through the table's (host, user, ...) index; returns the rows it replaced (a user
    with no login row yet gets none)."""
    from sql_count import HOSTS  # noqa: PLC0415  # the data set's hosts: sql_count imports this module

    old = []
    for user in users:
        host = HOSTS[int(user.removeprefix("user")) % len(HOSTS)]
        for (value,) in writer.run(f'SELECT "value" FROM "prosody" WHERE {_LOGIN}', (host, user)):
            writer.run(f'UPDATE "prosody" SET "value" = %s WHERE {_LOGIN}', (f'{{"timestamp":{now}}}', host, user))
            old.append((host, user, value))
    return old


def _put_back(writer: _Writer, old: list[tuple[Any, ...]]) -> None:
    for host, user, value in old:
        writer.run(f'UPDATE "prosody" SET "value" = %s WHERE {_LOGIN}', (value, host, user))


def login_latencies(server: SqlServer, users: int, interval: int, samples: int) -> dict[str, list[float]]:
    """Seconds from a login written to the table to the counts showing it, `samples` times each: `serve --sql`
    (--sql-interval `interval`) in /metrics, and the pushdown counted every `interval` as serve did before."""
    with _serving(server, interval) as served:
        serve = _latencies(server, users, interval, samples, served)
    with _pushdown_every(server, interval) as counted:
        pushdown = _latencies(server, users, interval, samples, counted)
    return {"serve": serve, "pushdown": pushdown}


def _latencies(
    server: SqlServer, users: int, interval: int, samples: int, active: Callable[[], float | None]
) -> list[float]:
    """Logs in users inactive before, one at a time, each at a random point of the interval, timing each until the
    count of users active in a day has grown by one; puts the rows back at the end (a row put back holds an old
    time, which MariaDB's look by time does not find: it waits for the next full read)."""
    seconds: list[float] = []
    with _writer(server) as writer:
        _wait(lambda: active() is not None, 600, "a first count")
        picker = random.Random(1000)
        undo: list[tuple[Any, ...]] = []
        try:
            while len(seconds) < samples:
                before = active() or 0.0
                time.sleep(picker.uniform(0, interval))
                user = f"user{picker.randrange(users)}"
                written = [] if any(row[1] == user for row in undo) else _log_in(writer, [user], int(time.time()))
                if not written:
                    continue  # a user with no login row, or one logged in already: pick another
                undo += written
                started = time.perf_counter()
                _wait(partial(_equals, active, before + 1), 3 * interval + 600, "the login to show")
                seconds.append(time.perf_counter() - started)
        finally:
            _put_back(writer, undo)
    return seconds


@dataclass(frozen=True)
class _Listening:
    """A daemon's HTTP server on loopback (daemon.Endpoint)."""

    port: int

    def connection(self) -> HTTPConnection:
        return HTTPConnection("127.0.0.1", self.port, timeout=10)


def metrics_under_refreshes(
    server: SqlServer, users: int, *, threads: int, seconds: float, interval: int, reconcile: int
) -> dict[str, float]:
    """/metrics under `threads` clients (as make bench's daemon part loads it) while `serve --sql` refreshes: for
    `seconds` of looks every `interval` s with 10 logins a second written meanwhile, then all through the
    reconcile's full read (`reconcile` s after the first)."""
    from daemon import for_seconds, python_load  # noqa: PLC0415  # the daemon benchmark's load, the same here

    port = free_port()
    metrics = f"http://127.0.0.1:{port}/metrics"
    command = [sys.executable, "-m", "prosody_lastlog", "serve", "--sql", server.url(), "--listen", f"127.0.0.1:{port}"]
    command += ["--sql-interval", f"{interval}s", "--resync-interval", f"{reconcile}s"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait(lambda: _active_1d(metrics) is not None, 900, "a first count")
            ready = time.monotonic()
            first_read = _sample(metrics, "prosody_lastlog_last_full_read_timestamp_seconds")
            with _logging_in(server, users, per_second=10):
                looks = python_load(_Listening(port), threads, for_seconds(seconds))
            time.sleep(max(0.0, ready + reconcile - 5 - time.monotonic()))
            started = time.monotonic()
            full = python_load(
                _Listening(port),
                threads,
                lambda: (
                    _sample(metrics, "prosody_lastlog_last_full_read_timestamp_seconds") == first_read
                    and time.monotonic() - started < 900
                ),
            )
            full_read_s = time.monotonic() - started
        finally:
            stop_process(process)
    return {
        "looks_p99_ms": looks.p99_ms,
        "looks_requests_per_s": looks.requests_per_s,
        "looks_errors": looks.errors,
        "full_read_p99_ms": full.p99_ms,
        "full_read_requests_per_s": full.requests_per_s,
        "full_read_errors": full.errors,
        "full_read_window_s": full_read_s,
    }


@contextmanager
def _logging_in(server: SqlServer, users: int, per_second: int) -> Iterator[None]:
    """Writes `per_second` logins a second on a thread while the block runs; puts the rows back afterwards."""
    stop = threading.Event()
    undo: list[tuple[Any, ...]] = []

    def write() -> None:
        picker = random.Random(7)
        with _writer(server) as writer:
            while not stop.wait(1 / per_second):
                undo.extend(_log_in(writer, [f"user{picker.randrange(users)}"], int(time.time())))

    thread = threading.Thread(target=write)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with _writer(server) as writer:
            _put_back(writer, list(reversed(undo)))


def _sample(url: str, name: str) -> float | None:
    """The first sample of `name` in /metrics, or None."""
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return None


def _equals(active: Callable[[], float | None], value: float) -> bool:
    return active() == value


@contextmanager
def _serving(server: SqlServer, interval: int) -> Iterator[Callable[[], float | None]]:
    """`serve --sql` as a command; yields what its /metrics says of the users active in a day."""
    port = free_port()
    command = [sys.executable, "-m", "prosody_lastlog", "serve", "--sql", server.url(), "--listen", f"127.0.0.1:{port}"]
    command += ["--sql-interval", f"{interval}s", "--window", "1d"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield partial(_active_1d, f"http://127.0.0.1:{port}/metrics")
        finally:
            stop_process(process)


@contextmanager
def _pushdown_every(server: SqlServer, interval: int) -> Iterator[Callable[[], float | None]]:
    """The pushdown every `interval` seconds on a thread, as serve counted SQL before; yields its last count of the
    users active in a day."""
    from prosody_lastlog.core.windows import Window  # noqa: PLC0415

    reader = SqlReader(parse_sql_url(server.url()), method="pushdown")
    last: list[float | None] = [None]
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            counts = reader.count(now=int(time.time()), windows=[Window(86400, "1d")]).counts
            last[0] = float(sum(c.active["1d"] for c in counts.values()))
            stop.wait(interval)

    thread = threading.Thread(target=count, daemon=True)
    thread.start()
    try:
        yield lambda: last[0]
    finally:
        stop.set()
        thread.join()


def _active_1d(url: str) -> float | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("prosody_active_users{")]
    return sum(values) if values else None


def _wait(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {seconds:.0f} s for {what}")
        time.sleep(0.05)


def summary(seconds: list[float]) -> str:
    """Median and range of some seconds."""
    return f"median {statistics.median(seconds):.1f} s (min {min(seconds):.1f}, max {max(seconds):.1f})"


def seed_transfer(server: SqlServer) -> Transfer:
    """What the seed's pattern moves: each host's user list, then every lastlog2 row's key, type and value (the
    gets return them all), summed in the database rather than moved again."""
    connection = connect(parse_sql_url(server.url()))
    try:
        ((users, user_bytes),) = connection.query(
            'SELECT COUNT(*), COALESCE(SUM(LENGTH("user")), 0) FROM (SELECT DISTINCT "host", "user" FROM "prosody" '
            "WHERE \"store\" = 'lastlog2') u"
        )
        ((rows, row_bytes),) = connection.query(
            'SELECT COUNT(*), COALESCE(SUM(LENGTH("key") + LENGTH("type") + LENGTH("value")), 0) FROM "prosody" '
            "WHERE \"store\" = 'lastlog2'"
        )
    finally:
        connection.close()
    return Transfer(int(users) + int(rows), int(user_bytes) + int(row_bytes))


def refresh_figures(server: SqlServer, users: int, *, repeat: int, changes: int) -> dict[str, float]:
    """Rows and bytes the seed and the pushdown move, a full read, and one steady-state refresh after `changes`
    logins."""
    from prosody_lastlog.core.windows import DEFAULT_WINDOWS  # noqa: PLC0415

    seed = seed_transfer(server)
    with counting_transfer() as pushdown:
        SqlReader(parse_sql_url(server.url()), method="pushdown").count(now=int(time.time()), windows=DEFAULT_WINDOWS)
    full_s, steady = time_steady(server, users, changes, repeat)
    return {
        "seed_rows": seed.rows,
        "seed_bytes": seed.bytes,
        "pushdown_rows": pushdown.rows,
        "pushdown_bytes": pushdown.bytes,
        "full_read_s": full_s,
        "changes": changes,
        "steady_s": steady.seconds,
        "steady_accounts": steady.accounts,
        "steady_rows": steady.moved.rows,
        "steady_bytes": steady.moved.bytes,
        "steady_find_s": steady.find_seconds,
        "steady_registered_s": steady.registered_seconds,
        "follow_s": steady.follow_seconds,
        "follow_rows": steady.follow_moved.rows,
        "follow_bytes": steady.follow_moved.bytes,
    }

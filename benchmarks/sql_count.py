"""SQL counting benchmark: N users on 3 hosts in PostgreSQL and MariaDB, the seed's access pattern against ours.

Rows are those Prosody 0.12's mod_storage_sql writes for mod_lastlog2 (util.json's text: no spaces, `ip` before or
after `timestamp` as Lua's hash order falls), in the scattered order a live server's logins leave them; they are
bulk-loaded into a fresh database that is dropped afterwards (with --reuse, into one kept for the next run with
--reuse: loading 1M users into MariaDB takes minutes). In the same run, on the same data, medians of --repeat:

  seed      mod_measure_active_users' access pattern on SQL: users() (SELECT DISTINCT "user" per host), then one
            keyval get (SELECT "key", "type", "value" ... WHERE host, user and store) per user, a round trip each,
            as mod_storage_sql issues them. Above --seed-sample users, the gets of an even sample of the users
            are timed and scaled up linearly (the output says so); --seed-full times them all.
  pushdown  SqlReader's count: the aggregate in the engine, on PARTS connections at once; then on one connection
  floors    a bare scan of the rows, and the per-account grouping alone (the pushdown's GROUP BY without JSON or
            aggregates, one connection): no exact count can do less than either
  stream    (--stream) the row stream the reader falls back to
  refresh   (sql_refresh.py) the rows and bytes the seed and the pushdown move to the tool; serve's full read
            and one of its refreshes between full reads after --changes logins; and, with --latency-samples,
            seconds from a login written to the table to the counts showing it (serve, and the pushdown as before).
            MariaDB gets a buffer pool twice the table's size for the run, as a DBA would give it.

Counts must agree: the pushdown's with the seed's (when the seed runs in full) and with the stream's.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sql_refresh import buffer_pool_for, login_latencies, metrics_under_refreshes, refresh_figures, summary

from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.prosody.sql_settings import parse_sql_url
from prosody_lastlog.sources import sql_queries as queries
from prosody_lastlog.sources.database import Connection, connect
from prosody_lastlog.sources.sql import PARTS, SqlReader
from tests import prosody_table
from tests.sql_servers import SqlServer, fresh_mysql_database, fresh_postgres_database

NOW = 1_763_900_000
DAY = 86400
HOSTS = ("example.com", "chat.example.org", "münchen.example")
SERVERS: dict[str, Callable[[], AbstractContextManager[SqlServer]]] = {
    "PostgreSQL": fresh_postgres_database,
    "MySQL": fresh_mysql_database,
}
DATA_VERSION = 1  # part of a kept database's name: bump it when rows() changes
SEED_SAMPLE = 20_000  # users whose gets the seed times, at most; the rest is scaled up
Counts = dict[str, list[int]]  # active users per host, per DEFAULT_WINDOWS


def rows(users: int, seed: int = 42) -> Iterator[tuple[str, str, str, str, str, str]]:
    """lastlog2 rows for `users` users: registered, usually a login, often a logout; each key's rows in a
    random user order, so that a user's rows lie far apart, as on a server where logins rewrite them."""
    rng = random.Random(seed)
    logins: list[int | None] = []
    logouts: list[int | None] = []
    for _ in range(users):
        login = NOW - rng.randrange(90 * DAY) if rng.random() < 0.9 else None
        logins.append(login)
        logouts.append(login + rng.randrange(28800) if login is not None and rng.random() < 0.7 else None)
    registered = [NOW - rng.randrange(400 * DAY) for _ in range(users)]
    for key, stamps in (("registered", registered), ("login", logins), ("logout", logouts)):
        order = list(range(users))
        rng.shuffle(order)
        for i in order:
            stamp = stamps[i]
            if stamp is not None:
                ip = "192.0.2.1" if key == "login" else None
                yield (
                    HOSTS[i % len(HOSTS)],
                    f"user{i}",
                    "lastlog2",
                    key,
                    "json",
                    _util_json(stamp, ip, rng.random() < 0.5),
                )


def _util_json(timestamp: int, ip: str | None, ip_first: bool) -> str:
    members = [f'"timestamp":{timestamp}'] + ([f'"ip":"{ip}"'] if ip else [])
    return "{" + ",".join(reversed(members) if ip_first else members) + "}"


def load(server: SqlServer, users: int) -> float:
    """Creates Prosody's table and bulk-loads the rows; returns the seconds it took."""
    started = time.perf_counter()
    if server.driver == "PostgreSQL":
        import psycopg  # noqa: PLC0415

        with psycopg.connect(host=server.host, port=server.port, dbname=server.database, user=server.username) as conn:
            prosody_table.create(conn, "PostgreSQL")
            with conn.cursor().copy('COPY "prosody" FROM STDIN') as copy:
                for row in rows(users):
                    copy.write_row(row)
            conn.commit()
            conn.autocommit = True
            conn.execute('VACUUM ANALYZE "prosody"')
    else:
        import pymysql  # noqa: PLC0415

        conn = pymysql.connect(host=server.host, port=server.port, user=server.username, database=server.database)
        prosody_table.create(conn, "MySQL")
        batch: list[tuple[str, ...]] = []
        with conn.cursor() as cursor:
            for row in rows(users):
                batch.append(row)
                if len(batch) == 20000:
                    cursor.executemany("INSERT INTO `prosody` VALUES (%s, %s, %s, %s, %s, %s)", batch)
                    batch.clear()
            cursor.executemany("INSERT INTO `prosody` VALUES (%s, %s, %s, %s, %s, %s)", batch)
            cursor.execute("ANALYZE TABLE `prosody`")
        conn.commit()
        conn.close()
    return time.perf_counter() - started


_LOADED = "prosody_lastlog_bench_loaded"  # a table a kept database gets once its load has finished


@contextmanager
def kept_database(engine: str, users: int) -> Iterator[tuple[SqlServer, float | None]]:
    """A database holding `users` users' rows, kept for later runs; yields it and the seconds loading it took
    (None when an earlier run had loaded it)."""
    with SERVERS[engine]() as scratch:  # the server's settings, from a throwaway database
        server = replace(scratch, database=f"prosody_lastlog_bench_{users}_v{DATA_VERSION}")
    if _was_loaded(server):
        yield server, None
        return
    loaded = load(server, users)
    if server.driver == "PostgreSQL":
        import psycopg  # noqa: PLC0415

        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {_LOADED} (x INTEGER)")
    else:
        import pymysql  # noqa: PLC0415

        conn = pymysql.connect(host=server.host, port=server.port, user=server.username, database=server.database)
        try:
            conn.cursor().execute(f"CREATE TABLE {_LOADED} (x INTEGER)")
        finally:
            conn.close()
    yield server, loaded


def _was_loaded(server: SqlServer) -> bool:
    """Whether `server.database` was fully loaded; if not, (re)creates it empty."""
    if server.driver == "PostgreSQL":
        import psycopg  # noqa: PLC0415

        with psycopg.connect(
            host=server.host, port=server.port, dbname="postgres", user=server.username, autocommit=True
        ) as admin:
            if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (server.database,)).fetchone():
                with psycopg.connect(server.url()) as conn:
                    if conn.execute("SELECT to_regclass(%s)", (_LOADED,)).fetchone() != (None,):
                        return True
                admin.execute(f'DROP DATABASE "{server.database}"')
            admin.execute(
                f"CREATE DATABASE \"{server.database}\" ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            )
        return False
    import pymysql  # noqa: PLC0415

    admin = pymysql.connect(host=server.host, port=server.port, user=server.username, autocommit=True)
    try:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
                (server.database, _LOADED),
            )
            if cursor.fetchone():
                return True
            cursor.execute(f"DROP DATABASE IF EXISTS `{server.database}`")
            cursor.execute(f"CREATE DATABASE `{server.database}` CHARACTER SET utf8mb4")
        return False
    finally:
        admin.close()


def time_method(server: SqlServer, method: str, repeat: int, parts: int = PARTS) -> tuple[float, Counts]:
    """Median seconds of `repeat` counts by SqlReader, and the counts."""
    reader = SqlReader(parse_sql_url(server.url()), method=method, parts=parts)
    seconds, counts = [], {}
    for _ in range(repeat):
        started = time.perf_counter()
        result = reader.count(now=NOW, windows=DEFAULT_WINDOWS)
        seconds.append(time.perf_counter() - started)
        assert set(result.methods.values()) == {method}, result.methods
        counts = {host: [c.active[w.label] for w in DEFAULT_WINDOWS] for host, c in result.counts.items()}
    return statistics.median(seconds), counts


def time_seed_pattern(server: SqlServer, repeat: int, sample: int | None = SEED_SAMPLE) -> tuple[float, Counts | None]:
    """Median seconds of mod_measure_active_users' queries (users(), a get per user) and its counts; above
    `sample` users only an even sample's gets run, scaled up linearly, and there are no counts (None)."""
    seconds, counts = [], None
    for _ in range(repeat):
        run = _seed_run(server, sample)
        seconds.append(run[0])
        counts = run[1]
    return statistics.median(seconds), counts


def _seed_run(server: SqlServer, sample: int | None) -> tuple[float, Counts | None]:
    connection = connect(parse_sql_url(server.url()))
    try:
        started = time.perf_counter()
        listed = {host: [user for (user,) in _seed_query(connection, _USERS, (host, "lastlog2"))] for host in HOSTS}
        users_s = time.perf_counter() - started
        total = sum(len(names) for names in listed.values())
        step = 1 if sample is None or total <= sample else math.ceil(total / sample)
        counts: Counts = {host: [0] * len(DEFAULT_WINDOWS) for host in HOSTS if listed[host]}
        gets = 0
        started = time.perf_counter()
        for host, names in listed.items():
            for user in names[::step]:
                last = _seed_last_active(_seed_query(connection, _GET, (host, user, "lastlog2")))
                gets += 1
                for i, window in enumerate(DEFAULT_WINDOWS):
                    counts[host][i] += 1 if NOW - last < window.seconds else 0
        gets_s = time.perf_counter() - started
    finally:
        connection.close()
    if step == 1:
        return users_s + gets_s, counts
    return users_s + gets_s * total / gets, None


_USERS = 'SELECT DISTINCT "user" FROM "prosody" WHERE "host"=? AND "store"=?'
_GET = 'SELECT "key","type","value" FROM "prosody" WHERE "host"=? AND "user"=? AND "store"=?'


def _seed_query(connection: Connection, sql: str, params: tuple[str, ...]) -> list[tuple[Any, ...]]:
    if connection.settings.driver == "PostgreSQL":  # LuaDBI prepares its statements; so does this
        return connection.raw.execute(sql.replace("?", "%s"), params, prepare=True).fetchall()  # type: ignore[no-any-return]
    return connection.query(sql, params)


def _seed_last_active(rows: Sequence[tuple[Any, ...]]) -> float:
    """math.max(login.timestamp or 0, logout.timestamp or 0) over a keyval get's rows, as the seed does."""
    record = {key: json.loads(value) for key, kind, value in rows if kind == "json"}
    return float(max((record.get(key) or {}).get("timestamp", 0) for key in ("login", "logout")))


def time_floors(server: SqlServer, repeat: int) -> tuple[float, float]:
    """Median seconds of a bare scan of the rows, and of the pushdown's per-account grouping alone."""
    dialect = queries.DIALECTS[server.driver]
    stores = ", ".join(f"'{store}'" for store in queries.STORES)
    keys = [
        *(t.format(c='p."host"') for t in dialect.host_key),
        *(t.format(c='p."user"') for t in dialect.user_key),
        dialect.store_code.format(c='p."store"'),
    ]
    names = ", ".join(f"k{i}" for i in range(len(keys)))
    scan = f'SELECT COUNT(*) FROM "prosody" p WHERE p."store" IN ({stores})'
    group = (
        f'SELECT COUNT(*) FROM (SELECT {", ".join(f"{k} AS k{i}" for i, k in enumerate(keys))} FROM "prosody" p '
        f'WHERE p."store" IN ({stores}) GROUP BY {names}{dialect.unordered}) g'
    )
    connection = connect(parse_sql_url(server.url()))
    try:
        for setting in dialect.session:
            connection.query(setting)
        scan_s = statistics.median(_timed(connection, scan) for _ in range(repeat))
        return scan_s, statistics.median(_timed(connection, group) for _ in range(repeat))
    finally:
        connection.close()


def _timed(connection: Connection, sql: str) -> float:
    started = time.perf_counter()
    connection.query(sql)
    return time.perf_counter() - started


def _line(label: str, seconds: float, note: str) -> None:
    print(f"  {label:<34} {seconds:9.2f} s   {note}")


def _refresh_part(server: SqlServer, args: argparse.Namespace, *, seed_s: float, pushdown_s: float) -> dict[str, Any]:
    """The refresh figures (sql_refresh.py), printed, and the login-to-counts latencies if asked for."""
    figures: dict[str, Any] = refresh_figures(server, args.users, repeat=args.repeat, changes=args.changes)
    follows = server.driver == "MySQL"  # --sql-binlog follows MariaDB and MySQL only
    for name in ("seed", "pushdown", "steady", *(["follow"] if follows else [])):
        rows, size = int(figures[f"{name}_rows"]), int(figures[f"{name}_bytes"])
        print(f"  moved to the tool, {name:<9} {rows:>11,} rows {size:>13,} bytes")
    _line(
        "serve: full read (start, reconcile)",
        figures["full_read_s"],
        f"/ pushdown {figures['full_read_s'] / pushdown_s:.1f}x",
    )
    steady = figures["steady_s"]
    _line(
        f"serve: a look after {args.changes:,} logins",
        steady,
        f"{int(figures['steady_accounts']):,} accounts read again; / pushdown {steady / pushdown_s:.3f}, "
        f"/ seed {steady / seed_s:.4f}",
    )
    print(
        f"  {'':<47} of it: finding them {figures['steady_find_s']:.2f} s, "
        f"recounting registered accounts {figures['steady_registered_s']:.2f} s"
    )
    if follows:
        _line(
            f"serve --sql-binlog: after {args.changes:,} logins",
            figures["follow_s"],
            f"the accounts the log names read again; / pushdown {figures['follow_s'] / pushdown_s:.3f}",
        )
    if args.load_seconds:
        under = metrics_under_refreshes(
            server, args.users, threads=4, seconds=args.load_seconds, interval=5, reconcile=args.load_seconds + 10
        )
        figures |= {f"metrics_{name}": value for name, value in under.items()}
        print(
            f"  /metrics p99 under 4 clients: {under['looks_p99_ms']:.2f} ms while looking every 5 s "
            f"(10 logins/s), {under['full_read_p99_ms']:.2f} ms during a full read "
            f"({under['full_read_window_s']:.0f} s); {under['looks_errors'] + under['full_read_errors']:.0f} errors"
        )
    if args.latency_samples:
        latencies = login_latencies(server, args.users, args.latency_interval, args.latency_samples)
        figures |= {"latency_interval_s": args.latency_interval, "latency_s": latencies}
        for name, seconds in latencies.items():
            print(f"  login -> counts, {name} every {args.latency_interval} s: {summary(seconds)}")
    return figures


@contextmanager
def _database(engine: str, users: int, *, reuse: bool) -> Iterator[tuple[SqlServer, float | None]]:
    if reuse:
        with kept_database(engine, users) as kept:
            yield kept
    else:
        with SERVERS[engine]() as server:
            yield server, load(server, users)


def _load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text(encoding="utf-8").split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--engine", choices=sorted(SERVERS), action="append")
    parser.add_argument("--seed-sample", type=int, default=SEED_SAMPLE, help="users whose gets the seed times")
    parser.add_argument("--seed-full", action="store_true", help="time the seed's gets for every user")
    parser.add_argument("--stream", action="store_true", help="also time the row stream")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--reuse", action="store_true", help="keep the loaded databases, and use kept ones")
    parser.add_argument("--changes", type=int, default=1000, help="logins before a steady-state refresh (1000)")
    parser.add_argument(
        "--latency-samples", type=int, default=3, help="logins timed from the table to the counts (3; 0: none)"
    )
    parser.add_argument("--latency-interval", type=int, default=30, help="--sql-interval for the latencies (30 s)")
    parser.add_argument(
        "--load-seconds", type=int, default=30, help="/metrics loaded while serve looks, then full-reads (30; 0: no)"
    )
    args = parser.parse_args()
    agree = True
    report: dict[str, Any] = {"users": args.users, "repeat": args.repeat, "parts": PARTS, "engines": {}}
    for engine in args.engine or sorted(SERVERS):
        with _database(engine, args.users, reuse=args.reuse) as (server, loaded), buffer_pool_for(server) as pool:
            figures: dict[str, Any] = {"load_s": loaded or 0.0, "reused": loaded is None, "cache": pool}
            how = "reused a kept database of" if loaded is None else f"loaded in {loaded:.1f} s:"
            print(f"{engine}: {how} {args.users:,} users; load average {_load_average()}; {pool}")
            seed_s, seeded = time_seed_pattern(server, args.repeat, None if args.seed_full else args.seed_sample)
            pushdown_s, pushed = time_method(server, "pushdown", args.repeat)
            single_s, single = time_method(server, "pushdown", args.repeat, parts=1)
            scan_s, group_s = time_floors(server, args.repeat)
            figures |= {"seed_s": seed_s, "seed_sampled": seeded is None, "pushdown_s": pushdown_s}
            figures |= {"pushdown_1_connection_s": single_s, "scan_floor_s": scan_s, "group_floor_s": group_s}
            how = "" if seeded is not None else f" (gets of {args.seed_sample:,} users timed, scaled up linearly)"
            _line("seed: users() + a get per user", seed_s, how.strip())
            _line(f"pushdown, {PARTS} connections at once", pushdown_s, f"seed / pushdown {seed_s / pushdown_s:.1f}x")
            _line("pushdown, 1 connection", single_s, f"seed / pushdown {seed_s / single_s:.1f}x")
            _line("floor: bare scan of the rows", scan_s, f"pushdown / scan {pushdown_s / scan_s:.1f}x")
            _line("floor: per-account GROUP BY", group_s, f"pushdown (1 connection) / it {single_s / group_s:.1f}x")
            same = pushed == single and (seeded is None or pushed == seeded)
            versus = ["1 connection"] + (["seed"] if seeded is not None else [])
            if args.stream:
                stream_s, streamed = time_method(server, "stream", args.repeat)
                figures["stream_s"] = stream_s
                _line("stream", stream_s, f"stream / pushdown {stream_s / pushdown_s:.1f}x")
                same &= pushed == streamed
                versus.append("stream")
            print(f"  counts agree: {'yes' if same else 'NO'} (pushdown with {', '.join(versus)}) {pushed}")
            figures |= _refresh_part(server, args, seed_s=seed_s, pushdown_s=pushdown_s)
            figures["counts_agree"] = same
            report["engines"][engine] = figures
            agree &= same
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""SQL counting benchmark: 1M users on 3 hosts in PostgreSQL and MariaDB, counted by pushdown vs streaming.

Rows have the exact shape Prosody 0.12's mod_storage_sql writes for mod_lastlog2 (checked against real
Prosody output by the SQL fixtures); they are bulk-loaded into a fresh database that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prosody_lastlog.database import parse_sql_url
from prosody_lastlog.readers.sql import SqlReader
from prosody_lastlog.windows import DEFAULT_WINDOWS
from tests import prosody_table
from tests.sql_servers import SqlServer, fresh_mysql_database, fresh_postgres_database

NOW = 1_763_900_000
DAY = 86400
HOSTS = ("example.com", "chat.example.org", "münchen.example")
SERVERS: dict[str, Callable[[], AbstractContextManager[SqlServer]]] = {
    "PostgreSQL": fresh_postgres_database,
    "MySQL": fresh_mysql_database,
}


def rows(users: int, seed: int = 42) -> Iterator[tuple[str, str, str, str, str, str]]:
    """lastlog2 rows for `users` users: registered, usually a login, often a logout."""
    rng = random.Random(seed)
    for i in range(users):
        host, user = HOSTS[i % len(HOSTS)], f"user{i}"
        yield host, user, "lastlog2", "registered", "json", json.dumps({"timestamp": NOW - rng.randrange(400 * DAY)})
        if rng.random() < 0.9:
            login = NOW - rng.randrange(90 * DAY)
            yield host, user, "lastlog2", "login", "json", json.dumps({"timestamp": login, "ip": "192.0.2.1"})
            if rng.random() < 0.7:
                yield host, user, "lastlog2", "logout", "json", json.dumps({"timestamp": login + rng.randrange(28800)})


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
            conn.execute('ANALYZE "prosody"')
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


def time_method(server: SqlServer, method: str, repeat: int) -> tuple[float, dict[str, list[int]]]:
    """Median seconds of `repeat` counts, and the counts."""
    reader = SqlReader(parse_sql_url(server.url()), method=method)
    seconds, counts = [], {}
    for _ in range(repeat):
        started = time.perf_counter()
        result = reader.count(now=NOW, windows=DEFAULT_WINDOWS)
        seconds.append(time.perf_counter() - started)
        assert set(result.methods.values()) == {method}, result.methods
        counts = {host: [c.active[w.label] for w in DEFAULT_WINDOWS] for host, c in result.counts.items()}
    return statistics.median(seconds), counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--engine", choices=sorted(SERVERS), action="append")
    args = parser.parse_args()
    agree = True
    for engine in args.engine or sorted(SERVERS):
        with SERVERS[engine]() as server:
            print(f"{engine}: loaded {args.users} users in {load(server, args.users):.1f} s")
            pushdown, pushed = time_method(server, "pushdown", args.repeat)
            stream, streamed = time_method(server, "stream", args.repeat)
            ratio = stream / pushdown
            print(f"  pushdown median {pushdown:7.2f} s   stream median {stream:7.2f} s   stream/pushdown {ratio:.1f}x")
            print(f"  counts agree: {'yes' if pushed == streamed else 'NO'} {pushed}")
            agree &= pushed == streamed
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())

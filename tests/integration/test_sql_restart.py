"""`serve` survives its SQL server going away and coming back: PostgreSQL and MariaDB, each a private server.

The rows are those real Prosody wrote into fixtures/cases/sample-sqlite/prosody.sqlite, copied into a private
server (tests/integration/private_sql.py) that the test stops and starts again while the daemon runs. The shared
servers on 5432 and 3306 are never touched.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from tests import prosody_table
from tests.conftest import CASES
from tests.integration.private_sql import PrivateServer, private_mariadb, private_postgres

pytestmark = pytest.mark.integration

CASE = CASES / "sample-sqlite"
EXPECTED = json.loads((CASE / "expected.json").read_text())
SQL_INTERVAL_SECONDS = 0.3
WAIT_SECONDS = 20.0
DATABASE = "prosody"

SERVERS: dict[str, Callable[[], AbstractContextManager[PrivateServer]]] = {
    "postgresql": private_postgres,
    "mariadb": private_mariadb,
}


def fixture_rows() -> list[prosody_table.Row]:
    """The `prosody` table real Prosody wrote for the sample case, row by row."""
    with closing(sqlite3.connect(f"file:{CASE / 'prosody.sqlite'}?mode=ro", uri=True)) as db:
        rows: list[prosody_table.Row] = db.execute(
            'SELECT "host", "user", "store", "key", "type", "value" FROM "prosody"'
        ).fetchall()
    assert rows, f"no rows in {CASE / 'prosody.sqlite'}"
    return rows


def load_fixture(server: PrivateServer) -> None:
    """Creates Prosody's table in a new database on `server` and copies the fixture's rows into it."""
    server.create_database(DATABASE)
    with closing(server.connect(DATABASE)) as connection:
        prosody_table.create(connection, server.driver)
        prosody_table.replace_rows(connection, server.driver, fixture_rows())


@dataclass(frozen=True)
class Scrape:
    """What one /metrics scrape says."""

    active: dict[tuple[str, str], float]  # (host, window) -> active users
    up: dict[str, float]  # source -> prosody_lastlog_source_up
    last_refresh: dict[str, float]  # source -> prosody_lastlog_last_refresh_timestamp_seconds


@dataclass(frozen=True)
class Observed:
    """/metrics and /healthz at one moment."""

    metrics: Scrape
    health: tuple[int, str]  # status, body

    def up(self, source: str) -> bool:
        """The source is up and the daemon healthy (/healthz: ok, then how the source finds changes)."""
        status, body = self.health
        return self.metrics.up == {source: 1.0} and status == 200 and body.startswith("ok\n")

    def down(self, source: str) -> bool:
        """The source is down and /healthz fails naming it."""
        status, body = self.health
        return self.metrics.up == {source: 0.0} and status == 503 and body.startswith(f"{source}: ")


def get(daemon: Daemon, path: str) -> tuple[int, str]:
    url = daemon.server.url.replace("/metrics", path)
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


def scrape(daemon: Daemon) -> Scrape:
    status, text = get(daemon, "/metrics")
    assert status == 200, f"/metrics answered {status}: {text}"
    active, up, last = {}, {}, {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "prosody_active_users":
                active[sample.labels["host"], sample.labels["window"]] = sample.value
            elif sample.name == "prosody_lastlog_source_up":
                up[sample.labels["source"]] = sample.value
            elif sample.name == "prosody_lastlog_last_refresh_timestamp_seconds":
                last[sample.labels["source"]] = sample.value
    return Scrape(active, up, last)


def wait_until(what: str, condition: Callable[[], bool], last_seen: Sequence[Observed]) -> None:
    """Polls `condition` until true; fails naming `what` and what was last seen."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT_SECONDS} s; last seen: {list(last_seen)}")
        time.sleep(0.05)


@pytest.fixture(params=sorted(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[PrivateServer]:
    with SERVERS[request.param]() as running:
        load_fixture(running)
        yield running


@pytest.fixture
def daemon(server: PrivateServer) -> Iterator[Daemon]:
    plan = plan_sources(SourceOptions(sql_url=server.url(DATABASE)), environ={})
    options = ServeOptions(port=0, sql_interval_seconds=SQL_INTERVAL_SECONDS, as_of=EXPECTED["now"])
    running = Daemon(plan, windows=DEFAULT_WINDOWS, options=options)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_serve_survives_a_restarted_sql_server(server: PrivateServer, daemon: Daemon) -> None:
    expected = {(host, w): float(n) for host, by in EXPECTED["active_users"].items() for w, n in by.items()}
    [source] = [s.name for s in daemon.refresher.sources]
    assert f":{server.port}/{DATABASE}" in source, source
    seen: list[Observed] = []

    def observe() -> Observed:
        """Scrapes /metrics and /healthz; the counts must be the expected ones at every moment."""
        now = Observed(scrape(daemon), get(daemon, "/healthz"))
        seen[:] = [now]
        assert now.metrics.active == expected, f"{server.driver}: the served counts changed: {now.metrics.active}"
        return now

    # Up: the counts real Prosody reported, the source up, healthy, refreshed periodically.
    first = observe()
    assert first.metrics.up == {source: 1.0}, first
    assert first.up(source), first
    how = "by version" if server.driver == "PostgreSQL" else "by time"
    assert first.health[1].splitlines()[1].startswith(f"{source}: changes found {how}, last full read "), first
    wait_until(
        "a periodic SQL refresh while the server runs",
        lambda: observe().metrics.last_refresh[source] > first.metrics.last_refresh[source],
        seen,
    )

    # Down: the source goes down and /healthz names it, while the last good counts stay served.
    server.stop()
    assert not server.running
    wait_until(
        f"{server.driver} stopped: source_up 0 and /healthz 503 naming the source",
        lambda: observe().down(source),
        seen,
    )
    down = observe()
    time.sleep(3 * SQL_INTERVAL_SECONDS)  # failed refreshes go on; nothing served may change
    still_down = observe()
    assert still_down.down(source), still_down
    assert still_down.metrics.last_refresh == down.metrics.last_refresh, "a failed refresh moved the refresh time"
    assert still_down.health[1].startswith(f"{source}: cannot connect"), still_down.health

    # Back: the same data directory on the same port; the daemon recovers by itself.
    server.start()
    wait_until(
        f"{server.driver} restarted: source_up 1 and /healthz 200",
        lambda: observe().up(source),
        seen,
    )
    assert observe().metrics.last_refresh[source] > down.metrics.last_refresh[source]

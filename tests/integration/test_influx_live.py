"""The InfluxDB exporter against Debian's real influxd 1.6.7: pushed through create()/publish()/flush(), read back
with InfluxQL, with and without authentication and gzip; influxd's own parser accepts every line we write.

influxd 1.6.7 has no /api/v2/write (it came with 1.8): that request format is checked in tests/test_influx.py.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from exporters.families import COUNT_FAMILIES
from exporters.influx import create, format_line_protocol, post_lines, write_url
from exporters.points import aligned, points_of
from exporters.runner import ExportError, PushExporter, RejectedBatchError
from prosody_lastlog.core.counting import HostCounts, Snapshot
from prosody_lastlog.core.model import Store
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from tests.integration.push_servers import INFLUX_ADMIN, INFLUX_PASSWORD, InfluxServer, influxd
from tests.integration.servers import free_port

pytestmark = pytest.mark.integration

TAKEN = 1_763_900_017.5  # stamped 1763899980, the start of its minute
Stored = dict[tuple[str, str, str | None, str], int]  # (measurement, host, window, RFC 3339 time) -> value


def host_counts(seed: int) -> HostCounts:
    return HostCounts(
        Store.LASTLOG2,
        activity_records=20 + seed,
        never_active=seed,
        disabled=0,
        future=0,
        active={"1d": seed, "7d": seed + 3, "30d": seed + 7},
        registered={"1d": 0, "7d": 1, "30d": seed + 1},
        connected=seed % 2,
    )


def snapshot(hosts: list[str], taken: float = TAKEN) -> Snapshot:
    return Snapshot(taken, {host: host_counts(seed) for seed, host in enumerate(hosts)}, DEFAULT_WINDOWS)


def rfc3339(timestamp: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def expected(*snapshots: Snapshot, stored_host: dict[str, str] | None = None) -> Stored:
    """What InfluxDB should hold after the snapshots were pushed with the default interval."""
    renamed = stored_host or {}
    points = [point for shot in snapshots for point in points_of(shot, timestamp=aligned(shot.taken, 60))]
    return {(f"prosody_{p.name}", renamed.get(p.host, p.host), p.window, rfc3339(p.timestamp)): p.value for p in points}


def stored(influx: InfluxServer, database: str = "prosody") -> Stored:
    """Every point of our families in the database, read back with InfluxQL."""
    return {
        (f"prosody_{name}", row["host"], row.get("window"), row["time"]): row["value"]
        for name in (family.name for family in COUNT_FAMILIES)
        for row in influx.rows(database, f'SELECT "value" FROM "prosody_{name}" GROUP BY *')
    }


@contextmanager
def running(exporter: PushExporter) -> Iterator[PushExporter]:
    try:
        exporter.start()
        yield exporter
    finally:
        exporter.close()


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_pushed_points_are_stored_with_their_values_and_second_timestamps(tmp_path: Path, compress: bool) -> None:
    first, second = snapshot(["example.com", "münchen.example"]), snapshot(["example.com"], TAKEN + 60)
    with influxd(tmp_path) as influx:
        influx.query(None, "CREATE DATABASE prosody")
        with running(create(url=influx.url, gzip=compress)) as exporter:
            exporter.publish(first)
            exporter.publish(second)
            assert exporter.flush(10)
            assert exporter.status().errors_total == 0
        assert stored(influx) == expected(first, second)
        # Integers stay integers (a float field would clash with them later), times are whole seconds.
        query = 'SELECT "value" FROM "prosody_activity_records" WHERE "host" = \'example.com\''
        [series] = influx.query("prosody", query)
        assert series["values"] == [["2025-11-23T12:13:00Z", 20], ["2025-11-23T12:14:00Z", 20]]
        fields = influx.query("prosody", "SHOW FIELD KEYS")
        assert {tuple(value) for series in fields for value in series["values"]} == {("value", "integer")}


def test_authentication_and_a_wrong_password(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shot = snapshot(["example.com"])
    password_file = tmp_path / "influx-password"
    password_file.write_text(INFLUX_PASSWORD + "\n")
    with influxd(tmp_path / "influxd", auth=True) as influx:
        influx.query(None, "CREATE DATABASE prosody")
        with running(create(url=influx.url, username=INFLUX_ADMIN, password_file=str(password_file))) as exporter:
            exporter.publish(shot)
            assert exporter.flush(10)
            assert exporter.status().errors_total == 0
        assert stored(influx) == expected(shot)

        wrong = "wrong-" + INFLUX_PASSWORD
        url = write_url(influx.url, "/write", {"db": "prosody", "precision": "s"})
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(ExportError) as refused:
                auth = {"Authorization": "Basic " + base64.b64encode(f"admin:{wrong}".encode()).decode()}
                post_lines(url, b"prosody_activity_records value=1i\n", headers=auth, compress=False, timeout=5)
            assert str(refused.value) == f'{url} answered 401: {{"error":"authorization failed"}}'
            with running(create(url=influx.url, username=INFLUX_ADMIN, password=wrong)) as exporter:
                exporter.publish(shot)
                deadline = time.monotonic() + 10
                while exporter.status().errors_total == 0 and time.monotonic() < deadline:
                    time.sleep(0.02)
                status = exporter.status()
                assert status.errors_total >= 1
                assert status.queue_length == len(points_of(shot, timestamp=0))  # kept for the retry
        assert "answered 401" in caplog.text
        assert wrong not in caplog.text and INFLUX_PASSWORD not in caplog.text and wrong not in str(refused.value)


# Host names influxd must take as they are (escaped), and the three characters replaced by a space.
ODD_HOSTS = {
    "example.com": "example.com",
    "with space": "with space",
    "comma,host": "comma,host",
    "equals=host": "equals=host",
    "=leading": "=leading",
    "trailing ": "trailing ",
    " leading": " leading",
    "münchen.example": "münchen.example",
    "日本語.example": "日本語.example",
    "emoji 🎉,=": "emoji 🎉,=",
    "#hash": "#hash",
    '"quoted"': '"quoted"',
    "tab\there": "tab\there",
    "line\u2028separator": "line\u2028separator",
    "back\\slash": "back slash",
    "ends\\": "ends ",
    "new\nline": "new line",
    "cr\r\n": "cr  ",
}


def test_influxd_accepts_every_line_and_stores_the_host_names(tmp_path: Path) -> None:
    shot = snapshot(list(ODD_HOSTS))
    with influxd(tmp_path) as influx:
        influx.query(None, "CREATE DATABASE prosody")
        url = write_url(influx.url, "/write", {"db": "prosody", "precision": "s"})
        body = format_line_protocol(points_of(shot, timestamp=aligned(TAKEN, 60)))
        for line in body.splitlines(keepends=True):  # each alone: a 400 (partial write, unable to parse) raises
            post_lines(url, line, headers={}, compress=False, timeout=5)
        assert len(body.splitlines()) == len(ODD_HOSTS) * (2 * len(DEFAULT_WINDOWS) + 3)
        tag_values = influx.query("prosody", 'SHOW TAG VALUES FROM "prosody_activity_records" WITH KEY = "host"')
        assert {value for _, value in tag_values[0]["values"]} == set(ODD_HOSTS.values())
        assert stored(influx) == expected(shot, stored_host=ODD_HOSTS)


def test_rejections_by_influxd(tmp_path: Path) -> None:
    with influxd(tmp_path) as influx:
        influx.query(None, "CREATE DATABASE prosody")
        url = write_url(influx.url, "/write", {"db": "prosody", "precision": "s"})
        post_lines(url, b"prosody_activity_records,host=a value=1i 1763899980\n", headers={}, compress=False, timeout=5)
        # A float where an integer is stored: influxd writes the good line, drops this one: the batch is refused.
        clash = (
            b"prosody_activity_records,host=b value=2i 1763899980\n"
            b"prosody_activity_records,host=c value=1.5 1763899980\n"
        )
        with pytest.raises(RejectedBatchError, match=r"answered 400: .*partial write: field type conflict"):
            post_lines(url, clash, headers={}, compress=False, timeout=5)
        # A missing database is the target's problem, not the batch's: retried (the admin may create it).
        missing = write_url(influx.url, "/write", {"db": "nope", "precision": "s"})
        with pytest.raises(ExportError, match=r"answered 404: .*database not found") as lost:
            post_lines(missing, b"prosody_activity_records value=1i\n", headers={}, compress=False, timeout=5)
        assert not isinstance(lost.value, RejectedBatchError)
        # influxd 1.6.7 predates /api/v2/write: a 404 (retried), named with its URL.
        v2 = write_url(influx.url, "/api/v2/write", {"org": "-", "bucket": "prosody", "precision": "s"})
        with pytest.raises(ExportError, match="answered 404"):
            post_lines(v2, b"prosody_activity_records value=1i\n", headers={}, compress=False, timeout=5)


def test_points_pushed_while_influxd_is_down_arrive_in_order_once_it_is_back(tmp_path: Path) -> None:
    port = free_port()  # influxd comes up again where we push
    shots = [snapshot(["example.com"], TAKEN + 60 * minute) for minute in range(4)]
    with running(create(url=f"http://127.0.0.1:{port}", timeout=2.0)) as exporter:
        with influxd(tmp_path, port=port) as influx:
            influx.query(None, "CREATE DATABASE prosody")
            exporter.publish(shots[0])
            assert exporter.flush(10)
        for shot in shots[1:]:  # influxd is stopped: the refreshes go on, the points wait in the queue
            exporter.publish(shot)
        deadline = time.monotonic() + 10
        while exporter.status().errors_total == 0:
            assert time.monotonic() < deadline, exporter.status()
            time.sleep(0.05)
        assert exporter.status().queue_length == 3 * len(points_of(shots[0], timestamp=0))
        with influxd(tmp_path, port=port) as influx:  # the same data directory, restarted
            assert exporter.flush(30)
            assert stored(influx) == expected(*shots)  # every minute of the outage, nothing lost
        assert exporter.status().dropped_total == 0

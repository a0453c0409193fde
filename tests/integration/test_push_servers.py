"""Smoke tests of the push targets the exporter tests run: raw protocol writes to Debian's real servers, read back.

A missing server binary is a failure naming its Debian package, never a skip: `make test` installs them.
"""

from __future__ import annotations

import gzip
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.integration.push_servers import (
    INFLUX_ADMIN,
    INFLUX_PASSWORD,
    carbon_cache,
    influxd,
    port_bound,
    pushgateway,
    pushgateway_samples,
    run_server,
)

pytestmark = pytest.mark.integration


def post(url: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST") -> tuple[int, str]:
    """Status and body of an HTTP request; error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), bytes(response.read()).decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), bytes(exc.read()).decode()


def test_carbon_plaintext_over_tcp_and_udp(tmp_path: Path) -> None:
    with carbon_cache(tmp_path) as carbon:
        now = int(time.time())
        with socket.create_connection((carbon.host, carbon.port), timeout=5) as tcp:
            tcp.sendall(f"smoke.tcp 42.5 {now}\n".encode())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(f"smoke.udp;vhost=b.example;env=test 7 {now}\n".encode(), (carbon.host, carbon.udp_port))
        assert carbon.wait_for("smoke.tcp", {now: 42.5}) == {now: 42.5}
        # Tags are stored in carbon's order (sorted), and the series is found by either spelling.
        assert carbon.wait_for("smoke.udp;vhost=b.example;env=test", {now: 7.0}) == {now: 7.0}
        assert carbon.series() == {"smoke.tcp", "smoke.udp;env=test;vhost=b.example"}
        ports = (carbon.port, carbon.udp_port)
    assert not port_bound(ports[0], "tcp")
    assert not port_bound(ports[1], "udp")


def test_influxd_line_protocol_write_and_query(tmp_path: Path) -> None:
    with influxd(tmp_path) as influx:
        influx.query(None, "CREATE DATABASE smoke")
        now = int(time.time())
        line = f"active_users,host=example.com,window=1d value=4i,ratio=0.5 {now}\n"
        assert post(f"{influx.url}/write?db=smoke&precision=s", line.encode()) == (204, "")
        gzipped = gzip.compress(f"active_users,host=gz.example,window=1d value=2i {now}\n".encode())
        assert post(f"{influx.url}/write?db=smoke&precision=s", gzipped, {"Content-Encoding": "gzip"})[0] == 204
        rows = influx.rows("smoke", "SELECT * FROM active_users GROUP BY *")
        expected_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        assert rows == [
            {"host": "example.com", "window": "1d", "time": expected_time, "ratio": 0.5, "value": 4},
            {"host": "gz.example", "window": "1d", "time": expected_time, "ratio": None, "value": 2},
        ]
        v2 = f"{influx.url}/api/v2/write?" + urllib.parse.urlencode({"org": "", "bucket": "smoke", "precision": "s"})
        status, _ = post(v2, f"v2_smoke value=1i {now}\n".encode(), {"Authorization": "Token :"})
        version = urllib.request.urlopen(f"{influx.url}/ping", timeout=5)
        with version:
            major_minor = tuple(int(part) for part in version.headers["X-Influxdb-Version"].split(".")[:2])
        if major_minor < (1, 8):  # Debian 12 ships 1.6.7: the 2.x-compatible API came with 1.8
            assert status == 404
        else:
            assert status == 204
            assert influx.rows("smoke", "SELECT value FROM v2_smoke")[0]["value"] == 1
        url = influx.url
    assert not port_bound(int(url.rsplit(":", 1)[1]), "tcp")


def test_influxd_with_authentication(tmp_path: Path) -> None:
    with influxd(tmp_path, auth=True) as influx:
        influx.query(None, "CREATE DATABASE smoke")
        line = b"auth_smoke value=1i\n"
        assert post(f"{influx.url}/write?db=smoke", line)[0] == 401
        assert post(f"{influx.url}/write?db=smoke", line, influx.auth_headers())[0] == 204
        params = urllib.parse.urlencode({"db": "smoke", "u": INFLUX_ADMIN, "p": INFLUX_PASSWORD})
        assert post(f"{influx.url}/write?{params}", b"auth_smoke value=2i\n")[0] == 204
        assert sorted(row["value"] for row in influx.rows("smoke", "SELECT value FROM auth_smoke")) == [1, 2]


def test_pushgateway_put_and_metrics(tmp_path: Path) -> None:
    with pushgateway(tmp_path) as base:
        text = b'# TYPE smoke_users gauge\nsmoke_users{host="example.com"} 4\n'
        status, _ = post(f"{base}/metrics/job/x/instance/i", text, {"Content-Type": "text/plain"}, method="PUT")
        assert status in {200, 202}
        samples = pushgateway_samples(base, "smoke_users")
        assert samples == {frozenset({("host", "example.com"), ("job", "x"), ("instance", "i")}): 4.0}
        port = int(base.rsplit(":", 1)[1])
    assert not port_bound(port, "tcp")


@pytest.mark.parametrize(
    ("start", "package"),
    [(carbon_cache, "graphite-carbon"), (influxd, "influxdb"), (pushgateway, "prometheus-pushgateway")],
)
def test_missing_server_fails_naming_its_package(
    start: Callable[[Path], AbstractContextManager[object]],
    package: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AssertionError, match=f"Debian package '{package}'"), start(tmp_path / "server"):
        pass


def test_server_that_exits_fails_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "sh.log"
    command = ["sh", "-c", "echo no config here; exit 3"]
    expected = r"(?s)exited with status 3 before it was ready.*no config here"
    never_ready = run_server(command, package="dash", log=log, ready=lambda: False)
    with pytest.raises(AssertionError, match=expected), never_ready:
        pass

"""serve's HTTP server: HTTPS and basic auth as Prometheus' `tls_config` and `basic_auth` scrape them, keep-alive
connections and how stop() ends them, and /metrics bodies exactly as prometheus_client renders them."""

from __future__ import annotations

import base64
import http.client
import math
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporters.http import Exposition, MetricsServer, health_problems, load_credentials, load_tls
from exporters.http_transport import SWITCH_INTERVAL
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.daemon.state import LiveCounts
from prosody_lastlog.sources.plan import SourceOptions, plan_sources

ACCEPTS = [
    "",
    "text/plain;version=0.0.4",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=dots",
    "text/plain;version=1.0.0;escaping=values",
    "application/openmetrics-text",
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",  # Prometheus 2
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text;version=2.0.0;escaping=underscores",
]


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def secured(sample_tree: Path, tmp_path: Path) -> Iterator[tuple[Daemon, ssl.SSLContext]]:
    cert, key = self_signed(tmp_path)
    secrets = tmp_path / "users"
    secrets.write_text("# scrapers\nprometheus:s3cr3t pass\n")
    options = ServeOptions(port=0, tls=load_tls(cert, key), credentials=load_credentials(secrets))
    daemon = Daemon(
        plan_sources(SourceOptions(data_dir=sample_tree), environ={}), windows=DEFAULT_WINDOWS, options=options
    )
    daemon.start()
    yield daemon, ssl.create_default_context(cafile=str(cert))
    daemon.stop()


def fetch(url: str, context: ssl.SSLContext, auth: str | None = None) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5, context=context) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_https_with_basic_auth(secured: tuple[Daemon, ssl.SSLContext]) -> None:
    daemon, context = secured
    assert daemon.server.url.startswith("https://127.0.0.1:")
    assert fetch(daemon.server.url, context) == 401
    assert fetch(daemon.server.url, context, "prometheus:wrong") == 401
    assert fetch(daemon.server.url, context, "nobody:s3cr3t pass") == 401
    assert fetch(daemon.server.url, context, "prometheus:s3cr3t pass") == 200


def test_plain_http_to_the_tls_port_gets_nothing(secured: tuple[Daemon, ssl.SSLContext]) -> None:
    daemon, _ = secured
    with pytest.raises(OSError):
        urllib.request.urlopen(daemon.server.url.replace("https://", "http://"), timeout=5)


@pytest.mark.parametrize("content", ["", "# only a comment\n", "no-colon\n", ":nouser\n", "user:\n"])
def test_bad_credential_files_are_refused_with_file_and_line(content: str, tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(content)
    with pytest.raises(ValueError, match=str(path)):
        load_credentials(path)


def test_a_silent_client_does_not_block_others(secured: tuple[Daemon, ssl.SSLContext]) -> None:
    daemon, context = secured
    host, port = daemon.server.url.removeprefix("https://").split("/")[0].split(":")
    with socket.create_connection((host, int(port))):  # connects, never starts TLS
        assert fetch(daemon.server.url, context, "prometheus:s3cr3t pass") == 200


class Values(Collector):
    """Families whose values a test changes between scrapes."""

    def __init__(self) -> None:
        self.value = 1.0
        self.host = "example.com"

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily("prosody_active_users", 'Help with "quotes", \\ and\na newline.', labels=["host"])
        gauge.add_metric([self.host], self.value)
        gauge.add_metric(["münchen.example"], 12)
        counter = CounterMetricFamily("prosody_lastlog_read_problems", "Problems.", labels=["source", "reason"])
        counter.add_metric(['files "/var/lib/prosody"\\x\ny', "syntax"], 3)
        info = InfoMetricFamily("prosody_lastlog_build", "Build.")
        info.add_metric([], {"version": "1.0"})
        yield from (gauge, counter, info)


def rendered_by_prometheus_client(registry: Collector, accept: str) -> tuple[str, bytes]:
    encoder, content_type = choose_encoder(accept)
    return content_type, encoder(registry)


@pytest.mark.parametrize("accept", ACCEPTS)
def test_metrics_bodies_are_prometheus_clients_own_as_values_change(accept: str) -> None:
    values = Values()
    exposition = Exposition(values)
    for value in [1.0, 1.0, 2.0, 2, -0.0, 0.0, 0.0, math.nan, math.inf, 1e-7, 123456789.0]:
        values.value = value
        assert exposition.render(accept) == rendered_by_prometheus_client(values, accept), value
    values.host = "other.example"
    assert exposition.render(accept) == rendered_by_prometheus_client(values, accept)


def test_samples_with_timestamps_are_rendered_every_time() -> None:
    class Stamped(Collector):
        stamp = 1.0

        def collect(self) -> Iterable[Metric]:
            gauge = GaugeMetricFamily("stamped", "Stamped.", labels=["host"])
            gauge.add_metric(["a"], 1, timestamp=self.stamp)
            yield gauge

    stamped = Stamped()
    exposition = Exposition(stamped)
    for stamp in [1.0, 2.0, -0.0, 0.0]:
        stamped.stamp = stamp
        for accept in ["", "application/openmetrics-text"]:
            assert exposition.render(accept) == rendered_by_prometheus_client(stamped, accept)


def test_served_metrics_are_the_registrys(sample_tree: Path) -> None:
    options = ServeOptions(port=0, as_of=1_700_000_000)
    daemon = Daemon(
        plan_sources(SourceOptions(data_dir=sample_tree), environ={}), windows=DEFAULT_WINDOWS, options=options
    )
    daemon.start()
    try:
        host, port = daemon.server.url.removeprefix("http://").split("/")[0].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        for accept in ACCEPTS * 2:
            conn.request("GET", "/metrics", headers={"Accept": accept})
            reply = conn.getresponse()
            body = reply.read()
            assert (reply.getheader("Content-Type"), body) == rendered_by_prometheus_client(daemon.registry, accept)
        conn.close()
    finally:
        daemon.stop()


@pytest.fixture
def plain_server() -> Iterator[MetricsServer]:
    live = LiveCounts(windows=DEFAULT_WINDOWS, source_names=[])
    server = MetricsServer(Values(), live, host="127.0.0.1", port=0, max_age_seconds={})
    server.start()
    yield server
    server.stop()


def connect(server: MetricsServer) -> http.client.HTTPConnection:
    host, port = server.url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=5)


def test_a_connection_is_kept_for_the_next_request(plain_server: MetricsServer) -> None:
    conn = connect(plain_server)
    try:
        statuses, sockets = [], set()
        for path in ["/metrics", "/healthz", "/nope", "/", "/metrics"]:
            conn.request("GET", path)
            reply = conn.getresponse()
            reply.read()
            statuses.append(reply.status)
            sockets.add(conn.sock)
            assert reply.version == 11 and not reply.will_close
        assert statuses == [200, 200, 404, 200, 200]
        assert len(sockets) == 1  # no reconnection in between
        conn.request("GET", "/metrics", headers={"Connection": "close"})
        reply = conn.getresponse()
        reply.read()
        assert reply.status == 200 and reply.will_close
    finally:
        conn.close()


@pytest.mark.parametrize(
    "request_head", [b"GET /metrics HTTP/1.0\r\n\r\n", b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nGET /"]
)
def test_http_1_0_and_requests_with_a_body_get_their_reply_then_the_connection_closes(
    plain_server: MetricsServer, request_head: bytes
) -> None:
    host, port = plain_server.url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as client:
        client.sendall(request_head)
        received = b""
        while chunk := client.recv(65536):  # ends when the server closes
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 ") and received.count(b"HTTP/1.1") == 1
    assert received.endswith(generate_latest(Values()))


def test_the_switch_interval_is_lowered_while_any_server_serves() -> None:
    live = LiveCounts(windows=DEFAULT_WINDOWS, source_names=[])
    first, second = (MetricsServer(Values(), live, host="127.0.0.1", port=0, max_age_seconds={}) for _ in range(2))
    before = sys.getswitchinterval()
    first.start()
    second.start()
    first.stop()
    first.stop()
    assert sys.getswitchinterval() <= SWITCH_INTERVAL
    second.stop()
    assert sys.getswitchinterval() == before


def test_stop_ends_idle_keep_alive_connections_at_once(plain_server: MetricsServer) -> None:
    conn = connect(plain_server)
    conn.request("GET", "/metrics")
    conn.getresponse().read()
    started = time.monotonic()
    plain_server.stop()  # the connection waits for this client's next request, for up to 10 s
    assert time.monotonic() - started < 2
    conn.close()


def test_stop_ends_idle_keep_alive_tls_connections_at_once(secured: tuple[Daemon, ssl.SSLContext]) -> None:
    daemon, context = secured
    host, port = daemon.server.url.removeprefix("https://").split("/")[0].split(":")
    conn = http.client.HTTPSConnection(host, int(port), timeout=5, context=context)
    auth = "Basic " + base64.b64encode(b"prometheus:s3cr3t pass").decode()
    for headers in [{}, {"Authorization": auth}]:  # a 401 keeps the connection too
        conn.request("GET", "/metrics", headers=headers)
        conn.getresponse().read()
    started = time.monotonic()
    daemon.server.stop()
    assert time.monotonic() - started < 2
    conn.close()


def test_each_source_goes_stale_after_its_own_refresh_interval(tmp_path: Path) -> None:
    live = LiveCounts(windows=DEFAULT_WINDOWS, source_names=["files", "db"], file_sources=["files"])
    for source in ("files", "db"):
        live.succeeded(source, at=1000.0, duration=0.1, problems={})
    ages = {"files": 7800.0, "db": 185.0}
    assert health_problems(live, now=1300.0, max_age_seconds=ages) == ["db: last successful refresh 300 s ago"]
    assert health_problems(live, now=1100.0, max_age_seconds=ages) == []
    plan = plan_sources(SourceOptions(sql_url=f"sqlite:///{tmp_path / 'prosody.sqlite'}"), environ={})
    daemon = Daemon(plan, windows=DEFAULT_WINDOWS, options=ServeOptions(port=0, sql_interval_seconds=60))
    assert list(daemon._max_ages().values()) == [185.0]  # two SQL counts missed, plus a connect timeout and a minute

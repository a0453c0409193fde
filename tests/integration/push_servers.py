"""Starts the real push targets (carbon-cache, InfluxDB 1.x, the Prometheus Pushgateway) for the exporter tests.

Each context manager runs Debian's server as a subprocess on 127.0.0.1 with free ports and all its state (config,
data, log) in the directory the caller gives, waits until it is ready (or fails with the tail of its log), and stops
it when the block ends, also when the block raises. A missing binary fails, naming the Debian package `make test`
installs (tools/install-debian-packages.sh).

    with carbon_cache(tmp_path) as carbon:
        ...send "a.b 1 <now>" to carbon.port...
        carbon.wait_for("a.b", {now: 1.0})
    with influxd(tmp_path) as influx:
        influx.query(None, "CREATE DATABASE t"); influx.query("t", "SELECT * FROM m")
    with pushgateway(tmp_path) as base:
        pushgateway_metrics(base)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import whisper  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.servers import free_port

HOST = "127.0.0.1"
START_SECONDS = 20.0  # a cold start takes about 1 s (carbon-cache: Python imports), 0.1 s for the Go servers
STOP_SECONDS = 10.0
LOG_TAIL = 3000  # characters of a server's log shown when it fails

# Whisper retention of the test carbon-cache: one point per second for 6 hours. Points older than that are dropped
# by whisper without a word, so tests send timestamps close to now.
CARBON_RETENTION = "1s:6h"

INFLUX_ADMIN = "admin"
INFLUX_PASSWORD = "push-test-password"


def free_udp_port() -> int:
    """A UDP port the OS says is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def log_tail(log: Path) -> str:
    """The end of a server's log, for failure messages."""
    try:
        return log.read_text(errors="replace")[-LOG_TAIL:]
    except OSError as exc:
        return f"(no log: {exc})"


def _binary(name: str, package: str) -> str:
    found = shutil.which(name)
    assert found, (
        f"{name} is not installed: it comes with the Debian package {package!r}; "
        "run `make test` or tools/install-debian-packages.sh"
    )
    return found


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it is still running after STOP_SECONDS; always reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def run_server(
    command: list[str],
    *,
    package: str,
    log: Path,
    ready: Callable[[], bool],
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Runs `command` with its output in `log` until the block ends; fails unless `ready()` within START_SECONDS."""
    binary = _binary(command[0], package)
    with log.open("wb") as output:
        process = subprocess.Popen(
            [binary, *command[1:]], stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=env
        )
        try:
            deadline = time.monotonic() + START_SECONDS
            while not ready():
                if process.poll() is not None:
                    raise AssertionError(
                        f"{command[0]} exited with status {process.returncode} before it was ready; "
                        f"its log ({log}):\n{log_tail(log)}"
                    )
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{command[0]} was not ready within {START_SECONDS} s; its log ({log}):\n{log_tail(log)}"
                    )
                time.sleep(0.05)
            yield process
        finally:
            _stop(process)


def port_bound(port: int, protocol: str) -> bool:
    """Whether some socket listens on 127.0.0.1:`port` (TCP) or is bound to it (UDP), from /proc/net."""
    wanted_state = "0A" if protocol == "tcp" else "07"  # TCP_LISTEN; an unconnected UDP socket shows TCP_CLOSE
    wanted_address = f"0100007F:{port:04X}"
    for line in Path(f"/proc/net/{protocol}").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted_address and fields[3] == wanted_state:
            return True
    return False


def _http_status(url: str, headers: Mapping[str, str] | None = None) -> int | None:
    """The status of a GET, or None when nothing answers."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except OSError:
        return None


# --- Graphite: carbon-cache ---------------------------------------------------------------------------------------


def carbon_series_name(metric: str) -> str:
    """The name carbon stores a received metric under: tags (`name;tag=value;...`) sorted, as carbon does."""
    name, *segments = metric.split(";")
    if not segments:
        return metric
    tags: dict[str, str] = {}
    for segment in segments:
        tag, equals, value = segment.partition("=")
        if not equals or not tag or not value:
            return metric  # carbon logs "Error parsing metric" and stores the name unchanged
        tags[tag] = value
    tags.pop("name", None)  # the name tag is always the metric name
    return name.lstrip("~") + "".join(sorted(f";{tag}={value}" for tag, value in tags.items()))


@dataclass(frozen=True)
class CarbonServer:
    """A running carbon-cache: the plaintext protocol on `port` (TCP) and `udp_port`, whisper files in `storage`."""

    host: str
    port: int
    udp_port: int
    storage: Path
    log: Path

    def whisper_path(self, metric: str) -> Path:
        """The whisper file of a metric; tagged series live under `_tagged/` (carbon's TAG_HASH_FILENAMES off)."""
        series = carbon_series_name(metric)
        if ";" in series:
            digest = hashlib.sha256(series.encode()).hexdigest()
            return self.storage / "_tagged" / digest[:3] / digest[3:6] / (series.replace(".", "_DOT_") + ".wsp")
        return self.storage.joinpath(*series.lstrip(".").split(".")).with_suffix(".wsp")

    def series(self) -> set[str]:
        """Every series carbon has created so far, by its stored name (tagged ones as `name;tag=value`)."""
        names = set()
        for path in self.storage.rglob("*.wsp"):
            parts = path.relative_to(self.storage).with_suffix("").parts
            if parts[0] == "_tagged":
                names.add(parts[-1].replace("_DOT_", "."))
            else:
                names.add(".".join(parts))
        return names

    def points(self, metric: str) -> dict[int, float]:
        """The points whisper holds for a metric (timestamp: value); empty when carbon has not created it yet.

        carbon creates a whisper file and then writes its header, so a file seen between the two has no header
        yet: that reads as not created, and wait_for looks again.
        """
        path = self.whisper_path(metric)
        if not path.exists():
            return {}
        now = int(time.time()) + 600  # also points a little in the future (clock skew of the sender)
        try:
            fetched = whisper.fetch(str(path), 0, now, now=now)
        except whisper.CorruptWhisperFile:
            return {}
        if fetched is None:
            return {}
        (start, _, step), values = fetched
        return {start + i * step: float(value) for i, value in enumerate(values) if value is not None}

    def wait_for(self, metric: str, expected: Mapping[int, float], seconds: float = 10.0) -> dict[int, float]:
        """Waits until the metric's whisper file holds every expected point; returns all its points.

        carbon-cache keeps received points in memory and its writer thread flushes the whole cache about once a
        second (MAX_UPDATES_PER_SECOND is unlimited here), so a point usually shows within 1-2 s.
        """
        deadline = time.monotonic() + seconds
        while True:
            points = self.points(metric)
            if all(points.get(timestamp) == value for timestamp, value in expected.items()):
                return points
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"carbon series {metric!r} did not get {dict(expected)} within {seconds} s: it holds {points}; "
                    f"series present: {sorted(self.series())}; carbon log:\n{log_tail(self.log)}"
                )
            time.sleep(0.1)


def _write_carbon_config(tmp: Path, port: int, udp_port: int, storage: Path) -> Path:
    conf_dir = tmp / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "STORAGE_DIR": tmp / "storage",
        "LOCAL_DATA_DIR": storage,
        "WHITELISTS_DIR": tmp / "lists",
        "CONF_DIR": conf_dir,
        "LOG_DIR": tmp / "log",
        "PID_DIR": tmp,
        "USER": "",
        "DATABASE": "whisper",
        # Write every received point to whisper at the next flush (about 1 s), with no rate limit on creates.
        "MAX_CACHE_SIZE": "inf",
        "MAX_UPDATES_PER_SECOND": "inf",
        "MAX_CREATES_PER_MINUTE": "inf",
        "CACHE_WRITE_STRATEGY": "naive",
        "LINE_RECEIVER_INTERFACE": HOST,
        "LINE_RECEIVER_PORT": port,
        "ENABLE_UDP_LISTENER": "True",
        "UDP_RECEIVER_INTERFACE": HOST,
        "UDP_RECEIVER_PORT": udp_port,
        "PICKLE_RECEIVER_INTERFACE": HOST,
        "PICKLE_RECEIVER_PORT": 0,  # 0: no pickle receiver
        "CACHE_QUERY_INTERFACE": HOST,
        "CACHE_QUERY_PORT": 0,  # the OS picks a free port; tests do not use it
        # Tagged series (name;tag=value) are stored all the same; ENABLE_TAGS would also post each new series to
        # graphite-web's tag database (GRAPHITE_URL), which does not run here.
        "ENABLE_TAGS": "False",
        "TAG_HASH_FILENAMES": "False",
        "LOG_UPDATES": "True",
        "LOG_CREATES": "True",
    }
    config = conf_dir / "carbon.conf"
    config.write_text("[cache]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()))
    (conf_dir / "storage-schemas.conf").write_text(f"[everything]\npattern = .*\nretentions = {CARBON_RETENTION}\n")
    (conf_dir / "storage-aggregation.conf").write_text(
        "[everything]\npattern = .*\nxFilesFactor = 0\naggregationMethod = last\n"
    )
    return config


@contextmanager
def carbon_cache(tmp: Path, *, port: int | None = None) -> Iterator[CarbonServer]:
    """Debian's carbon-cache (graphite-carbon) in the foreground, plaintext on TCP (`port`, default a free one) and
    UDP, whisper under `tmp` (start it again on the same `tmp` and port to restart it)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port, udp_port = port or free_port(), free_udp_port()
    storage = tmp / "storage" / "whisper"
    config = _write_carbon_config(tmp, port, udp_port, storage)
    command = [
        "carbon-cache",
        f"--config={config}",
        f"--pidfile={tmp / 'carbon-cache.pid'}",
        f"--logdir={tmp / 'log'}",
        "--nodaemon",  # stays our child and logs to stdout
        "start",
    ]
    # carbon-cache runs on Debian's /usr/bin/python3: keep a virtualenv's Python settings away from it.
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "PYTHONHOME"}}
    log = tmp / "carbon-cache.log"
    server = CarbonServer(host=HOST, port=port, udp_port=udp_port, storage=storage, log=log)
    with run_server(
        command,
        package="graphite-carbon",
        log=log,
        ready=lambda: port_bound(port, "tcp") and port_bound(udp_port, "udp"),
        env=env,
    ):
        yield server


# --- InfluxDB 1.x --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InfluxServer:
    """A running influxd; `username`/`password` are set when it requires authentication."""

    url: str
    username: str | None
    password: str | None
    log: Path

    def auth_headers(self) -> dict[str, str]:
        """HTTP basic auth with the admin user, or nothing when authentication is off."""
        if self.username is None or self.password is None:
            return {}
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def query(self, db: str | None, influxql: str) -> list[dict[str, Any]]:
        """Runs InfluxQL with POST /query (as admin when auth is on); the first statement's series.

        Each series is InfluxDB's JSON: {"name", "tags"?, "columns", "values"}; times are RFC 3339 strings.
        """
        params = {"q": influxql, **({"db": db} if db is not None else {})}
        request = urllib.request.Request(
            f"{self.url}/query",
            data=urllib.parse.urlencode(params).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded", **self.auth_headers()},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as exc:
            with exc:
                raise AssertionError(f"InfluxDB {influxql!r}: HTTP {exc.code} {exc.read()!r}") from None
        results: list[dict[str, Any]] = answer["results"]
        assert "error" not in results[0], f"InfluxDB {influxql!r}: {results[0]['error']}"
        series: list[dict[str, Any]] = results[0].get("series", [])
        return series

    def rows(self, db: str, influxql: str) -> list[dict[str, Any]]:
        """The query's rows as dicts of column: value, each with its series' tags (GROUP BY *) merged in."""
        return [
            {**series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))}
            for series in self.query(db, influxql)
            for values in series["values"]
        ]


def _write_influx_config(tmp: Path, http_port: int, rpc_port: int, *, auth: bool) -> Path:
    config = tmp / "influxdb.conf"
    config.write_text(
        # Debian's influxd reads `reporting-enabled` (off by default); upstream's key is `reporting-disabled`.
        f"reporting-enabled = false\n"
        f'bind-address = "{HOST}:{rpc_port}"\n'
        f"[meta]\n"
        f'  dir = "{tmp / "meta"}"\n'
        f"[data]\n"
        f'  dir = "{tmp / "data"}"\n'
        f'  wal-dir = "{tmp / "wal"}"\n'
        f"  query-log-enabled = false\n"
        f"[monitor]\n"
        f"  store-enabled = false\n"
        f"[subscriber]\n"
        f"  enabled = false\n"
        f"[continuous_queries]\n"
        f"  enabled = false\n"
        f"[http]\n"
        f'  bind-address = "{HOST}:{http_port}"\n'
        f"  auth-enabled = {'true' if auth else 'false'}\n"
        f"  log-enabled = true\n"
        f"  pprof-enabled = false\n"
    )
    return config


@contextmanager
def influxd(tmp: Path, *, auth: bool = False, port: int | None = None) -> Iterator[InfluxServer]:
    """Debian's influxd (InfluxDB 1.x) with meta, data and WAL under `tmp`, HTTP on `port` (default a free one).

    With `auth=True` HTTP authentication is on and an admin user (INFLUX_ADMIN / INFLUX_PASSWORD) exists; without
    credentials a write answers 401.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    http_port, rpc_port = port or free_port(), free_port()
    config = _write_influx_config(tmp, http_port, rpc_port, auth=auth)
    url = f"http://{HOST}:{http_port}"
    log = tmp / "influxd.log"
    with run_server(
        ["influxd", "-config", str(config)],
        package="influxdb",
        log=log,
        ready=lambda: _http_status(f"{url}/ping") == 204,
    ):
        if not auth:
            yield InfluxServer(url=url, username=None, password=None, log=log)
            return
        # With auth on and no user yet, InfluxDB 1.x accepts exactly this: creating the first admin user.
        anonymous = InfluxServer(url=url, username=None, password=None, log=log)
        anonymous.query(None, f"CREATE USER \"{INFLUX_ADMIN}\" WITH PASSWORD '{INFLUX_PASSWORD}' WITH ALL PRIVILEGES")
        yield InfluxServer(url=url, username=INFLUX_ADMIN, password=INFLUX_PASSWORD, log=log)


# --- Prometheus Pushgateway ----------------------------------------------------------------------------------------


@contextmanager
def pushgateway(tmp: Path) -> Iterator[str]:
    """Debian's prometheus-pushgateway, persisting to a file under `tmp`; yields its base URL."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://{HOST}:{port}"
    command = [
        "prometheus-pushgateway",
        f"--web.listen-address={HOST}:{port}",
        f"--persistence.file={tmp / 'pushgateway.db'}",
    ]
    with run_server(
        command,
        package="prometheus-pushgateway",
        log=tmp / "pushgateway.log",
        ready=lambda: _http_status(f"{base}/-/ready") == 200,
    ):
        yield base


def pushgateway_metrics(base: str) -> str:
    """The Pushgateway's /metrics text: everything pushed (with `job`, grouping labels) plus its own metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        return bytes(response.read()).decode()


def pushgateway_samples(base: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples named `name` on the Pushgateway's /metrics, by their label set."""
    return {
        frozenset(sample.labels.items()): sample.value
        for family in text_string_to_metric_families(pushgateway_metrics(base))
        for sample in family.samples
        if sample.name == name
    }

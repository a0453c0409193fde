"""Starts real servers (Prometheus, node_exporter) on 127.0.0.1 with free ports, and always stops them."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A port the OS says is free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_http(url: str, seconds: float = 20.0) -> None:
    """Polls `url` until it answers 200, or fails."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not come up within {seconds} s")


@contextmanager
def running(command: list[str], *, ready_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Runs a server until the block ends; its output goes to `log` (shown if it never becomes ready)."""
    binary = shutil.which(command[0])
    assert binary, f"{command[0]} is not installed: run `make test`, which installs the Debian packages"
    with log.open("wb") as output:
        process = subprocess.Popen([binary, *command[1:]], stdout=output, stderr=subprocess.STDOUT)
        try:
            try:
                wait_for_http(ready_url)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; its log:\n{log.read_text()[-3000:]}") from None
            yield process
        finally:
            stop_process(process)


@contextmanager
def node_exporter(textfile_dir: Path, tmp: Path) -> Iterator[str]:
    """node_exporter with only the textfile collector; yields its /metrics URL."""
    port = free_port()
    command = [
        "prometheus-node-exporter",
        f"--web.listen-address=127.0.0.1:{port}",
        "--collector.disable-defaults",
        "--collector.textfile",
        f"--collector.textfile.directory={textfile_dir}",
    ]
    url = f"http://127.0.0.1:{port}/metrics"
    with running(command, ready_url=url, log=tmp / "node_exporter.log"):
        yield url


@contextmanager
def prometheus(targets: dict[str, str], tmp: Path) -> Iterator[str]:
    """Prometheus scraping each job's host:port every second; yields its base URL."""
    port = free_port()
    scrape_configs = [
        {"job_name": job, "scrape_interval": "1s", "static_configs": [{"targets": [target]}]}
        for job, target in targets.items()
    ]
    config = tmp / "prometheus.yml"
    config.write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": scrape_configs}))
    command = [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    base = f"http://127.0.0.1:{port}"
    with running(command, ready_url=f"{base}/-/ready", log=tmp / "prometheus.log"):
        yield base


def query(base: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s; always reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

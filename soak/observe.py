"""Watching `serve` from outside: scrapes of /metrics and /healthz, /proc samples, and its log lines as they come."""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True)
class Scrape:
    """One /metrics plus /healthz at `at` (time.time()); `error` set when /metrics did not answer 200."""

    at: float
    latency: float
    error: str | None = None
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)
    health: tuple[int, str] = (0, "")

    def value(self, name: str, **labels: str) -> float | None:
        """One sample, or None."""
        return self.samples.get((name, frozenset(labels.items())))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """Every sample of `name`, keyed by one label's value."""
        return {dict(labels)[label]: value for (n, labels), value in self.samples.items() if n == name}


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """Status and body of a GET (an HTTP error status is an answer too)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read()).decode()
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), bytes(error.read()).decode()


def scrape(base: str) -> Scrape:
    """Scrapes /metrics (timed) and then /healthz."""
    started, at = time.monotonic(), time.time()
    try:
        status, text = http_get(f"{base}/metrics")
    except OSError as exc:
        return Scrape(at, time.monotonic() - started, error=f"{type(exc).__name__}: {exc}")
    latency = time.monotonic() - started
    if status != 200:
        return Scrape(at, latency, error=f"HTTP {status}")
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    try:
        health = http_get(f"{base}/healthz")
    except OSError as exc:
        return Scrape(at, latency, error=f"/healthz: {type(exc).__name__}: {exc}")
    return Scrape(at, latency, samples=samples, health=health)


@dataclass(frozen=True)
class ProcSample:
    """Threads, open descriptors, resident memory (KiB) and child processes of one process at `at`."""

    at: float
    threads: int
    fds: int
    rss_kib: int
    children: int


def proc_sample(pid: int) -> ProcSample:
    """Reads /proc/<pid> (raises OSError once the process is gone)."""
    base = Path(f"/proc/{pid}")
    threads = len(os.listdir(base / "task"))
    fds = len(os.listdir(base / "fd"))
    rss = next(int(line.split()[1]) for line in (base / "status").read_text().splitlines() if line.startswith("VmRSS:"))
    children = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                children += 1
    return ProcSample(time.time(), threads, fds, rss, children)


class Poller:
    """Calls `action` every `interval` seconds on a thread until stopped; its results are kept in `results`."""

    def __init__(self, name: str, action: Callable[[], object], interval: float, *, keep: bool = True) -> None:
        self.results: list[object] = []
        self._keep = keep
        self.errors: list[str] = []
        self._action, self._interval = action, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"soak-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                result = self._action()
                if self._keep:
                    self.results.append(result)
            except Exception as exc:  # recorded; a poller never dies
                self.errors.append(f"{time.time():.1f} {type(exc).__name__}: {exc}")
            self._stop.wait(self._interval)


class LogTail:
    """Follows a growing log file, stamping each complete line with the time it was seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[tuple[float, str]] = []
        self._offset = 0
        self._partial = b""
        self._lock = threading.Lock()

    def poll(self) -> None:
        """Reads what was appended since the last call."""
        with self._lock:
            try:
                with self.path.open("rb") as handle:
                    handle.seek(self._offset)
                    chunk = handle.read()
            except FileNotFoundError:
                return
            self._offset += len(chunk)
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            now = time.time()
            self.lines.extend((now, line.decode(errors="replace")) for line in complete)

    def matching(self, text: str, *, since: float = 0.0, until: float = float("inf")) -> list[tuple[float, str]]:
        """Lines seen within [since, until] that contain `text`."""
        self.poll()
        with self._lock:
            return [(at, line) for at, line in self.lines if text in line and since <= at <= until]

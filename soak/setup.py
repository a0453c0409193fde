"""Set-up pieces of the soak: the small textfile filesystem, `serve` as a subprocess, fault schedules, waiting."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from soak.faults import Schedule

REPO = Path(__file__).resolve().parent.parent
TEXTFILE_FS_SIZE = "64k"
STOP_SECONDS = 30.0


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> float:
    """Polls `condition` every 0.2 s; returns when it held (time.time()), or raises naming `what`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {seconds:.0f} s: {what}")
        time.sleep(0.2)
    return time.time()


@contextmanager
def small_filesystem(mountpoint: Path) -> Iterator[str]:
    """A 64 KiB tmpfs on `mountpoint` (else a loop-mounted ext2 image); yields which; always unmounted."""
    if os.geteuid() != 0:
        raise RuntimeError("the soak mounts a small filesystem for the textfile: run it as root")
    mountpoint.mkdir(parents=True, exist_ok=True)
    tmpfs = ["mount", "-t", "tmpfs", "-o", f"size={TEXTFILE_FS_SIZE},mode=0755", "tmpfs", str(mountpoint)]
    kind = "tmpfs"
    if subprocess.run(tmpfs, capture_output=True, check=False).returncode != 0:
        image, kind = mountpoint.with_suffix(".img"), "loop ext2 image"
        subprocess.run(["truncate", "-s", "256k", str(image)], check=True)
        subprocess.run(["mkfs.ext2", "-q", "-F", str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True, capture_output=True)
    try:
        yield kind
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)


@dataclass
class ServeProcess:
    """The `serve` subprocess: its pid, log files and, once stopped, exit status and stop time."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    returncode: int | None = None
    stop_seconds: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM, killed after STOP_SECONDS; records the exit status and how long stopping took."""
        if self.process.poll() is None:
            started = time.monotonic()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.stop_seconds = time.monotonic() - started
        self.returncode = self.process.returncode


def snapshot_code(work: Path) -> Path:
    """A copy of the code `serve` and `count` run: edits to the checkout during the soak cannot reach them (the
    scan workers `serve` starts at each resync import the code afresh)."""
    code = work / "code"
    for package in ("prosody_lastlog", "exporters", "soak"):
        shutil.copytree(REPO / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    return code


@contextmanager
def serve(settings: Path, tap: Path, work: Path, code: Path) -> Iterator[ServeProcess]:
    """`prosody-lastlog serve --config-file SETTINGS` from `code`, through soak/serve_tap.py; always stopped."""
    stdout, stderr = work / "serve.out", work / "serve.log"
    environment = {**os.environ, "PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1"}
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "soak.serve_tap", str(tap), "serve", "--config-file", str(settings)],
            cwd=code,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    running = ServeProcess(process, stdout, stderr)
    try:
        yield running
    finally:
        running.stop()


def schedules(duration: float, *, smoke: bool, seed: int) -> dict[str, Schedule]:
    """When each lane injects its faults and for how long; the smoke does one of each, quickly."""
    if smoke:
        return {
            "postgresql": [(3.0, 8.0)],
            "mariadb": [(3.0, 15.0)],
            "carbon": [(3.0, 8.0)],
            "influxd": [(3.0, 8.0)],
            "disk": [(3.0, 6.0)],
            "sighup": [(26.0, 0.0), (31.0, 0.0)],
            "connections": [(14.0, 8.0)],
            "datadir": [(20.0, 2.0)],
        }
    rng = random.Random(seed)
    bounds = {  # (gap, hold) ranges in seconds
        "postgresql": ((15, 45), (14, 25)),
        "mariadb": ((15, 45), (14, 25)),
        "carbon": ((15, 45), (8, 25)),
        "influxd": ((15, 45), (8, 25)),
        "disk": ((20, 50), (6, 15)),
        "sighup": ((20, 40), (0, 0)),
        "connections": ((30, 60), (10, 30)),
        "datadir": ((40, 90), (2, 5)),
    }
    plans: dict[str, Schedule] = {}
    for lane, (gap, hold) in bounds.items():
        plan: Schedule = []
        at = rng.uniform(10, 30)
        while True:
            length = rng.uniform(*hold)
            if at + length > duration - 10:
                break
            plan.append((round(at, 1), round(length, 1)))
            at += length + rng.uniform(*gap)
        plans[lane] = plan
    return plans


def descendants(pid: int) -> list[str]:
    """Every live process below `pid` ("pid command"): nothing the soak started may outlive it."""
    parents: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name, _, rest = stat.partition(" (")[2].rpartition(")")
            state, ppid = rest.split()[:2]
            if state != "Z":
                parents.setdefault(int(ppid), []).append(int(entry.name))
                names[int(entry.name)] = name
    found, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(f"{child} {names[child]}")
        todo.extend(parents.get(child, []))
    return found

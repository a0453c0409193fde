"""Stopping `serve` in the middle of its first count of a large data directory: it exits at once, cleanly, and
leaves no process behind (the scan's child, its reading processes, multiprocessing's fork server and tracker)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prosody_lastlog.sources.files import MIN_FILES_PER_WORKER
from tests.conftest import case_data

USERS = 3 * MIN_FILES_PER_WORKER  # enough for reading processes on a machine of two CPUs or more


@pytest.fixture(scope="module")
def large_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """USERS files, each a hard link to a copy of one record that real Prosody wrote."""
    data = tmp_path_factory.mktemp("large") / "data"
    store = data / "example%2ecom" / "lastlog2"
    store.mkdir(parents=True)
    record = data / "record"
    record.write_bytes(next((case_data("sample") / "example%2ecom" / "lastlog2").glob("*.dat")).read_bytes())
    for number in range(USERS):
        os.link(record, store / f"user{number}.dat")
    return data


def session_members(session: int) -> list[str]:
    """The command lines of the processes in a session (serve's, and of everything it started)."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue  # not a process, or it just ended
        if int(fields[3]) == session:  # state, ppid, pgrp, session
            members.append(command)
    return members


def wait_until(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_stopping_during_the_first_count_leaves_no_process(large_tree: Path, number: signal.Signals) -> None:
    command = [sys.executable, "-m", "prosody_lastlog", "serve", "--data-dir", str(large_tree), "--listen"]
    command += ["127.0.0.1:0", "--scan-workers", "3"]
    serve = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        # serve, the fork server and tracker, the scan's child and its reading processes
        assert wait_until(lambda: len(session_members(serve.pid)) >= 6, 60), session_members(serve.pid)
        serve.send_signal(number)
        assert serve.wait(10) == 0
        assert wait_until(lambda: not session_members(serve.pid), 10), session_members(serve.pid)
    finally:
        os.killpg(serve.pid, signal.SIGKILL) if session_members(serve.pid) else None
        serve.wait()
    stdout, stderr = serve.communicate()
    assert "serving" not in stdout.decode()
    assert f"stopping on signal {int(number)} while starting" in stderr.decode()
    assert "Traceback" not in stderr.decode()

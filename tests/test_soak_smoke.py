"""The chaos soak's smoke (`python -m soak --smoke`): one fault of each kind against a real `serve`, in about a minute.

The soak runs as a subprocess (it mounts a small tmpfs, so it needs root, as `make test` does) and writes its
summary as JSON; these tests read the verdicts: every check must pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
SMOKE_SECONDS = 90.0
FAULTS = {
    "postgresql stop",
    "mariadb freeze",
    "carbon outage",
    "influxd outage",
    "disk outage",
    "connections outage",
    "datadir replaced",
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], float, str]:
    """The smoke's summary, how long it took, and its output."""
    summary = tmp_path_factory.mktemp("soak") / "summary.json"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "soak", "--smoke", "--json", str(summary)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=4 * SMOKE_SECONDS,
        check=False,
    )
    output = done.stdout + done.stderr
    assert summary.exists(), f"the soak wrote no summary (exit {done.returncode}):\n{output[-4000:]}"
    document: dict[str, Any] = json.loads(summary.read_text())
    return document, time.monotonic() - started, output


def test_the_smoke_injects_every_fault_quickly_and_leaves_nothing_running(
    smoke: tuple[dict[str, Any], float, str],
) -> None:
    summary, seconds, output = smoke
    print(f"smoke: {seconds:.1f} s")
    assert seconds < SMOKE_SECONDS, output[-2000:]
    assert set(summary["outages"]) == FAULTS | {"sighup good", "sighup bad"}
    assert all(entry["injected"] == 1 for kind, entry in summary["outages"].items() if kind in FAULTS)
    assert summary["xmpp"]["logins"] > 0 and summary["xmpp"]["logouts"] > 0
    assert summary["files"]["rewritten"] > 0
    assert all(entry["snapshots_pushed"] > 0 for entry in summary["points"].values())
    leftovers = next(check for check in summary["checks"] if check["name"] == "nothing left running")
    assert leftovers["passed"], leftovers["detail"]


def test_every_check_passes(smoke: tuple[dict[str, Any], float, str]) -> None:
    failed = [f"{c['name']}: {c['detail']}" for c in smoke[0]["checks"] if not c["passed"]]
    assert not failed, "\n".join(failed)

"""A short run of the scan benchmark: it works and both sides agree (timings are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "scan.py"


def test_scan_benchmark_smoke() -> None:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARK), "--users", "300", "--repeat", "1"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "counts agree: yes" in completed.stdout
    assert "µs/file" in completed.stdout and "ratio prosody-lastlog / Prosody" in completed.stdout


def test_sql_benchmark_smoke() -> None:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARK.with_name("sql_count.py")), "--users", "300", "--repeat", "1"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.count("counts agree: yes") == 2

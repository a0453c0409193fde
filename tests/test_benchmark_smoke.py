"""Short runs of the benchmarks: they work, and where two sides count, they agree (timings are not asserted)."""

from __future__ import annotations

import json
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
        [sys.executable, str(BENCHMARK.with_name("sql_count.py")), "--users", "300", "--repeat", "1",
         "--changes", "20", "--latency-samples", "1", "--latency-interval", "1", "--load-seconds", "2"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.count("counts agree: yes") == 2
    assert completed.stdout.count("serve: a look after 20 logins") == 2
    assert completed.stdout.count("login -> counts, serve every 1 s") == 2
    assert completed.stdout.count("login -> counts, pushdown every 1 s") == 2
    assert completed.stdout.count("serve --sql-binlog: after 20 logins") == 1  # MariaDB only
    assert completed.stdout.count("/metrics p99 under 4 clients") == 2


def test_daemon_benchmark_smoke(tmp_path: Path) -> None:
    """The daemon benchmark, small. The large set is big enough that its memory over an empty daemon's stands above
    the noise between two processes' RSS (at 2,000 users, about 300 kB against up to 100 kB, and once below it)."""
    results = tmp_path / "daemon.json"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARK.with_name("daemon.py")), "--users", "20000", "--small-users", "500",
         "--repeat", "1", "--load-seconds", "1", "--renames", "3", "--resync-interval", "8",
         "--cache-dir", str(tmp_path / "cache"),
         "--json", str(results)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "rename -> /metrics median (ms)" in completed.stdout
    document = json.loads(results.read_text(encoding="utf-8"))
    assert document["empty_rss_bytes"] > 0 and document["p99_ratio"] > 0
    for size in ("500", "20000"):
        figures = document["medians"][size]
        assert figures["load_errors"] == 0 and figures.get("wrk_errors", 0) == 0
        assert 0 < figures["startup_s"] < 60 and figures["rss_bytes"] > document["empty_rss_bytes"] / 2
        assert figures["requests_per_s"] > 0 and 0 < figures["p50_ms"] <= figures["p99_ms"]
        assert 0 < figures["rename_median_ms"] <= figures["rename_p99_ms"] <= figures["rename_max_ms"] < 10_000
    large = document["medians"]["20000"]
    assert large["rss_bytes_per_user"] > 0 and "resync_s" not in document["medians"]["500"]
    assert large["resync_s"] > 0 and large["resync_load_errors"] == 0 and large["resync_requests_per_s"] > 0
    assert large["resync_peak_tree_rss_bytes"] > large["rss_bytes"] and document["resync_p99_ratio"] > 0


def test_benchmark_suite_smoke(tmp_path: Path) -> None:
    """`make bench` at 10k users, each part once but the Prosody 13 set (next test): the table, the JSON, and counts
    that agree."""
    results = tmp_path / "suite.json"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARK.with_name("suite.py")), "--sizes", "10000", "--repeat", "1", "--no-prosody13",
         "--load-seconds", "1", "--renames", "3", "--cache-dir", str(tmp_path / "cache"), "--json", str(results)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "files: ours / floor" in completed.stdout and "daemon: /metrics p99 (ms)" in completed.stdout
    assert "≤ 10 at 10,000: pass" in completed.stdout or "≤ 10 at 10,000: MISS" in completed.stdout
    document = json.loads(results.read_text(encoding="utf-8"))
    assert document["counts_agree"] is True and document["errors"] == []
    assert len(document["load_average"]["start"]) == len(document["load_average"]["end"]) == 3
    figures = document["figures"]["10000"]
    assert figures["files.files"] == 10000 and figures["files.counts_agree"] is True
    for figure in ("files.seed_s", "files.floor_s", "files.ours_s", "daemon.p99_ms", "daemon.rename_median_ms"):
        assert figures[figure] > 0
    for engine in ("PostgreSQL", "MySQL"):
        assert figures[f"sql.{engine}.pushdown_s"] > 0 and figures[f"sql.{engine}.seed_s"] > 0
        assert figures[f"sql.{engine}.counts_agree"] is True
        assert figures[f"sql.{engine}.metrics_looks_p99_ms"] > 0 and figures[f"sql.{engine}.follow_s"] > 0
    judged = {verdict["figure"]: verdict for verdict in document["targets"]}
    assert judged["files.ours_over_floor"]["met"] is not None and judged["daemon.p99_ms"]["users"] == 10000
    assert judged["daemon.rss_bytes_per_user"]["met"] is None  # judged at 1M users only


def test_benchmark_suite_prosody13_smoke(tmp_path: Path) -> None:
    """The suite's Prosody 13 set at 300 users, once: written and counted by Prosody 13 (its tree), floors, our scans
    with and without the account check; counts agree and the floors read the files ours reads."""
    results = tmp_path / "suite.json"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARK.with_name("suite.py")), "--sizes", "300", "--repeat", "1", "--no-sql",
         "--no-daemon", "--cache-dir", str(tmp_path / "cache"), "--json", str(results)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    for row in ("files 13: ours / floor", "files 13: account check, ours (s)", "files 13 as 0.12: ours / floor"):
        assert row in completed.stdout
    document = json.loads(results.read_text(encoding="utf-8"))
    assert document["counts_agree"] is True and document["errors"] == [] and document["generator13"]
    figures = document["figures"]["300"]
    assert figures["files13.counts_agree"] is True and figures["files.counts_agree"] is True
    # every account file: the users' but the 3% deleted, and the 5% more accounts with no activity
    assert figures["files13.files"] == 300 and 300 < figures["files13.account_files"] < 330
    for side in ("seed", "floor", "ours", "default_floor", "default_ours", "no_check_floor", "no_check_ours"):
        assert figures[f"files13.{side}_s"] > 0
    assert figures["files13.check_ratio"] > 0 and figures["files13.check_floor_ratio"] > 0
    judged = {verdict["figure"]: verdict for verdict in document["targets"]}
    for figure in ("files13.ours_over_floor", "files13.default_over_floor"):
        assert judged[figure]["users"] == 300 and judged[figure]["met"] is not None

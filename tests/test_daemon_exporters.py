"""serve with push exporters: a snapshot at start and every interval; a dead target holds up nothing."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prosody_lastlog.cli import main
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from tests.conftest import CASES
from tests.test_daemon import SAMPLE_NOW, get, wait_for

EXPECTED = CASES / "sample" / "expected.json"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens there once the probe is closed


@pytest.fixture
def serving(sample_tree: Path, tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    lines = tmp_path / "prosody.lp"
    exporters: dict[str, dict[str, object]] = {
        "influxdb": {"file": str(lines), "interval": 1},
        "graphite": {"port": closed_port(), "interval": 1, "timeout": 0.5},
    }
    plan = plan_sources(SourceOptions(data_dir=sample_tree), environ={})
    daemon = Daemon(plan, windows=DEFAULT_WINDOWS, options=ServeOptions(port=0, exporters=exporters))
    daemon.start()
    try:
        yield daemon, lines
    finally:
        daemon.stop()


def test_snapshots_are_pushed_at_start_and_every_interval(serving: tuple[Daemon, Path]) -> None:
    _, lines = serving
    wait_for(lambda: lines.exists() and "prosody_active_users,host=example.com,window=1d" in lines.read_text())
    first = len(lines.read_text().splitlines())
    wait_for(lambda: len(lines.read_text().splitlines()) >= 2 * first, seconds=3)


def test_a_dead_target_is_counted_and_holds_up_nothing(serving: tuple[Daemon, Path]) -> None:
    daemon, _ = serving
    wait_for(lambda: 'prosody_lastlog_export_errors_total{exporter="graphite"} 0.0' not in get(daemon, "/metrics")[2])
    started = time.monotonic()
    status, _, text = get(daemon, "/metrics")
    assert status == 200 and time.monotonic() - started < 1
    assert 'prosody_lastlog_export_errors_total{exporter="influxdb"} 0.0' in text
    assert 'prosody_lastlog_export_queue_length{exporter="influxdb"} 0.0' in text
    queued = [
        line
        for line in text.splitlines()
        if line.startswith('prosody_lastlog_export_queue_length{exporter="graphite"}')
    ]
    assert queued and float(queued[0].split()[-1]) > 0  # kept for when carbon answers again
    assert get(daemon, "/healthz")[0] == 200  # the sources are fine; exports have their own metrics


def test_exporter_settings_are_checked_at_start_naming_each_key(
    tmp_path: Path, sample_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f'data_dir = "{sample_tree}"\n[exporters.graphite]\nprot = 2003\n[exporters.influxdb]\napi = "v9"\n'
        "[exporters.smoke-signals]\n"
    )
    assert main(["serve", "--config-file", str(settings)]) == 2
    err = capsys.readouterr().err
    assert "exporters.graphite: prot: unknown setting" in err
    assert "exporters.influxdb: " in err and "api" in err
    assert "exporters.smoke-signals: unknown exporter" in err


def test_count_prints_push_formats(capsys: pytest.CaptureFixture[str], sample_tree: Path) -> None:
    args = ["count", "--data-dir", str(sample_tree), "--now", str(SAMPLE_NOW)]
    assert main([*args, "--format", "influx"]) == 0
    out = capsys.readouterr().out
    assert f"prosody_active_users,host=example.com,window=1d value=4i {SAMPLE_NOW}000000000\n" in out
    assert main([*args, "--format", "graphite", "--totals-only"]) == 0
    day = sum(host["1d"] for host in json.loads(EXPECTED.read_text())["active_users"].values())
    assert capsys.readouterr().out.startswith(f"prosody.all.active_users.1d {day} {SAMPLE_NOW}\n")

"""A third-party exporter, installed with pip, is found through the entry-point group and configured by name."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporters import available, build_exporters
from tests.test_export_runner import NOW, snapshot

PLUGIN = Path(__file__).parents[1] / "contrib" / "example-exporter-plugin"


@pytest.fixture
def installed_plugin(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target"]
    subprocess.run([*pip, str(target), str(PLUGIN)], check=True, capture_output=True)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        sys.modules.pop("prosody_lastlog_csv", None)


def test_the_example_plugin_is_discovered_and_publishes(installed_plugin: Path, tmp_path: Path) -> None:
    assert available()["csv"] == "prosody_lastlog_csv:create"
    out = tmp_path / "points.csv"
    (exporter,) = build_exporters({"csv": {"path": str(out)}})
    try:
        exporter.publish(snapshot(NOW))
        assert exporter.flush(5)  # type: ignore[attr-defined]
    finally:
        exporter.close()
    lines = out.read_text().splitlines()
    assert lines[0] == f"{NOW - 30},h0.example,active_users,1d,0"
    assert len(lines) == 3 * 2 + 3  # one host: 3 windows of 2 windowed families, 3 per-host families

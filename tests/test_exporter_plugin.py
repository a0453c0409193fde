"""A third-party exporter, installed with pip, is found through the entry-point group and configured by name; it
needs only the public API of `exporters`."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import exporters
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
        exporter.start()
        exporter.publish(snapshot(NOW))
        assert exporter.flush(5)  # type: ignore[attr-defined]
    finally:
        exporter.close()
    lines = out.read_text().splitlines()
    assert lines[0] == f"{NOW - 30},h0.example,active_users,1d,0"
    # One host: 3 windows of 3 windowed families, 3 inactive windows of 2 families, 3 per-host families.
    assert len(lines) == 3 * 3 + 3 * 2 + 3


def test_the_example_plugin_imports_only_the_public_api() -> None:
    tree = ast.parse((PLUGIN / "prosody_lastlog_csv.py").read_text(encoding="utf-8"))
    ours = ("exporters", "prosody_lastlog")
    plain = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [name for name in plain if name.split(".")[0] in ours]
    imported = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    project = [node for node in imported if node.module and node.module.split(".")[0] in ours]
    assert [node.module for node in project] == ["exporters"]
    assert {alias.name for alias in project[0].names} <= set(exporters.__all__)

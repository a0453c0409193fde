"""The installed distribution is ours: PyPI has an unrelated top-level `exporters` package."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import exporters
import prosody_lastlog

ROOT = Path(__file__).resolve().parent.parent


def test_exporters_package_is_ours() -> None:
    assert Path(exporters.__file__).resolve().parent == ROOT / "exporters"
    assert hasattr(exporters, "Exporter")


def test_distribution_metadata() -> None:
    distribution = importlib.metadata.distribution("prosody-lastlog")
    assert distribution.version == prosody_lastlog.__version__
    scripts = {ep.name: ep.value for ep in distribution.entry_points if ep.group == "console_scripts"}
    assert scripts == {"prosody-lastlog": "prosody_lastlog.cli:main"}

"""End to end: `serve` on the sample data, scraped by a real Prometheus, its textfile read by a real node_exporter."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from tests.conftest import case_data
from tests.integration.servers import node_exporter, prometheus, query

pytestmark = pytest.mark.integration

EXPECTED = json.loads((case_data("sample").parent / "expected.json").read_text())


@pytest.fixture
def daemon(sample_tree: Path, tmp_path: Path) -> Iterator[Daemon]:
    textfile_dir = tmp_path / "textfile"
    textfile_dir.mkdir()
    options = ServeOptions(port=0, as_of=EXPECTED["now"], textfile=textfile_dir / "prosody.prom")
    running = Daemon(
        plan_sources(SourceOptions(data_dir=sample_tree), environ={}), windows=DEFAULT_WINDOWS, options=options
    )
    running.start()
    yield running
    running.stop()


def scraped(base: str, job: str) -> dict[tuple[str, str], float]:
    results = query(base, f'prosody_active_users{{job="{job}"}}')
    return {(r["metric"]["host"], r["metric"]["window"]): float(r["value"][1]) for r in results}


def test_prometheus_and_node_exporter_see_the_expected_counts(daemon: Daemon, tmp_path: Path) -> None:
    expected = {(host, window): float(n) for host, by in EXPECTED["active_users"].items() for window, n in by.items()}
    assert daemon.options.textfile is not None
    with node_exporter(daemon.options.textfile.parent, tmp_path) as node_url:
        direct = daemon.server.url.removeprefix("http://").removesuffix("/metrics")
        targets = {"prosody-lastlog": direct, "node": node_url.removeprefix("http://").removesuffix("/metrics")}
        with prometheus(targets, tmp_path) as base:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if scraped(base, "prosody-lastlog") == expected and scraped(base, "node") == expected:
                    break
                time.sleep(0.5)
            assert scraped(base, "prosody-lastlog") == expected
            assert scraped(base, "node") == expected
            assert query(base, 'node_textfile_scrape_error{job="node"}')[0]["value"][1] == "0"
            assert query(base, 'up{job="prosody-lastlog"}')[0]["value"][1] == "1"

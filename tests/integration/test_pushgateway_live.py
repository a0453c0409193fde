"""The Pushgateway exporter against Debian's real prometheus-pushgateway (and a real Prometheus scraping it)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from exporters.points import points_of
from exporters.pushgateway import create
from exporters.runner import PushExporter
from prosody_lastlog.core.counting import HostCounts, Snapshot
from prosody_lastlog.core.model import Store
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from tests.integration.push_servers import pushgateway, pushgateway_samples, run_server
from tests.integration.servers import free_port, query, running

pytestmark = pytest.mark.integration

JOB = "prosody_lastlog"
FIRST = Snapshot(
    time.time(),
    {
        "a.example": HostCounts(Store.LASTLOG2, 5, 0, 0, 0, {"1d": 1, "7d": 1, "30d": 5}, {"1d": 1, "7d": 1, "30d": 1}),
        "b.example": HostCounts(
            Store.ACCOUNT_ACTIVITY, 20, 3, 1, 0, {"1d": 4, "7d": 9, "30d": 13}, {"1d": 0, "7d": 1, "30d": 2}, 2
        ),
    },
    DEFAULT_WINDOWS,
)
SECOND = Snapshot(  # b.example is gone, a.example changed
    time.time(),
    {
        "a.example": HostCounts(
            Store.LASTLOG2, 6, 1, 0, 0, {"1d": 2, "7d": 3, "30d": 6}, {"1d": 1, "7d": 2, "30d": 2}, 1
        )
    },
    DEFAULT_WINDOWS,
)


def expected(snapshot: Snapshot, **grouping: str) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    """What the gateway should show for the snapshot: each family's samples by label set, job and grouping added."""
    families: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for point in points_of(snapshot, timestamp=0):
        labels = {"host": point.host, "job": JOB, **grouping}
        if point.window is not None:
            labels["window"] = point.window
        families.setdefault(f"prosody_{point.name}", {})[frozenset(labels.items())] = float(point.value)
    return families


def on_gateway(base: str, names: Mapping[str, object]) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    return {name: pushgateway_samples(base, name) for name in names}


@contextmanager
def exporter(url: str, **settings: object) -> Iterator[PushExporter]:
    made = create(url=url, **settings)  # type: ignore[arg-type]
    try:
        made.start()
        yield made
    finally:
        made.close()


def test_pushes_reach_the_gateway_and_each_replaces_the_group(tmp_path: Path) -> None:
    grouping = {"instance": "xmpp 1/eu", "dc": "fra"}  # sent base64-encoded (a slash and a space)
    with pushgateway(tmp_path) as base, exporter(base, grouping=grouping) as push:
        push.publish(FIRST)
        assert push.flush(10)
        want = expected(FIRST, **grouping)
        assert on_gateway(base, want) == want
        push.publish(SECOND)
        assert push.flush(10)
        want = expected(SECOND, **grouping)
        assert on_gateway(base, want) == want  # b.example's series are gone: PUT replaced the whole group
        assert set(pushgateway_samples(base, "push_time_seconds")) == {frozenset({("job", JOB), *grouping.items()})}
        assert push.status().errors_total == 0


def test_a_gateway_that_starts_late_gets_the_latest_snapshot(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with exporter(base, grouping={"instance": "xmpp1"}) as push:
        push.publish(FIRST)
        deadline = time.monotonic() + 10
        while push.status().errors_total == 0:  # the first push failed: nothing listens yet
            assert time.monotonic() < deadline, "the push to a stopped gateway did not fail"
            time.sleep(0.02)
        push.publish(SECOND)  # replaces FIRST: only the latest snapshot is kept
        command = ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}"]
        log = tmp_path / "pushgateway.log"
        with run_server(command, package="prometheus-pushgateway", log=log, ready=lambda: _answers(f"{base}/-/ready")):
            assert push.flush(10)
            want = expected(SECOND, instance="xmpp1")
            assert on_gateway(base, want) == want
        assert push.status().dropped_total == 0


def test_prometheus_scrapes_the_gateway_with_honor_labels(tmp_path: Path) -> None:
    """The README's scrape config: the pushed `job` and `instance` labels survive into Prometheus."""
    with pushgateway(tmp_path / "gateway") as base, exporter(base, grouping={"instance": "xmpp1"}) as push:
        push.publish(FIRST)
        assert push.flush(10)
        port = free_port()
        config = tmp_path / "prometheus.yml"
        scrape = {"job_name": "pushgateway", "honor_labels": True, "scrape_interval": "1s"}
        scrape["static_configs"] = [{"targets": [base.removeprefix("http://")]}]
        config.write_text(json.dumps({"scrape_configs": [scrape]}))
        command = [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        prom = f"http://127.0.0.1:{port}"
        with running(command, ready_url=f"{prom}/-/ready", log=tmp_path / "prometheus.log"):
            promql = 'prosody_active_users{job="prosody_lastlog",instance="xmpp1",window="30d"}'
            deadline = time.monotonic() + 15
            while not (results := query(prom, promql)):
                assert time.monotonic() < deadline, "Prometheus never scraped the pushed series"
                time.sleep(0.2)
    assert {r["metric"]["host"]: float(r["value"][1]) for r in results} == {"a.example": 5.0, "b.example": 13.0}


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False

"""The push runner: publish never blocks, failures retry with backoff, the queue is bounded, errors log once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from exporters import ExporterConfigError, build_exporters, validate_exporters
from exporters.points import Point, aligned, points_of
from exporters.runner import ExportError, PushExporter
from prosody_lastlog.core.counting import Snapshot, zero_counts
from prosody_lastlog.core.model import CountingChoice, Store
from prosody_lastlog.core.windows import DEFAULT_WINDOWS

NOW = 1_763_900_010  # 30 s into a minute


def snapshot(taken: float = NOW, hosts: int = 1) -> Snapshot:
    counts = {f"h{i}.example": zero_counts(CountingChoice(Store.LASTLOG2), DEFAULT_WINDOWS) for i in range(hosts)}
    return Snapshot(taken, counts, DEFAULT_WINDOWS)


class Target:
    """A send function that can be made to fail or hang."""

    def __init__(self) -> None:
        self.received: list[Point] = []
        self.attempts = 0
        self.failing = False
        self.gate = threading.Event()
        self.gate.set()

    def send(self, points: Sequence[Point]) -> None:
        self.attempts += 1
        self.gate.wait(10)
        if self.failing:
            raise ExportError("target 127.0.0.1:1: connection refused")
        self.received.extend(points)


def test_points_are_stamped_with_the_start_of_their_interval() -> None:
    assert aligned(NOW, 60) == NOW - 30
    points = points_of(snapshot(), timestamp=aligned(NOW, 60))
    assert {p.timestamp for p in points} == {NOW - 30}
    assert [(p.name, p.window) for p in points[:3]] == [
        ("active_users", "1d"),
        ("active_users", "7d"),
        ("active_users", "30d"),
    ]
    assert {p.name for p in points} == {
        "active_users",
        "registrations",
        "returning_users",
        "activity_records",
        "accounts_never_active",
        "accounts_inactive",
        "accounts_never_used",
        "connected_users",
    }


def test_publish_does_not_wait_for_a_hanging_target() -> None:
    target = Target()
    target.gate.clear()
    exporter = PushExporter("t", target.send)
    exporter.start()
    try:
        started = time.monotonic()
        for _ in range(5):
            exporter.publish(snapshot())
        assert time.monotonic() - started < 0.1
        per_snapshot = len(points_of(snapshot(), timestamp=0))
        assert exporter.status().queue_length == 5 * per_snapshot  # the batch being sent included
        target.gate.set()
        assert exporter.flush(5)
        assert len(target.received) == 5 * per_snapshot and exporter.status().queue_length == 0
    finally:
        exporter.close()


def test_failures_keep_the_points_and_retry_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    target = Target()
    target.failing = True
    exporter = PushExporter("t", target.send, retry_min=0.05, retry_max=0.1)
    exporter.start()
    try:
        exporter.publish(snapshot(NOW))
        exporter.publish(snapshot(NOW + 60))
        time.sleep(0.4)
        status = exporter.status()
        assert status.errors_total >= 3 and status.queue_length == 2 * len(points_of(snapshot(), timestamp=0))
        target.failing = False
        assert exporter.flush(5)
        stamps = [p.timestamp for p in target.received]
        assert stamps == sorted(stamps) and set(stamps) == {NOW - 30, NOW + 30}  # in order, own timestamps, all
    finally:
        exporter.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "exporters.runner"]
    assert sum("push failed" in m for m in messages) == 1  # once per state change, not per attempt
    assert sum("works again" in m for m in messages) == 1


def test_the_oldest_points_are_dropped_past_the_bound_and_counted() -> None:
    target = Target()
    target.failing = True
    per_snapshot = len(points_of(snapshot(), timestamp=0))
    exporter = PushExporter("t", target.send, max_points=per_snapshot * 2, retry_min=0.05, retry_max=0.05)
    exporter.start()
    try:
        for minute in range(3):
            exporter.publish(snapshot(NOW + 60 * minute))
        time.sleep(0.2)
        assert exporter.status().dropped_total == per_snapshot
        target.failing = False
        assert exporter.flush(5)
        assert {p.timestamp for p in target.received} == {NOW + 30, NOW + 90}  # the newest two minutes
    finally:
        exporter.close()


def test_latest_only_sends_one_whole_snapshot_and_replaces_older_ones() -> None:
    target = Target()
    target.gate.clear()
    exporter = PushExporter("t", target.send, latest_only=True, batch_points=1)
    exporter.start()
    try:
        exporter.publish(snapshot(NOW, hosts=2))  # taken by the (blocked) send
        time.sleep(0.1)
        exporter.publish(snapshot(NOW + 60, hosts=2))
        exporter.publish(snapshot(NOW + 120, hosts=2))
        target.gate.set()
        assert exporter.flush(5)
        assert {p.timestamp for p in target.received} == {NOW - 30, NOW + 90}
        assert exporter.status().dropped_total == 0
    finally:
        exporter.close()


def test_close_stops_the_thread_even_while_failing() -> None:
    target = Target()
    target.failing = True
    exporter = PushExporter("t", target.send, retry_min=60, retry_max=60)
    exporter.start()
    exporter.publish(snapshot())
    time.sleep(0.1)
    started = time.monotonic()
    exporter.close()
    assert time.monotonic() - started < 1
    assert not any(t.name == "prosody-lastlog-t" for t in threading.enumerate())


def test_a_plugin_that_raises_anything_is_retried_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def broken(points: Sequence[Point]) -> None:
        calls.append(len(points))
        if len(calls) == 1:
            raise KeyError("bug")

    exporter = PushExporter("t", broken, retry_min=0.05)
    exporter.start()
    try:
        exporter.publish(snapshot())
        assert exporter.flush(5) and len(calls) == 2
    finally:
        exporter.close()
    assert any("unexpected KeyError" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_unknown_exporters_and_settings_are_all_reported_at_once() -> None:
    with pytest.raises(ExporterConfigError) as error:
        build_exporters({"carrier-pigeon": {}, "graphite": {"colour": "blue"}})
    lines = str(error.value).splitlines()
    assert lines[0].startswith("exporters.carrier-pigeon: unknown exporter (known: graphite, influxdb, pushgateway")
    assert lines[1] == "exporters.graphite: colour: unknown setting"


def test_built_first_started_after() -> None:
    target = Target()
    exporter = PushExporter("t", target.send)
    exporter.publish(snapshot())
    time.sleep(0.05)
    assert target.attempts == 0 and not any(t.name == "prosody-lastlog-t" for t in threading.enumerate())
    exporter.start()
    try:
        assert exporter.flush(5) and target.received
    finally:
        exporter.close()


def test_an_exporter_never_started_closes_at_once() -> None:
    started = time.monotonic()
    PushExporter("t", Target().send).close()
    assert time.monotonic() - started < 0.1


def test_building_and_validating_start_no_thread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(thread: threading.Thread) -> None:
        raise AssertionError(f"{thread.name} started")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    sections: dict[str, dict[str, object]] = {
        "graphite": {},
        "influxdb": {"file": str(tmp_path / "prosody.lp")},
        "pushgateway": {},
    }
    validate_exporters(sections)
    for exporter in build_exporters(sections):
        exporter.close()

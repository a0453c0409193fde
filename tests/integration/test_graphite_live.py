"""The Graphite exporter against Debian's real carbon-cache: what we push is what whisper stores, at the aligned time.

Every test goes through create() / publish() / flush(), so the runner's thread, the formatter and the transport are
all exercised; the values are read back from carbon's whisper files.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from exporters.graphite import create
from exporters.points import aligned
from exporters.runner import PushExporter
from prosody_lastlog.core.counting import HostCounts, Snapshot
from prosody_lastlog.core.model import Store
from prosody_lastlog.core.windows import Window
from tests.integration.push_servers import CarbonServer, carbon_cache
from tests.integration.servers import free_port

pytestmark = pytest.mark.integration

WINDOWS = (Window(86400, "1d"),)


def counts(active: int, registered: int, accounts: int, never_active: int, connected: int) -> HostCounts:
    return HostCounts(Store.LASTLOG2, accounts, never_active, 0, 0, {"1d": active}, {"1d": registered}, connected)


COUNTS = {"example.com": counts(4, 1, 18, 2, 1), "münchen.example": counts(2, 0, 12, 1, 0)}

PLAIN = {
    "prosody.example_com.active_users.1d": 4,
    "prosody.example_com.registrations.1d": 1,
    "prosody.example_com.activity_records": 18,
    "prosody.example_com.accounts_never_active": 2,
    "prosody.example_com.connected_users": 1,
    "prosody.xn--mnchen-3ya_example.active_users.1d": 2,
    "prosody.xn--mnchen-3ya_example.registrations.1d": 0,
    "prosody.xn--mnchen-3ya_example.activity_records": 12,
    "prosody.xn--mnchen-3ya_example.accounts_never_active": 1,
    "prosody.xn--mnchen-3ya_example.connected_users": 0,
}

TAGGED = {  # as carbon stores them: tags sorted, dots of host names kept
    "prosody.active_users;host=example.com;window=1d": 4,
    "prosody.registrations;host=example.com;window=1d": 1,
    "prosody.activity_records;host=example.com": 18,
    "prosody.accounts_never_active;host=example.com": 2,
    "prosody.connected_users;host=example.com": 1,
    "prosody.active_users;host=xn--mnchen-3ya.example;window=1d": 2,
    "prosody.registrations;host=xn--mnchen-3ya.example;window=1d": 0,
    "prosody.activity_records;host=xn--mnchen-3ya.example": 12,
    "prosody.accounts_never_active;host=xn--mnchen-3ya.example": 1,
    "prosody.connected_users;host=xn--mnchen-3ya.example": 0,
}


def push_once(exporter: PushExporter) -> int:
    """Publishes COUNTS taken now and waits until sent; the timestamp the points carry (the start of the minute)."""
    taken = time.time()
    try:
        exporter.start()
        exporter.publish(Snapshot(taken, COUNTS, WINDOWS))
        assert exporter.flush(10)
        assert exporter.status().errors_total == 0
    finally:
        exporter.close()
    return aligned(taken, 60)


def assert_stored(carbon: CarbonServer, expected: dict[str, int], timestamp: int) -> None:
    for series, value in expected.items():
        assert carbon.wait_for(series, {timestamp: value}) == {timestamp: value}, series
    assert carbon.series() == set(expected)  # nothing else: no stray or mangled series


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_plain_paths_over_tcp_and_udp(protocol: str, tmp_path: Path) -> None:
    with carbon_cache(tmp_path) as carbon:
        port = carbon.port if protocol == "tcp" else carbon.udp_port
        timestamp = push_once(create(port=port, protocol=protocol))
        assert_stored(carbon, PLAIN, timestamp)


def test_tagged_series(tmp_path: Path) -> None:
    with carbon_cache(tmp_path) as carbon:
        timestamp = push_once(create(port=carbon.port, tagged=True))
        assert_stored(carbon, TAGGED, timestamp)


def test_points_queued_while_carbon_is_down_arrive_with_their_own_timestamps(tmp_path: Path) -> None:
    port = free_port()  # carbon comes up (again) where we push
    exporter = create(port=port, timeout=2.0)
    minute = aligned(time.time(), 60)
    minutes = [minute - 180, minute - 120, minute - 60, minute]
    snapshots = [
        Snapshot(t + 7, {"example.com": counts(10 + i, 0, 100 + i, 0, 0)}, WINDOWS) for i, t in enumerate(minutes)
    ]

    def wait_for_errors(count: int) -> None:
        deadline = time.monotonic() + 10
        while exporter.status().errors_total < count:
            assert time.monotonic() < deadline, exporter.status()
            time.sleep(0.05)

    try:
        exporter.start()
        exporter.publish(snapshots[0])  # carbon is not running yet
        wait_for_errors(1)
        with carbon_cache(tmp_path, port=port) as carbon:
            assert exporter.flush(30)
            carbon.wait_for("prosody.example_com.active_users.1d", {minutes[0]: 10})
        errors = exporter.status().errors_total
        exporter.publish(snapshots[1])  # carbon stopped: these wait in the queue, the refreshes go on
        wait_for_errors(errors + 1)
        exporter.publish(snapshots[2])
        exporter.publish(snapshots[3])
        assert not exporter.flush(0.5)  # still queued
        with carbon_cache(tmp_path, port=port) as carbon:  # the same whisper files, restarted on the same port
            assert exporter.flush(30)
            active = dict(zip(minutes, [10, 11, 12, 13], strict=True))
            accounts = dict(zip(minutes, [100, 101, 102, 103], strict=True))
            assert carbon.wait_for("prosody.example_com.active_users.1d", active) == active  # nothing lost
            assert carbon.wait_for("prosody.example_com.activity_records", accounts) == accounts
        assert exporter.status().queue_length == 0
        assert exporter.status().dropped_total == 0
    finally:
        exporter.close()


def test_a_point_carbon_drops_as_it_stops_arrives_with_the_next_push_when_resent(tmp_path: Path) -> None:
    """carbon-cache acknowledges a batch, then drops it with its cache as it stops (it writes to whisper about once
    a second); with resend = 1 the next push, to carbon started again, repeats it."""
    port = free_port()
    minute = aligned(time.time(), 60)
    exporter = create(port=port, timeout=2.0, resend=1)
    try:
        exporter.start()
        with carbon_cache(tmp_path, port=port):
            exporter.publish(Snapshot(minute - 53, {"example.com": counts(7, 0, 70, 0, 0)}, WINDOWS))
            assert exporter.flush(10)
        # stopped at once: whether that point reached whisper is carbon's luck
        with carbon_cache(tmp_path, port=port) as carbon:
            exporter.publish(Snapshot(minute + 7, {"example.com": counts(8, 0, 80, 0, 0)}, WINDOWS))
            assert exporter.flush(10)
            active = {minute - 60: 7, minute: 8}
            assert carbon.wait_for("prosody.example_com.active_users.1d", active) == active
        assert exporter.status().errors_total == 0
    finally:
        exporter.close()

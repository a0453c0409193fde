"""The collector reports counts as of each scrape and nothing for a source before its first count."""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, generate_latest

from exporters.nodeinfo import NODEINFO_WINDOWS
from exporters.prometheus import ActiveUsersCollector
from prosody_lastlog.core.connected import ConnectedMode, ConnectedUsers
from prosody_lastlog.core.counting import count_host, zero_counts
from prosody_lastlog.core.model import CountingChoice, HostData, Store, UserActivity
from prosody_lastlog.core.windows import DEFAULT_WINDOWS, Window
from prosody_lastlog.daemon.state import LiveCounts
from prosody_lastlog.daemon.timer import PeriodicTimer

NOW = 1_763_900_000


def scrape(live: LiveCounts, clock: list[float]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ActiveUsersCollector(live, windows=DEFAULT_WINDOWS, clock=lambda: clock[0]))
    return generate_latest(registry).decode()


def test_a_user_ages_out_of_the_day_window_with_no_event() -> None:
    live = LiveCounts(windows=DEFAULT_WINDOWS, source_names=["files"])
    live.index.replace_host("example.com", CountingChoice(Store.LASTLOG2), [UserActivity("alice", NOW - 60)])
    live.succeeded("files", at=NOW, duration=0.1, problems={})
    clock = [float(NOW)]
    assert 'prosody_active_users{host="example.com",window="1d"} 1.0' in scrape(live, clock)
    clock[0] = NOW + 86400 - 60
    text = scrape(live, clock)
    assert 'prosody_active_users{host="example.com",window="1d"} 0.0' in text
    assert 'prosody_active_users{host="example.com",window="7d"} 1.0' in text


def test_nothing_is_exported_for_a_source_before_its_first_count() -> None:
    live = LiveCounts(windows=DEFAULT_WINDOWS, source_names=["files"])
    live.declare_hosts("files", [("empty.example", CountingChoice(Store.LASTLOG2))])
    text = scrape(live, [float(NOW)])
    assert "prosody_active_users{" not in text
    assert 'prosody_lastlog_source_up{source="files"} 0.0' in text
    live.succeeded("files", at=NOW, duration=0.1, problems={"invalid": 2})
    text = scrape(live, [float(NOW)])
    assert 'prosody_active_users{host="empty.example",window="1d"} 0.0' in text  # zeros, not a gap
    assert 'prosody_lastlog_read_problems_total{reason="invalid",source="files"} 2.0' in text


def test_periodic_timer_runs_and_stops_promptly() -> None:
    ran = threading.Event()
    timer = PeriodicTimer(ran.set, interval=0.01)
    timer.start()
    assert ran.wait(2)
    slow = PeriodicTimer(lambda: None, interval=3600)
    slow.start()
    started = time.monotonic()
    slow.stop()
    timer.stop()
    assert time.monotonic() - started < 1


def test_connected_users_and_how_they_are_found() -> None:
    live = LiveCounts(windows=DEFAULT_WINDOWS, source_names=["files", "sql"], file_sources=["files"])
    live.index.replace_host("example.com", CountingChoice(Store.LASTLOG2), [UserActivity("alice", NOW - 10 * 86400)])
    live.succeeded("files", at=NOW, duration=0.1, problems={})
    text = scrape(live, [float(NOW)])
    assert 'prosody_active_users{host="example.com",window="1d"} 0.0' in text
    assert 'prosody_lastlog_connected_detection_info{mode="none",source="files"} 1.0' in text
    live.set_connected(ConnectedUsers(ConnectedMode.ADMIN_SOCKET, {"example.com": frozenset({"alice"})}))
    text = scrape(live, [float(NOW)])
    assert 'prosody_active_users{host="example.com",window="1d"} 1.0' in text  # connected: active in every window
    assert 'prosody_connected_users{host="example.com"} 1.0' in text
    assert 'prosody_lastlog_connected_detection_info{mode="admin_socket",source="files"} 1.0' in text
    assert 'prosody_lastlog_connected_detection_info{mode="none",source="sql"} 1.0' in text
    assert "alice" not in text


def test_a_reload_keeps_the_last_counts_of_an_sql_source_that_is_down() -> None:
    counted = zero_counts(CountingChoice(Store.LASTLOG2), DEFAULT_WINDOWS)
    old = LiveCounts(windows=DEFAULT_WINDOWS, source_names=["files", "db", "gone"], file_sources=["files"])
    old.set_sql_counts("db", {"sql.example": counted})
    old.succeeded("db", at=NOW, duration=0.1, problems={})
    old.set_sql_counts("gone", {"gone.example": counted})
    old.succeeded("gone", at=NOW, duration=0.1, problems={})
    new = LiveCounts(windows=DEFAULT_WINDOWS, source_names=["files", "db"], file_sources=["files"])
    new.failed("db", "cannot connect to postgresql://prosody@db/prosody: timeout")
    new.keep_sql_counts_of(old)
    assert new.counts(now=NOW) == {"sql.example": counted}  # a source the new configuration dropped stays dropped
    assert [(h.name, h.up) for h in new.health()] == [("files", False), ("db", False)]


def test_windows_counted_besides_the_exported_ones_are_given_only_when_asked_for() -> None:
    """NodeInfo's 30 and 180 days are counted for every source (the SQL ones in their aggregate) while /metrics
    and the pushes keep to --window."""
    one_day = (Window(86400, "1d"),)
    live = LiveCounts(
        windows=one_day, source_names=["files", "db"], file_sources=["files"], also_counted=NODEINFO_WINDOWS
    )
    assert live.counted_windows == (one_day[0], *NODEINFO_WINDOWS)
    live.index.replace_host("files.example", CountingChoice(Store.LASTLOG2), [UserActivity("alice", NOW - 100 * 86400)])
    live.succeeded("files", at=NOW, duration=0.1, problems={})
    sql = count_host(
        HostData("sql.example", Store.LASTLOG2, [UserActivity("bob", NOW - 10 * 86400)]),
        now=NOW,
        windows=live.counted_windows,
    )
    live.set_sql_counts("db", {"sql.example": sql})
    live.succeeded("db", at=NOW, duration=0.1, problems={})
    exported = live.counts(now=NOW)
    assert {host: dict(c.active) for host, c in exported.items()} == {
        "files.example": {"1d": 0},
        "sql.example": {"1d": 0},
    }
    assert set(exported["sql.example"].registered) == set(exported["sql.example"].returning) == {"1d"}
    nodeinfo = live.counts(now=NOW, windows=NODEINFO_WINDOWS)
    assert {host: dict(c.active) for host, c in nodeinfo.items()} == {
        "files.example": {"7d": 0, "30d": 0, "180d": 1},
        "sql.example": {"7d": 0, "30d": 1, "180d": 1},
    }
    assert 'prosody_active_users{host="sql.example",window="30d"}' not in scrape(live, [float(NOW)])
    for host in ("files.example", "sql.example"):  # one host alone, as a NodeInfo request asks
        assert live.counts(now=NOW, windows=NODEINFO_WINDOWS, hosts={host}) == {host: nodeinfo[host]}
    assert live.counts(now=NOW, hosts={"other.example"}) == {}


def test_a_reload_that_counts_more_windows_does_not_keep_counts_lacking_them() -> None:
    """Kept counts must have every window counted now: else /metrics or NodeInfo would miss one (a KeyError)."""
    counted = zero_counts(CountingChoice(Store.LASTLOG2), DEFAULT_WINDOWS)
    old = LiveCounts(windows=DEFAULT_WINDOWS, source_names=["db"])
    old.set_sql_counts("db", {"sql.example": counted})
    old.succeeded("db", at=NOW, duration=0.1, problems={})
    fewer = LiveCounts(windows=DEFAULT_WINDOWS[:1], source_names=["db"])
    fewer.keep_sql_counts_of(old)
    assert {host: dict(c.active) for host, c in fewer.counts(now=NOW).items()} == {"sql.example": {"1d": 0}}
    more = LiveCounts(windows=DEFAULT_WINDOWS, source_names=["db"], also_counted=NODEINFO_WINDOWS)
    more.keep_sql_counts_of(old)
    assert more.counts(now=NOW) == {}

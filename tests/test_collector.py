"""The collector reports counts as of each scrape and nothing for a source before its first count."""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, generate_latest

from exporters.nodeinfo import NODEINFO_WINDOWS
from exporters.prometheus import ActiveUsersCollector
from prosody_lastlog.core.connected import ConnectedMode, ConnectedUsers
from prosody_lastlog.core.index import HostIndex
from prosody_lastlog.core.model import CountingChoice, Store, UserActivity
from prosody_lastlog.core.windows import DEFAULT_WINDOWS, Window
from prosody_lastlog.daemon.state import LiveCounts
from prosody_lastlog.daemon.timer import PeriodicTimer

NOW = 1_763_900_000
DAY = 86400


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


def stored(host: str, *users: UserActivity) -> HostIndex:
    """An SQL source's index of one host."""
    return HostIndex(host, Store.LASTLOG2, users=users, choice=CountingChoice(Store.LASTLOG2))


def test_a_reload_keeps_the_last_counts_of_an_sql_source_that_is_down() -> None:
    old = LiveCounts(windows=DEFAULT_WINDOWS, source_names=["files", "db", "gone"], file_sources=["files"])
    old.swap_in_stored("db", [stored("sql.example", UserActivity("bob", NOW - 60))])
    old.succeeded("db", at=NOW, duration=0.1, problems={})
    old.swap_in_stored("gone", [stored("gone.example")])
    old.succeeded("gone", at=NOW, duration=0.1, problems={})
    new = LiveCounts(windows=DEFAULT_WINDOWS, source_names=["files", "db"], file_sources=["files"])
    new.failed("db", "cannot connect to postgresql://prosody@db/prosody: timeout")
    new.keep_sql_counts_of(old)
    kept = new.counts(now=NOW)
    assert list(kept) == ["sql.example"]  # a source the new configuration dropped stays dropped
    assert kept["sql.example"].active == {"1d": 1, "7d": 1, "30d": 1}
    assert [(h.name, h.up) for h in new.health()] == [("files", False), ("db", False)]


def test_an_sql_sources_hosts_count_any_window_and_no_connected_user() -> None:
    """SQL sources feed the index too (as of each scrape, any window: NodeInfo's besides --window); their counts
    are of stored activity only, so a connected user is not active there; a full read replaces their hosts."""
    one_day = (Window(86400, "1d"),)
    live = LiveCounts(windows=one_day, source_names=["files", "db"], file_sources=["files"])
    live.index.replace_host("files.example", CountingChoice(Store.LASTLOG2), [UserActivity("alice", NOW - 100 * DAY)])
    live.swap_in_stored("db", [stored("sql.example", UserActivity("bob", NOW - 10 * DAY))])
    live.set_connected(ConnectedUsers(ConnectedMode.ADMIN_SOCKET, {"files.example": frozenset({"alice"}),
                                                                    "sql.example": frozenset({"bob"})}))  # fmt: skip
    for name in ("files", "db"):
        live.succeeded(name, at=NOW, duration=0.1, problems={})
    assert {host: dict(c.active) for host, c in live.counts(now=NOW).items()} == {
        "files.example": {"1d": 1}, "sql.example": {"1d": 0}
    }  # fmt: skip
    nodeinfo = live.counts(now=NOW, windows=NODEINFO_WINDOWS)
    assert {host: dict(c.active) for host, c in nodeinfo.items()} == {
        "files.example": {"7d": 1, "30d": 1, "180d": 1},
        "sql.example": {"7d": 0, "30d": 1, "180d": 1},
    }
    for host in ("files.example", "sql.example"):  # one host alone, as a NodeInfo request asks
        assert live.counts(now=NOW, windows=NODEINFO_WINDOWS, hosts={host}) == {host: nodeinfo[host]}
    assert live.counts(now=NOW, hosts={"other.example"}) == {}
    live.swap_in_stored("db", [stored("new.example")])  # the host is gone from the database
    assert list(live.counts(now=NOW)) == ["files.example", "new.example"]

"""Interpreting stored records of each store, odd shapes included."""

from __future__ import annotations

import pytest

from prosody_lastlog.core.model import Store, UserActivity
from prosody_lastlog.prosody.decode import interpret
from prosody_lastlog.prosody.sandbox import PlainValue


def test_lastlog2_last_activity_is_the_later_of_login_and_logout() -> None:
    record: PlainValue = {
        "login": {"timestamp": 100, "ip": "192.0.2.1"},
        "logout": {"timestamp": 250},
        "registered": {"timestamp": 5},
    }
    result = interpret(Store.LASTLOG2, "alice", record)
    assert result.activity == UserActivity("alice", 250, registered=5)
    assert not result.oddities


@pytest.mark.parametrize(
    ("login", "logout", "session_open"),
    [(300, 250, 300), (250, 250, None), (250, 300, None), (300, None, 300), (None, 300, None)],
)
def test_lastlog2_a_login_with_no_later_logout_is_an_open_session(
    login: int | None, logout: int | None, session_open: int | None
) -> None:
    record: dict[object, PlainValue] = {}
    if login is not None:
        record["login"] = {"timestamp": login}
    if logout is not None:
        record["logout"] = {"timestamp": logout}
    activity = interpret(Store.LASTLOG2, "alice", record).activity
    assert activity is not None and activity.session_open == session_open


def test_lastlog2_registered_alone_is_not_activity() -> None:
    result = interpret(Store.LASTLOG2, "bob", {"registered": {"timestamp": 5}})
    assert result.activity == UserActivity("bob", None, registered=5)


def test_lastlog2_component_rooms_are_never_active_and_not_odd() -> None:
    result = interpret(Store.LASTLOG2, "room", {"conference.example.com": "message"})
    assert result.activity == UserActivity("room", None)
    assert not result.oddities


@pytest.mark.parametrize(
    ("record", "oddity"),
    [
        ({"login": "yesterday", "logout": {"timestamp": 7}}, "'login' is a string, not a table"),
        ({"login": {"timestamp": "123"}, "logout": {"timestamp": 7}}, "'login' timestamp is a string"),
        ({"login": {"timestamp": True}, "logout": {"timestamp": 7}}, "'login' timestamp is a boolean"),
        ({"login": {"timestamp": float("inf")}, "logout": {"timestamp": 7}}, "'login' timestamp is not finite"),
        ({"login": {"timestamp": float("nan")}, "logout": {"timestamp": 7}}, "'login' timestamp is not finite"),
        ({"login": {"timestamp": 10**400}, "logout": {"timestamp": 7}}, "'login' timestamp is out of range"),
    ],
)
def test_lastlog2_odd_entries_are_named_and_skipped(record: dict[str, object], oddity: str) -> None:
    result = interpret(Store.LASTLOG2, "carol", record)  # type: ignore[arg-type]
    assert result.activity == UserActivity("carol", 7)
    assert len(result.oddities) == 1 and oddity in result.oddities[0]


@pytest.mark.parametrize("value", [None, "x", 3, True])
def test_a_record_that_is_not_a_table_gives_no_account(value: object) -> None:
    result = interpret(Store.LASTLOG2, "dave", value)  # type: ignore[arg-type]
    assert result.activity is None
    assert result.oddities and "expected a table" in result.oddities[0]


@pytest.mark.parametrize(
    ("record", "activity"),
    [
        ({"event": "login", "timestamp": 10}, UserActivity("u", 10, session_open=10)),
        ({"event": "logout", "timestamp": 10, "ip": "192.0.2.1"}, UserActivity("u", 10)),
        ({"timestamp": 10}, UserActivity("u", 10, session_open=10)),  # the 2012 format had no event (logins only)
        ({"event": "registered", "timestamp": 10}, UserActivity("u", None, registered=10)),
        ({"event": "message", "timestamp": 10}, UserActivity("u", None)),
    ],
)
def test_lastlog_events(record: dict[str, object], activity: UserActivity) -> None:
    assert interpret(Store.LASTLOG, "u", record).activity == activity  # type: ignore[arg-type]


def test_lastlog_odd_event() -> None:
    result = interpret(Store.LASTLOG, "u", {"event": 5, "timestamp": 10})
    assert result.activity == UserActivity("u", None)
    assert "'event' is a number" in result.oddities[0]


def test_account_activity() -> None:
    assert interpret(Store.ACCOUNT_ACTIVITY, "u", {"timestamp": 1.5}).activity == UserActivity("u", 1.5)
    assert interpret(Store.ACCOUNT_ACTIVITY, "u", {}).activity == UserActivity("u", None)

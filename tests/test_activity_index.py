"""The daemon's index gives the pure counting core's numbers at any moment, after any updates."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prosody_lastlog.activity_index import ActivityIndex, HostIndex
from prosody_lastlog.connected import NOBODY, ConnectedMode, ConnectedUsers
from prosody_lastlog.counting import count_host
from prosody_lastlog.records import HostData, Store, UserActivity
from prosody_lastlog.windows import DEFAULT_WINDOWS, Window

NOW = 1_763_900_000
DAY = 86400

USERS = [f"u{i}" for i in range(12)]
times = st.one_of(st.none(), st.integers(NOW - 40 * DAY, NOW + DAY), st.floats(NOW - 40 * DAY, NOW))
activities = st.builds(UserActivity, st.sampled_from(USERS), times, times, st.booleans(), times)
connected_answers = st.one_of(
    st.just(NOBODY),
    st.builds(
        ConnectedUsers,
        st.just(ConnectedMode.ADMIN_SOCKET),
        st.dictionaries(st.sampled_from(["h", "other"]), st.frozensets(st.sampled_from(USERS))),
    ),
    st.builds(
        ConnectedUsers,
        st.just(ConnectedMode.HEURISTIC),
        prosody_started=st.one_of(st.none(), st.integers(NOW - 40 * DAY, NOW + DAY)),
    ),
)
updates = st.lists(st.one_of(activities, st.sampled_from(USERS), connected_answers), max_size=60)


@given(updates=updates, now_offset=st.integers(-DAY, 40 * DAY))
def test_index_equals_the_counting_core(updates: list[UserActivity | str | ConnectedUsers], now_offset: int) -> None:
    index = HostIndex("h", Store.LASTLOG2)
    current: dict[str, UserActivity] = {}
    connected = NOBODY
    for update in updates:
        if isinstance(update, str):
            index.remove(update)
            current.pop(update, None)
        elif isinstance(update, ConnectedUsers):
            index.set_connected(update)
            connected = update
        else:
            index.set(update)
            current[update.user] = update
    now = NOW + now_offset
    data = HostData("h", Store.LASTLOG2, list(current.values()))
    expected = count_host(data, now=now, windows=DEFAULT_WINDOWS, connected=connected)
    assert index.counts(now=now, windows=DEFAULT_WINDOWS) == expected


def test_connected_users_count_in_every_window_whatever_their_last_activity() -> None:
    index = ActivityIndex()
    index.replace_host(
        "example.com",
        Store.LASTLOG2,
        [
            UserActivity("alice", NOW - 10 * DAY, session_open=NOW - 10 * DAY),  # a session open for 10 days
            UserActivity("bob", NOW - 10 * DAY),
            UserActivity("carol", NOW - 60 * DAY, session_open=NOW - 60 * DAY),  # from before the last restart
        ],
    )
    windows = [Window(DAY, "1d"), Window(30 * DAY, "30d")]
    assert index.counts(now=NOW, windows=windows)["example.com"].active == {"1d": 0, "30d": 2}
    index.set_connected(ConnectedUsers(ConnectedMode.HEURISTIC, prosody_started=NOW - 20 * DAY))
    counts = index.counts(now=NOW, windows=windows)["example.com"]
    assert (counts.active, counts.connected) == ({"1d": 1, "30d": 2}, 1)
    index.set_connected(ConnectedUsers(ConnectedMode.ADMIN_SOCKET, {"example.com": frozenset({"bob", "carol"})}))
    counts = index.counts(now=NOW, windows=windows)["example.com"]
    assert (counts.active, counts.connected) == ({"1d": 2, "30d": 3}, 2)
    index.replace_host("example.com", Store.LASTLOG2, [UserActivity("bob", NOW - 10 * DAY)])  # a resync
    assert index.counts(now=NOW, windows=windows)["example.com"].connected == 1


def test_users_age_out_without_any_update() -> None:
    index = ActivityIndex()
    index.replace_host("example.com", Store.LASTLOG2, [UserActivity("alice", NOW - 3600)])
    windows = [Window(86400, "1d")]
    assert index.counts(now=NOW, windows=windows)["example.com"].active == {"1d": 1}
    assert index.counts(now=NOW + 82799, windows=windows)["example.com"].active == {"1d": 1}
    assert index.counts(now=NOW + 82800, windows=windows)["example.com"].active == {"1d": 0}


def test_updates_hosts_and_tracked_users() -> None:
    index = ActivityIndex()
    index.replace_host("a.example", Store.LASTLOG2, [UserActivity("x", NOW), UserActivity("y", None)])
    index.update("b.example", Store.LASTLOG2, "z", UserActivity("z", NOW))
    index.update("a.example", Store.LASTLOG2, "y", None)
    assert index.tracked_users() == {"a.example": 1, "b.example": 1}
    assert index.store_of("a.example") is Store.LASTLOG2 and index.store_of("c.example") is None
    index.remove_hosts(["a.example"])
    assert list(index.counts(now=NOW, windows=DEFAULT_WINDOWS)) == ["b.example"]

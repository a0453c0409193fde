"""The daemon's index gives the pure counting core's numbers at any moment, after any updates."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from prosody_lastlog.core.compact import NameHash, SortedTimes
from prosody_lastlog.core.connected import NOBODY, ConnectedMode, ConnectedUsers
from prosody_lastlog.core.counting import count_host
from prosody_lastlog.core.index import ActivityIndex, HostIndex
from prosody_lastlog.core.model import AccountRule, CountingChoice, HostData, Store, UserActivity
from prosody_lastlog.core.windows import DEFAULT_WINDOWS, Window

NOW = 1_763_900_000
DAY = 86400
AGES = (Window(DAY, "1d"), Window(10 * DAY, "10d"), Window(30 * DAY, "30d"))  # within the times drawn

# Names that are prefixes of one another, empty, non-ASCII, a lone surrogate (a str, though not valid UTF-8).
USERS = [f"u{i}" for i in range(12)] + ["", "u", "u1\x00", "jürgen", "\ud800", "\U0001f600x"]
times = st.one_of(
    st.none(),
    st.sampled_from([NOW - 2 * DAY, NOW - 20 * DAY]),  # often equal: a user set again with one fact changed
    st.integers(NOW - 40 * DAY, NOW + DAY),
    st.floats(NOW - 40 * DAY, NOW),
)
# Anything a record can hold: a float of any size, a Lua 5.4 integer (64 bits, beyond float64's exact range).
odd_times = st.one_of(st.none(), st.floats(allow_nan=False), st.integers(-(2**63), 2**63 - 1), times)
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
# Python's hash, and ones that make every name (or many) collide in the table: lookups must stay exact.
hashes: st.SearchStrategy[Callable[[bytes], int]] = st.sampled_from(
    [hash, len, lambda name: 0, lambda name: -1, NameHash()]
)


def activities(when: st.SearchStrategy[float | None]) -> st.SearchStrategy[UserActivity]:
    return st.builds(
        UserActivity, st.sampled_from(USERS), when, when, st.booleans(), when, st.booleans(), st.booleans()
    )


# How the host is counted: which accounts count is the index's to apply, as the core does.
choices = st.builds(CountingChoice, st.just(Store.LASTLOG2), accounts=st.sampled_from(list(AccountRule)))


Update = UserActivity | str | ConnectedUsers | list[UserActivity]  # a change, a removal, an answer, a resync


def updates(when: st.SearchStrategy[float | None]) -> st.SearchStrategy[list[Update]]:
    resyncs = st.lists(activities(when), max_size=20)
    return st.lists(st.one_of(activities(when), st.sampled_from(USERS), connected_answers, resyncs), max_size=60)


def rebuilt(host: str, choice: CountingChoice, connected: ConnectedUsers, users: list[UserActivity]) -> HostIndex:
    """An index as a resync builds it: in another process, sent here (pickled), counting the same `connected`."""
    built = HostIndex(host, choice.store, connected, users, choice=choice, hash_name=NameHash())
    index: HostIndex = pickle.loads(pickle.dumps(built))
    index.connected = connected
    return index


def check(
    initial: list[UserActivity],
    connected: ConnectedUsers,
    updates: list[Update],
    *,
    hash_name: Callable[[bytes], int],
    now: float,
    windows: tuple[Window, ...],
    ages: tuple[Window, ...] = AGES,
    choice: CountingChoice | None = None,
) -> None:
    """Builds an index from a scan, applies the updates, and compares it with the core after each one."""
    index = HostIndex("h", Store.LASTLOG2, connected, initial, choice=choice, hash_name=hash_name)
    current = {activity.user: activity for activity in initial}  # a name met twice: the later one holds
    for update in [None, *updates]:
        if isinstance(update, str):
            index.remove(update)
            current.pop(update, None)
        elif isinstance(update, ConnectedUsers):
            index.set_connected(update)
            connected = update
        elif isinstance(update, list):
            index = rebuilt("h", choice or CountingChoice(Store.LASTLOG2), connected, update)
            current = {activity.user: activity for activity in update}
        elif update is not None:
            index.set(update)
            current[update.user] = update
        data = HostData("h", Store.LASTLOG2, list(current.values()), index.choice)
        expected = count_host(data, now=now, windows=windows, connected=connected, ages=ages)
        assert index.counts(now=now, windows=windows, ages=ages) == expected
        assert len(index) == len(current)


@given(
    initial=st.lists(activities(times), max_size=20),
    connected=connected_answers,
    updates=updates(times),
    hash_name=hashes,
    now_offset=st.one_of(st.integers(-DAY, 40 * DAY), st.floats(-DAY, 40 * DAY)),
    choice=st.one_of(st.none(), choices),
)
def test_index_equals_the_counting_core(
    *,
    initial: list[UserActivity],
    connected: ConnectedUsers,
    updates: list[Update],
    hash_name: Callable[[bytes], int],
    now_offset: float,
    choice: CountingChoice | None,
) -> None:
    now = NOW + now_offset
    check(initial, connected, updates, hash_name=hash_name, now=now, windows=DEFAULT_WINDOWS, choice=choice)


@given(
    initial=st.lists(activities(odd_times), max_size=20),
    connected=connected_answers,
    updates=updates(odd_times),
    now=st.floats(NOW - 100 * DAY, NOW + 100 * DAY),
    seconds=st.lists(st.integers(1, 2**80), min_size=1, max_size=3, unique=True),
)
def test_index_equals_the_counting_core_on_any_number(
    initial: list[UserActivity],
    connected: ConnectedUsers,
    updates: list[Update],
    now: float,
    seconds: list[int],
) -> None:
    # The daemon's clock is a float: times of any size and windows of any length give the core's numbers.
    windows = tuple(Window(s, f"{s}s") for s in seconds)
    check(initial, connected, updates, hash_name=hash, now=now, windows=windows, ages=windows)


def test_windows_are_tested_as_the_core_does_past_float_precision() -> None:
    # now - t < W and t > now - W differ here (float rounding): the index must compute the first.
    now, window = 1763837181.2531788, Window(17942872378262239245, "long")
    user = UserActivity("u", -17942872376498401280)
    index = HostIndex("h", Store.LASTLOG2, users=[user])
    expected = count_host(HostData("h", Store.LASTLOG2, [user]), now=now, windows=[window])
    assert index.counts(now=now, windows=[window]) == expected and expected.active == {"long": 1}


@given(
    initial=st.lists(st.floats(allow_nan=False), max_size=40),
    changes=st.lists(st.one_of(st.floats(allow_nan=False), st.integers(0, 99)), max_size=80),
    block=st.integers(1, 4),
    threshold=st.floats(allow_nan=False),
)
def test_sorted_times_keep_a_sorted_multiset(
    initial: list[float], changes: list[float | int], block: int, threshold: float
) -> None:
    times = SortedTimes(initial, block=block)
    expected = sorted(initial)
    for change in changes:
        if isinstance(change, float):  # added
            times.add(change)
            expected.append(change)
        elif expected:  # the time at this place (modulo) removed
            time = expected[change % len(expected)]
            times.remove(time)
            expected.remove(time)
        expected.sort()
        assert list(times) == expected and len(times) == len(expected)
        assert times.count_where(lambda t: t > threshold) == sum(t > threshold for t in expected)


def test_a_user_set_again_with_one_fact_changed() -> None:
    user = UserActivity("u", NOW - 2 * DAY, NOW - 3 * DAY, session_open=NOW - 2 * DAY)
    changes = [
        replace(user, last_active=NOW - 40 * DAY),
        replace(user, registered=None),
        replace(user, disabled=True),
        replace(user, session_open=None),
    ]
    for connected in (NOBODY, ConnectedUsers(ConnectedMode.HEURISTIC, prosody_started=NOW - 3 * DAY)):
        for changed in changes:
            index = HostIndex("h", Store.LASTLOG2, connected, [user])
            index.set(changed)
            expected = count_host(
                HostData("h", Store.LASTLOG2, [changed]), now=NOW, windows=DEFAULT_WINDOWS, connected=connected
            )
            assert index.counts(now=NOW, windows=DEFAULT_WINDOWS) == expected


def test_connected_users_count_in_every_window_whatever_their_last_activity() -> None:
    index = ActivityIndex()
    index.replace_host(
        "example.com",
        CountingChoice(Store.LASTLOG2),
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
    index.replace_host("example.com", CountingChoice(Store.LASTLOG2), [UserActivity("bob", NOW - 10 * DAY)])  # a resync
    assert index.counts(now=NOW, windows=windows)["example.com"].connected == 1


def test_users_age_out_without_any_update() -> None:
    index = ActivityIndex()
    index.replace_host("example.com", CountingChoice(Store.LASTLOG2), [UserActivity("alice", NOW - 3600)])
    windows = [Window(86400, "1d")]
    assert index.counts(now=NOW, windows=windows)["example.com"].active == {"1d": 1}
    assert index.counts(now=NOW + 82799, windows=windows)["example.com"].active == {"1d": 1}
    assert index.counts(now=NOW + 82800, windows=windows)["example.com"].active == {"1d": 0}


def test_a_host_grows_from_nothing_one_change_at_a_time() -> None:
    index = ActivityIndex()
    for number in range(1000):  # past several table resizes
        index.update(
            "example.com", CountingChoice(Store.LASTLOG2), f"u{number}", UserActivity(f"u{number}", NOW - number * 3600)
        )
    counts = index.counts(now=NOW, windows=DEFAULT_WINDOWS)["example.com"]
    assert (counts.activity_records, counts.active) == (1000, {"1d": 24, "7d": 168, "30d": 720})


def test_a_resync_rebuilds_a_host() -> None:
    index = ActivityIndex()
    scan = [UserActivity(f"u{number}", NOW - number * 60, registered=NOW - DAY) for number in range(3000)]
    index.replace_host("example.com", CountingChoice(Store.LASTLOG2), scan)
    rescan = [UserActivity(f"u{number}", NOW - number) for number in range(1000, 4000)]
    index.swap_in([rebuilt("example.com", CountingChoice(Store.LASTLOG2), index.connected, rescan)])
    expected = count_host(HostData("example.com", Store.LASTLOG2, rescan), now=NOW, windows=DEFAULT_WINDOWS)
    assert index.counts(now=NOW, windows=DEFAULT_WINDOWS)["example.com"] == expected
    index.update(
        "example.com", CountingChoice(Store.LASTLOG2), "u3999", None
    )  # names are found with the index's own hash
    index.update("example.com", CountingChoice(Store.LASTLOG2), "u1000", UserActivity("u1000", NOW - 2 * DAY))
    expected = count_host(
        HostData("example.com", Store.LASTLOG2, [UserActivity("u1000", NOW - 2 * DAY), *rescan[1:-1]]),
        now=NOW,
        windows=DEFAULT_WINDOWS,
    )
    assert index.counts(now=NOW, windows=DEFAULT_WINDOWS)["example.com"] == expected
    index.replace_host("example.com", CountingChoice(Store.ACCOUNT_ACTIVITY), rescan[:10])  # another store
    assert index.choice_of("example.com") == CountingChoice(Store.ACCOUNT_ACTIVITY)


def test_a_built_index_counts_the_connected_users_of_when_it_is_swapped_in() -> None:
    index = ActivityIndex()
    users = [UserActivity("alice", NOW - 10 * DAY), UserActivity("bob", NOW - 10 * DAY)]
    built = rebuilt("example.com", CountingChoice(Store.LASTLOG2), index.connected, users)
    index.set_connected(ConnectedUsers(ConnectedMode.ADMIN_SOCKET, {"example.com": frozenset({"bob"})}))
    index.swap_in([built])
    assert index.counts(now=NOW, windows=DEFAULT_WINDOWS)["example.com"].connected == 1


def test_a_name_hash_is_the_same_in_another_process_for_the_same_key_only() -> None:
    name_hash = NameHash()
    code = "import sys, prosody_lastlog.core.compact as a; print(a.NameHash(bytes.fromhex(sys.argv[1]))(b'a'))"
    elsewhere = subprocess.run([sys.executable, "-c", code, name_hash.key.hex()], capture_output=True, check=True)
    assert int(elsewhere.stdout) == name_hash(b"a") == pickle.loads(pickle.dumps(name_hash))(b"a")
    assert len({NameHash()(b"a") for _ in range(4)}) > 1  # a new key each time


def test_updates_hosts_and_tracked_users() -> None:
    index = ActivityIndex()
    index.replace_host("a.example", CountingChoice(Store.LASTLOG2), [UserActivity("x", NOW), UserActivity("y", None)])
    index.update("b.example", CountingChoice(Store.LASTLOG2), "z", UserActivity("z", NOW))
    index.update("a.example", CountingChoice(Store.LASTLOG2), "y", None)
    assert index.tracked_users() == {"a.example": 1, "b.example": 1}
    assert index.choice_of("a.example") == CountingChoice(Store.LASTLOG2) and index.choice_of("c.example") is None
    index.remove_hosts(["a.example"])
    assert list(index.counts(now=NOW, windows=DEFAULT_WINDOWS)) == ["b.example"]

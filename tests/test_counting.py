"""The counting core against a literal transcription of mod_measure_active_users' arithmetic."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prosody_lastlog.core.connected import ConnectedMode, ConnectedUsers
from prosody_lastlog.core.counting import count_host, count_hosts
from prosody_lastlog.core.model import AccountRule, CountingChoice, HostData, Store, UserActivity
from prosody_lastlog.core.windows import DEFAULT_WINDOWS, Window

NOW = 1_763_900_000
DAY = 86400


def host(*users: UserActivity, name: str = "example.com", accounts: AccountRule = AccountRule.EVERYONE) -> HostData:
    return HostData(name, Store.LASTLOG2, list(users), CountingChoice(Store.LASTLOG2, accounts=accounts))


def test_windows_are_strict_like_the_seed_module() -> None:
    users = [
        UserActivity("a", NOW - DAY),  # exactly one day: not in 1d
        UserActivity("b", NOW - DAY + 1),
        UserActivity("c", NOW - 7 * DAY),
        UserActivity("d", NOW - 7 * DAY + 1),
        UserActivity("e", NOW - 30 * DAY),
        UserActivity("f", NOW - 30 * DAY + 1),
    ]
    counts = count_host(host(*users), now=NOW, windows=DEFAULT_WINDOWS)
    assert counts.active == {"1d": 1, "7d": 3, "30d": 5}


def test_never_active_registered_disabled_and_future() -> None:
    users = [
        UserActivity("reg-only", None, registered=NOW - 10),
        UserActivity("old-reg", NOW - 3600, registered=NOW - 40 * DAY),
        UserActivity("off", NOW - 10, disabled=True),
        UserActivity("skewed", NOW + 3600),
    ]
    counts = count_host(host(*users, accounts=AccountRule.ENABLED), now=NOW, windows=DEFAULT_WINDOWS)
    assert counts.activity_records == 4
    assert counts.never_active == 1
    assert counts.disabled == 1
    assert counts.future == 1
    assert counts.active == {"1d": 2, "7d": 2, "30d": 2}
    assert counts.registered == {"1d": 1, "7d": 1, "30d": 1}


def test_stickiness() -> None:
    counts = count_host(
        host(UserActivity("a", NOW - 10), UserActivity("b", NOW - 10 * DAY)), now=NOW, windows=DEFAULT_WINDOWS
    )
    assert counts.stickiness(DEFAULT_WINDOWS[0], DEFAULT_WINDOWS[-1]) == 0.5
    empty = count_host(host(), now=NOW, windows=DEFAULT_WINDOWS)
    assert empty.stickiness(DEFAULT_WINDOWS[0], DEFAULT_WINDOWS[-1]) is None
    assert empty.active == {"1d": 0, "7d": 0, "30d": 0}


def test_count_hosts_sorts_by_host() -> None:
    counts = count_hosts([host(name="b.example"), host(name="a.example")], now=NOW, windows=DEFAULT_WINDOWS)
    assert list(counts) == ["a.example", "b.example"]


def seed_module_counts(records: list[tuple[int | None, int | None]], now: int, windows: list[int]) -> list[int]:
    """mod_measure_active_users, transcribed: max(login or 0, logout or 0), then now - last < W."""
    result = [0] * len(windows)
    for login, logout in records:
        last_active = max(login or 0, logout or 0)
        for i, window in enumerate(windows):
            if now - last_active < window:
                result[i] += 1
    return result


timestamps = st.one_of(st.none(), st.integers(min_value=1, max_value=NOW + 5 * DAY))


@given(
    records=st.lists(st.tuples(timestamps, timestamps), max_size=60),
    windows=st.lists(st.integers(min_value=1, max_value=100 * DAY), min_size=1, max_size=5, unique=True),
)
def test_matches_the_seed_module_on_any_data(records: list[tuple[int | None, int | None]], windows: list[int]) -> None:
    users = []
    for i, (login, logout) in enumerate(records):
        times = [t for t in (login, logout) if t is not None]
        users.append(UserActivity(f"u{i}", max(times) if times else None))
    window_objects = [Window(seconds, f"{seconds}s") for seconds in windows]
    counts = count_host(host(*users), now=NOW, windows=window_objects)
    assert [counts.active[w.label] for w in window_objects] == seed_module_counts(records, NOW, windows)


def test_the_account_rule_decides_who_counts_and_connected_users_always_do() -> None:
    """Prosody 13's module: a connected user is active in every window before user_is_enabled is asked; then
    `everyone` ignores account facts, `enabled` leaves out disabled and missing accounts, `nobody` everyone."""
    users = [
        UserActivity("ok", NOW - 10),
        UserActivity("off", NOW - 10, disabled=True),
        UserActivity("gone", NOW - 10, no_account=True),
        UserActivity("online-but-off", NOW - 40 * DAY, disabled=True, session_open=NOW - 40 * DAY),
    ]
    connected = ConnectedUsers(ConnectedMode.ADMIN_SOCKET, {"example.com": frozenset({"online-but-off"})})
    expected = {
        AccountRule.EVERYONE: ({"1d": 4, "7d": 4, "30d": 4}, 0, 0),
        AccountRule.ENABLED: ({"1d": 2, "7d": 2, "30d": 2}, 2, 1),
        AccountRule.NOBODY: ({"1d": 1, "7d": 1, "30d": 1}, 3, 0),
    }
    for rule, (active, left_out, no_account) in expected.items():
        counts = count_host(host(*users, accounts=rule), now=NOW, windows=DEFAULT_WINDOWS, connected=connected)
        assert (dict(counts.active), counts.disabled, counts.no_account, counts.connected) == (
            active,
            left_out,
            no_account,
            1,
        ), rule


def test_returning_users_were_registered_before_the_window_began() -> None:
    users = [
        UserActivity("old", NOW - 3600, registered=NOW - 10 * DAY),  # returning in 1d and 7d, new in 30d
        UserActivity("legacy", NOW - 3600),  # registered before registrations were recorded: returning
        UserActivity("new", NOW - 60, registered=NOW - 120),  # new in every window
        UserActivity("signup", None, registered=NOW - 120),  # never active: neither
        UserActivity("gone", NOW - 9 * DAY, registered=NOW - 100 * DAY),  # returning in 30d only
    ]
    counts = count_host(host(*users), now=NOW, windows=DEFAULT_WINDOWS)
    assert counts.active == {"1d": 3, "7d": 3, "30d": 4}
    assert counts.returning == {"1d": 2, "7d": 2, "30d": 2}


def test_a_connected_user_is_returning_unless_registered_within_the_window() -> None:
    users = [UserActivity("a", None, registered=NOW - 2 * DAY, session_open=NOW - 60)]
    connected = ConnectedUsers(ConnectedMode.HEURISTIC, prosody_started=NOW - DAY)
    counts = count_host(host(*users), now=NOW, windows=DEFAULT_WINDOWS, connected=connected)
    assert counts.returning == {"1d": 1, "7d": 0, "30d": 0}
    assert counts.inactive == {"90d": 0, "180d": 0, "365d": 0}


def test_inactive_by_last_activity_else_registration() -> None:
    users = [
        UserActivity("idle", NOW - 100 * DAY, registered=NOW - 400 * DAY),  # by its activity: 90d only
        UserActivity("exactly", NOW - 180 * DAY),  # now - t >= age: 90d and 180d
        UserActivity("abandoned", None, registered=NOW - 200 * DAY),  # never used: 90d and 180d
        UserActivity("fresh-signup", None, registered=NOW - DAY),  # registered yesterday: never inactive
        UserActivity("unknown", None),  # no time at all: not known to be inactive
        UserActivity("off", NOW - 400 * DAY, disabled=True),  # left out: not counted at all
        UserActivity("account", None, registered=NOW - 400 * DAY, account_only=True),  # no activity record: never used
    ]
    counts = count_host(host(*users, accounts=AccountRule.ENABLED), now=NOW, windows=DEFAULT_WINDOWS)
    assert counts.inactive == {"90d": 4, "180d": 3, "365d": 1}
    assert counts.never_used == {"90d": 2, "180d": 2, "365d": 1}
    assert (counts.never_active, counts.activity_records, counts.disabled) == (4, 6, 1)


def test_inactive_ages_are_given() -> None:
    ages = (Window(7 * DAY, "1w"), Window(2 * 365 * DAY, "2y"))
    users = [UserActivity("a", NOW - 8 * DAY), UserActivity("b", None, registered=NOW - 3 * 365 * DAY)]
    counts = count_host(host(*users), now=NOW, windows=DEFAULT_WINDOWS, ages=ages)
    assert (counts.inactive, counts.never_used) == ({"1w": 2, "2y": 1}, {"1w": 1, "2y": 1})


def test_a_registered_account_with_no_record_is_never_counted_connected() -> None:
    """mod_measure_active_users looks for sessions among the users of its store only: an account whose record is
    gone (deleted while connected) or not yet written is never active, whatever its sessions."""
    users = [UserActivity("no-record", None, registered=NOW - DAY, session_open=NOW - 60, account_only=True)]
    connected = ConnectedUsers(ConnectedMode.ADMIN_SOCKET, {"example.com": frozenset({"no-record"})})
    counts = count_host(host(*users), now=NOW, windows=DEFAULT_WINDOWS, connected=connected)
    assert (counts.connected, counts.active["30d"], counts.never_active) == (0, 0, 1)

"""Sign-up cohorts (`count --cohorts`): Mastodon's semantics on calendar months (UTC), over the accounts the counts
count, bounded to 12 months, and in every output."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporters import render_points
from exporters.prometheus import render_prometheus
from exporters.text import render_cohorts
from prosody_lastlog.cli import main
from prosody_lastlog.core.cohorts import MAX_MONTHS, Cohort, add_cohorts, sign_up_cohorts
from prosody_lastlog.core.connected import ConnectedMode, ConnectedUsers
from prosody_lastlog.core.counting import Snapshot, count_host
from prosody_lastlog.core.model import AccountRule, CountingChoice, HostData, Store, UserActivity
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from tests.conftest import CASES

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC).timestamp()


def at(year: int, month: int, day: int = 1) -> float:
    return datetime(year, month, day, tzinfo=UTC).timestamp()


def host(*users: UserActivity, accounts: AccountRule = AccountRule.EVERYONE) -> HostData:
    return HostData("example.com", Store.LASTLOG2, list(users), CountingChoice(Store.LASTLOG2, accounts=accounts))


def by_month(cohorts: list[Cohort]) -> dict[str, tuple[int, tuple[int, ...]]]:
    return {c.month: (c.registered, c.retained) for c in cohorts if c.registered}


def test_retained_means_last_active_in_or_after_each_month_since_signing_up() -> None:
    users = [
        UserActivity("stayed", NOW - 60, registered=at(2026, 9, 15)),
        UserActivity("left-in-october", at(2026, 10, 31), registered=at(2026, 9, 2)),
        UserActivity("signed-up-only", None, registered=at(2026, 9, 30)),
        UserActivity("same-month", at(2026, 9, 20), registered=at(2026, 9, 1)),
        UserActivity("new", NOW - 3600, registered=at(2026, 12, 1)),
    ]
    cohorts = sign_up_cohorts(host(*users), now=NOW)
    assert [c.month for c in cohorts] == [f"2026-{m:02d}" for m in range(1, 13)]
    assert by_month(cohorts) == {"2026-09": (4, (3, 2, 1, 1)), "2026-12": (1, (1,))}
    assert [c.active_this_month for c in cohorts if c.registered] == [1, 1]


def test_only_the_last_twelve_months_and_known_registrations_count() -> None:
    users = [
        UserActivity("old", NOW, registered=at(2025, 12, 31)),  # before the first cohort month
        UserActivity("unknown", NOW),  # registration not recorded
        UserActivity("future", NOW, registered=NOW + 86400),  # clock skew: not a sign-up yet
        UserActivity("first-month", NOW, registered=at(2026, 1, 1)),
    ]
    cohorts = sign_up_cohorts(host(*users), now=NOW, months=36)
    assert len(cohorts) == MAX_MONTHS
    assert by_month(cohorts) == {"2026-01": (1, (1,) * 12)}
    assert len(sign_up_cohorts(host(*users), now=NOW, months=3)) == 3


def test_left_out_accounts_are_not_counted_and_connected_ones_are_active_now() -> None:
    users = [
        UserActivity("off", NOW - 60, registered=at(2026, 11, 3), disabled=True),
        UserActivity("online", at(2026, 11, 4), registered=at(2026, 11, 3), session_open=NOW - 60),
        UserActivity("skewed", NOW + 86400 * 40, registered=at(2026, 11, 3)),  # active now, not in a later month
        UserActivity("odd", at(2020, 1, 1), registered=at(2026, 11, 3)),  # last seen before signing up: that month
    ]
    connected = ConnectedUsers(ConnectedMode.ADMIN_SOCKET, {"example.com": frozenset({"online"})})
    cohorts = sign_up_cohorts(host(*users, accounts=AccountRule.ENABLED), now=NOW, connected=connected)
    assert by_month(cohorts) == {"2026-11": (3, (3, 2))}


_TIMES = st.none() | st.floats(at(2025, 6), NOW + 86400 * 60)


@given(
    users=st.lists(st.tuples(_TIMES, _TIMES, st.booleans()), max_size=30),
    rule=st.sampled_from(list(AccountRule)),
)
def test_cohorts_are_within_the_counts_and_retention_never_grows(
    users: list[tuple[float | None, float | None, bool]], rule: AccountRule
) -> None:
    data = host(
        *(UserActivity(f"u{i}", last, reg, disabled=off) for i, (last, reg, off) in enumerate(users)), accounts=rule
    )
    cohorts = sign_up_cohorts(data, now=NOW)
    counts = count_host(data, now=NOW, windows=DEFAULT_WINDOWS)
    assert sum(c.registered for c in cohorts) <= len(users) - counts.disabled
    for cohort in cohorts:
        assert cohort.registered >= cohort.retained[0]
        assert list(cohort.retained) == sorted(cohort.retained, reverse=True)
    assert add_cohorts([cohorts, cohorts]) == tuple(
        Cohort(c.month, 2 * c.registered, tuple(2 * n for n in c.retained)) for c in cohorts
    )


def test_every_output_shows_the_cohorts() -> None:
    data = host(UserActivity("a", NOW - 60, registered=at(2026, 11, 3)))
    counts = {"example.com": count_host(data, now=NOW, windows=DEFAULT_WINDOWS)}
    counts = {h: replace(c, cohorts=tuple(sign_up_cohorts(data, now=NOW))) for h, c in counts.items()}
    table = render_cohorts(counts)
    assert "2026-11           1   1   1" in table and "came back and left" in table
    prom = render_prometheus(counts, [], now=int(NOW), windows=DEFAULT_WINDOWS)
    assert 'prosody_cohort_accounts{cohort="2026-11",host="example.com"} 1.0' in prom
    assert 'prosody_cohort_retained{cohort="2026-11",host="example.com"} 1.0' in prom
    assert 'prosody_cohort_retained{cohort="2026-10",host="example.com"} 0.0' in prom
    snapshot = Snapshot(NOW, counts, DEFAULT_WINDOWS)
    assert f"prosody_cohort_accounts,cohort=2026-11,host=example.com value=1i {int(NOW)}" in render_points(
        snapshot, "influx"
    )
    assert f"prosody.example_com.cohort_retained.2026-11 1 {int(NOW)}" in render_points(snapshot, "graphite")


def test_without_the_option_no_cohort_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    data = str(CASES / "prosody13" / "data")
    assert main(["count", "--data-dir", data, "--now", str(int(NOW)), "--format", "prom"]) == 0
    assert "prosody_cohort_accounts{" not in capsys.readouterr().out


@pytest.mark.parametrize("case", ["prosody13", "prosody13-sqlite"])
def test_count_cohorts_on_prosody_13_data(capsys: pytest.CaptureFixture[str], case: str) -> None:
    expected = json.loads((CASES / case / "expected.json").read_text())
    source = (
        ["--data-dir", str(CASES / case / "data")]
        if case == "prosody13"
        else ["--sql", f"sqlite:///{CASES / case / 'prosody.sqlite'}"]
    )
    assert main(["count", *source, "--now", str(expected["now"]), "--cohorts", "--format", "json"]) == 0
    hosts = json.loads(capsys.readouterr().out)["hosts"]
    cohorts = {c["month"]: (c["registered"], c["retained"]) for c in hosts["example.net"]["cohorts"] if c["registered"]}
    # Of example.net's enabled accounts: eight created 40 days before "now" (two last active in October), and rob
    # and ann in November, never active.
    assert cohorts == {"2025-10": (8, [8, 6]), "2025-11": (2, [0])}
    assert len(hosts["example.net"]["cohorts"]) == MAX_MONTHS

"""The account lifecycle against Prosody's own code, on the fixtures real Prosody 0.12 and 13 wrote (file store and
SQLite; PostgreSQL and MariaDB in tests/integration/test_prosody13_runtime.py): the registered, never-active,
inactive, never-used, registration and returning counts equal what Prosody's usermanager and storage API read from
the same data (expected.json's `lifecycle`, read by the fixture driver at "now"), and on Prosody 13 `inactive`
lists what its shell command `user:list_inactive` prints, where the two definitions agree.

They differ in two documented ways (docs/cli.md, `inactive`): user:list_inactive lists disabled accounts too (the
counts leave them out, as Prosody 13's mod_measure_active_users does), and it wants more than the duration
(`now - t > D`) where an account is inactive at exactly D (`now - t >= D`, the complement of "active in D").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prosody_lastlog.core.inactive import list_inactive
from prosody_lastlog.core.model import AccountRule, Store
from prosody_lastlog.core.windows import DEFAULT_WINDOWS, parse_window
from prosody_lastlog.sources.kinds import count_all
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from tests.conftest import CASES
from tests.prosody13_cases import case, module_dir, write_config
from tests.test_oracle13 import CASES_13, where

# user:list_inactive reads account_activity: our counts read it too through the account_activity variant's config.
VARIANT = "account_activity"
NO_ACCOUNT_LIST = {"anon.example", "conference.example.net"}  # Prosody lists no accounts there, nor do we
AGES = tuple(parse_window(d) for d in ("1d", "7d", "30d", "45d", "90d", "180d", "365d"))
Facts = dict[str, Any]


def last_active(facts: Facts, store: Store) -> int | None:
    """The last activity the store holds, as mod_measure_active_users takes it: account_activity's timestamp, or
    the later of lastlog2's events but `registered`."""
    record = facts.get(store.value) or {}
    if store is Store.ACCOUNT_ACTIVITY:
        return record.get("timestamp")
    times = [event["timestamp"] for name, event in record.items() if name != "registered"]
    return max(times, default=None)


def registered(facts: Facts, store: Store) -> int | None:
    """The registration time by the documented precedence: Prosody 13's `created`, else the store's `registered`."""
    own = (facts.get(store.value) or {}).get("registered", {}).get("timestamp") if store is Store.LASTLOG2 else None
    return facts.get("created", own)


def judged_by(facts: Facts, store: Store) -> int | None:
    """What user:list_inactive judges an account by: account_activity's timestamp, else the account's `created`."""
    return last_active(facts, store) if last_active(facts, store) is not None else facts.get("created")


def assert_counts_as_prosody_reads(options: SourceOptions, expected: dict[str, Any]) -> int:
    """Our lifecycle counts, read as `options` say, equal those made from what Prosody's code read of each host;
    the number of hosts compared."""
    now, reference = expected["now"], expected["lifecycle"]
    plan = plan_sources(options, environ={})
    totals, _ = count_all(plan.sources, now=now, windows=DEFAULT_WINDOWS, known_hosts=plan.known_hosts, ages=AGES)
    compared = 0
    for host, counts in totals.counts.items():
        accounts, without = reference[host]["accounts"], reference[host]["without_account"]
        assert counts.registered_accounts == (None if host in NO_ACCOUNT_LIST else len(accounts)), host
        rule, store = counts.counting.accounts, counts.store
        if rule is AccountRule.NOBODY or host in NO_ACCOUNT_LIST:  # only connected users count: nothing to compare
            continue
        recorded = {user: facts for user, facts in without.items() if facts.get(store.value)}
        everyone = {**accounts, **recorded}  # a user with data but no account is read (and left out on 13)
        counted = {u: f for u, f in everyone.items() if rule is AccountRule.EVERYONE or f.get("enabled")}
        times = {u: (last_active(f, store), registered(f, store)) for u, f in counted.items()}
        never = {u for u, (last, _) in times.items() if last is None}
        assert counts.never_active == len(never), host
        for age in AGES:
            inactive = {
                u for u, (last, reg) in times.items() if (t := last if last is not None else reg) is not None
                and now - t >= age.seconds
            }  # fmt: skip
            assert (counts.inactive[age.label], counts.never_used[age.label]) == (
                len(inactive),
                len(inactive & never),
            ), (host, age)
        for window in DEFAULT_WINDOWS:
            new = {
                u for u, f in everyone.items() if (r := registered(f, store)) is not None and now - r < window.seconds
            }
            returning = {
                u for u, (last, reg) in times.items() if last is not None and now - last < window.seconds
                and (reg is None or now - reg >= window.seconds)
            }  # fmt: skip
            assert (counts.registered[window.label], counts.returning[window.label]) == (
                len(new),
                len(returning),
            ), (host, window)
        compared += 1
    return compared


def assert_lists_as_list_inactive(options: SourceOptions, expected: dict[str, Any]) -> int:
    """`inactive`, read as `options` say, lists what user:list_inactive printed, but for the two differences; the
    number of (host, duration) lists compared."""
    now, reference = expected["now"], expected["lifecycle"]
    agreed = 0
    for source in plan_sources(options, environ={}).sources:
        for host, data in source.read().hosts.items():
            if data.counting.accounts is not AccountRule.ENABLED:  # the rule of a stock Prosody 13 host
                continue
            accounts = reference[host]["accounts"]
            for duration, printed in reference[host]["list_inactive"].items():
                age = parse_window(duration)
                ours = {a.user for a in list_inactive(data, now=now, older_than=age).accounts}
                theirs = set(printed["users"])
                disabled = {u for u in theirs if accounts[u].get("enabled") is False}
                boundary = now - age.seconds
                at_exactly = {
                    u for u, f in accounts.items() if f.get("enabled") and judged_by(f, data.store) == boundary
                }
                assert ours == (theirs - disabled) | at_exactly, (host, duration)
                agreed += 1
    return agreed


def thirteen_config(name: str, tmp_path: Path) -> tuple[SourceOptions, dict[str, Any]]:
    directory, expected = case(name)
    config = write_config(tmp_path, plugin_dir=module_dir(tmp_path, VARIANT), **where(name, directory))  # type: ignore[arg-type]
    return SourceOptions(config=config), expected


@pytest.mark.parametrize("name", CASES_13)
def test_prosody_13_lifecycle_counts_are_what_prosody_reads(name: str, tmp_path: Path) -> None:
    assert assert_counts_as_prosody_reads(*thirteen_config(name, tmp_path)) >= 4


@pytest.mark.parametrize("name", CASES_13)
def test_inactive_lists_what_user_list_inactive_prints_where_the_definitions_agree(name: str, tmp_path: Path) -> None:
    options, expected = thirteen_config(name, tmp_path)
    assert assert_lists_as_list_inactive(options, expected) >= 12
    # The fixture holds both differences: disabled grace and frank listed by Prosody; bob at exactly 1d by us.
    listed = expected["lifecycle"]["example.net"]["list_inactive"]["1d"]["users"]
    assert {"grace", "bob"} & set(listed) == {"grace"}


@pytest.mark.parametrize("name", ["lifecycle", "lifecycle-sqlite"])
def test_prosody_012_lifecycle_counts_are_what_prosody_reads(name: str) -> None:
    directory = CASES / name
    expected = case(name)[1]
    options = (
        SourceOptions(data_dir=directory / "data")
        if (directory / "data").is_dir()
        else SourceOptions(sql_url=f"sqlite:///{directory / 'prosody.sqlite'}")
    )
    assert assert_counts_as_prosody_reads(options, expected) == 2
    # What the case is for: an account with no data at all, activity data with no account, exact boundaries.
    example = expected["lifecycle"]["example.org"]
    assert example["accounts"]["sven"] == {} and "gustav" in example["without_account"]

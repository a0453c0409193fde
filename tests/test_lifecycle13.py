"""The account lifecycle against Prosody 13's own code, on the fixtures real Prosody 13 wrote (file store and
SQLite): the registered, never-active and inactive counts equal what Prosody's usermanager and storage API read from
the same data (expected.json's `lifecycle`, read by the fixture driver at "now"), and `inactive` lists what
Prosody 13's shell command `user:list_inactive` prints, where the two definitions agree.

They differ in two documented ways (docs/cli.md, `inactive`): user:list_inactive lists disabled accounts too (the
counts leave them out, as Prosody 13's mod_measure_active_users does), and it wants more than the duration
(`now - t > D`) where an account is inactive at exactly D (`now - t >= D`, the complement of "active in D").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prosody_lastlog.core.inactive import list_inactive
from prosody_lastlog.core.model import AccountRule
from prosody_lastlog.core.windows import DEFAULT_WINDOWS, parse_window
from prosody_lastlog.sources.kinds import count_all
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from tests.prosody13_cases import case, module_dir, write_config
from tests.test_oracle13 import CASES_13, where

# user:list_inactive reads account_activity: our counts read it too through the account_activity variant's config.
VARIANT = "account_activity"
NO_ACCOUNT_LIST = {"anon.example", "conference.example.net"}


def activity_time(facts: dict[str, Any]) -> int | None:
    """What user:list_inactive judges an account by: account_activity's timestamp, else the account's `created`."""
    record = facts.get("account_activity") or {}
    return record.get("timestamp", facts.get("created"))


@pytest.fixture(params=CASES_13)
def fixture_case(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    directory, expected = case(request.param)
    config = write_config(tmp_path, plugin_dir=module_dir(tmp_path, VARIANT), **where(request.param, directory))  # type: ignore[arg-type]
    return config, expected


def test_registered_never_active_and_inactive_counts_are_what_prosody_reads(
    fixture_case: tuple[Path, dict[str, Any]],
) -> None:
    assert_counts_as_prosody_reads(*fixture_case)


def test_inactive_lists_what_user_list_inactive_prints_where_the_definitions_agree(
    fixture_case: tuple[Path, dict[str, Any]],
) -> None:
    assert_lists_as_list_inactive(*fixture_case)


def assert_counts_as_prosody_reads(config: Path, expected: dict[str, Any]) -> None:
    """Our registered, never-active, inactive and never-used counts, read through `config` (the account_activity
    variant's), equal what expected.json's lifecycle reference (Prosody's code) says of each host."""
    now, reference = expected["now"], expected["lifecycle"]
    ages = tuple(parse_window(d) for d in ("1d", "7d", "30d", "45d"))
    plan = plan_sources(SourceOptions(config=config), environ={})
    totals, _ = count_all(plan.sources, now=now, windows=DEFAULT_WINDOWS, known_hosts=plan.known_hosts, ages=ages)
    compared = 0
    for host, counts in totals.counts.items():
        accounts = reference[host]["accounts"]
        rule = counts.counting.accounts
        # Prosody's usermanager lists no accounts of an anonymous host or a component, and we report none there.
        assert counts.registered_accounts == (None if host in NO_ACCOUNT_LIST else len(accounts)), host
        if rule is AccountRule.NOBODY or host in NO_ACCOUNT_LIST:  # only connected users count: nothing to compare
            continue
        counted = {u: f for u, f in accounts.items() if rule is AccountRule.EVERYONE or f.get("enabled")}
        never_active = [u for u, f in counted.items() if not f.get("account_activity")]
        without_account = counts.activity_records + len(never_active) - len(counted)  # EVERYONE: data, no account
        assert counts.never_active == len(never_active), host
        for age in ages:
            inactive = [u for u, f in counted.items() if (t := activity_time(f)) is not None and now - t >= age.seconds]
            if rule is AccountRule.EVERYONE and without_account:
                assert counts.inactive[age.label] >= len(inactive), (host, age)
            else:
                assert counts.inactive[age.label] == len(inactive), (host, age)
            assert counts.never_used[age.label] == len([u for u in inactive if u in never_active]), (host, age)
        compared += 1
    assert compared >= 4


def assert_lists_as_list_inactive(config: Path, expected: dict[str, Any]) -> None:
    """`inactive`, read through `config`, lists what user:list_inactive printed, but for the two differences."""
    now, reference = expected["now"], expected["lifecycle"]
    plan = plan_sources(SourceOptions(config=config), environ={})
    agreed = differed = 0
    for source in plan.sources:
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
                at_exactly = {u for u, f in accounts.items() if f.get("enabled") and activity_time(f) == boundary}
                assert ours == (theirs - disabled) | at_exactly, (host, duration)
                agreed += 1
                differed += bool(disabled or at_exactly)
    assert agreed >= 12
    assert differed >= 1  # the fixture holds both differences (disabled grace and frank; bob at exactly 1d)

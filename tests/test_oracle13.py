"""On every fixture written by real Prosody 13, our counts equal what its mod_measure_active_users reported, for
both module variants (Debian 13's packaged one, reading lastlog2; upstream's newer one, reading account_activity):
read through the Prosody config that names the module, and through --data-dir and --sql, where only what a config
alone says (a host's auth provider, measure_active_users_count_disabled) cannot be known."""

from __future__ import annotations

from pathlib import Path

import pytest

from prosody_lastlog.core.model import AccountRule, Store, StoreBasis
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.sources.kinds import count_all
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from tests.prosody13_cases import VARIANTS, case, module_dir, write_config

CASES_13 = ["prosody13", "prosody13-sqlite"]
# Hosts whose counts depend on the config: plain.example's auth is internal_plain (Prosody 13 counts no one there),
# all.example sets measure_active_users_count_disabled (everyone counts).
NEEDS_THE_CONFIG = {"plain.example", "all.example"}


def active(options: SourceOptions, now: int) -> dict[str, dict[str, int]]:
    plan = plan_sources(options, environ={})
    totals, _ = count_all(plan.sources, now=now, windows=DEFAULT_WINDOWS, known_hosts=plan.known_hosts)
    return {host: dict(counts.active) for host, counts in totals.counts.items()}


def where(name: str, directory: Path) -> dict[str, object]:
    """The data_path and `sql` option of a case, as its Prosody had them."""
    if name.endswith("-sqlite"):
        return {"data_path": directory, "sql": {"driver": "SQLite3", "database": str(directory / "prosody.sqlite")}}
    return {"data_path": directory / "data"}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", CASES_13)
def test_through_the_config_every_host_counts_as_prosody_13_did(name: str, variant: str, tmp_path: Path) -> None:
    directory, expected = case(name)
    config = write_config(tmp_path, plugin_dir=module_dir(tmp_path, variant), **where(name, directory))  # type: ignore[arg-type]
    assert expected[VARIANTS[variant]]
    assert active(SourceOptions(config=config), expected["now"]) == expected[VARIANTS[variant]]


def test_the_store_and_account_rule_of_each_host_say_why(tmp_path: Path) -> None:
    directory, expected = case("prosody13")
    config = write_config(tmp_path, data_path=directory / "data", plugin_dir=module_dir(tmp_path, "packaged"))
    plan = plan_sources(SourceOptions(config=config), environ={})
    totals, health = count_all(plan.sources, now=expected["now"], windows=DEFAULT_WINDOWS, known_hosts=plan.known_hosts)
    choices = {host: counts.counting for host, counts in totals.counts.items()}
    assert choices["example.net"].store is Store.LASTLOG2 and choices["example.net"].basis is StoreBasis.MODULE
    assert "modules-packaged/mod_measure_active_users/mod_measure_active_users.lua) reads lastlog2" in (
        choices["example.net"].reason
    )
    # The config enables the packaged module on activity13.example too: it reads lastlog2, which has no data there.
    activity13 = choices["activity13.example"]
    assert (activity13.store, activity13.basis) == (Store.LASTLOG2, StoreBasis.MODULE)
    assert activity13.reason.endswith("reads lastlog2 (no data here yet: zeros, as Prosody counts)")
    assert choices["example.net"].accounts is AccountRule.ENABLED
    assert choices["plain.example"].accounts is AccountRule.NOBODY
    assert choices["anon.example"].accounts is AccountRule.NOBODY
    assert choices["all.example"].accounts is AccountRule.EVERYONE
    assert choices["conference.example.net"].accounts is AccountRule.EVERYONE
    [server] = [source.server for source in health]
    assert server is not None and server.thirteen and server.module is not None


@pytest.mark.parametrize("name", CASES_13)
def test_without_a_config_the_default_is_account_activity_and_store_lastlog2_gives_the_packaged_counts(
    name: str,
) -> None:
    """No config, and this machine's modules are Prosody 0.12's (not the server's): no module to match, so the
    documented default for Prosody 13, account_activity, as upstream's module reads; --store lastlog2 gives the packaged
    module's. Only the hosts whose counts depend on the config differ."""
    directory, expected = case(name)
    now = expected["now"]
    if name.endswith("-sqlite"):
        options = SourceOptions(sql_url=f"sqlite://{directory / 'prosody.sqlite'}")
    else:
        options = SourceOptions(data_dir=directory / "data")
    for variant, store in (("account_activity", None), ("packaged", Store.LASTLOG2)):
        counts = active(SourceOptions(**{**options.__dict__, "store": store}), now)
        wanted = expected[VARIANTS[variant]]
        assert set(counts) == set(wanted)
        assert {host for host in wanted if counts[host] != wanted[host]} == NEEDS_THE_CONFIG, variant

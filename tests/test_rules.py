"""The one set of rules deciding how a host is counted: which Prosody wrote the data, which module it runs, which
store and which accounts count (prosody_lastlog/core/rules.py)."""

from __future__ import annotations

import pytest

from prosody_lastlog.core.model import AccountRule, Store, StoreBasis
from prosody_lastlog.core.rules import (
    HostConfig,
    InstalledProsody,
    MeasureModule,
    ModuleStore,
    Policy,
    ServerFacts,
    account_rule,
    choose_store,
    server_facts,
)

AA, L2, L1 = Store.ACCOUNT_ACTIVITY, Store.LASTLOG2, Store.LASTLOG
DISTRIBUTION = "/usr/lib/prosody/modules/mod_measure_active_users/mod_measure_active_users.lua"
TRIXIE = MeasureModule(DISTRIBUTION, ModuleStore.LASTLOG2, checks_accounts=True)
BOOKWORM = MeasureModule(DISTRIBUTION, ModuleStore.LASTLOG2, checks_accounts=False)
UPSTREAM = MeasureModule(
    "/srv/plugins/mod_measure_active_users.lua", ModuleStore.BY_VERSION, True, named_by_config=True
)


def facts(*, thirteen: bool, module: MeasureModule | None = None) -> ServerFacts:
    return ServerFacts(thirteen, "given", module, "mod_measure_active_users (x)" if module else "no module")


@pytest.mark.parametrize(
    ("installed", "markers", "thirteen", "module"),
    [
        (InstalledProsody("13.0.1", module=TRIXIE), [], True, TRIXIE),  # Debian 13, a fresh server
        (InstalledProsody("0.12.3", module=BOOKWORM), [], False, BOOKWORM),  # Debian 12
        (InstalledProsody("0.12.3", module=BOOKWORM), ["account_activity"], True, None),  # 13's data on a 0.12 machine
        (InstalledProsody("0.12.3", module=UPSTREAM), ["cron"], True, UPSTREAM),  # the config names the module
        (InstalledProsody("13.0.1", module=TRIXIE), ["prosody_unique_index"], True, TRIXIE),
        (InstalledProsody(), ["accounts_cleanup"], True, None),
        (InstalledProsody(), ["lastlog2", "accounts"], False, None),  # nothing of 13: taken as 0.12
        (InstalledProsody("hg:0123456789ab"), [], True, None),  # trunk is 13 or later
    ],
)
def test_which_prosody_wrote_the_data_and_which_module_it_runs(
    installed: InstalledProsody, markers: list[str], thirteen: bool, module: MeasureModule | None
) -> None:
    found = server_facts(installed, markers)
    assert (found.thirteen, found.module) == (thirteen, module)
    assert found.evidence


def test_a_module_the_distribution_holds_for_another_version_is_said_why_it_is_not_used() -> None:
    found = server_facts(InstalledProsody("0.12.3", module=BOOKWORM), ["account_activity"])
    assert "the installed Prosody 0.12.3's" in found.module_note and "(the installed Prosody 0.12.3 did not" in (
        found.evidence
    )
    unknown = server_facts(InstalledProsody("13.0.1", unrecognized_module="/x/mod_measure_active_users.lua"), [])
    assert unknown.module is None and "opens no store we know" in unknown.module_note


@pytest.mark.parametrize(
    ("present", "server", "measures", "forced", "expected"),
    [
        ({AA, L2}, facts(thirteen=True, module=TRIXIE), None, None, (L2, StoreBasis.MODULE)),
        ({AA, L2}, facts(thirteen=True, module=UPSTREAM), None, None, (AA, StoreBasis.MODULE)),
        ({L2}, facts(thirteen=False, module=UPSTREAM), None, None, (L2, StoreBasis.MODULE)),  # by version: 0.12
        ({AA}, facts(thirteen=True, module=TRIXIE), True, None, (L2, StoreBasis.MODULE)),  # enabled, no data yet
        ({AA}, facts(thirteen=True, module=TRIXIE), None, None, (AA, StoreBasis.FALLBACK)),  # no config, no data
        ({AA, L2}, facts(thirteen=True, module=TRIXIE), False, None, (AA, StoreBasis.FALLBACK)),  # not enabled
        ({AA, L2, L1}, facts(thirteen=True), None, None, (AA, StoreBasis.DEFAULT)),
        ({L2, L1}, facts(thirteen=False), None, None, (L2, StoreBasis.DEFAULT)),
        ({L1}, facts(thirteen=False), None, None, (L1, StoreBasis.DEFAULT)),
        ({L1}, facts(thirteen=True, module=TRIXIE), None, L2, (L2, StoreBasis.OPTION)),  # --store keeps the host
        (set(), facts(thirteen=True), None, None, None),
    ],
)
def test_which_store(
    present: set[Store],
    server: ServerFacts,
    measures: bool | None,
    forced: Store | None,
    expected: tuple[Store, StoreBasis] | None,
) -> None:
    chosen = choose_store(present, server, forced=forced, measures=measures)
    assert (chosen and chosen[:2]) == expected
    assert chosen is None or chosen[2]  # always a reason


@pytest.mark.parametrize(
    ("server", "config", "count_disabled", "expected"),
    [
        (facts(thirteen=False, module=BOOKWORM), HostConfig(), False, AccountRule.EVERYONE),
        (facts(thirteen=False, module=TRIXIE), HostConfig("internal_hashed"), False, AccountRule.EVERYONE),
        (facts(thirteen=True, module=BOOKWORM), HostConfig(), False, AccountRule.EVERYONE),  # does not ask
        (facts(thirteen=True, module=TRIXIE), HostConfig(), False, AccountRule.ENABLED),  # default auth
        (facts(thirteen=True), HostConfig("internal_hashed"), False, AccountRule.ENABLED),
        (facts(thirteen=True), HostConfig("internal_plain"), False, AccountRule.NOBODY),
        (facts(thirteen=True), HostConfig("ldap"), False, AccountRule.NOBODY),
        (facts(thirteen=True), HostConfig("internal_plain"), True, AccountRule.EVERYONE),
        (facts(thirteen=True), HostConfig("internal_hashed", count_disabled=True), False, AccountRule.EVERYONE),
        (facts(thirteen=True), HostConfig(is_component=True), False, AccountRule.EVERYONE),
        (facts(thirteen=True), HostConfig(accounts_storage="sql"), False, AccountRule.EVERYONE),
    ],
)
def test_which_accounts_count(
    server: ServerFacts, config: HostConfig, count_disabled: bool, expected: AccountRule
) -> None:
    rule, reason = account_rule(server, config, count_disabled=count_disabled)
    assert rule is expected and reason


def test_a_host_whose_stores_are_split_is_counted_from_the_one_store_it_may_use() -> None:
    policy = Policy(hosts={"split.example": HostConfig(stores=frozenset([L2]))})
    server = facts(thirteen=True)
    choice = policy.choose("split.example", {AA, L2}, server)
    assert choice is not None and choice.store is L2
    assert policy.choose("other.example", {AA, L2}, server).store is AA  # type: ignore[union-attr]

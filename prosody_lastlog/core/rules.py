"""Which store a host is counted from, and which of its accounts count: mod_measure_active_users' own choices,
decided in this one place for every reader (file store, SQL, the daemon's index). Pure: no I/O.

What the module does depends on the Prosody that runs it and on the module's revision:
- Prosody 0.12 has no `usermanager.user_is_enabled`: every account in the store counts.
- Prosody 13 (13.0.1, also upstream's master in 2025) has it, and every revision of the module shipped for 13 counts
  a user only if it answers true (unless `measure_active_users_count_disabled`). It asks the host's auth provider's
  `is_enabled`. Only mod_auth_internal_hashed has one: true when the account record exists and is not
  `disabled`. Every other provider (internal_plain, anonymous, ldap, cyrus, ...) gets usermanager's null-provider
  stand-in, which answers nil ("method not implemented"), so Prosody 13 counts no one there but connected users.
- Debian 12's and Debian 13's packaged module reads `lastlog2`; upstream's newer revision reads `account_activity`
  on Prosody 13 and `lastlog2` before.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from prosody_lastlog.core.model import AccountRule, CountingChoice, Store, StoreBasis

# The auth provider whose `is_enabled` Prosody 13 asks, and Prosody's default provider.
HASHED = "internal_hashed"
DEFAULT_AUTH = HASHED
# The data Prosody 13 writes and 0.12 never does: its built-in stores, mod_cron's run times, and the index its
# mod_storage_sql makes on the SQL table at start.
THIRTEEN_STORES = frozenset({"account_activity", "cron", "account_roles", "accounts_cleanup"})
THIRTEEN_INDEX = "prosody_unique_index"
_THIRTEEN_MARKERS = THIRTEEN_STORES | {THIRTEEN_INDEX}


class ModuleStore(StrEnum):
    """How a mod_measure_active_users revision picks the store it opens."""

    LASTLOG2 = "lastlog2"  # Debian 12's and Debian 13's packaged revisions
    ACCOUNT_ACTIVITY = "account_activity"
    BY_VERSION = "by_version"  # upstream's current revision: account_activity on Prosody 13, else lastlog2


@dataclass(frozen=True)
class MeasureModule:
    """An installed mod_measure_active_users, as read from its source text (never run)."""

    path: str
    store: ModuleStore
    checks_accounts: bool  # it asks usermanager.user_is_enabled (on a Prosody that has it)
    named_by_config: bool = False  # found in the config's plugin_paths or the installer's path, not the distribution's


@dataclass(frozen=True)
class InstalledProsody:
    """What this machine's Prosody install says: its version and its mod_measure_active_users, if found."""

    version: str | None = None  # e.g. "0.12.3", "13.0.1"
    version_file: str | None = None
    module: MeasureModule | None = None
    searched: tuple[str, ...] = ()  # the module directories looked in, in Prosody's order
    unrecognized_module: str | None = None  # the module Prosody would load, when it names no store we know


@dataclass(frozen=True)
class ServerFacts:
    """The Prosody that wrote the data being read: whether it is 13, why we think so, and its module."""

    thirteen: bool
    evidence: str
    module: MeasureModule | None
    module_note: str  # "mod_measure_active_users (<path>)", or why no module is used


@dataclass(frozen=True)
class HostConfig:
    """What the Prosody config says about one host that the rules use."""

    auth_provider: str | None = None  # the `authentication` option; None: no config, Prosody's default applies
    count_disabled: bool = False  # the `measure_active_users_count_disabled` option
    is_component: bool = False
    measures: bool | None = None  # whether mod_measure_active_users is enabled there; None: no config says
    stores: frozenset[Store] | None = None  # the stores it may be counted from; None: any
    accounts_storage: str | None = None  # the accounts store's driver, where it is not the activity's (not read)


ACCOUNTS_IN_STORAGE = frozenset(
    {HASHED, "internal_plain"}
)  # providers whose accounts are the `accounts` store (and which can create them)


def keeps_accounts(config: HostConfig | None) -> bool | None:
    """Whether the host's registered accounts are its `accounts` store, beside the activity data: True for
    mod_auth_internal_hashed and _plain; False for a component, another provider (ldap, anonymous, cyrus, ...: Prosody
    keeps no account list to count) or accounts kept in another storage; None without a config to say."""
    if config is None:
        return None
    if config.is_component or config.accounts_storage is not None:
        return False
    return (config.auth_provider or DEFAULT_AUTH) in ACCOUNTS_IN_STORAGE


@dataclass(frozen=True)
class Policy:
    """Everything the rules need besides the data: the install, the user's overrides, the config's hosts."""

    installed: InstalledProsody = InstalledProsody()
    forced_store: Store | None = None  # --store
    count_disabled: bool = False  # --count-disabled
    hosts: Mapping[str, HostConfig] = field(default_factory=dict)  # from the config; empty without one

    def server(self, markers: Collection[str]) -> ServerFacts:
        """The facts about the server, given the names of the stores (and SQL indexes) found in the data."""
        return server_facts(self.installed, markers)

    def keeps_accounts(self, host: str) -> bool | None:
        """keeps_accounts for `host`, as the config describes it (None without a config)."""
        return keeps_accounts(self.hosts.get(host)) if self.hosts else None

    def lists_accounts(self, host: str) -> bool:
        """Whether `host`'s registered accounts with no activity data count as its users (never active): where its
        accounts store is its account list, or no config says otherwise."""
        return self.keeps_accounts(host) is not False

    def registered_accounts(self, host: str, listed: int | None) -> int | None:
        """What to report as `host`'s registered accounts, given how many its accounts store lists (None: it has no
        such store): nothing where its accounts are kept elsewhere, or where no config says and there is no store;
        zero where the config says they are there and there is none yet."""
        keeps = self.keeps_accounts(host)
        if keeps is False or (keeps is None and listed is None):
            return None
        return listed or 0

    def choose(self, host: str, present: Collection[Store], server: ServerFacts) -> CountingChoice | None:
        """How `host` is counted, given the activity stores it has data in; None if it has none (and no
        --store names one)."""
        config = self.hosts.get(host, HostConfig())
        if config.stores is not None:
            present = [store for store in present if store in config.stores]
        store = choose_store(present, server, forced=self.forced_store, measures=config.measures)
        if store is None:
            return None
        accounts = account_rule(server, config, count_disabled=self.count_disabled)
        return CountingChoice(store[0], store[1], store[2], accounts[0], accounts[1])


def server_facts(installed: InstalledProsody, markers: Collection[str]) -> ServerFacts:
    """Prosody 13 if the data holds stores only 13 writes, else what the installed package says.

    The distribution's module belongs to the installed Prosody: it is used only when that Prosody could have written
    the data. A module the config names (plugin_paths, the installer's path) is used in any case.
    """
    found = sorted(_THIRTEEN_MARKERS.intersection(markers))
    installed_13 = _is_13(installed.version)
    if found:
        thirteen, evidence = True, f"the data holds what only Prosody 13 writes: {', '.join(found)}"
        if installed.version is not None and not installed_13:
            evidence += f" (the installed Prosody {installed.version} did not write it)"
    elif installed.version is not None:
        thirteen, evidence = installed_13, f"Prosody {installed.version} is installed ({installed.version_file})"
    else:
        thirteen, evidence = False, "no installed Prosody found and no Prosody 13 store in the data: taken as 0.12"
    module = installed.module
    if installed.unrecognized_module is not None:
        note = f"the mod_measure_active_users found ({installed.unrecognized_module}) opens no store we know"
        return ServerFacts(thirteen, evidence, None, note)
    if module is None:
        where = ", ".join(installed.searched) or "no module directory"
        return ServerFacts(thirteen, evidence, None, f"no mod_measure_active_users found (looked in {where})")
    if not module.named_by_config and installed.version is not None and installed_13 != thirteen:
        note = (
            f"the mod_measure_active_users found ({module.path}) is the installed Prosody {installed.version}'s, "
            "not the one of the Prosody that wrote the data"
        )
        return ServerFacts(thirteen, evidence, None, note)
    return ServerFacts(thirteen, evidence, module, f"mod_measure_active_users ({module.path})")


def choose_store(
    present: Collection[Store], server: ServerFacts, *, forced: Store | None, measures: bool | None = None
) -> tuple[Store, StoreBasis, str] | None:
    """The store to count: --store; else the one the server's mod_measure_active_users opens, where it counts this
    host (the config enables it there; without a config, where that store has data); else a documented default
    order (Prosody 13: account_activity, lastlog2, lastlog; before: lastlog2, lastlog) among the stores with data.

    `present` are the stores the host has data in; `measures` whether the config enables the module on the host
    (None: no config read)."""
    if forced is not None:
        return forced, StoreBasis.OPTION, f"--store {forced.value}"
    wanted = module_store(server)
    if wanted is not None and (measures or (measures is None and wanted in present)):
        empty = "" if wanted in present else " (no data here yet: zeros, as Prosody counts)"
        return wanted, StoreBasis.MODULE, f"{server.module_note} reads {wanted.value}{empty}"
    order = (Store.ACCOUNT_ACTIVITY, Store.LASTLOG2, Store.LASTLOG)
    if not server.thirteen:
        order = (Store.LASTLOG2, Store.LASTLOG, Store.ACCOUNT_ACTIVITY)
    fallback = next((store for store in order if store in present), None)
    if fallback is None:
        return None
    first = "account_activity first on Prosody 13" if server.thirteen else "lastlog2 first on Prosody 0.12"
    if wanted is not None:
        why = "is not enabled on this host" if measures is False else f"reads {wanted.value}, no data here"
        return fallback, StoreBasis.FALLBACK, f"{server.module_note} {why}; the default order: {first}"
    return fallback, StoreBasis.DEFAULT, f"{server.module_note}; the default order: {first}"


def module_store(server: ServerFacts) -> Store | None:
    """The store the server's mod_measure_active_users opens, if its module is known."""
    if server.module is None:
        return None
    rule = server.module.store
    if rule is ModuleStore.BY_VERSION:
        return Store.ACCOUNT_ACTIVITY if server.thirteen else Store.LASTLOG2
    return Store(rule.value)


def account_rule(server: ServerFacts, config: HostConfig, *, count_disabled: bool) -> tuple[AccountRule, str]:
    """Which accounts count, as Prosody's usermanager.user_is_enabled answers mod_measure_active_users."""
    everyone = _why_everyone_counts(server, config, count_disabled=count_disabled)
    if everyone is not None:
        return AccountRule.EVERYONE, everyone
    provider = config.auth_provider or DEFAULT_AUTH
    if provider == HASHED:
        assumed = "" if config.auth_provider else " (Prosody's default; no config read)"
        return AccountRule.ENABLED, f"auth {provider}{assumed}: an account that exists and is not disabled counts"
    return (
        AccountRule.NOBODY,
        f"auth {provider}: Prosody 13's user_is_enabled answers nil for its accounts (no is_enabled), so only "
        "connected users count; measure_active_users_count_disabled = true (or --count-disabled) counts everyone",
    )


def _why_everyone_counts(server: ServerFacts, config: HostConfig, *, count_disabled: bool) -> str | None:
    """Why every account counts on this host, if it does."""
    if not server.thirteen:
        return "Prosody 0.12 has no user_is_enabled: every account counts"
    if server.module is not None and not server.module.checks_accounts:
        return f"{server.module.path} does not ask user_is_enabled: every account counts"
    if count_disabled or config.count_disabled:
        option = "--count-disabled" if count_disabled else "measure_active_users_count_disabled"
        return f"{option}: every account counts"
    if config.is_component:
        return "a component: it has no accounts"
    if config.accounts_storage is not None:
        return (
            f"accounts are kept in storage {config.accounts_storage!r}, apart from the activity data, and not read: "
            "every account counts (Prosody 13 would leave out disabled and missing ones)"
        )
    return None


def _is_13(version: str | None) -> bool:
    """Whether a Prosody version string is 13 or later (hg snapshots of trunk count as 13)."""
    if version is None:
        return False
    major = version.split(".", 1)[0]
    if major.isdigit():
        return int(major) >= 13
    return version.startswith("hg:")

"""Typed values passed from the readers to the counting core."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

# Prosody's account stores, beside the activity stores: the accounts of mod_auth_internal_hashed and _plain (a
# user is an account when its record is there), and mod_register_ibr's details (its `registered` time).
ACCOUNTS, ACCOUNT_DETAILS = "accounts", "account_details"


class Store(StrEnum):
    """The Prosody stores that record last activity (`rules.choose_store` decides which one a host is counted from)."""

    ACCOUNT_ACTIVITY = "account_activity"  # Prosody 13's mod_account_activity
    LASTLOG2 = "lastlog2"  # prosody-modules mod_lastlog2, read by mod_measure_active_users on 0.12
    LASTLOG = "lastlog"  # the older prosody-modules mod_lastlog


@dataclass(slots=True)
class UserActivity:
    """One account's last-activity facts, as times in Unix seconds; never changed once made (not frozen only
    because a scan makes one per account, and a frozen one takes four times as long to make)."""

    user: str
    last_active: float | None
    registered: float | None = None
    disabled: bool = False  # the account record says disabled (read only where the host's AccountRule asks)
    session_open: float | None = None  # a login the log shows no later logout for: that login's time
    no_account: bool = False  # there is no account record (looked for only where the host's AccountRule asks)
    account_only: bool = False  # a registered account with no last-activity record (so never active)


PROBLEM_KINDS = ("empty", "invalid", "limit", "not_a_file", "unexpected", "unreadable")


@dataclass(frozen=True, slots=True)
class ReadProblem:
    """A file or row that could not be used, and why; `kind` is a short stable reason class."""

    where: str
    kind: str
    reason: str


class StoreBasis(StrEnum):
    """Why a host is counted from its store (`rules.choose_store`)."""

    OPTION = "option"  # --store
    MODULE = "module"  # the store the server's own mod_measure_active_users opens
    FALLBACK = "fallback"  # the module's store has no data on this host: the first of the default order that has
    DEFAULT = "default"  # no module known: the documented default order


class AccountRule(StrEnum):
    """Which accounts count, as Prosody's user_is_enabled answers mod_measure_active_users (`rules.account_rule`)."""

    EVERYONE = "everyone"  # Prosody 0.12, count_disabled, a component
    ENABLED = "enabled"  # Prosody 13, mod_auth_internal_hashed: the account record exists and is not disabled
    NOBODY = "nobody"  # Prosody 13, any other auth provider: user_is_enabled answers nil; only connected users count

    def leaves_out(self, *, disabled: bool, no_account: bool) -> bool:
        """Whether a user who is not connected is left out of the counts (Prosody: not `user_is_enabled`), given
        whether the account record is disabled or missing."""
        if self is AccountRule.EVERYONE:
            return False
        return self is AccountRule.NOBODY or disabled or no_account

    def for_want_of_account(self, *, no_account: bool) -> bool:
        """Whether a user left out is left out because there is no account record (and not for another reason)."""
        return self is AccountRule.ENABLED and no_account


@dataclass(frozen=True, slots=True)
class CountingChoice:
    """How one host is counted: the store read and which accounts count, each with a one-line reason."""

    store: Store
    basis: StoreBasis = StoreBasis.DEFAULT
    reason: str = ""
    accounts: AccountRule = AccountRule.EVERYONE
    accounts_reason: str = ""


@dataclass(slots=True)
class HostData:
    """Everything read for one host from one store."""

    host: str
    store: Store
    users: list[UserActivity] = field(default_factory=list)
    choice: CountingChoice | None = None  # None: from the store, every account counting
    registered_accounts: int | None = None  # accounts in the auth store; None: not known (see rules.keeps_accounts)

    def __post_init__(self) -> None:
        if self.choice is None:
            self.choice = CountingChoice(self.store)

    @property
    def counting(self) -> CountingChoice:
        """How this host is counted."""
        return self.choice or CountingChoice(self.store)

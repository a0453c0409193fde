"""The accounts an admin may clean up: those the counts call inactive, one by one. No I/O.

The rule is the counts' own (`counting.Lifecycle`, `counting.idle_for`): an account counted (not left out by the
host's AccountRule) and not connected is inactive for an age when its last activity, else its registration, is at
least that long ago. An account never active whose registration time is not known cannot be told, so it is never
listed (it is counted in `unknown`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prosody_lastlog.core.connected import NOBODY, ConnectedUsers, is_connected
from prosody_lastlog.core.counting import idle_for
from prosody_lastlog.core.model import HostData
from prosody_lastlog.core.windows import Window


@dataclass(frozen=True, slots=True)
class InactiveAccount:
    """One account to review, with the times it was judged by (Unix seconds)."""

    user: str
    last_active: float | None  # None: never active
    registered: float | None


@dataclass(frozen=True, slots=True)
class InactiveList:
    """The inactive accounts of one host, sorted by user name, and what could not be listed."""

    host: str
    accounts: list[InactiveAccount] = field(default_factory=list)
    unknown: int = 0  # never active, registration time not known
    left_out: int = 0  # not counted on this host (disabled, no account record), as in the counts


def list_inactive(
    data: HostData,
    *,
    now: float,
    older_than: Window,
    never_used_for: Window | None = None,
    connected: ConnectedUsers = NOBODY,
) -> InactiveList:
    """The accounts of one host inactive for `older_than` as of `now`; an account never active is judged by
    `never_used_for` instead, when given (e.g. listed 14 days after a registration that was never used)."""
    never_used_age = never_used_for or older_than
    rule = data.counting.accounts
    accounts = []
    unknown = left_out = 0
    for user in data.users:
        if is_connected(connected, data.host, user):
            continue
        if rule.leaves_out(disabled=user.disabled, no_account=user.no_account):
            left_out += 1
        elif user.last_active is None:
            if user.registered is None:
                unknown += 1
            elif idle_for(now, user.registered, never_used_age):
                accounts.append(InactiveAccount(user.user, None, user.registered))
        elif idle_for(now, user.last_active, older_than):
            accounts.append(InactiveAccount(user.user, user.last_active, user.registered))
    accounts.sort(key=lambda account: account.user)
    return InactiveList(data.host, accounts, unknown, left_out)

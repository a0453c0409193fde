"""Typed values passed from the readers to the counting core."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Store(StrEnum):
    """The Prosody stores that record last activity, in the order a server's own module prefers them."""

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
    disabled: bool = False
    session_open: float | None = None  # a login the log shows no later logout for: that login's time


PROBLEM_KINDS = ("empty", "invalid", "limit", "not_a_file", "unexpected", "unreadable")


@dataclass(frozen=True, slots=True)
class ReadProblem:
    """A file or row that could not be used, and why; `kind` is a short stable reason class."""

    where: str
    kind: str
    reason: str


@dataclass(slots=True)
class HostData:
    """Everything read for one host from one store."""

    host: str
    store: Store
    users: list[UserActivity] = field(default_factory=list)

"""What every kind of source shares: how often a daemon reads it in full, and how its name shows a forced store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from prosody_lastlog.core.rules import Policy


class Intervals(Protocol):
    """How often the user wants sources read in full (the daemon's options)."""

    @property
    def resync_seconds(self) -> float: ...

    @property
    def resync_jitter_seconds(self) -> float: ...

    @property
    def sql_interval_seconds(self) -> float: ...


@dataclass(frozen=True)
class Cadence:
    """How a daemon reads a source in full: every `interval` plus up to `jitter` seconds; /healthz fails once the
    last success is older than `max_age`; `logged`: each round is logged at info level (a rare, heavy one)."""

    interval: float
    jitter: float
    max_age: float
    logged: bool


def store_suffix(policy: Policy) -> str:
    """A forced store in a source's name, which keeps two sources of one place apart."""
    return f" ({policy.forced_store.value})" if policy.forced_store else ""

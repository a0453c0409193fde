"""What every push exporter sends: the counts of one moment as flat, timestamped points. Pure: no I/O.

One Point is one value of one series: the same families as /metrics, without the `prosody_` prefix:
`active_users` and `registrations` (per host and window), `accounts`, `accounts_never_active` and
`connected_users` (per host). Values are whole numbers (InfluxDB fixes a field's type at its first write).
"""

from __future__ import annotations

from dataclasses import dataclass

from prosody_lastlog.core.counting import Snapshot

WINDOWED = ("active_users", "registrations")
PER_HOST = ("accounts", "accounts_never_active", "connected_users")


@dataclass(frozen=True, slots=True)
class Point:
    """One value of one series at one time (Unix seconds)."""

    name: str
    host: str
    window: str | None
    value: int
    timestamp: int


def aligned(timestamp: float, interval: float) -> int:
    """`timestamp` rounded down to a multiple of `interval` seconds, so each interval has one point per series."""
    step = max(1, int(interval))
    return int(timestamp) // step * step


def points_of(snapshot: Snapshot, *, timestamp: int) -> list[Point]:
    """Every point of the snapshot, stamped `timestamp`, in a stable order (host, family, window)."""
    points = []
    for host, counts in sorted(snapshot.counts.items()):
        for window in snapshot.windows:
            points.append(Point("active_users", host, window.label, counts.active[window.label], timestamp))
        for window in snapshot.windows:
            points.append(Point("registrations", host, window.label, counts.registered[window.label], timestamp))
        points.append(Point("accounts", host, None, counts.accounts, timestamp))
        points.append(Point("accounts_never_active", host, None, counts.never_active, timestamp))
        points.append(Point("connected_users", host, None, counts.connected, timestamp))
    return points

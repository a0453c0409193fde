"""What every push exporter sends: the counts of one moment as flat, timestamped points. Pure: no I/O.

One Point is one value of one series of a count family (exporters.families: the families of /metrics, without the
`prosody_` prefix). Values are whole numbers (InfluxDB fixes a field's type at its first write).
"""

from __future__ import annotations

from dataclasses import dataclass

from exporters.families import COUNT_FAMILIES
from prosody_lastlog.core.counting import Snapshot


@dataclass(frozen=True, slots=True)
class Point:
    """One value of one series at one time (Unix seconds)."""

    name: str
    host: str
    window: str | None  # the value of the family's second label, if it has one
    value: int
    timestamp: int
    label: str = "window"  # the name of that label ("window", or "cohort")


def aligned(timestamp: float, interval: float) -> int:
    """`timestamp` rounded down to a multiple of `interval` seconds, so each interval has one point per series."""
    step = max(1, int(interval))
    return int(timestamp) // step * step


def points_of(snapshot: Snapshot, *, timestamp: int) -> list[Point]:
    """Every point of the snapshot, stamped `timestamp`, in a stable order (host, family, window)."""
    return [
        Point(family.name, host, window, value, timestamp, *family.labels[1:])
        for host, counts in sorted(snapshot.counts.items())
        for family in COUNT_FAMILIES
        for window, value in family.samples(counts)
    ]

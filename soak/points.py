"""Did every snapshot `serve` pushed arrive? The tap's record against what whisper and InfluxDB hold."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from exporters.graphite import format_plaintext
from exporters.points import Point
from tests.integration.push_servers import CarbonServer, InfluxServer

Key = tuple[str, str, str | None]  # (family, host, window)


@dataclass
class Pushed:
    """Per exporter: for each timestamp, every snapshot queued with it (a timestamp can be queued twice)."""

    snapshots: dict[str, dict[int, list[dict[Key, int]]]] = field(default_factory=lambda: defaultdict(dict))

    @classmethod
    def read(cls, tap: Path) -> Pushed:
        """Reads the tap file soak/serve_tap.py wrote."""
        pushed = cls()
        for line in tap.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            values = {(name, host, window): value for name, host, window, value in record["points"]}
            pushed.snapshots[record["exporter"]].setdefault(record["ts"], []).append(values)
        return pushed


@dataclass
class Delivery:
    """What arrived of one exporter's snapshots with timestamps up to the cut-off."""

    exporter: str
    pushed: int = 0  # distinct timestamps queued
    points: int = 0
    arrived: int = 0
    lost: list[int] = field(default_factory=list)  # timestamps missing or wrong at the target
    examples: list[str] = field(default_factory=list)


def check(exporter: str, pushed: Pushed, stored: dict[Key, dict[int, float]], cutoff: float) -> Delivery:
    """A timestamp arrived when every series holds, at that timestamp, a value one of its snapshots had."""
    delivery = Delivery(exporter)
    for timestamp, snapshots in sorted(pushed.snapshots.get(exporter, {}).items()):
        if timestamp > cutoff:
            continue
        delivery.pushed += 1
        keys = set().union(*snapshots)
        delivery.points += len(keys)
        wrong = [
            key
            for key in sorted(keys, key=str)
            if stored.get(key, {}).get(timestamp) not in {shot[key] for shot in snapshots if key in shot}
        ]
        if wrong:
            delivery.lost.append(timestamp)
            if len(delivery.examples) < 5:
                key = wrong[0]
                delivery.examples.append(f"{timestamp} {key}: stored {stored.get(key, {}).get(timestamp)}")
        else:
            delivery.arrived += 1
    return delivery


def whisper_points(carbon: CarbonServer, pushed: Pushed) -> dict[Key, dict[int, float]]:
    """What whisper holds for every series the graphite exporter pushed."""
    keys = {key for snapshots in pushed.snapshots.get("graphite", {}).values() for shot in snapshots for key in shot}
    stored = {}
    for family, host, window in keys:
        [line] = format_plaintext([Point(family, host, window, 0, 0)]).decode().splitlines()
        stored[family, host, window] = carbon.points(line.split()[0])
    return stored


def influx_points(influx: InfluxServer, database: str = "prosody") -> dict[Key, dict[int, float]]:
    """Every point of the prosody_* measurements, by (family, host, window) and Unix second."""
    stored: dict[Key, dict[int, float]] = defaultdict(dict)
    for series in influx.query(database, 'SELECT "value" FROM /^prosody_/ GROUP BY *'):
        tags = series.get("tags", {})
        key = (series["name"].removeprefix("prosody_"), tags["host"], tags.get("window") or None)
        for when, value in series["values"]:
            stored[key][int(datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp())] = float(value)
    return stored


def lost_causes(
    lost: Sequence[int], reloads_while_queued: Sequence[float], outage_starts: Sequence[float], horizon: float = 900.0
) -> dict[str, int]:
    """Why timestamps were lost: still queued (target down, or backing off) when a reload closed the exporter; sent
    (TCP accepted) just as the target was stopping; or unexplained."""
    causes = {"reload while queued": 0, "sent as the target stopped": 0, "unexplained": 0}
    for timestamp in lost:
        if any(timestamp <= at <= timestamp + horizon for at in reloads_while_queued):
            causes["reload while queued"] += 1
        elif any(start - 3 <= timestamp <= start + 1 for start in outage_starts):
            causes["sent as the target stopped"] += 1
        else:
            causes["unexplained"] += 1
    return causes

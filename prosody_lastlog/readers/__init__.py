"""Readers turn a Prosody data source into per-host activity records and read problems."""

from __future__ import annotations

from dataclasses import dataclass, field

from prosody_lastlog.records import HostData, ReadProblem


@dataclass(slots=True)
class ReadResult:
    """What a reader found: activity per host, plus every problem it met on the way."""

    hosts: dict[str, HostData] = field(default_factory=dict)
    problems: list[ReadProblem] = field(default_factory=list)

"""Pluggable exporters: each renders the counts for one monitoring system."""

from __future__ import annotations

from typing import Protocol


class Exporter(Protocol):
    """Publishes each new snapshot of counts; pull exporters make `publish` a no-op."""

    def publish(self, snapshot: object, now: float) -> None:
        """Sends or writes the snapshot taken at `now` (Unix seconds)."""

    def close(self) -> None:
        """Releases sockets, files and threads."""


REGISTRY: dict[str, type[Exporter]] = {}

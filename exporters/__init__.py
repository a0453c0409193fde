"""Pluggable push exporters: each sends the same snapshot of counts to one monitoring system.

An exporter is anything with `name`, `publish(snapshot)`, `close()` and `status()` (the Exporter protocol);
exporters.runner.PushExporter is the usual one. It is made by a factory called with the keyword-only settings of
its TOML section, `[exporters.<name>]`. Built-ins are listed in BUILTIN; third-party packages add theirs through
the `prosody_lastlog.exporters` entry-point group (see the README's example plugin).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Protocol, cast

from exporters.graphite import format_plaintext
from exporters.influx import format_line_protocol
from exporters.points import points_of
from exporters.runner import ExportStatus
from prosody_lastlog.core.counting import Snapshot

ENTRY_POINT_GROUP = "prosody_lastlog.exporters"
BUILTIN = {  # name -> "module:factory", imported only when configured
    "graphite": "exporters.graphite:create",
    "influxdb": "exporters.influx:create",
    "pushgateway": "exporters.pushgateway:create",
}


class Exporter(Protocol):
    """Publishes each snapshot of counts without blocking; `status()` feeds the daemon's own metrics."""

    name: str
    interval: float  # seconds between snapshots

    def publish(self, snapshot: Snapshot) -> None:
        """Queues or sends the snapshot; must return at once."""

    def close(self) -> None:
        """Stops threads and releases sockets and files."""

    def status(self) -> ExportStatus:
        """Errors, queue length and drops so far."""


Factory = Callable[..., Exporter]


class ExporterConfigError(Exception):
    """Exporter settings that cannot be used; the message lists every problem, each naming its section and key."""


def available() -> dict[str, str]:
    """Every exporter name that can be configured, with where its factory lives (built-ins, then plugins)."""
    names = dict(BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(entry.name, entry.value)
    return names


def build_exporters(sections: Mapping[str, Mapping[str, object]]) -> list[Exporter]:
    """Makes one exporter per `[exporters.<name>]` section; every problem is reported at once."""
    known = available()
    built: list[Exporter] = []
    problems = []
    for name, settings in sections.items():
        if name not in known:
            problems.append(f"exporters.{name}: unknown exporter (known: {', '.join(sorted(known))})")
            continue
        try:
            built.append(_factory(known[name])(**settings))
        except TypeError as exc:  # an unknown or missing keyword
            problems.append(f"exporters.{name}: {_keyword_problem(exc)}")
        except ValueError as exc:
            problems.append(f"exporters.{name}: {exc}")
    if problems:
        for exporter in built:
            exporter.close()
        raise ExporterConfigError("\n".join(problems))
    return built


def validate_exporters(sections: Mapping[str, Mapping[str, object]]) -> None:
    """Raises ExporterConfigError listing every problem of the sections; builds and closes them to check."""
    for exporter in build_exporters(sections):
        exporter.close()


def render_points(snapshot: Snapshot, wire_format: str) -> str:
    """One snapshot in a push format, for `count --format influx|graphite`, stamped with the snapshot's second
    (line protocol in nanoseconds, what Telegraf and InfluxDB assume when not told otherwise)."""
    points = points_of(snapshot, timestamp=int(snapshot.taken))
    if wire_format == "influx":
        return format_line_protocol(points, precision="ns").decode("utf-8")
    return format_plaintext(points).decode("ascii")


def _factory(location: str) -> Factory:
    module, _, attribute = location.partition(":")
    return cast(Factory, getattr(importlib.import_module(module), attribute))


def _keyword_problem(exc: TypeError) -> str:
    text = str(exc)
    # "create() got an unexpected keyword argument 'x'" -> "x: unknown setting"
    if "unexpected keyword argument" in text:
        return f"{text.rpartition(' ')[2].strip(chr(39))}: unknown setting"
    return text

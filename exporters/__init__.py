"""Every output of prosody-lastlog, and the public API of push exporters (`__all__`), built-in or plugin.

An exporter is anything with `name`, `interval`, `start()`, `publish(snapshot)`, `close()` and `status()` (the
Exporter protocol); PushExporter is the usual one, around a `send(points)` that raises ExportError. It is made by a
factory called with the keyword-only settings of its TOML section, `[exporters.<name>]`, and started after: a
factory only checks its settings and builds. Built-ins are listed in BUILTIN; third-party packages add theirs
through the ENTRY_POINT_GROUP entry-point group (contrib/example-exporter-plugin is one).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol, cast

from exporters.families import COUNT_FAMILIES, CountFamily
from exporters.secrets import SecretFileError, read_secret, secret_setting
from prosody_lastlog.core.counting import Snapshot

if TYPE_CHECKING:
    from exporters.points import Point, aligned, points_of
    from exporters.runner import ExportError, ExportStatus, PushExporter, RejectedBatchError

__all__ = [  # what a third-party exporter needs
    "COUNT_FAMILIES",
    "ENTRY_POINT_GROUP",
    "CountFamily",
    "ExportError",
    "ExportStatus",
    "Exporter",
    "Point",
    "PushExporter",
    "RejectedBatchError",
    "SecretFileError",
    "Snapshot",
    "aligned",
    "points_of",
    "read_secret",
    "secret_setting",
]

ENTRY_POINT_GROUP = "prosody_lastlog.exporters"
# The port of `serve`'s /metrics: 9100-9999 (Prometheus' default port allocations) is fully taken; 10522 echoes
# XMPP's 5222
DEFAULT_PORT = 10522
BUILTIN = {  # name -> "module:factory", imported only when configured
    "graphite": "exporters.graphite:create",
    "influxdb": "exporters.influx:create",
    "pushgateway": "exporters.pushgateway:create",
}


_PUSH_API = {  # name -> its module, imported at first use: a count or a scrape needs no push machinery
    "Point": "exporters.points",
    "aligned": "exporters.points",
    "points_of": "exporters.points",
    "ExportError": "exporters.runner",
    "ExportStatus": "exporters.runner",
    "PushExporter": "exporters.runner",
    "RejectedBatchError": "exporters.runner",
}


def __getattr__(name: str) -> object:
    """The push exporters' part of the public API, imported when first asked for (PEP 562)."""
    if name in _PUSH_API:
        return getattr(importlib.import_module(_PUSH_API[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Exporter(Protocol):
    """Publishes each snapshot of counts without blocking; `status()` feeds the daemon's own metrics."""

    name: str
    interval: float  # seconds between snapshots

    def start(self) -> None:
        """Starts its threads, if any: called once, after every configured exporter was built."""

    def publish(self, snapshot: Snapshot) -> None:
        """Queues or sends the snapshot; must return at once."""

    def close(self) -> None:
        """Stops threads and releases sockets and files; also called on an exporter never started."""

    def status(self) -> ExportStatus:
        """Errors, queue length and drops so far."""


Factory = Callable[..., Exporter]


class ExporterConfigError(Exception):
    """Exporter settings that cannot be used; the message lists every problem, each naming its section and key."""


def available() -> dict[str, str]:
    """Every exporter name that can be configured, with where its factory lives (built-ins, then plugins)."""
    from importlib.metadata import entry_points  # noqa: PLC0415 (slow to import, needed only with exporters)

    names = dict(BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(entry.name, entry.value)
    return names


def build_exporters(sections: Mapping[str, Mapping[str, object]]) -> list[Exporter]:
    """Makes one exporter per `[exporters.<name>]` section, not started; every problem is reported at once."""
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
    """Raises ExporterConfigError listing every problem of the sections; builds them (which starts nothing) to check
    their settings, then closes them."""
    for exporter in build_exporters(sections):
        exporter.close()


def render_points(snapshot: Snapshot, wire_format: str) -> str:
    """One snapshot in a push format, for `count --format influx|graphite`, stamped with the snapshot's second
    (line protocol in nanoseconds, what Telegraf and InfluxDB assume when not told otherwise)."""
    # Imported here, so a count in another format does not load the push machinery.
    from exporters.points import points_of  # noqa: PLC0415

    points = points_of(snapshot, timestamp=int(snapshot.taken))
    if wire_format == "influx":
        from exporters.influx import format_line_protocol  # noqa: PLC0415

        return format_line_protocol(points, precision="ns").decode("utf-8")
    from exporters.graphite import format_plaintext  # noqa: PLC0415

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

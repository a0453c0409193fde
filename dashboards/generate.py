"""Writes the Grafana dashboards (Prometheus and InfluxDB) from the one description below; stdlib only.

    python dashboards/generate.py           # rewrites the JSON files beside this script
    python dashboards/generate.py --check   # exits 1 if a committed file differs from what this writes

Both dashboards are in Grafana's "export for sharing externally" form: `__inputs` asks for a data source on
import through the UI, and every panel and query uses the `datasource` variable, so file provisioning works too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
GRAFANA_VERSION = "10.0.0"  # __requires: the oldest release with everything used here
SCHEMA_VERSION = 38  # Grafana 10.0's dashboard schema; newer releases migrate it on load
GRID_WIDTH = 24
DATASOURCE_REF = "${datasource}"
LEGEND_CALCS = ["lastNotNull", "max"]  # the legend table's columns

Json = dict[str, object]


@dataclass(frozen=True)
class Query:
    """One query of a panel: PromQL or InfluxQL, with its legend (`{{label}}` or `$tag_label`)."""

    text: str
    legend: str


@dataclass(frozen=True)
class Panel:
    """A time series or stat panel; `width` and `height` in grid units."""

    title: str
    description: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 12
    height: int = 8
    max: float | None = None


@dataclass(frozen=True)
class Row:
    """A titled row of panels, laid out left to right."""

    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Flavour:
    """What differs between the Prometheus and the InfluxDB dashboard."""

    plugin_id: str
    plugin_name: str
    uid: str
    title: str
    description: str
    host_query: str
    window_query: str
    target: Callable[[Query], Json]
    rows: tuple[Row, ...]


# --- The panels, once for both query languages ---------------------------------------------------------------------

NEVER_SUM = "Never add up windows: a user active today is also in the 7-day and 30-day counts."
WINDOWS = (
    ("DAU", "Daily active users", "1d"),
    ("WAU", "Weekly active users", "7d"),
    ("MAU", "Monthly active users", "30d"),
)


@dataclass(frozen=True)
class Dialect:
    """How one query language asks for a count family (`prosody_active_users`, ...) of the selected hosts."""

    per_host: Callable[[str, str | None], str]  # family, window (None: a family without windows)
    per_window: Callable[[str], str]  # every window of the window variable
    per_inactive_window: Callable[[str], str]  # every inactive window (--inactive-window), not in the variable
    total: Callable[[str, str | None], str]  # summed over the selected hosts
    host_legend: str
    window_legend: str


def _count_rows(q: Dialect, stickiness: tuple[Panel, Panel] | tuple[()] = ()) -> tuple[Row, Row, Row]:
    """The active users and accounts rows, shared by both dashboards; `stickiness` (a total, then per host) is
    placed after the totals and after the per-host panels."""
    stat_width, host_width = (6, 12) if stickiness else (8, 8)
    totals = tuple(
        Panel(
            f"{name} ({window})",
            f"Accounts active within {window}, summed over the selected hosts. {NEVER_SUM}",
            (Query(q.total("prosody_active_users", window), name),),
            kind="stat",
            width=stat_width,
            height=4,
        )
        for name, _, window in WINDOWS
    )
    per_host = tuple(
        Panel(
            f"{name} per host (window {window})",
            f"prosody_active_users, window {window}: accounts whose last login or logout is less than {window} old, "
            "or connected now.",
            (Query(q.per_host("prosody_active_users", window), q.host_legend),),
            width=host_width,
        )
        for _, name, window in WINDOWS
    )
    every_window = Panel(
        "Active users in every window",
        f"One series per host and window chosen in the window variable (the daemon's --window). {NEVER_SUM}",
        (Query(q.per_window("prosody_active_users"), q.window_legend),),
        width=24,
    )
    accounts = Panel(
        "Accounts, active and never active",
        "Summed over the selected hosts: accounts with last-activity data, those active within 30d, and those "
        "with data but no login or logout (registered only; rooms on a MUC component); and the registered accounts "
        "of the hosts whose accounts store Prosody keeps (none for LDAP, anonymous or other providers).",
        (
            Query(q.total("prosody_activity_records", None), "accounts"),
            Query(q.total("prosody_active_users", "30d"), "active (30d)"),
            Query(q.total("prosody_accounts_never_active", None), "never active"),
            Query(q.total("prosody_accounts_registered", None), "registered"),
        ),
    )
    registrations = Panel(
        "New registrations",
        "Accounts registered within each window, per host.",
        (Query(q.per_window("prosody_registrations"), q.window_legend),),
    )
    connected = Panel(
        "Connected users",
        "Accounts connected now (counted active in every window); 0 where connected users are not detected "
        "(prosody_lastlog_connected_detection_info on /metrics says how they are found).",
        (Query(q.per_host("prosody_connected_users", None), q.host_legend),),
    )
    accounts_per_host = Panel(
        "Accounts per host",
        "Accounts with last-activity data, per host.",
        (Query(q.per_host("prosody_activity_records", None), q.host_legend),),
    )
    returning = Panel(
        "Returning users",
        "Active users registered before the window began (or whose registration was never recorded): active users "
        "less the new ones, per host and window.",
        (Query(q.per_window("prosody_returning_users"), q.window_legend),),
    )
    inactive = Panel(
        "Inactive accounts",
        "Accounts whose last activity, or with none their registration, is at least the window ago (the daemon's "
        "--inactive-window: 90d, 180d, 365d by default), per host; candidates for clean-up.",
        (Query(q.per_inactive_window("prosody_accounts_inactive"), q.window_legend),),
    )
    never_used = Panel(
        "Never used accounts",
        "Of the inactive accounts, those that never logged in: registered at least the window ago, per host.",
        (Query(q.per_inactive_window("prosody_accounts_never_used"), q.window_legend),),
    )
    return (
        Row("Active users", (*totals, *stickiness[:1], *per_host, *stickiness[1:], every_window)),
        Row("Accounts", (accounts, registrations, connected, accounts_per_host)),
        Row("Lifecycle", (returning, inactive, never_used)),
    )


# --- Prometheus ----------------------------------------------------------------------------------------------------

HOSTS = 'host=~"$host"'


def _prom_per_host(metric: str, window: str | None) -> str:
    # max, not sum: the same host scraped twice (the daemon and a textfile, or two replicas) is counted once.
    matchers = HOSTS if window is None else f'{HOSTS}, window="{window}"'
    return f"max by (host) ({metric}{{{matchers}}})"


PROMQL = Dialect(
    per_host=_prom_per_host,
    per_window=lambda metric: f'max by (host, window) ({metric}{{{HOSTS}, window=~"$window"}})',
    per_inactive_window=lambda metric: f"max by (host, window) ({metric}{{{HOSTS}}})",
    total=lambda metric, window: f"sum({_prom_per_host(metric, window)})",
    host_legend="{{host}}",
    window_legend="{{host}} {{window}}",
)


def _increase(metric: str, by: str) -> str:
    return f"sum by ({by}) (increase({metric}[$__rate_interval]))"


def _prometheus_target(query: Query) -> Json:
    return {
        "datasource": {"type": "prometheus", "uid": DATASOURCE_REF},
        "editorMode": "code",
        "expr": query.text,
        "legendFormat": query.legend,
        "range": True,
    }


def _prometheus_rows() -> tuple[Row, ...]:
    day, month = _prom_per_host("prosody_active_users", "1d"), _prom_per_host("prosody_active_users", "30d")
    stickiness = (
        Panel(
            "Stickiness (DAU/MAU)",
            "Daily over monthly active users of the selected hosts: the share of monthly users who come back daily.",
            (Query(f"sum({day}) / (sum({month}) > 0)", "DAU/MAU"),),
            kind="stat",
            unit="percentunit",
            width=6,
            height=4,
        ),
        Panel(
            "Stickiness (DAU/MAU) per host",
            "Active within 1d over active within 30d; hosts without monthly users are left out.",
            (Query(f"{day} / ({month} > 0)", "{{host}}"),),
            unit="percentunit",
            max=1,
        ),
    )
    health = (
        Panel(
            "Source up",
            "1 when the last refresh of the source succeeded; while 0 the last good counts stay served.",
            (Query("min by (source) (prosody_lastlog_source_up)", "{{source}}"),),
            width=8,
            max=1,
        ),
        Panel(
            "Time since last successful refresh",
            "Grows until the next full rescan (--resync-interval) or SQL count (--sql-interval).",
            (Query("time() - max by (source) (prosody_lastlog_last_refresh_timestamp_seconds)", "{{source}}"),),
            unit="s",
            width=8,
        ),
        Panel(
            "Refresh duration",
            "Seconds the last full refresh of each source took.",
            (Query("max by (source) (prosody_lastlog_refresh_duration_seconds)", "{{source}}"),),
            unit="s",
            width=8,
        ),
        Panel(
            "Read problems",
            "Files or rows that could not be used, by reason (the daemon's log names them with -v).",
            (Query(_increase("prosody_lastlog_read_problems_total", "reason"), "{{reason}}"),),
            width=6,
        ),
        Panel(
            "Export errors",
            "Failed pushes per push exporter; points stay queued and are retried with backoff.",
            (Query(_increase("prosody_lastlog_export_errors_total", "exporter"), "{{exporter}}"),),
            width=6,
        ),
        Panel(
            "Export queue length",
            "Points waiting per push exporter; grows while its target is unreachable.",
            (Query("max by (exporter) (prosody_lastlog_export_queue_length)", "{{exporter}}"),),
            width=6,
        ),
        Panel(
            "Dropped export points",
            "Points dropped because an exporter's queue was full (oldest first) or its target refused the batch.",
            (Query(_increase("prosody_lastlog_export_dropped_points_total", "exporter"), "{{exporter}}"),),
            width=6,
        ),
    )
    return (*_count_rows(PROMQL, stickiness), Row("Exporter health", health))


PROMETHEUS = Flavour(
    plugin_id="prometheus",
    plugin_name="Prometheus",
    uid="prosody-lastlog",
    title="Prosody active users",
    description="Daily, weekly and monthly active users per Prosody XMPP host, from prosody-lastlog.",
    host_query="label_values(prosody_activity_records, host)",
    window_query="label_values(prosody_active_users, window)",
    target=_prometheus_target,
    rows=_prometheus_rows(),
)


# --- InfluxDB (InfluxQL) ---------------------------------------------------------------------------------------------

TIME_GROUP = "GROUP BY time($__interval)"


def _influx_select(measurement: str, where: str, group: str) -> str:
    """The last value per interval and `group` of one of our measurements (default prefix `prosody`)."""
    return (
        f'SELECT last("value") FROM "{measurement}" WHERE "host" =~ /^$host$/{where} AND $timeFilter '
        f"{TIME_GROUP}, {group} fill(none)"
    )


def _influx_per_host(measurement: str, window: str | None) -> str:
    return _influx_select(measurement, "" if window is None else f" AND \"window\" = '{window}'", '"host"')


INFLUXQL = Dialect(
    per_host=_influx_per_host,
    per_window=lambda measurement: _influx_select(measurement, ' AND "window" =~ /^$window$/', '"host", "window"'),
    per_inactive_window=lambda measurement: _influx_select(measurement, "", '"host", "window"'),
    total=lambda measurement, window: (
        f'SELECT sum("last") FROM ({_influx_per_host(measurement, window)}) WHERE $timeFilter {TIME_GROUP} fill(none)'
    ),
    host_legend="$tag_host",
    window_legend="$tag_host $tag_window",
)


def _influx_target(query: Query) -> Json:
    return {
        "alias": query.legend,
        "datasource": {"type": "influxdb", "uid": DATASOURCE_REF},
        "query": query.text,
        "rawQuery": True,
        "resultFormat": "time_series",
    }


INFLUXDB = Flavour(
    plugin_id="influxdb",
    plugin_name="InfluxDB",
    uid="prosody-lastlog-influxdb",
    title="Prosody active users (InfluxDB)",
    description="Daily, weekly and monthly active users per Prosody XMPP host, written to InfluxDB by "
    "prosody-lastlog's influxdb exporter (measurements with the default prefix `prosody`; InfluxQL).",
    host_query='SHOW TAG VALUES FROM "prosody_activity_records" WITH KEY = "host"',
    window_query='SHOW TAG VALUES FROM "prosody_active_users" WITH KEY = "window"',
    target=_influx_target,
    rows=_count_rows(INFLUXQL),
)

DASHBOARDS = {"prosody-active-users.json": PROMETHEUS, "prosody-active-users-influxdb.json": INFLUXDB}


# --- Grafana JSON ----------------------------------------------------------------------------------------------------


def _layout(rows: Sequence[Row]) -> Iterator[tuple[Row | Panel, Json]]:
    """Each row and panel with its gridPos: rows take a full line, panels fill lines left to right."""
    y = 0
    for row in rows:
        yield row, {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y}
        y += 1
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            yield panel, {"h": panel.height, "w": panel.width, "x": x, "y": y}
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height


def _panel_json(panel: Panel, flavour: Flavour) -> Json:
    defaults: Json = {"decimals": 2 if panel.unit == "percentunit" else 0, "min": 0, "unit": panel.unit}
    if panel.max is not None:
        defaults["max"] = panel.max
    if panel.kind == "stat":
        options: Json = {
            "colorMode": "none",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        }
    else:
        options = {
            "legend": {"calcs": LEGEND_CALCS, "displayMode": "table", "placement": "right", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    targets = [{**flavour.target(query), "refId": chr(ord("A") + n)} for n, query in enumerate(panel.queries)]
    return {
        "datasource": {"type": flavour.plugin_id, "uid": DATASOURCE_REF},
        "description": panel.description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": targets,
        "title": panel.title,
        "type": panel.kind,
    }


def _variables(flavour: Flavour) -> list[Json]:
    datasource = {
        "current": {"selected": False, "text": flavour.plugin_name, "value": f"${{DS_{flavour.plugin_id.upper()}}}"},
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": flavour.plugin_id,
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    }
    return [
        datasource,
        _query_variable(flavour, "host", "XMPP host", flavour.host_query),
        _query_variable(flavour, "window", "Window", flavour.window_query),
    ]


def _query_variable(flavour: Flavour, name: str, label: str, query: str) -> Json:
    return {
        "current": {},
        "datasource": {"type": flavour.plugin_id, "uid": DATASOURCE_REF},
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": query,
        "refresh": 2,  # on time range change: new hosts show up without reloading
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


def dashboard(flavour: Flavour) -> Json:
    """The complete dashboard JSON of one flavour."""
    panels: list[Json] = []
    for number, (item, grid_pos) in enumerate(_layout(flavour.rows), start=1):
        if isinstance(item, Row):
            entry: Json = {"collapsed": False, "panels": [], "title": item.title, "type": "row"}
        else:
            entry = _panel_json(item, flavour)
        panels.append({**entry, "gridPos": grid_pos, "id": number})
    kinds = sorted({panel.kind for row in flavour.rows for panel in row.panels})
    panel_names = {"stat": "Stat", "timeseries": "Time series"}
    return {
        "__inputs": [
            {
                "description": "",
                "label": flavour.plugin_name,
                "name": f"DS_{flavour.plugin_id.upper()}",
                "pluginId": flavour.plugin_id,
                "pluginName": flavour.plugin_name,
                "type": "datasource",
            }
        ],
        "__elements": {},
        "__requires": [
            {"id": "grafana", "name": "Grafana", "type": "grafana", "version": GRAFANA_VERSION},
            {"id": flavour.plugin_id, "name": flavour.plugin_name, "type": "datasource", "version": "1.0.0"},
            *({"id": kind, "name": panel_names[kind], "type": "panel", "version": ""} for kind in kinds),
        ],
        "annotations": {"list": []},
        "description": flavour.description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "liveNow": False,
        "panels": panels,
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["prosody", "xmpp", "prosody-lastlog"],
        "templating": {"list": _variables(flavour)},
        "time": {"from": "now-7d", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": flavour.title,
        "uid": flavour.uid,
        "version": 1,
        "weekStart": "",
    }


def render() -> dict[str, str]:
    """Every dashboard file's name and text, exactly as committed."""
    return {
        name: json.dumps(dashboard(flavour), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for name, flavour in DASHBOARDS.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Writes the files, or with --check reports those that differ; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a file differs")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = HERE / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        if args.check:
            stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python dashboards/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

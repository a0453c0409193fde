"""The Grafana dashboards: committed as generated, well formed, valid for Grafana's schema, and built only on the
metric, measurement and tag names the code really exports."""

from __future__ import annotations

import enum
import json
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dashboards import generate
from exporters.families import COUNT_FAMILIES
from exporters.influx import format_line_protocol
from exporters.points import points_of
from exporters.prometheus import ActiveUsersCollector
from exporters.runner import ExportStatus
from prosody_lastlog.core.counting import Snapshot
from prosody_lastlog.core.model import CountingChoice, Store, UserActivity
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon.state import LiveCounts

DASHBOARDS = Path(generate.__file__).parent
PLUGIN = {"prosody-active-users.json": "prometheus", "prosody-active-users-influxdb.json": "influxdb"}
EXPORT_ENVELOPE = ("__inputs", "__elements", "__requires", "id")  # sharing-export keys, not dashboard model fields
NOW = 1_763_900_000

# PromQL words that are not metric names: keywords and operators, and functions (always followed by "(").
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
INFLUXQL_MEASUREMENT = re.compile(r'FROM "([^"]+)"')
INFLUXQL_QUOTED = re.compile(r'"([^"]+)"')  # measurements, tag and field keys, and the subquery's column "last"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARDS / name).read_text(encoding="utf-8"))
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but rows."""
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every query text of every panel (PromQL `expr` or InfluxQL `query`)."""
    return [target.get("expr") or target["query"] for panel in panels(dashboard) for target in panel["targets"]]


def live_counts() -> LiveCounts:
    """One counted source with one host, one active user and one registered account."""
    live = LiveCounts(windows=DEFAULT_WINDOWS, source_names=["files"])
    live.index.replace_host("example.com", CountingChoice(Store.LASTLOG2), [UserActivity("alice", NOW - 60)])
    live.index.set_registered_accounts("example.com", 1)
    live.succeeded("files", at=NOW, duration=0.1, problems={})
    return live


def exported_metric_names() -> set[str]:
    """Every sample name the daemon's collector exposes, with a source, a host and a push exporter configured."""
    registry = CollectorRegistry(auto_describe=False)
    collector = ActiveUsersCollector(
        live_counts(), windows=DEFAULT_WINDOWS, clock=lambda: NOW, exports=lambda: {"influxdb": ExportStatus(0, 0, 0)}
    )
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers outside label matchers, groupings, ranges and strings."""
    stripped = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]', " ", expr)
    stripped = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", stripped)
    words = re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", stripped)
    return {name for name, call in words if not call and name not in PROMQL_WORDS}


def line_protocol_names() -> tuple[set[str], set[str]]:
    """The measurements, and the tag and field keys, our influx exporter writes, from its own formatter."""
    snapshot = Snapshot(NOW, live_counts().counts(now=NOW), DEFAULT_WINDOWS)
    lines = format_line_protocol(points_of(snapshot, timestamp=NOW)).decode().splitlines()
    measurements: set[str] = set()
    keys: set[str] = set()
    for line in lines:
        series, fields, _ = line.split(" ")
        measurement, *tags = series.split(",")
        measurements.add(measurement)
        keys.update(item.split("=", 1)[0] for item in [*tags, fields])
    return measurements, keys


# --- Grafana's schema, as the foundation SDK models it --------------------------------------------------------------


def type_errors(value: object, hint: object, where: str) -> Iterator[str]:
    """Where `value` does not have the type the SDK's model declares (enums and literals by their values)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (Any, object):  # untyped in the model, though it may hold a decoded plugin model (panel options)
        if hasattr(type(value), "from_json"):
            yield from model_errors(value, where)
        return
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in args if arg is not type(None)]
        if value is None and len(options) < len(args):
            return
        models = [option for option in options if hasattr(option, "from_json") and isinstance(value, option)]
        if len(options) == 1 or models:  # Optional[X], or the model it holds: the errors of X, not of the union
            yield from type_errors(value, (models or options)[0], where)
        elif all(next(type_errors(value, option, where), None) is not None for option in options):
            yield f"{where}: {value!r} is not {hint}"
    elif origin is typing.Literal:
        if value not in args:
            yield f"{where}: {value!r} is not one of {args}"
    elif origin in (list, dict):
        yield from container_errors(value, origin, args, where)
    elif isinstance(hint, type):
        yield from class_errors(value, hint, where)
    else:
        yield f"{where}: cannot check {hint}"


def container_errors(value: object, origin: type, args: tuple[object, ...], where: str) -> Iterator[str]:
    """Type errors of a list[X] or a dict[str, X] and its items."""
    if not isinstance(value, origin):
        yield f"{where}: {value!r} is not a {origin.__name__}"
    elif isinstance(value, list):
        for n, item in enumerate(value):
            yield from type_errors(item, args[0], f"{where}[{n}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from type_errors(item, args[1], f"{where}.{key}")


def class_errors(value: object, hint: type, where: str) -> Iterator[str]:
    """Type errors of a scalar, an enum (by value) or an SDK model object (recursively)."""
    if issubclass(hint, enum.Enum):
        allowed = [member.value for member in hint]
        if value not in allowed:
            yield f"{where}: {value!r} is not one of {allowed}"
    elif hint in (int, float, str, bool):
        accepted = (int, float) if hint is float else hint  # JSON has one number type; 1 is a fine float
        if not isinstance(value, accepted) or (isinstance(value, bool) and hint is not bool):
            yield f"{where}: {value!r} is not {hint.__name__}"
    elif isinstance(value, hint):
        yield from model_errors(value, where)
    elif isinstance(value, dict) and hasattr(hint, "from_json"):  # a part the SDK keeps as raw JSON
        yield from model_errors(hint.from_json(value), where)
    else:
        yield f"{where}: {value!r} is not {hint.__name__}"


def model_errors(model: object, where: str) -> Iterator[str]:
    """Type errors in every attribute of a decoded SDK model object."""
    for name, hint in typing.get_type_hints(type(model)).items():
        yield from type_errors(getattr(model, name), hint, f"{where}.{name}")


def dropped(written: object, decoded: object, where: str) -> Iterator[str]:
    """Where something written is not in the SDK's re-encoding: a key Grafana's schema does not have, or a changed
    value. Keys the SDK adds (defaults) are fine."""
    if isinstance(written, dict):
        if not isinstance(decoded, dict):
            yield f"{where}: became {decoded!r}"
            return
        for key, value in written.items():
            if key not in decoded:
                yield f"{where}.{key}: not a field of Grafana's schema"
            else:
                yield from dropped(value, decoded[key], f"{where}.{key}")
    elif isinstance(written, list):
        if not isinstance(decoded, list) or len(decoded) != len(written):
            yield f"{where}: became {decoded!r}"
            return
        for n, (item, again) in enumerate(zip(written, decoded, strict=True)):
            yield from dropped(item, again, f"{where}[{n}]")
    elif written != decoded:
        yield f"{where}: {written!r} became {decoded!r}"


def schema_problems(data: dict[str, Any]) -> list[str]:
    """Decodes the dashboard with grafana-foundation-sdk's models (panel options and queries by their plugin types),
    checks every field's type, and that encoding it again keeps everything written."""
    register_default_plugins()
    model = {key: value for key, value in data.items() if key not in EXPORT_ENVELOPE}
    decoded = Dashboard.from_json(model)
    again = json.loads(json.dumps(decoded, cls=JSONEncoder))
    return [*model_errors(decoded, "dashboard"), *dropped(model, again, "dashboard")]


# --- tests ----------------------------------------------------------------------------------------------------------


def test_committed_files_are_what_the_generator_writes() -> None:
    rendered = generate.render()
    assert sorted(rendered) == sorted(PLUGIN)
    for name, text in rendered.items():
        assert (DASHBOARDS / name).read_text(encoding="utf-8") == text, f"run python dashboards/generate.py ({name})"
    assert generate.render() == rendered  # deterministic
    assert generate.main(["--check"]) == 0


@pytest.mark.parametrize("name", sorted(PLUGIN))
def test_valid_for_grafanas_dashboard_schema(name: str) -> None:
    assert schema_problems(load(name)) == []


def test_the_schema_check_finds_unknown_keys_and_bad_values() -> None:
    data = load("prosody-active-users.json")
    data["graphTooltip"] = 7
    data["panels"][1]["gridPos"]["wide"] = 3
    data["panels"][1]["targets"][0]["legend"] = "{{host}}"
    data["panels"][2]["options"]["reduceOptions"]["calcs"] = "last"
    data["templating"]["list"][1]["refresh"] = "often"
    problems = "\n".join(schema_problems(data))
    for where in ("graph_tooltip: 7", "gridPos.wide", "targets[0].legend", "reduce_options.calcs", "refresh: 'often'"):
        assert where in problems, problems


@pytest.mark.parametrize("name", sorted(PLUGIN))
def test_structure(name: str) -> None:
    data, plugin = load(name), PLUGIN[name]
    assert isinstance(data["schemaVersion"], int) and data["schemaVersion"] >= 36
    assert data["uid"] and len(data["uid"]) <= 40 and data["id"] is None
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))
    own = {"type": plugin, "uid": "${datasource}"}
    for panel in panels(data):
        assert panel["datasource"] == own, panel["title"]
        assert panel["targets"] and all(target["datasource"] == own for target in panel["targets"]), panel["title"]
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"])
    variables = {variable["name"]: variable for variable in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == plugin
    for variable in ("host", "window"):
        assert variables[variable]["datasource"] == own
        assert variables[variable]["multi"] and variables[variable]["includeAll"]
    [data_input] = data["__inputs"]
    assert data_input == {**data_input, "type": "datasource", "pluginId": plugin, "name": f"DS_{plugin.upper()}"}
    assert variables["datasource"]["current"]["value"] == f"${{{data_input['name']}}}"  # set on import via the UI
    required = {(item["type"], item["id"]) for item in data["__requires"]}
    assert {("grafana", "grafana"), ("datasource", plugin)} | {("panel", p["type"]) for p in panels(data)} == required


@pytest.mark.parametrize("name", sorted(PLUGIN))
def test_panels_do_not_overlap(name: str) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in load(name)["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= generate.GRID_WIDTH
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[x, y]}"
                taken[x, y] = panel["title"]


def test_promql_uses_only_metrics_the_collector_exports() -> None:
    exported = exported_metric_names()
    data = load("prosody-active-users.json")
    used = set()
    for expr in queries(data):
        names = promql_metric_names(expr)
        assert names, expr
        assert names <= exported, f"{expr}: {names - exported} not exported"
        used |= names
    for variable in data["templating"]["list"][1:]:
        metric = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"])
        assert metric and metric[1] in exported, variable["query"]
    shown = {f"prosody_{family.name}" for family in COUNT_FAMILIES if not family.opt_in}  # not: count --cohorts only
    assert shown <= used  # every count family serve exports is shown
    assert {"prosody_lastlog_source_up", "prosody_lastlog_export_errors_total"} <= used


def test_the_metric_name_extraction() -> None:
    expr = 'sum by (reason) (increase(prosody_x_total{a="b c"}[$__rate_interval])) / on(host) time() - y_seconds'
    assert promql_metric_names(expr) == {"prosody_x_total", "y_seconds"}


def test_influxql_uses_only_measurements_and_tags_the_exporter_writes() -> None:
    measurements, keys = line_protocol_names()
    data = load("prosody-active-users-influxdb.json")
    texts = queries(data) + [variable["query"] for variable in data["templating"]["list"][1:]]
    used = set()
    for text in texts:
        found = set(INFLUXQL_MEASUREMENT.findall(text))
        assert found and found <= measurements, text
        used |= found
        assert set(INFLUXQL_QUOTED.findall(text)) - found - {"last"} <= keys, text
    assert used == measurements

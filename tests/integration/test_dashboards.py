"""Every query of both Grafana dashboards, run for real: `serve` on the sample data, scraped by Prometheus and
pushing to influxd, with the dashboard's variables filled in as Grafana would; each answers, with the sample's
counts where they are known."""

from __future__ import annotations

import json
import math
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dashboards.generate import HERE as DASHBOARD_DIR
from prosody_lastlog.core.model import PROBLEM_KINDS
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from tests.conftest import case_data
from tests.integration.push_servers import InfluxServer, influxd
from tests.integration.servers import free_port, prometheus
from tests.test_daemon import prosody_writes

pytestmark = pytest.mark.integration

EXPECTED = json.loads((case_data("sample").parent / "expected.json").read_text())
NOW = EXPECTED["now"]
# The sample's counts hold from its `now` for 9 s (then a user ages out of the 1d window): Prometheus is asked as of
# the moment the daemon's replayed clock read NOW + STEADY, however long the test takes.
STEADY = 6
PROMETHEUS_FILE, INFLUX_FILE = "prosody-active-users.json", "prosody-active-users-influxdb.json"
SECONDS = 25.0  # for the first scrapes (and two samples for rate) or the first push to show

Labels = tuple[tuple[str, str], ...]
Results = dict[Labels, float]
Expected = Mapping[tuple[str, str], Results | None]  # (panel title, refId) -> values; None: any non-empty answer


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARD_DIR / name).read_text(encoding="utf-8"))
    return data


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[tuple[str, str], str]]:
    """(panel title, refId) and query text of every target."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield (panel["title"], target["refId"]), target.get("expr") or target["query"]


def variable_query(dashboard: dict[str, Any], name: str) -> str:
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == name]
    query_text: str = variable["query"]
    return query_text


def fill_in(text: str, values: Mapping[str, str]) -> str:
    """The query with Grafana's variables replaced; fails on any variable left over."""
    for name in sorted(values, key=len, reverse=True):  # $__rate_interval before $__range
        text = text.replace(f"${name}", values[name])
    assert "$" not in text.replace("$/", ""), f"unfilled variable in {text}"
    return text


def any_of(values: list[str], *, backslash: str) -> str:
    """A multi-value variable with every value selected, as Grafana writes it: `(a|b)`, each regex-escaped
    (the backslashes doubled inside a PromQL string)."""
    return "(" + "|".join(re.escape(value).replace("\\", backslash) for value in values) + ")"


def sample_counts(daemon: Daemon) -> dict[tuple[str, str], Results]:
    """What each count panel must show for the sample: active users from expected.json (Prosody's own
    mod_measure_active_users), the rest as the daemon counted them."""
    active = EXPECTED["active_users"]
    counts = daemon.live.counts(now=NOW)
    assert daemon.live.counts(now=NOW + STEADY) == counts
    assert {host: dict(c.active) for host, c in counts.items()} == active
    hosts = sorted(active)

    def per_host(value: Callable[[str], float]) -> Results:
        return {(("host", host),): float(value(host)) for host in hosts}

    def per_window(table: Mapping[str, Mapping[str, int]]) -> Results:
        return {(("host", h), ("window", w)): float(n) for h in hosts for w, n in table[h].items()}

    def total(values: Results) -> Results:
        return {(): sum(values.values())}

    def active_in(window: str) -> Results:
        return per_host(lambda host: active[host][window])

    day, month = active_in("1d"), active_in("30d")
    expected: dict[tuple[str, str], Results] = {
        ("Accounts, active and never active", "A"): total(per_host(lambda h: counts[h].activity_records)),
        ("Accounts, active and never active", "B"): total(month),
        ("Accounts, active and never active", "C"): total(per_host(lambda h: counts[h].never_active)),
        ("Accounts, active and never active", "D"): {(): float(sum(len(users) for users in ACCOUNTS.values()))},
        ("New registrations", "A"): per_window({h: counts[h].registered for h in hosts}),
        ("Returning users", "A"): per_window({h: counts[h].returning for h in hosts}),
        ("Inactive accounts", "A"): per_window({h: counts[h].inactive for h in hosts}),
        ("Never used accounts", "A"): per_window({h: counts[h].never_used for h in hosts}),
        ("Connected users", "A"): per_host(lambda h: counts[h].connected),
        ("Accounts per host", "A"): per_host(lambda h: counts[h].activity_records),
        ("Active users in every window", "A"): per_window(active),
        ("Stickiness (DAU/MAU)", "A"): {(): total(day)[()] / total(month)[()]},
        ("Stickiness (DAU/MAU) per host", "A"): {k: day[k] / n for k, n in month.items() if n},
    }
    for short, long, window in (("DAU", "Daily", "1d"), ("WAU", "Weekly", "7d"), ("MAU", "Monthly", "30d")):
        expected[f"{short} ({window})", "A"] = total(active_in(window))
        expected[f"{long} active users per host (window {window})", "A"] = active_in(window)
    return expected


def differences(expected: Expected, answers: Mapping[tuple[str, str], Results]) -> list[str]:
    """Every target whose answer is empty or not the expected values."""
    problems = []
    for key, results in answers.items():
        want = expected[key]
        if not results:
            problems.append(f"{key}: no result")
        elif want is not None and (
            results.keys() != want.keys() or any(not math.isclose(results[k], want[k]) for k in want)
        ):
            problems.append(f"{key}: {results} instead of {want}")
    return problems


def settle(run: Callable[[], dict[tuple[str, str], Results]], expected: Expected) -> None:
    """Runs every query until all answer as expected (the first scrapes or pushes take a moment), or fails."""
    deadline = time.monotonic() + SECONDS
    while True:
        answers = run()
        assert set(answers) == set(expected), f"panels without expectations: {set(answers) ^ set(expected)}"
        problems = differences(expected, answers)
        if not problems:
            return
        if time.monotonic() > deadline:
            raise AssertionError("\n".join(problems))
        time.sleep(0.5)


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[InfluxServer]:
    with influxd(tmp_path / "influxd") as server:
        server.query(None, "CREATE DATABASE prosody")
        yield server


ACCOUNTS = {"example.com": ["alice", "bob", "carol"], "xmpp.example-org.net": ["dave"]}


@pytest.fixture
def with_accounts(sample_tree: Path) -> Path:
    """The sample, whose Prosody 0.12 events made no accounts, with a few accounts written by Prosody's datamanager
    (mod_auth_internal_hashed's store): the registered accounts' panel then has something to show."""
    for host, users in ACCOUNTS.items():
        for user in users:
            prosody_writes(sample_tree, user, host, '{["iteration_count"] = 10000}', store="accounts")
    return sample_tree


@contextmanager
def serving(sample_tree: Path, influx: InfluxServer, *, port: int = 0) -> Iterator[Daemon]:
    """The daemon on the sample, as of its `now`, also pushing to influxd (so the export health metrics exist)."""
    options = ServeOptions(port=port, as_of=NOW, exporters={"influxdb": {"url": influx.url, "database": "prosody"}})
    running = Daemon(
        plan_sources(SourceOptions(data_dir=sample_tree), environ={}), windows=DEFAULT_WINDOWS, options=options
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()


def prometheus_api(base: str, path: str, **params: str) -> Any:
    """The `data` of a Prometheus HTTP API answer."""
    with urllib.request.urlopen(f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]


def test_every_promql_query_answers_with_the_sample_counts(
    with_accounts: Path, influx: InfluxServer, tmp_path: Path
) -> None:
    dashboard = load(PROMETHEUS_FILE)
    port = free_port()
    with prometheus({"prosody-lastlog": f"127.0.0.1:{port}"}, tmp_path) as base:
        wait_for_first_scrape(base)  # target discovery takes 5 s: then it scrapes every second from daemon start
        with serving(with_accounts, influx, port=port) as daemon:
            steady = time.time() + NOW + STEADY - daemon.clock()  # Prometheus stamps samples with the real time
            check_promql(dashboard, base, daemon, at=steady)


def wait_for_first_scrape(base: str) -> None:
    """Waits until Prometheus has tried its target once (it is down: the daemon is not started yet)."""
    deadline = time.monotonic() + SECONDS
    while not any(t["health"] != "unknown" for t in prometheus_api(base, "targets")["activeTargets"]):
        assert time.monotonic() < deadline, "Prometheus never scraped its target"
        time.sleep(0.1)


def check_promql(dashboard: dict[str, Any], base: str, daemon: Daemon, *, at: float) -> None:
    """Runs every expression as of `at`, with the variables filled in from their own queries."""
    expected: dict[tuple[str, str], Results | None] = dict(sample_counts(daemon))
    sources = [source.name for source in daemon.live.health()]
    expected |= {
        ("Source up", "A"): {(("source", s),): 1.0 for s in sources},
        ("Time since last successful refresh", "A"): None,  # real time minus the replayed clock
        ("Refresh duration", "A"): None,
        ("Read problems", "A"): {(("reason", reason),): 0.0 for reason in PROBLEM_KINDS},
        ("Export errors", "A"): {(("exporter", "influxdb"),): 0.0},
        ("Export queue length", "A"): {(("exporter", "influxdb"),): 0.0},
        ("Dropped export points", "A"): {(("exporter", "influxdb"),): 0.0},
    }
    when = {"start": str(at - 60), "end": str(at)}

    def run() -> dict[tuple[str, str], Results]:
        while time.time() < at + 1:  # the scrape before `at` is stored
            time.sleep(0.1)
        variables = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
        for name in ("host", "window"):
            listed = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable_query(dashboard, name))
            assert listed, variable_query(dashboard, name)
            values = prometheus_api(base, f"label/{listed[2]}/values", **{"match[]": listed[1]}, **when)
            variables[name] = any_of(values, backslash="\\\\")
        return {
            key: {
                tuple(sorted(r["metric"].items())): float(r["value"][1])
                for r in prometheus_api(base, "query", query=fill_in(expr, variables), time=str(at))["result"]
            }
            for key, expr in targets(dashboard)
        }

    settle(run, expected)


def test_every_influxql_query_answers_with_the_sample_counts(with_accounts: Path, influx: InfluxServer) -> None:
    with serving(with_accounts, influx) as daemon:  # pushes once at start, as of about NOW
        check_influxql(load(INFLUX_FILE), influx, daemon)


def check_influxql(dashboard: dict[str, Any], influx: InfluxServer, daemon: Daemon) -> None:
    """Runs every query over two hours around NOW, with the variables filled in from their own queries."""
    expected = sample_counts(daemon)
    expected = {key: expected[key] for key, _ in targets(dashboard)}  # the InfluxDB dashboard has no health row
    start, end = (NOW - 3600) * 1000, (NOW + 3600) * 1000  # milliseconds, as Grafana writes $timeFilter

    def tag_values(name: str) -> list[str]:
        return [
            value
            for series in influx.query("prosody", variable_query(dashboard, name))
            for _, value in series["values"]
        ]

    def run() -> dict[tuple[str, str], Results]:
        variables = {
            "timeFilter": f"time >= {start}ms and time <= {end}ms",
            "__interval": "1m",
            "host": any_of(tag_values("host"), backslash="\\"),
            "window": any_of(tag_values("window"), backslash="\\"),
        }
        answers = {}
        for key, text in targets(dashboard):
            answers[key] = {
                tuple(sorted(series.get("tags", {}).items())): float(series["values"][-1][1])
                for series in influx.query("prosody", fill_in(text, variables))
            }
        return answers

    settle(run, expected)

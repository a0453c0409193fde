"""What the soak saw, judged: the summary (a JSON-ready dict) and its text form."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from soak import checks, points
from soak.checks import Verdict
from soak.faults import FaultEvent, Lane
from soak.generator import FileGenerator, SqlGenerator
from soak.observe import Labels, LogTail, ProcSample, Scrape
from soak.setup import ServeProcess, descendants
from soak.xmpp_load import XmppStats
from tests.integration.push_servers import CarbonServer, InfluxServer

EXPORTER_OF = {"carbon": "graphite", "influxd": "influxdb"}


@dataclass
class State:
    """Everything a run gathers for the checks (filled in by soak/run.py as it goes)."""

    work: Path
    smoke: bool
    seed: int
    code: Path = Path()
    fs_kind: str = ""
    setup_seconds: float = 0.0
    t0: float = 0.0
    chaos_end: float = 0.0
    drained_at: float = 0.0
    duration: float = 0.0
    total_seconds: float = 0.0
    final: Scrape | None = None
    counted: dict[str, Any] = field(default_factory=dict)
    textfile: str = ""
    textfile_dir: list[str] = field(default_factory=list)
    deliveries: list[points.Delivery] = field(default_factory=list)
    xmpp: XmppStats = field(default_factory=XmppStats)
    files: FileGenerator | None = None
    sql_generators: list[SqlGenerator] = field(default_factory=list)
    lanes: list[Lane] = field(default_factory=list)
    scrapes: list[Scrape] = field(default_factory=list)
    procs: list[ProcSample] = field(default_factory=list)
    poll_errors: list[str] = field(default_factory=list)
    log: LogTail | None = None
    daemon: ServeProcess | None = None
    source_of: dict[str, str] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def collect_points(self, tap: Path, carbon: CarbonServer | None, influx: InfluxServer | None) -> None:
        """Checks every snapshot queued before the queues were seen empty (2 s margin for a send in flight)."""
        if carbon is None or influx is None:
            self.failures.append("a push target was not running at the end")
            return
        pushed = points.Pushed.read(tap)
        cutoff = self.drained_at - 2
        self.deliveries = [
            points.check("graphite", pushed, points.whisper_points(carbon, pushed), cutoff),
            points.check("influxdb", pushed, points.influx_points(influx), cutoff),
        ]


def leftovers() -> list[str]:
    """Processes the soak started that still run (there must be none)."""
    return descendants(os.getpid())


def counts_of(samples: Mapping[tuple[str, Labels], float]) -> dict[str, dict[str, Any]]:
    """Per host: active and registered per window, accounts and never active, from exposition samples."""
    hosts: dict[str, dict[str, Any]] = {}
    for (name, labels), value in samples.items():
        label = dict(labels)
        if "host" not in label:
            continue
        entry = hosts.setdefault(label["host"], {"active": {}, "registered": {}})
        if name == "prosody_active_users":
            entry["active"][label["window"]] = int(value)
        elif name == "prosody_registrations":
            entry["registered"][label["window"]] = int(value)
        elif name in ("prosody_activity_records", "prosody_accounts_never_active"):
            entry[name.removeprefix("prosody_").removeprefix("accounts_")] = int(value)
    return hosts


def _counted(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    keys = ("active", "registered", "activity_records", "never_active")
    return {host: {key: values[key] for key in keys} for host, values in document.get("hosts", {}).items()}


def _events(state: State) -> list[FaultEvent]:
    return sorted((event for lane in state.lanes for event in lane.events), key=lambda e: e.start)


def _fault_verdicts(state: State) -> list[Verdict]:
    assert state.log is not None
    verdicts = []
    for event in _events(state):
        if event.error and event.kind != "sighup":
            verdicts.append(Verdict(f"{event.kind} {event.mode}", False, event.error))
        elif event.kind in state.source_of:
            verdicts.append(checks.sql_outage(event, state.source_of[event.kind], state.scrapes, state.t0))
        elif event.kind in EXPORTER_OF:
            hold = (event.end or event.start) - event.start
            drain = 2 * hold + 15
            verdicts.append(checks.push_outage(event, EXPORTER_OF[event.kind], state.scrapes, drain, state.t0))
        elif event.kind == "disk":
            verdicts.append(checks.disk_outage(event, state.log, state.t0))
        elif event.kind == "datadir":
            verdicts.append(checks.data_dir_replaced(event, state.log, state.t0))
        elif event.kind == "connections":
            verdicts.append(checks.connection_abuse(event, state.scrapes, state.t0))
        else:
            verdicts.append(checks.reload(event, state.t0))
    return verdicts


def _queued_at(scrapes: Sequence[Scrape], exporter: str, at: float) -> bool:
    """Whether the exporter's queue held points at the last successful scrape before `at`."""
    before = [s for s in scrapes if s.at < at and s.error is None]
    return bool(before) and bool(before[-1].value("prosody_lastlog_export_queue_length", exporter=exporter))


def _hosts_verdict(state: State) -> Verdict:
    """Every host stays exported in every scrape (the last good counts of a failing source included)."""
    expected = set(counts_of(state.final.samples)) if state.final else set()
    gaps: dict[str, int] = {}
    for scrape in state.scrapes:
        if scrape.error is None:
            for host in expected - set(scrape.by_label("prosody_activity_records", "host")):
                gaps[host] = gaps.get(host, 0) + 1
    detail = ", ".join(f"{host} missing from {n} scrape(s)" for host, n in sorted(gaps.items())) or "none missing"
    return Verdict("every host in every scrape", not gaps, detail)


def _point_verdicts(state: State, final: Scrape) -> tuple[list[Verdict], dict[str, Any]]:
    events = _events(state)
    verdicts, stats = [], {}
    for delivery in state.deliveries:
        kind = next(k for k, v in EXPORTER_OF.items() if v == delivery.exporter)
        outages = [(e.start, e.end or e.start) for e in events if e.kind == kind]
        reloads = [
            e.start for e in events if e.mode == "good" and _queued_at(state.scrapes, delivery.exporter, e.start)
        ]
        causes = points.lost_causes(delivery.lost, reloads, [start for start, _ in outages])
        dropped = final.value("prosody_lastlog_export_dropped_points_total", exporter=delivery.exporter) or 0
        detail = f"{delivery.arrived}/{delivery.pushed} snapshots arrived; lost: {causes}; dropped {dropped:.0f}"
        if delivery.examples:
            detail += f"; e.g. {delivery.examples[0]}"
        verdicts.append(Verdict(f"no {delivery.exporter} point lost", not delivery.lost and not dropped, detail))
        stats[delivery.exporter] = {
            "snapshots_pushed": delivery.pushed,
            "points_pushed": delivery.points,
            "snapshots_arrived": delivery.arrived,
            "snapshots_lost": len(delivery.lost),
            "lost_causes": causes,
            "lost_timestamps": delivery.lost[:20],
        }
    return verdicts, stats


def summarize(state: State) -> dict[str, Any]:
    """Every verdict and the numbers behind them."""
    assert state.final is not None and state.log is not None and state.daemon is not None
    final = state.final
    verdicts = [Verdict("setup and quiesce", not state.failures, "; ".join(state.failures) or "ok")]
    fault_verdicts = _fault_verdicts(state)
    verdicts += fault_verdicts
    gap_verdict, reload_gap = checks.scrape_failures(state.scrapes, [e for e in _events(state) if e.kind == "sighup"])
    latency_verdict, worst, p99 = checks.scrape_latency(state.scrapes)
    verdicts += [gap_verdict, latency_verdict, _hosts_verdict(state)]
    served = counts_of(final.samples)
    verdicts.append(checks.counts_equal(served, _counted(state.counted)))
    textfile = counts_of(
        {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(state.textfile)
            for sample in family.samples
        }
    )
    verdicts.append(Verdict("textfile equals /metrics", textfile == served, f"{len(textfile)} host(s)"))
    verdicts.append(Verdict("no temp files left", state.textfile_dir == ["prosody.prom"], str(state.textfile_dir)))
    point_verdicts, point_stats = _point_verdicts(state, final)
    verdicts += point_verdicts
    if state.smoke:
        resources: dict[str, object] = {}
        first, last = (state.procs[0], state.procs[-1]) if state.procs else (None, None)
        if first and last:
            resources = {
                k: {"start": getattr(first, k), "end": getattr(last, k)} for k in ("threads", "fds", "rss_kib")
            }
    else:
        warmup_end = state.t0 + max(60.0, 0.2 * state.duration)
        flat_verdicts, resources = checks.flat(state.procs, warmup_end, final.at)
        verdicts += flat_verdicts
    tracebacks = state.log.matching("Traceback") + state.log.matching("periodic refresh failed")
    verdicts.append(Verdict("no tracebacks in serve's log", not tracebacks, tracebacks[0][1] if tracebacks else "none"))
    unsent = state.log.matching("point(s) unsent")
    daemon = state.daemon
    verdicts.append(
        Verdict(
            "serve stops cleanly on SIGTERM",
            daemon.returncode == 0 and (daemon.stop_seconds or 0) < 10,
            f"exit {daemon.returncode} after {daemon.stop_seconds or 0:.1f} s",
        )
    )
    verdicts.append(Verdict("nothing left running", not state.leftovers, ", ".join(state.leftovers) or "none"))
    outages: dict[str, dict[str, int]] = {}
    for verdict, event in zip(fault_verdicts, _events(state), strict=True):
        entry = outages.setdefault(
            f"{event.kind} {event.mode}"
            if event.kind != "sighup"
            else "sighup " + ("good" if event.mode == "good" else "bad"),
            {"injected": 0, "survived": 0},
        )
        entry["injected"] += 1
        entry["survived"] += verdict.passed
    return {
        "passed": all(v.passed for v in verdicts),
        "mode": "smoke" if state.smoke else "soak",
        "seed": state.seed,
        "chaos_seconds": round(state.chaos_end - state.t0, 1),
        "total_seconds": round(state.total_seconds, 1),
        "setup_seconds": round(state.setup_seconds, 1),
        "textfile_filesystem": state.fs_kind,
        "xmpp_client": "slixmpp",
        "xmpp": vars(state.xmpp),
        "files": {
            "rewritten": state.files.rewrites if state.files else 0,
            "deleted": state.files.deletes if state.files else 0,
        },
        "sql_rows": {
            g.driver: {"rewritten": g.rewrites, "failed_while_down": g.failures} for g in state.sql_generators
        },
        "outages": outages,
        "points": point_stats,
        "unsent_at_reload_log_lines": [line for _, line in unsent][:10],
        "resources": resources,
        "scrapes": {
            "count": len(state.scrapes),
            "failed": sum(1 for s in state.scrapes if s.error),
            "max_latency_seconds": round(worst, 3),
            "p99_latency_seconds": round(p99, 3),
            "longest_reload_gap_seconds": round(reload_gap, 2),
        },
        "poll_errors": state.poll_errors,
        "checks": [{"name": v.name, "passed": v.passed, "detail": v.detail} for v in verdicts],
        "work_dir": str(state.work),
    }


def text(summary: Mapping[str, Any]) -> str:
    """The summary for a terminal: failed checks first, then the numbers."""
    lines = [
        f"prosody-lastlog soak ({summary['mode']}, seed {summary['seed']}): "
        + ("PASSED" if summary["passed"] else "FAILED")
    ]
    lines.append(
        f"chaos {summary['chaos_seconds']} s, total {summary['total_seconds']} s "
        f"(set-up {summary['setup_seconds']} s); textfile on {summary['textfile_filesystem']}"
    )
    xmpp = summary["xmpp"]
    lines.append(
        f"xmpp ({summary['xmpp_client']}): {xmpp['logins']} logins, {xmpp['logouts']} logouts, "
        f"{xmpp['drops']} dropped connections, {xmpp['failures']} failed logins"
    )
    lines.append(
        f"files: {summary['files']['rewritten']} rewritten, {summary['files']['deleted']} deleted; "
        f"sql rows: {summary['sql_rows']}"
    )
    for kind, entry in sorted(summary["outages"].items()):
        lines.append(f"  {kind:<20} injected {entry['injected']:>3}  survived {entry['survived']:>3}")
    for exporter, entry in summary["points"].items():
        lines.append(
            f"points {exporter}: {entry['snapshots_pushed']} snapshots ({entry['points_pushed']} points) "
            f"pushed, {entry['snapshots_arrived']} arrived, {entry['snapshots_lost']} lost "
            f"{entry['lost_causes']}"
        )
    for name, entry in summary["resources"].items():
        lines.append(f"{name}: {entry}")
    lines.append(f"scrapes: {summary['scrapes']}")
    failed = [c for c in summary["checks"] if not c["passed"]]
    passed = Counter(c["passed"] for c in summary["checks"])
    lines.append(f"checks: {passed[True]} passed, {passed[False]} failed")
    lines += [f"  FAILED {c['name']}: {c['detail']}" for c in failed]
    return "\n".join(lines)

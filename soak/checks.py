"""The soak's verdicts: outages visible while they lasted, recovery, no leaks, counts equal to a fresh count."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from soak.faults import FaultEvent
from soak.observe import LogTail, ProcSample, Scrape

SQL_DETECT_SECONDS = {  # sql_interval 2 s, + the 5 s connect timeout for a frozen server, + a loaded VM's slack
    "stop": 5.0,
    "freeze": 12.0,
}
SQL_RECOVER_SECONDS = 15.0
PUSH_DETECT_SECONDS = 5.0  # pushes every second, connection refused at once
DISK_SECONDS = 10.0
REPLACED_SECONDS = 5.0  # a replaced data directory is noticed within a second (its identity is checked), + slack
ABUSE_P99_SECONDS = 1.0  # scrapes during the slow-client attack (a loaded 2-core machine; the suite holds 50 ms)
MAX_SCRAPE_SECONDS = 10.0  # Prometheus' default scrape timeout
THREADS_TOLERANCE = 2
FDS_TOLERANCE = 5
RSS_TOLERANCE = (1.10, 16 * 1024)  # end <= start * 1.10 + 16 MiB (KiB)


@dataclass(frozen=True)
class Verdict:
    """One check: its name, whether it passed, and what was seen."""

    name: str
    passed: bool
    detail: str


def _within(scrapes: Sequence[Scrape], start: float, end: float) -> list[Scrape]:
    return [s for s in scrapes if start <= s.at <= end and s.error is None]


def sql_outage(event: FaultEvent, source: str, scrapes: Sequence[Scrape], t0: float) -> Verdict:
    """source_up 0 and /healthz 503 naming the source from detection to the end; up again afterwards."""
    name = f"{event.kind} {event.mode} at +{event.start - t0:.0f}"
    end = event.end or event.start
    during = _within(scrapes, event.start + SQL_DETECT_SECONDS[event.mode], end)
    if not during:
        return Verdict(name, False, "no scrape between detection bound and the end of the outage")

    def down(s: Scrape) -> bool:
        return s.value("prosody_lastlog_source_up", source=source) == 0 and s.health[0] == 503 and source in s.health[1]

    visible = [s for s in during if down(s)]
    first = next((s.at - event.start for s in _within(scrapes, event.start, end) if down(s)), None)
    after = [
        s
        for s in _within(scrapes, end, end + SQL_RECOVER_SECONDS)
        if s.value("prosody_lastlog_source_up", source=source) == 1
    ]
    passed = len(visible) == len(during) and bool(after)
    detail = (
        f"down in {len(visible)}/{len(during)} scrapes, first after {first if first is None else round(first, 1)} s"
    )
    detail += f", up again after {after[0].at - end:.1f} s" if after else ", not up again in time"
    return Verdict(name, passed, detail)


def push_outage(
    event: FaultEvent, exporter: str, scrapes: Sequence[Scrape], drain_seconds: float, t0: float
) -> Verdict:
    """export errors increasing and a non-empty queue during the outage; the queue empty again afterwards."""
    name = f"{event.kind} {event.mode} at +{event.start - t0:.0f}"
    end = event.end or event.start
    during = _within(scrapes, event.start, end + 1)
    errors = [s.value("prosody_lastlog_export_errors_total", exporter=exporter) or 0 for s in during]
    increased = any(b > a for a, b in itertools.pairwise(errors))
    queued = max((s.value("prosody_lastlog_export_queue_length", exporter=exporter) or 0 for s in during), default=0)
    drained = next(
        (
            s.at - end
            for s in _within(scrapes, end, end + drain_seconds)
            if s.value("prosody_lastlog_export_queue_length", exporter=exporter) == 0
        ),
        None,
    )
    passed = increased and queued > 0 and drained is not None
    detail = f"errors increasing: {increased}, max queue {queued:.0f}, "
    detail += f"drained {drained:.1f} s after" if drained is not None else f"not drained within {drain_seconds:.0f} s"
    return Verdict(name, passed, detail)


def disk_outage(event: FaultEvent, log: LogTail, t0: float) -> Verdict:
    """The textfile failure logged while the disk was full, and its recovery after."""
    name = f"disk full at +{event.start - t0:.0f}"
    end = event.end or event.start
    failed = log.matching("cannot write the textfile", since=event.start, until=end + 1)
    again = log.matching("works again", since=end, until=end + DISK_SECONDS)
    passed = bool(failed) and bool(again)
    return Verdict(name, passed, f"failure logged: {bool(failed)}, recovery logged: {bool(again)}")


def reload(event: FaultEvent, t0: float) -> Verdict:
    """A good configuration reloads, a bad one is refused and the old one keeps running."""
    name = f"SIGHUP {event.mode} at +{event.start - t0:.0f}"
    answer = event.notes[0] if event.notes else ""
    wanted = "reloaded" if event.mode == "good" else "reload refused"
    passed = event.error is None and wanted in answer
    return Verdict(name, passed, answer or (event.error or "no answer"))


def data_dir_replaced(event: FaultEvent, log: LogTail, t0: float) -> Verdict:
    """serve says it watches the new directory within REPLACED_SECONDS (the final count shows it read it)."""
    name = f"data directory replaced at +{event.start - t0:.0f}"
    seen = log.matching("was replaced by another directory", since=event.start)
    after = round(seen[0][0] - event.start, 1) if seen else None
    passed = after is not None and after <= REPLACED_SECONDS and event.error is None
    return Verdict(name, passed, f"noticed after {after} s" if after is not None else event.error or "not noticed")


def connection_abuse(event: FaultEvent, scrapes: Sequence[Scrape], t0: float) -> Verdict:
    """Scrapes keep answering, quickly, while slow clients hold connections (failures: scrape_failures)."""
    name = f"slow clients at +{event.start - t0:.0f}"
    latencies = sorted(s.latency for s in _within(scrapes, event.start + 1, event.end or event.start))
    if not latencies:
        return Verdict(name, False, "no scrape answered during the attack")
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    detail = f"{len(latencies)} scrapes answered, p99 {p99:.3f} s; {'; '.join(event.notes)}"
    return Verdict(name, p99 <= ABUSE_P99_SECONDS and event.error is None, detail)


def scrape_failures(scrapes: Sequence[Scrape], reloads: Sequence[FaultEvent]) -> tuple[Verdict, float]:
    """/metrics may fail only while a good reload restarts the daemon; returns the longest such gap too."""
    windows = [(e.start, _answer_time(e) + 1.0) for e in reloads if e.mode == "good"]
    outside = [s for s in scrapes if s.error and not any(a <= s.at <= b for a, b in windows)]
    gaps = [b - a for a, b in windows if any(s.error and a <= s.at <= b for s in scrapes)]
    detail = f"{sum(1 for s in scrapes if s.error)} failed scrape(s), {len(outside)} outside reloads"
    if outside:
        detail += f": {outside[0].error}"
    return Verdict("scrapes answer outside reloads", not outside, detail), max(gaps, default=0.0)


def _answer_time(event: FaultEvent) -> float:
    if event.notes and event.notes[0].startswith("+"):
        return event.start + float(event.notes[0][1:].split("s", 1)[0])
    return event.end or event.start


def scrape_latency(scrapes: Sequence[Scrape]) -> tuple[Verdict, float, float]:
    """The slowest and the 99th-percentile /metrics answer."""
    latencies = sorted(s.latency for s in scrapes if s.error is None)
    worst = latencies[-1] if latencies else 0.0
    p99 = latencies[int(0.99 * (len(latencies) - 1))] if latencies else 0.0
    return Verdict("scrape latency", worst < MAX_SCRAPE_SECONDS, f"max {worst:.3f} s, p99 {p99:.3f} s"), worst, p99


def flat(samples: Sequence[ProcSample], warmup_end: float, end: float) -> tuple[list[Verdict], dict[str, object]]:
    """Medians of the first and the last minute after warm-up: threads, fds, children and RSS must not grow."""
    first = [s for s in samples if warmup_end <= s.at <= warmup_end + 60]
    last = [s for s in samples if end - 60 <= s.at <= end]
    if not first or not last:
        return [Verdict("resources flat", False, "not enough samples after warm-up")], {}

    def median(window: Sequence[ProcSample], field: Callable[[ProcSample], int]) -> float:
        return float(statistics.median(field(s) for s in window))

    report: dict[str, object] = {}
    verdicts = []
    limits: Mapping[str, tuple[Callable[[ProcSample], int], Callable[[float], float]]] = {
        "threads": (lambda s: s.threads, lambda v: v + THREADS_TOLERANCE),
        "fds": (lambda s: s.fds, lambda v: v + FDS_TOLERANCE),
        "children": (lambda s: s.children, lambda v: v),
        "rss_kib": (lambda s: s.rss_kib, lambda v: v * RSS_TOLERANCE[0] + RSS_TOLERANCE[1]),
    }
    for name, (field, limit) in limits.items():
        start_value, end_value = median(first, field), median(last, field)
        peak = max(field(s) for s in samples if s.at >= warmup_end)
        report[name] = {"start": start_value, "end": end_value, "max": peak, "limit": round(limit(start_value), 1)}
        verdicts.append(
            Verdict(f"{name} flat", end_value <= limit(start_value), f"{start_value:.0f} -> {end_value:.0f}")
        )
    return verdicts, report


def counts_equal(served: Mapping[str, object], counted: Mapping[str, object]) -> Verdict:
    """Per host and family, /metrics equals a fresh `count --now` on the same data."""
    differences = [
        f"{host}: served {served.get(host)} counted {counted.get(host)}"
        for host in sorted(set(served) | set(counted))
        if served.get(host) != counted.get(host)
    ]
    detail = f"{len(counted)} host(s) equal" if not differences else "; ".join(differences[:5])
    return Verdict("counts equal a fresh count", not differences, detail)

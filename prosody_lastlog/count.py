"""The `count` command: one count of every source, printed or written in one format."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence

from exporters import render_points
from exporters.nodeinfo import NODEINFO_WINDOWS, host_name, nodeinfo, public_hosts, render_document
from exporters.text import render_cohorts, render_json, render_table, to_json_document
from prosody_lastlog.core.connected import NOBODY, ConnectedSetting, ConnectedUsers
from prosody_lastlog.core.counting import HostCounts, Snapshot, totals_only
from prosody_lastlog.core.model import ReadProblem
from prosody_lastlog.core.windows import DEFAULT_AGES, parse_windows
from prosody_lastlog.prosody.running import ConnectedProbe, VersionFinder
from prosody_lastlog.settings import node_names, source_options
from prosody_lastlog.sources.kinds import count_all, with_cohorts
from prosody_lastlog.sources.plan import Plan, plan_sources

log = logging.getLogger("prosody_lastlog")


def run_count(args: argparse.Namespace) -> int:
    """Counts once as of --now (else the clock), prints or writes the result; 0 when done."""
    if args.format == "nodeinfo":  # the host as serve's --nodeinfo-host takes it (checked by usage_problems)
        args.host = [host_name(args.host[0])]
    plan = plan_sources(source_options(args), environ=os.environ)
    windows = NODEINFO_WINDOWS if args.format == "nodeinfo" else parse_windows(args.window)
    ages = parse_windows(args.inactive_window, DEFAULT_AGES)
    now, connected = as_of(args, plan)
    totals, health = count_all(
        plan.sources, now=now, windows=windows, known_hosts=plan.known_hosts, connected=connected, ages=ages
    )
    report_problems(totals.problems)
    if args.cohorts:
        totals.counts = with_cohorts(plan.sources, totals.counts, now=now, connected=connected)
    _report_clock_skew(totals.counts)
    if args.format == "json":
        document = to_json_document(
            totals.counts,
            now=now,
            windows=windows,
            problems=totals.problems,
            connected_detection=connected.mode,
            servers={h.name: h.server for h in health if h.server is not None},
        )
        text = render_json(document)
    elif args.format == "prom":
        from exporters.prometheus import render_prometheus  # noqa: PLC0415  # prometheus_client only when used

        text = render_prometheus(
            totals.counts,
            health,
            now=now,
            windows=windows,
            per_host=not args.totals_only,
            compat=args.compat_metrics,
            detection=plan.connected_detection(connected.mode),
        )
    elif args.format == "nodeinfo":
        text = _nodeinfo(args, plan, totals.counts)
    elif args.format in ("influx", "graphite"):
        counts = totals_only(totals.counts, windows) if args.totals_only else totals.counts
        text = render_points(Snapshot(now, counts, windows), args.format)
    else:
        text = render_table(totals.counts, windows=windows) + render_cohorts(totals.counts)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    from exporters.textfile import write_atomically  # noqa: PLC0415  # tempfile only when a file is written

    try:
        write_atomically(args.output, text)
    except OSError as exc:
        raise OSError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    return 0


def _nodeinfo(args: argparse.Namespace, plan: Plan, counts: Mapping[str, HostCounts]) -> str:
    """The NodeInfo 2.1 document of the one --host, as serve answers it for a host opted in."""
    (host,) = public_hosts(args.host, plan.open_registration, node_names(args)).values()
    version = VersionFinder(plan.server, plan.installed, args.prosody_version).find()
    if version is None:
        raise ValueError(
            "Prosody's version is not known: no Prosody answers, none is installed here; set --prosody-version"
        )
    if host.name not in counts:
        raise ValueError(f"{host.name}: no such host counted here (`prosody-lastlog count -v` lists the hosts)")
    return render_document(nodeinfo(host, counts[host.name], version))


def as_of(args: argparse.Namespace, plan: Plan) -> tuple[int, ConnectedUsers]:
    """The time to count as of (--now, else the clock), and who is connected then (nobody with --now, or when no
    file store is read: SQL counts stored activity only)."""
    now = args.now if args.now is not None else int(time.time())
    detection = ConnectedSetting.OFF if args.now is not None else ConnectedSetting(args.connected)
    return now, ConnectedProbe(plan.server, detection).probe() if plan.has_file_source else NOBODY


def report_problems(problems: Sequence[ReadProblem]) -> None:
    """Logs each problem at debug level and a summary, with no names, as a warning."""
    # File names carry user names, so they are logged at debug level only (-v); the summary has none.
    for problem in problems:
        log.debug("%s: %s: %s", problem.where, problem.kind, problem.reason)
    if problems:
        kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(Counter(p.kind for p in problems).items()))
        hint = "" if log.isEnabledFor(logging.DEBUG) else "; -v lists them"
        log.warning("%d problem(s) reading data (%s)%s", len(problems), kinds, hint)


def _report_clock_skew(counts: dict[str, HostCounts]) -> None:
    for host, host_counts in counts.items():
        if host_counts.future:
            log.warning(
                "%s: %d accounts have a last activity in the future (clock skew?); counted as active now",
                host,
                host_counts.future,
            )

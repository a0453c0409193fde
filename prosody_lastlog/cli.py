"""Command line: parses arguments, builds the reader, prints counts. Exit 0 ok, 1 on a fatal error, 2 on usage."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from prosody_lastlog import __version__
from prosody_lastlog.atomic_write import write_atomically
from prosody_lastlog.counting import HostCounts
from prosody_lastlog.database import DatabaseError
from prosody_lastlog.discovery import DEFAULT_DATA_DIR, SourceOptions, plan_sources
from prosody_lastlog.prosody_config import ConfigError
from prosody_lastlog.readers.files import DataDirError
from prosody_lastlog.readers.sql import METHODS
from prosody_lastlog.records import ReadProblem, Store
from prosody_lastlog.report import render_json, render_prometheus, render_table, to_json_document
from prosody_lastlog.sources import count_all
from prosody_lastlog.windows import parse_windows

log = logging.getLogger("prosody_lastlog")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="prosody-lastlog",
        description="Count daily, weekly and monthly active users per Prosody host from last-activity data.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    count = commands.add_parser("count", help="count active users once and print them")
    source = count.add_argument_group(
        "where the data is",
        "By default the Prosody config ($PROSODY_CONFIG, else /etc/prosody/prosody.cfg.lua) says where each host's "
        "data lives; --data-dir or --sql read one place directly instead.",
    )
    source.add_argument("--config", type=Path, help="Prosody's config file, e.g. /etc/prosody/prosody.cfg.lua")
    source.add_argument(
        "--data-dir", type=Path, help=f"Prosody's data_path, with <host>/lastlog2/*.dat (e.g. {DEFAULT_DATA_DIR})"
    )
    source.add_argument(
        "--sql",
        metavar="URL",
        help="Prosody's SQL database: sqlite:///path, postgresql://user@host:5432/db or mysql://user@host:3306/db",
    )
    source.add_argument("--sql-password-file", type=Path, help="read the SQL password from this file (first line)")
    source.add_argument(
        "--sql-method",
        choices=METHODS,
        default="auto",
        help="count in the database (pushdown), by reading rows (stream), or pushdown with fallback (auto, default)",
    )
    count.add_argument("--host", action="append", default=[], help="count only this host (repeatable)")
    count.add_argument(
        "--window", action="append", default=[], help="activity window such as 1h, 1d, 7d, 30d, 90d (repeatable)"
    )
    count.add_argument("--now", type=int, help="count as of this Unix time instead of the clock (reproducible runs)")
    count.add_argument(
        "--format",
        choices=("table", "json", "prom"),
        default="table",
        help="table, json, or prom (Prometheus text format, e.g. for node_exporter's textfile collector)",
    )
    count.add_argument(
        "--output", type=Path, help="write to this file, replaced atomically (e.g. a textfile collector's *.prom)"
    )
    count.add_argument("--totals-only", action="store_true", help="prom: one series for all hosts together")
    count.add_argument(
        "--compat-metrics",
        action="store_true",
        help="prom: also mod_measure_active_users' own metric names, for dashboards built on them",
    )
    count.add_argument(
        "--store",
        choices=[s.value for s in Store],
        help="read this store only (default: what the server's own mod_measure_active_users reads)",
    )
    count.add_argument(
        "--count-disabled", action="store_true", help="count accounts marked disabled (Prosody 13) as active"
    )
    count.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="say what is read and list every unreadable file or row (names users)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `prosody-lastlog` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(verbose=args.verbose)
    try:
        windows = parse_windows(args.window)
    except ValueError as exc:
        parser.error(str(exc))
    now = args.now if args.now is not None else int(time.time())
    try:
        options = SourceOptions(
            config=args.config,
            data_dir=args.data_dir,
            sql_url=args.sql,
            sql_password=_read_password(args.sql_password_file),
            sql_method=args.sql_method,
            hosts=args.host,
            store=Store(args.store) if args.store else None,
            count_disabled=args.count_disabled,
        )
        plan = plan_sources(options, environ=os.environ)
        totals, health = count_all(plan.sources, now=now, windows=windows, known_hosts=plan.known_hosts)
    except (DataDirError, DatabaseError, ConfigError, OSError, ValueError) as exc:
        print(f"prosody-lastlog: error: {exc}", file=sys.stderr)
        return 1
    _report_problems(totals.problems)
    _report_clock_skew(totals.counts)
    if args.format == "json":
        text = render_json(to_json_document(totals.counts, now=now, windows=windows, problems=totals.problems))
    elif args.format == "prom":
        text = render_prometheus(
            totals.counts,
            health,
            now=now,
            windows=windows,
            per_host=not args.totals_only,
            compat=args.compat_metrics,
        )
    else:
        text = render_table(totals.counts, windows=windows)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        write_atomically(args.output, text)
    except OSError as exc:
        print(f"prosody-lastlog: error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _read_password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
    except OSError as exc:
        raise OSError(f"cannot read the SQL password file {path}: {exc.strerror}") from exc


def _setup_logging(*, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("prosody-lastlog: %(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.WARNING)
    log.propagate = False


def _report_problems(problems: Sequence[ReadProblem]) -> None:
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

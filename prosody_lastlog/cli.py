"""Command line: parses arguments, builds the reader, prints counts. Exit 0 ok, 1 on a fatal error, 2 on usage."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from prosody_lastlog import __version__
from prosody_lastlog.counting import HostCounts, count_hosts
from prosody_lastlog.readers.files import DataDirError, FileStoreReader
from prosody_lastlog.records import ReadProblem, Store
from prosody_lastlog.report import render_json, render_table, to_json_document
from prosody_lastlog.windows import parse_windows

log = logging.getLogger("prosody_lastlog")

DEFAULT_DATA_DIR = Path("/var/lib/prosody")  # Debian's and most packages' data_path


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="prosody-lastlog",
        description="Count daily, weekly and monthly active users per Prosody host from last-activity data.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    count = commands.add_parser("count", help="count active users once and print them")
    count.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"Prosody's data_path, holding <host>/lastlog2/*.dat and friends (default: {DEFAULT_DATA_DIR})",
    )
    count.add_argument("--host", action="append", default=[], help="count only this host (repeatable)")
    count.add_argument(
        "--window", action="append", default=[], help="activity window such as 1h, 1d, 7d, 30d, 90d (repeatable)"
    )
    count.add_argument("--now", type=int, help="count as of this Unix time instead of the clock (reproducible runs)")
    count.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    count.add_argument(
        "--store",
        choices=[s.value for s in Store],
        help="read this store only (default: what the server's own mod_measure_active_users reads)",
    )
    count.add_argument(
        "--count-disabled", action="store_true", help="count accounts marked disabled (Prosody 13) as active"
    )
    count.add_argument("-v", "--verbose", action="store_true", help="list every unreadable file (names users)")
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
    reader = FileStoreReader(
        args.data_dir,
        hosts=args.host,
        store=Store(args.store) if args.store else None,
        count_disabled=args.count_disabled,
    )
    try:
        result = reader.read()
    except DataDirError as exc:
        print(f"prosody-lastlog: error: {exc}", file=sys.stderr)
        return 1
    counts = count_hosts(result.hosts.values(), now=now, windows=windows)
    _report_problems(result.problems)
    _report_clock_skew(counts)
    if args.format == "json":
        sys.stdout.write(render_json(to_json_document(counts, now=now, windows=windows, problems=result.problems)))
    else:
        sys.stdout.write(render_table(counts, windows=windows))
    return 0


def _setup_logging(*, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("prosody-lastlog: %(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
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

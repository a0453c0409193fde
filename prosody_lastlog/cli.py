"""Command line: the argument tables, and main(): arguments -> settings -> the job. Exit 0 ok, 1 on a fatal error,
2 on usage."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from exporters import DEFAULT_PORT, ExporterConfigError
from exporters.account_list import FORMATS
from prosody_lastlog import __version__
from prosody_lastlog.core.connected import ConnectedSetting
from prosody_lastlog.core.model import Store
from prosody_lastlog.prosody.pathnames import DEFAULT_DATA_PATH
from prosody_lastlog.settings import (
    FATAL_ERRORS,
    SettingsError,
    usage_problems,
    with_settings_file,
)
from prosody_lastlog.sources.files import MAX_WORKERS
from prosody_lastlog.sources.results import SQL_METHODS

log = logging.getLogger("prosody_lastlog")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@\s]*@")
_T = TypeVar("_T")
_Default = Callable[[Any], Any]  # an option's default, or argparse.SUPPRESS


def _keep(value: _T) -> _T:
    return value


def _suppress(_: _T) -> _T:
    return argparse.SUPPRESS  # type: ignore[return-value]  # argparse's marker: "not given, leave it out"


class _Parser(argparse.ArgumentParser):
    """argparse, except that a password in a URL it echoes back is masked."""

    def error(self, message: str) -> NoReturn:
        super().error(_URL_PASSWORD.sub(r"\1:***@", message))


def build_parser(*, defaults: bool = True) -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per job; without `defaults` it parses to only the options given."""
    default = _keep if defaults else _suppress
    parser = _Parser(
        prog="prosody-lastlog",
        description="Count daily, weekly and monthly active users per Prosody host from last-activity data.",
        epilog="Exit codes: 0 counted or served, 1 the data cannot be read or serve cannot start, 2 bad arguments "
        "or settings. Reference: docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    unset: dict[str, Any] = {} if defaults else {"argument_default": argparse.SUPPRESS}
    count = commands.add_parser("count", help="count active users once and print them", **unset)
    serve = commands.add_parser(
        "serve",
        help="keep counts fresh and serve them to Prometheus",
        description="Count once, keep the counts fresh (file watcher, periodic rescan) and serve /metrics and "
        "/healthz. Push exporters (Graphite, InfluxDB, Pushgateway) are [exporters.<name>] tables in --config-file.",
        **unset,
    )
    inactive = commands.add_parser(
        "inactive",
        help="list accounts inactive for a given time, for cleanup (prints user names)",
        description="List the accounts whose last activity, else registration, is at least --older-than ago, by "
        "the rules of the counts (prosody_accounts_inactive). The only command that prints user names, on its "
        "stdout; it never deletes anything.",
        **unset,
    )
    for command in (count, serve, inactive):
        _add_source_options(command, default)
        _add_selection_options(command, default)
    for command in (count, serve):
        _add_counting_options(command, default)
        _add_nodeinfo_options(command, default, serving=command is serve)
    _add_inactive_options(inactive, default)
    for command in (count, inactive):
        command.add_argument(
            "--now", type=int, metavar="EPOCH", help="as of this Unix time instead of the clock (reproducible runs)"
        )
    count.add_argument(
        "--format",
        choices=("table", "json", "prom", "influx", "graphite", "nodeinfo"),
        default=default("table"),
        help="table, json, prom (Prometheus text, e.g. for node_exporter's textfile collector), influx (line "
        "protocol, e.g. for Telegraf's inputs.exec), graphite (carbon plaintext) or nodeinfo (the NodeInfo 2.1 "
        "document of the one --host, to publish as a static file)",
    )
    count.add_argument(
        "--cohorts",
        action="store_true",
        help="also count sign-up cohorts: for each of the last 12 months, the accounts registered then and how many "
        "were last active in or after each month since (reads the data once more)",
    )
    count.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="write to this file, replaced atomically (e.g. a textfile collector's *.prom)",
    )
    serve.add_argument(
        "--listen",
        default=default(f"127.0.0.1:{DEFAULT_PORT}"),
        metavar="ADDR:PORT",
        help=f"address:port for /metrics (default 127.0.0.1:{DEFAULT_PORT})",
    )
    serve.add_argument(
        "--textfile", type=Path, metavar="FILE", help="also write this *.prom file for node_exporter, atomically"
    )
    serve.add_argument(
        "--resync-interval",
        default=default("1h"),
        metavar="DURATION",
        help="full rescan of the file store (default 1h, +0-5m jitter; durations: a number and s, m, h, d or w)",
    )
    serve.add_argument(
        "--sql-interval",
        default=default("60s"),
        metavar="DURATION",
        help="how often SQL sources are looked at for changes (default 60s; read in full every --resync-interval)",
    )
    serve.add_argument(
        "--sql-binlog",
        action="store_true",
        help="follow MariaDB's or MySQL's row-based binary log: a login shows within about a second "
        "(needs log_bin, binlog_format=ROW and the REPLICATION SLAVE and BINLOG MONITOR privileges; docs/sql.md)",
    )
    serve.add_argument("--polling", action="store_true", help="poll the data directory instead of using inotify")
    serve.add_argument(
        "--connected-interval",
        default=default("5m"),
        metavar="DURATION",
        help="how often connected users are found (5m)",
    )
    serve.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve HTTPS with this PEM certificate (chain)")
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="the PEM private key for --tls-cert")
    serve.add_argument(
        "--basic-auth-file",
        type=Path,
        metavar="FILE",
        help="require HTTP basic auth: a file of user:password lines (keep it 0600)",
    )
    if defaults:
        serve.set_defaults(exporters={})  # only from the settings file: [exporters.<name>] tables
    serve.add_argument(
        "--as-of", type=int, metavar="EPOCH", help="run as if the clock read this Unix time at start (demos, old data)"
    )
    return parser


def _add_source_options(command: argparse.ArgumentParser, default: _Default) -> None:
    command.add_argument(
        "--config-file",
        type=Path,
        metavar="FILE",
        help="a TOML settings file: keys are the long options with _ (hosts and windows as lists); options given "
        "here win",
    )
    source = command.add_argument_group(
        "where the data is",
        "By default the Prosody config ($PROSODY_CONFIG, else /etc/prosody/prosody.cfg.lua) says where each host's "
        "data lives; --data-dir or --sql read one place directly instead.",
    )
    source.add_argument(
        "--config", type=Path, metavar="FILE", help="Prosody's config file, e.g. /etc/prosody/prosody.cfg.lua"
    )
    source.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help=f"Prosody's data_path, with <host>/lastlog2/*.dat (e.g. {DEFAULT_DATA_PATH})",
    )
    source.add_argument(
        "--sql",
        metavar="URL",
        help="Prosody's SQL database: sqlite:///path, postgresql://user@host:5432/db or mysql://user@host:3306/db",
    )
    source.add_argument(
        "--sql-password-file", type=Path, metavar="FILE", help="read the SQL password from this file (first line)"
    )
    source.add_argument(
        "--sql-method",
        choices=SQL_METHODS,
        default=default("auto"),
        help="count in the database (pushdown), by reading rows (stream), or pushdown with fallback (auto, default)",
    )
    source.add_argument(
        "--scan-workers",
        type=_positive_int,
        metavar="N",
        help=f"processes reading a large file store at once (default: the CPUs, at most {MAX_WORKERS}; 1: this one)",
    )


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)


def _add_selection_options(command: argparse.ArgumentParser, default: _Default) -> None:
    command.add_argument(
        "--host", action="append", default=default([]), help="count only this host (repeatable; default: all)"
    )
    command.add_argument(
        "--store",
        choices=[s.value for s in Store],
        help="read this store only (default: what the server's own mod_measure_active_users reads)",
    )
    command.add_argument(
        "--count-disabled", action="store_true", help="count accounts marked disabled (Prosody 13) as active"
    )
    connected = command.add_argument_group(
        "connected users",
        "mod_measure_active_users counts connected users active in every window. auto asks Prosody's admin socket "
        "(exact), else uses the heuristic: a login with no later logout since Prosody started (its pidfile). "
        "Off with --now (count, inactive) or --as-of (serve). File-store sources only.",
    )
    connected.add_argument(
        "--connected",
        choices=[d.value for d in ConnectedSetting],
        default=default(ConnectedSetting.AUTO.value),
        help="how connected users are found (default auto)",
    )
    connected.add_argument(
        "--admin-socket",
        type=Path,
        metavar="FILE",
        help="mod_admin_socket's socket (default: from the config, else prosody.sock in the data directory)",
    )
    connected.add_argument(
        "--pidfile",
        type=Path,
        metavar="FILE",
        help="Prosody's pidfile (default: from the config, else /run/prosody/prosody.pid or /var/run/prosody/...)",
    )
    command.add_argument(
        "-v", "--verbose", action="store_true", help="say what is read and list every unreadable file or row"
    )


def _add_counting_options(command: argparse.ArgumentParser, default: _Default) -> None:
    command.add_argument(
        "--window",
        action="append",
        default=default([]),
        metavar="DURATION",
        help="activity window such as 1h, 1d, 7d, 30d, 90d (repeatable; default 1d 7d 30d)",
    )
    command.add_argument(
        "--inactive-window",
        action="append",
        default=default([]),
        metavar="DURATION",
        help="count accounts inactive at least this long, such as 90d or 1y (repeatable; default 90d 180d 365d)",
    )
    command.add_argument("--totals-only", action="store_true", help="metrics: one series for all hosts together")
    command.add_argument(
        "--compat-metrics",
        action="store_true",
        help="metrics: also mod_measure_active_users' own metric names, for dashboards built on them",
    )


def _add_nodeinfo_options(command: argparse.ArgumentParser, default: _Default, *, serving: bool) -> None:
    nodeinfo = command.add_argument_group(
        "NodeInfo",
        "Public usage figures for directories of federated servers (docs/nodeinfo.md): registered accounts, "
        "active in 30 and 180 days, whether registration is open.",
    )
    if serving:
        nodeinfo.add_argument(
            "--nodeinfo-host",
            action="append",
            default=default([]),
            metavar="HOST",
            help="serve /.well-known/nodeinfo, /nodeinfo/2.1, /nodeinfo/2.0 and /.well-known/x-nodeinfo2 for "
            "requests to this host (by their Host header; repeatable; default: none, off)",
        )
    nodeinfo.add_argument(
        "--nodeinfo-node-name",
        action="append",
        default=default([]),
        metavar="HOST=NAME",
        help="publish NAME as the host's metadata.nodeName (repeatable)",
    )
    nodeinfo.add_argument(
        "--prosody-version",
        metavar="VERSION",
        help="Prosody's version to publish when neither the running Prosody (admin socket) nor an installed "
        "package says",
    )


def _add_inactive_options(command: argparse.ArgumentParser, default: _Default) -> None:
    command.add_argument(
        "--older-than",
        required=True,
        metavar="DURATION",
        help="list accounts whose last activity, else registration, is at least this long ago (e.g. 2y, 180d)",
    )
    command.add_argument(
        "--never-used-for",
        metavar="DURATION",
        help="list accounts never active this long after registering (e.g. 14d; default: --older-than)",
    )
    command.add_argument(
        "--format",
        choices=FORMATS,
        default=default("names"),
        help="names (one JID a line), json, or prosodyctl (Prosody's delete command per account, to review and run)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `prosody-lastlog` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(verbose=args.verbose, daemon=args.command == "serve")
    try:
        args = parse_settings(argv, args)
    except SettingsError as exc:
        return _settings_error(exc)
    problems = usage_problems(args)
    if problems:
        parser.error("; ".join(problems))
    try:
        if args.command == "serve":  # each job imports what it uses, when it runs: a cron `count` pays for no server
            from exporters import validate_exporters  # noqa: PLC0415
            from prosody_lastlog.serve import run_serve  # noqa: PLC0415

            validate_exporters(args.exporters)
            return run_serve(args, lambda: parse_settings(argv))
        if args.command == "inactive":
            from prosody_lastlog.inactive import run_inactive  # noqa: PLC0415

            return run_inactive(args)
        from prosody_lastlog.count import run_count  # noqa: PLC0415

        return run_count(args)
    except (SettingsError, ExporterConfigError) as exc:
        return _settings_error(exc)
    except FATAL_ERRORS as exc:
        print(f"prosody-lastlog: error: {exc}", file=sys.stderr)
        return 1


def parse_settings(argv: Sequence[str] | None, parsed: argparse.Namespace | None = None) -> argparse.Namespace:
    """The options: the command line's, and the settings file's where the command line gives none (`parsed`: argv
    already parsed)."""
    args = parsed if parsed is not None else build_parser().parse_args(argv)
    return with_settings_file(args, vars(build_parser(defaults=False).parse_args(argv)))


def _settings_error(exc: Exception) -> int:
    """Every problem of the settings, one line each; exit 2 as for bad arguments."""
    print(f"prosody-lastlog: error: {exc}".replace("\n", "\nprosody-lastlog: error: "), file=sys.stderr)
    return 2


def _setup_logging(*, verbose: bool, daemon: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("prosody-lastlog: %(levelname)s: %(message)s"))
    for logger in (log, logging.getLogger("exporters")):  # this package's, and the push exporters'
        logger.handlers[:] = [handler]
        # A daemon says what it does (info); a one-shot count only warns. -v adds file/row details (user names).
        logger.setLevel(logging.DEBUG if verbose else logging.INFO if daemon else logging.WARNING)
        logger.propagate = False

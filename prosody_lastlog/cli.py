"""Command line: arguments -> settings -> the job. Exit 0 ok, 1 on a fatal error, 2 on usage."""

from __future__ import annotations

import argparse
import logging
import os
import queue
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any, NoReturn

from exporters import ExporterConfigError, render_points, validate_exporters
from exporters.http import DEFAULT_PORT, load_credentials, load_tls
from exporters.secrets import read_secret
from exporters.text import render_json, render_prometheus, render_table, to_json_document
from exporters.textfile import write_atomically
from prosody_lastlog import __version__
from prosody_lastlog.core.connected import NOBODY
from prosody_lastlog.core.counting import HostCounts, Snapshot, total_counts
from prosody_lastlog.core.model import ReadProblem, Store
from prosody_lastlog.core.windows import Window, parse_window, parse_windows
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.prosody.config import ConfigError
from prosody_lastlog.prosody.running import ConnectedProbe, Detection
from prosody_lastlog.settings import SettingsError, read_settings_file
from prosody_lastlog.sources.database import DatabaseError
from prosody_lastlog.sources.files import MAX_WORKERS, DataDirError
from prosody_lastlog.sources.kinds import count_all
from prosody_lastlog.sources.plan import DEFAULT_DATA_DIR, Plan, SourceOptions, plan_sources
from prosody_lastlog.sources.sql import METHODS

log = logging.getLogger("prosody_lastlog")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@\s]*@")
_FATAL = (DataDirError, DatabaseError, ConfigError, OSError, ValueError)
_RELOAD_SPACING = 1.0  # seconds from a reload's beginning to that of one asked for while it ran


class _Parser(argparse.ArgumentParser):
    """argparse, except that a password in a URL it echoes back is masked."""

    def error(self, message: str) -> NoReturn:
        super().error(_URL_PASSWORD.sub(r"\1:***@", message))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per job."""
    parser = _Parser(
        prog="prosody-lastlog",
        description="Count daily, weekly and monthly active users per Prosody host from last-activity data.",
        epilog="Exit codes: 0 counted or served, 1 the data cannot be read or serve cannot start, 2 bad arguments "
        "or settings. Reference: docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    count = commands.add_parser("count", help="count active users once and print them")
    serve = commands.add_parser(
        "serve",
        help="keep counts fresh and serve them to Prometheus",
        description="Count once, keep the counts fresh (file watcher, periodic rescan) and serve /metrics and "
        "/healthz. Push exporters (Graphite, InfluxDB, Pushgateway) are [exporters.<name>] tables in --config-file.",
    )
    for command in (count, serve):
        _add_source_options(command)
        _add_counting_options(command)
    count.add_argument(
        "--now", type=int, metavar="EPOCH", help="count as of this Unix time instead of the clock (reproducible runs)"
    )
    count.add_argument(
        "--format",
        choices=("table", "json", "prom", "influx", "graphite"),
        default="table",
        help="table, json, prom (Prometheus text, e.g. for node_exporter's textfile collector), influx (line "
        "protocol, e.g. for Telegraf's inputs.exec) or graphite (carbon plaintext)",
    )
    count.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="write to this file, replaced atomically (e.g. a textfile collector's *.prom)",
    )
    serve.add_argument(
        "--listen",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        metavar="ADDR:PORT",
        help=f"address:port for /metrics (default 127.0.0.1:{DEFAULT_PORT})",
    )
    serve.add_argument(
        "--textfile", type=Path, metavar="FILE", help="also write this *.prom file for node_exporter, atomically"
    )
    serve.add_argument(
        "--resync-interval",
        default="1h",
        metavar="DURATION",
        help="full rescan of the file store (default 1h, +0-5m jitter; durations: a number and s, m, h, d or w)",
    )
    serve.add_argument(
        "--sql-interval", default="60s", metavar="DURATION", help="how often SQL sources are counted (default 60s)"
    )
    serve.add_argument("--polling", action="store_true", help="poll the data directory instead of using inotify")
    serve.add_argument(
        "--connected-interval", default="5m", metavar="DURATION", help="how often connected users are found (5m)"
    )
    serve.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve HTTPS with this PEM certificate (chain)")
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="the PEM private key for --tls-cert")
    serve.add_argument(
        "--basic-auth-file",
        type=Path,
        metavar="FILE",
        help="require HTTP basic auth: a file of user:password lines (keep it 0600)",
    )
    serve.set_defaults(exporters={})  # only from the settings file: [exporters.<name>] tables
    serve.add_argument(
        "--as-of", type=int, metavar="EPOCH", help="run as if the clock read this Unix time at start (demos, old data)"
    )
    return parser


def _add_source_options(command: argparse.ArgumentParser) -> None:
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
        help=f"Prosody's data_path, with <host>/lastlog2/*.dat (e.g. {DEFAULT_DATA_DIR})",
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
        choices=METHODS,
        default="auto",
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


def _add_counting_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--host", action="append", default=[], help="count only this host (repeatable; default: all)")
    command.add_argument(
        "--window",
        action="append",
        default=[],
        metavar="DURATION",
        help="activity window such as 1h, 1d, 7d, 30d, 90d (repeatable; default 1d 7d 30d)",
    )
    command.add_argument(
        "--store",
        choices=[s.value for s in Store],
        help="read this store only (default: what the server's own mod_measure_active_users reads)",
    )
    command.add_argument(
        "--count-disabled", action="store_true", help="count accounts marked disabled (Prosody 13) as active"
    )
    command.add_argument("--totals-only", action="store_true", help="metrics: one series for all hosts together")
    command.add_argument(
        "--compat-metrics",
        action="store_true",
        help="metrics: also mod_measure_active_users' own metric names, for dashboards built on them",
    )
    connected = command.add_argument_group(
        "connected users",
        "mod_measure_active_users counts connected users active in every window. auto asks Prosody's admin socket "
        "(exact), else uses the heuristic: a login with no later logout since Prosody started (its pidfile). "
        "Off with --now (count) or --as-of (serve). File-store sources only.",
    )
    connected.add_argument(
        "--connected",
        choices=[d.value for d in Detection],
        default=Detection.AUTO.value,
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `prosody-lastlog` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(verbose=args.verbose, daemon=args.command == "serve")
    try:
        args = _with_settings_file(args, argv)
    except SettingsError as exc:
        return _settings_error(exc)
    problems = _usage_problems(args)
    if problems:
        parser.error("; ".join(problems))
    try:
        if args.command == "serve":
            validate_exporters(args.exporters)
            return _serve(args, argv)
        return _count(args, plan_sources(_source_options(args), environ=os.environ), parse_windows(args.window))
    except ExporterConfigError as exc:
        return _settings_error(exc)
    except _FATAL as exc:
        print(f"prosody-lastlog: error: {exc}", file=sys.stderr)
        return 1


def _settings_error(exc: Exception) -> int:
    """Every problem of the settings, one line each; exit 2 as for bad arguments."""
    print(f"prosody-lastlog: error: {exc}".replace("\n", "\nprosody-lastlog: error: "), file=sys.stderr)
    return 2


def _with_settings_file(args: argparse.Namespace, argv: Sequence[str] | None) -> argparse.Namespace:
    """Fills every option not given on the command line from --config-file (an option given wins, even when
    given its default value)."""
    if args.config_file is None:
        return args
    given = vars(_parser_without_defaults().parse_args(argv))
    if given.keys() & _WHERE_THE_DATA_IS:  # then the file's say on where the data is does not count
        given.update(
            dict.fromkeys(_WHERE_THE_DATA_IS if "sql" in given else {*_WHERE_THE_DATA_IS, "sql_password_file"})
        )
    merged = vars(args).copy()
    for destination, value in read_settings_file(args.config_file).items():
        if destination in merged and destination not in given:
            merged[destination] = value
    return argparse.Namespace(**merged)


_WHERE_THE_DATA_IS = {"config", "data_dir", "sql"}


def _parser_without_defaults() -> argparse.ArgumentParser:
    """The parser, its options without defaults: it parses to the options the command line gives."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                command._defaults.clear()  # set_defaults(exporters={}) and the like
                for option in command._actions:
                    option.default = argparse.SUPPRESS
    return parser


def _usage_problems(args: argparse.Namespace) -> list[str]:
    problems = []
    try:
        parse_windows(args.window)
    except ValueError as exc:
        problems.append(str(exc))
    if sum(bool(x) for x in (args.sql, args.data_dir, args.config)) > 1:
        problems.append("--config, --data-dir and --sql each say where the data is: give at most one")
    if args.sql_password_file and not args.sql:
        problems.append("--sql-password-file goes with --sql")
    if args.command == "serve":
        problems.extend(_serve_problems(args))
    return problems


def _serve_problems(args: argparse.Namespace) -> list[str]:
    problems = []
    if bool(args.tls_cert) != bool(args.tls_key):
        problems.append("--tls-cert and --tls-key go together")
    _, _, port = args.listen.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        problems.append(f"--listen wants address:port, e.g. 127.0.0.1:{DEFAULT_PORT}, not {args.listen!r}")
    for option in ("resync_interval", "sql_interval", "connected_interval"):
        try:
            parse_window(getattr(args, option))
        except ValueError as exc:
            problems.append(f"--{option.replace('_', '-')}: {exc}")
    return problems


def _source_options(args: argparse.Namespace) -> SourceOptions:
    return SourceOptions(
        config=args.config,
        data_dir=args.data_dir,
        sql_url=args.sql,
        sql_password=read_secret(args.sql_password_file) if args.sql_password_file else None,
        sql_method=args.sql_method,
        hosts=args.host,
        store=Store(args.store) if args.store else None,
        count_disabled=args.count_disabled,
        scan_workers=args.scan_workers,
        admin_socket=args.admin_socket,
        pidfile=args.pidfile,
    )


def _count(args: argparse.Namespace, plan: Plan, windows: Sequence[Window]) -> int:
    now = args.now if args.now is not None else int(time.time())
    detection = Detection.OFF if args.now is not None else Detection(args.connected)
    connected = ConnectedProbe(plan.server, detection).probe() if plan.has_file_source else NOBODY
    totals, health = count_all(
        plan.sources, now=now, windows=windows, known_hosts=plan.known_hosts, connected=connected
    )
    _report_problems(totals.problems)
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
        text = render_prometheus(
            totals.counts,
            health,
            now=now,
            windows=windows,
            per_host=not args.totals_only,
            compat=args.compat_metrics,
            detection=plan.connected_detection(connected.mode),
        )
    elif args.format in ("influx", "graphite"):
        counts = totals.counts
        if args.totals_only:
            counts = {"all": total_counts(counts, windows)} if counts else {}
        text = render_points(Snapshot(now, counts, windows), args.format)
    else:
        text = render_table(totals.counts, windows=windows)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        write_atomically(args.output, text)
    except OSError as exc:
        raise OSError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    return 0


class _Stopped(BaseException):
    """SIGTERM or Ctrl-C while a configuration counts (the first one, or a reload's new one): raised where the main
    thread is, so every cleanup runs on the way out (the scan's processes are ended). Not an Exception: no handler
    of failures may take it."""

    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.number = number


class _Signals:
    """What serve was asked to do. SIGHUP asks for a reload, SIGTERM and Ctrl-C to stop; a stop wins over reloads
    not yet begun. A SIGHUP while serve waits begins a reload at once; those received while a reload runs make one
    more, begun _RELOAD_SPACING seconds after that one began, so a storm of SIGHUPs makes a reload or two. While a
    configuration counts, a stop raises _Stopped at once in the main thread."""

    def __init__(self) -> None:
        self._wake: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._stop: int | None = None
        self._reload_asked = False
        self._next_reload = 0.0  # time.monotonic() from which a reload asked for during the last may begin
        self._counting = False

    def install(self) -> dict[int, Any]:
        """Handles serve's signals from now on; returns the handlers they had."""
        return {number: signal.signal(number, self._receive) for number in (signal.SIGHUP, *_STOP_SIGNALS)}

    def _receive(self, number: int, _: object) -> None:
        if number == signal.SIGHUP:
            self._reload_asked = True
        elif self._stop is None:
            self._stop = number
            if self._counting:
                self._counting = False  # a second signal must not cut the cleanup short
                raise _Stopped(number)
        self._wake.put(number)

    @contextmanager
    def counting(self) -> Iterator[None]:
        """A stop asked for before or during the block raises _Stopped in it."""
        self._counting = True
        try:
            if self._stop is not None:
                raise _Stopped(self._stop)
            yield
        finally:
            self._counting = False

    def next(self) -> int:
        """Waits until asked: the number of a stop signal, else SIGHUP for one reload. The wait wakes up often: the
        kernel may deliver a signal to another thread, and Python runs handlers only when the main thread runs."""
        not_before = self._next_reload if self._reload_asked else 0.0  # asked while the last reload ran
        while self._stop is None:
            if self._reload_asked and time.monotonic() >= not_before:
                self._reload_asked = False
                self._next_reload = time.monotonic() + _RELOAD_SPACING
                return signal.SIGHUP
            with suppress(queue.Empty):
                self._wake.get(timeout=0.2)
        return self._stop


def _serve(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    # SIGHUP is caught from the start: one sent as "serving" is printed must reload, not kill. SIGTERM and Ctrl-C
    # stop a long first count at once.
    signals = _Signals()
    previous = signals.install()
    daemon: Daemon | None = None
    try:
        with signals.counting():
            daemon = _start_daemon(args)
        _announce(daemon)
        while (number := signals.next()) == signal.SIGHUP:
            daemon = _reload(daemon, args, argv, counting=signals.counting)
        log.info("stopping on signal %d", number)
    except _Stopped as stopped:
        log.info("stopping on signal %d %s", stopped.number, "while starting" if daemon is None else "during a reload")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if daemon is not None:
            daemon.stop()
    return 0


def _start_daemon(args: argparse.Namespace) -> Daemon:
    plan = plan_sources(_source_options(args), environ=os.environ)
    daemon = Daemon(plan, windows=parse_windows(args.window), options=_serve_options(args))
    try:
        daemon.start()
    except BaseException:
        daemon.stop()
        raise
    return daemon


def _announce(daemon: Daemon) -> None:
    sys.stdout.write(render_table(daemon.live.counts(now=daemon.clock()), windows=daemon.windows))
    sys.stdout.write(f"serving {daemon.server.url} (Ctrl-C stops, SIGHUP reloads)\n")
    sys.stdout.flush()


def _reload(
    running: Daemon,
    old_args: argparse.Namespace,
    argv: Sequence[str] | None,
    counting: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> Daemon:
    """SIGHUP: re-reads the settings file and the Prosody config; a bad new config leaves the old one running.

    The new configuration counts (within `counting`, serve's: a stop signal ends the count at once) while the old
    one still serves; push exporters with unchanged settings keep running (and their queues), and an SQL source
    whose database is down keeps its last counts.
    """
    try:
        args = _with_settings_file(build_parser().parse_args(argv), argv)
        problems = _usage_problems(args)
        if problems:
            raise ValueError("; ".join(problems))
        plan = plan_sources(_source_options(args), environ=os.environ)  # fails here, before anything stops
        options = _serve_options(args)
        validate_exporters(args.exporters)
        shared = running.exporters if args.exporters == old_args.exporters else None
        daemon = Daemon(plan, windows=parse_windows(args.window), options=options, exporters=shared)
    except Exception as exc:  # whatever fails, the running configuration keeps serving
        log.error("reload refused, the running configuration stays: %s", _failure(exc))
        return running
    try:
        with counting():
            daemon.count()
    except _Stopped:
        daemon.stop(close_exporters=shared is None)
        raise
    except Exception as exc:
        daemon.stop(close_exporters=shared is None)
        log.error("the new configuration did not start (%s); the running one stays", _failure(exc))
        return running
    daemon.live.keep_sql_counts_of(running.live)
    running.stop(close_exporters=shared is None)
    try:
        daemon.serve()
    except Exception as exc:
        daemon.stop()
        log.error("the new configuration did not start (%s); back to the previous one", _failure(exc))
        with counting():
            daemon = _start_daemon(old_args)
        _announce(daemon)
        return daemon
    _announce(daemon)
    log.info("reloaded")
    return daemon


def _failure(exc: Exception) -> str:
    """What a log line says of a failure: its message, or for one no bad setting explains, only its type (with the
    traceback at debug level: the message of an unforeseen error could hold anything, a user name too)."""
    if isinstance(exc, (SettingsError, ExporterConfigError, *_FATAL)):
        return str(exc)
    log.debug("unexpected failure", exc_info=exc)
    return f"unexpected {type(exc).__name__} (-v logs where)"


def _serve_options(args: argparse.Namespace) -> ServeOptions:
    host, _, port = args.listen.rpartition(":")  # checked by _serve_problems
    return ServeOptions(
        listen_host=host.strip("[]") or "127.0.0.1",
        port=int(port),
        textfile=args.textfile,
        resync_seconds=parse_window(args.resync_interval).seconds,
        sql_interval_seconds=parse_window(args.sql_interval).seconds,
        per_host=not args.totals_only,
        compat=args.compat_metrics,
        polling=args.polling,
        connected=Detection(args.connected),
        connected_interval_seconds=parse_window(args.connected_interval).seconds,
        as_of=args.as_of,
        tls=load_tls(args.tls_cert, args.tls_key) if args.tls_cert else None,
        credentials=load_credentials(args.basic_auth_file) if args.basic_auth_file else None,
        exporters=args.exporters,
    )


def _setup_logging(*, verbose: bool, daemon: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("prosody-lastlog: %(levelname)s: %(message)s"))
    for logger in (log, logging.getLogger("exporters")):  # this package's, and the push exporters'
        logger.handlers[:] = [handler]
        # A daemon says what it does (info); a one-shot count only warns. -v adds file/row details (user names).
        logger.setLevel(logging.DEBUG if verbose else logging.INFO if daemon else logging.WARNING)
        logger.propagate = False


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

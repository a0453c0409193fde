"""The `serve` command: a daemon started from the settings, its signals, and reloads on SIGHUP.

Signals and reloads live here, at the edge, because a reload reads the settings (argv and the settings file) anew,
and nothing below the edge reads them.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any

from exporters import ExporterConfigError, validate_exporters
from exporters.http import load_credentials, load_tls
from exporters.text import render_table
from prosody_lastlog.core.connected import ConnectedSetting
from prosody_lastlog.core.windows import DEFAULT_AGES, Window, parse_window, parse_windows
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.settings import FATAL_ERRORS, SettingsError, node_names, source_options, usage_problems
from prosody_lastlog.sources.plan import plan_sources

log = logging.getLogger("prosody_lastlog")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_RELOAD_SPACING = 1.0  # seconds from a reload's beginning to that of one asked for while it ran
Settings = Callable[[], argparse.Namespace]  # reads argv and the settings file (again, on each reload)


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


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serves until SIGTERM or Ctrl-C, reloading on SIGHUP with `settings()`; 0 when stopped."""
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
            daemon = _reload(daemon, args, settings, counting=signals.counting)
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
    plan = plan_sources(source_options(args), environ=os.environ)
    daemon = Daemon(plan, windows=parse_windows(args.window), options=serve_options(args), ages=_ages(args))
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
    settings: Settings,
    counting: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> Daemon:
    """SIGHUP: re-reads the settings file and the Prosody config; a bad new config leaves the old one running.

    The new configuration counts (within `counting`, serve's: a stop signal ends the count at once) while the old
    one still serves; push exporters with unchanged settings keep running (and their queues), and an SQL source
    whose database is down keeps its last counts.
    """
    try:
        args = settings()
        problems = usage_problems(args)
        if problems:
            raise ValueError("; ".join(problems))
        plan = plan_sources(source_options(args), environ=os.environ)  # fails here, before anything stops
        options = serve_options(args)
        validate_exporters(args.exporters)
        shared = running.exporters if args.exporters == old_args.exporters else None
        daemon = Daemon(plan, windows=parse_windows(args.window), options=options, exporters=shared, ages=_ages(args))
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
    if isinstance(exc, (SettingsError, ExporterConfigError, *FATAL_ERRORS)):
        return str(exc)
    log.debug("unexpected failure", exc_info=exc)
    return f"unexpected {type(exc).__name__} (-v logs where)"


def serve_options(args: argparse.Namespace) -> ServeOptions:
    """The daemon's options from the merged settings (already checked by usage_problems)."""
    host, _, port = args.listen.rpartition(":")  # checked by usage_problems
    return ServeOptions(
        listen_host=host.strip("[]") or "127.0.0.1",
        port=int(port),
        textfile=args.textfile,
        resync_seconds=parse_window(args.resync_interval).seconds,
        sql_interval_seconds=parse_window(args.sql_interval).seconds,
        sql_binlog=args.sql_binlog,
        per_host=not args.totals_only,
        compat=args.compat_metrics,
        polling=args.polling,
        connected=ConnectedSetting(args.connected),
        connected_interval_seconds=parse_window(args.connected_interval).seconds,
        as_of=args.as_of,
        tls=load_tls(args.tls_cert, args.tls_key) if args.tls_cert else None,
        credentials=load_credentials(args.basic_auth_file) if args.basic_auth_file else None,
        exporters=args.exporters,
        nodeinfo_hosts=tuple(args.nodeinfo_host),
        node_names=node_names(args),
        prosody_version=args.prosody_version,
    )


def _ages(args: argparse.Namespace) -> tuple[Window, ...]:
    """The inactive windows asked for (--inactive-window)."""
    return parse_windows(args.inactive_window, DEFAULT_AGES)

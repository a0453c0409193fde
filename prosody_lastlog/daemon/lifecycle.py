"""`prosody-lastlog serve`: one full count, then live counts kept fresh by file watcher and timers, served."""

from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from exporters import DEFAULT_PORT, Exporter, build_exporters
from exporters.http import MetricsServer
from exporters.nodeinfo import NODEINFO_WINDOWS, public_hosts
from exporters.nodeinfo_pages import NodeInfoPages
from exporters.prometheus import ActiveUsersCollector
from exporters.textfile import write_atomically
from prosody_lastlog.core.connected import ConnectedSetting
from prosody_lastlog.core.counting import Snapshot, totals_only
from prosody_lastlog.core.windows import DEFAULT_AGES, Window
from prosody_lastlog.daemon.binlog_follow import BinlogFollow, binlog_sources
from prosody_lastlog.daemon.refresh import Refresher
from prosody_lastlog.daemon.state import LiveCounts
from prosody_lastlog.daemon.timer import PeriodicTimer
from prosody_lastlog.daemon.watcher import watchers_for
from prosody_lastlog.prosody.running import ConnectedProbe, VersionFinder
from prosody_lastlog.sources.kinds import Source
from prosody_lastlog.sources.plan import Plan

log = logging.getLogger(__name__)

_VERSION_INTERVAL = 3600.0  # seconds between asking which Prosody runs (for NodeInfo): it changes on upgrades only


@dataclass(frozen=True)
class ServeOptions:
    """How the daemon serves and refreshes; every field has the documented default."""

    listen_host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    textfile: Path | None = None
    resync_seconds: float = 3600.0  # full rescan of the file store, like the seed's hourly recount
    resync_jitter_seconds: float = 300.0
    sql_interval_seconds: float = 60.0
    sql_binlog: bool = False  # follow MariaDB's binary log for SQL sources' changes (binlog_follow)
    textfile_interval_seconds: float = 60.0
    connected: ConnectedSetting = ConnectedSetting.AUTO  # how connected users are found (off under as_of: a replay)
    connected_interval_seconds: float = 300.0  # each admin-socket probe adds a line to Prosody's log
    per_host: bool = True
    compat: bool = False
    polling: bool = False
    as_of: float | None = None  # pretend the clock read this at start (demos, replays of old data)
    tls: ssl.SSLContext | None = None
    credentials: Mapping[str, str] | None = field(default=None, repr=False)  # basic auth user -> password
    exporters: Mapping[str, Mapping[str, object]] = field(default_factory=dict, repr=False)  # [exporters.<name>]
    nodeinfo_hosts: tuple[str, ...] = ()  # hosts whose NodeInfo is served; none: NodeInfo off
    node_names: Mapping[str, str] = field(default_factory=dict)  # host -> NodeInfo's metadata.nodeName
    prosody_version: str | None = None  # NodeInfo's software.version where neither Prosody nor its package says


class Daemon:
    """Starts and stops every part in order: watchers, count, HTTP, timers, textfile.

    `exporters`, if given, are running push exporters to take over (a reload with the same settings keeps their
    queues); else they are made from the options.
    """

    def __init__(
        self,
        plan: Plan,
        *,
        windows: Sequence[Window],
        options: ServeOptions,
        exporters: Sequence[Exporter] | None = None,
        ages: Sequence[Window] = DEFAULT_AGES,
    ) -> None:
        self.options = options
        self.clock = _clock(options.as_of)
        file_sources = [s.name for s in plan.sources if s.counts_connected]
        self.live = LiveCounts(
            windows=windows,
            source_names=[s.name for s in plan.sources],
            file_sources=file_sources,
            ages=ages,
        )
        self._public_hosts = public_hosts(options.nodeinfo_hosts, plan.open_registration, options.node_names)
        self._declared_hosts = {host for host, _ in plan.known_hosts}  # counted once their source is
        self._version_finder = VersionFinder(plan.server, plan.installed, options.prosody_version)
        self.prosody_version: str | None = None  # the running Prosody's, for NodeInfo (asked only if served)
        detection = ConnectedSetting.OFF if options.as_of is not None or not file_sources else options.connected
        self.connected_probe = ConnectedProbe(plan.server, detection)
        self._declare_hosts(plan)
        self.refresher = Refresher(
            self.live,
            plan.sources,
            on_refresh=self._write_textfile,
            wall_clock=self.clock,
            reconcile_seconds=options.resync_seconds,
            binlog=options.sql_binlog,
        )
        self._binlog_follows = [BinlogFollow(self.refresher, s) for s in binlog_sources(plan, options.sql_binlog)]
        self.windows = windows
        self.exporters: list[Exporter] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(
            ActiveUsersCollector(
                self.live,
                windows=windows,
                per_host=options.per_host,
                compat=options.compat,
                clock=self.clock,
                exports=lambda: {exporter.name: exporter.status() for exporter in self.exporters},
            )
        )
        self._server: MetricsServer | None = None  # bound by serve(): a reload counts while the old one serves
        self._textfile_lock = threading.Lock()
        self._textfile_failing = False
        self._watchers = watchers_for(self.refresher, polling=options.polling)  # started by count()
        self._timers: list[PeriodicTimer] = []
        # Last: their threads start here (those handed over run already).
        if exporters is None:
            exporters = build_exporters(options.exporters)
            for exporter in exporters:
                exporter.start()
        self.exporters = list(exporters)

    @property
    def server(self) -> MetricsServer:
        """The HTTP server, once serve() has started it."""
        if self._server is None:
            raise RuntimeError("not serving yet")
        return self._server

    def start(self) -> None:
        """Counts everything once, then serves and keeps counting."""
        self.count()
        self.serve()

    def count(self) -> None:
        """Watches the data directories, then counts everything once (changes met meanwhile are read again)."""
        started = time.monotonic()
        self.refresher.progress = _progress_bar() if sys.stderr.isatty() else None
        self._probe_connected()
        self._find_version()
        try:
            for watcher in self._watchers:
                watcher.start()
            for follow in self._binlog_follows:
                follow.check()  # a log that cannot be followed is refused here, before the count
                follow.start()  # from where the full read finds the log
            self.refresher.refresh_all()
        except BaseException:
            self.stop(close_exporters=False)
            raise
        finally:
            if self.refresher.progress is not None:
                sys.stderr.write("\n")
            self.refresher.progress = None
        counts = self.live.counts(now=self.clock())
        log.info(
            "counted %d account(s) on %d host(s) in %.1f s",
            sum(c.activity_records for c in counts.values()),
            len(counts),
            time.monotonic() - started,
        )
        for host in sorted(self._public_hosts.keys() - counts.keys()):
            if host in self._declared_hosts:
                log.warning("nodeinfo: %s is not counted yet; its NodeInfo answers 503 until it is", host)
            else:
                log.error("nodeinfo: %s is not a host counted here; its NodeInfo is not served", host)
                del self._public_hosts[host]

    def serve(self) -> None:
        """Serves /metrics and keeps counting: timers, push exporters, textfile."""
        options = self.options
        try:
            self._server = MetricsServer(
                self.registry,
                self.live,
                host=options.listen_host,
                port=options.port,
                max_age_seconds=self._max_ages(),
                clock=self.clock,
                tls=options.tls,
                credentials=options.credentials,
                nodeinfo=self._nodeinfo_pages(),
            )
            self._server.start()
            self._publish()
            self._timers = self._make_timers()
            for timer in self._timers:
                timer.start()
        except BaseException:
            self.stop(close_exporters=False)
            raise

    def stop(self, *, close_exporters: bool = True) -> None:
        """Stops timers, watchers and the server, joining their threads; the push exporters too, unless a reload
        hands them to the next daemon."""
        self.refresher.stop()  # first: a refresh running would hold up its timer's thread for minutes
        for timer in self._timers:
            timer.stop()
        for watcher in self._watchers:
            watcher.stop()
        for follow in self._binlog_follows:
            follow.stop()
        self._timers, self._watchers, self._binlog_follows = [], [], []
        if close_exporters:
            for exporter in self.exporters:
                exporter.close()
        if self._server is not None:
            self._server.stop()

    def _declare_hosts(self, plan: Plan) -> None:
        for source in plan.sources:
            hosts = set(source.hosts)
            self.live.declare_hosts(source.name, [(h, s) for h, s in plan.known_hosts if h in hosts])

    def _max_ages(self) -> dict[str, float]:
        """Per source, how old its last successful refresh may be before /healthz fails (its kind says)."""
        return {source.name: source.cadence(self.options).max_age for source in self.refresher.sources}

    def _make_timers(self) -> list[PeriodicTimer]:
        options, timers = self.options, []
        for source in self.refresher.sources:
            cadence = source.cadence(options)
            refresh = partial(self._resync if cadence.logged else self.refresher.refresh, source)
            timers.append(PeriodicTimer(refresh, interval=cadence.interval, jitter=cadence.jitter))
        if options.textfile is not None:
            timers.append(PeriodicTimer(self._write_textfile, interval=options.textfile_interval_seconds))
        for exporter in self.exporters:
            timers.append(PeriodicTimer(partial(self._publish, exporter), interval=exporter.interval))
        if self.connected_probe.detection is not ConnectedSetting.OFF:
            timers.append(PeriodicTimer(self._probe_connected, interval=options.connected_interval_seconds))
        if self._public_hosts:
            timers.append(PeriodicTimer(self._find_version, interval=_VERSION_INTERVAL))
        return timers

    def _nodeinfo_pages(self) -> NodeInfoPages | None:
        """NodeInfo for the hosts opted in, if any: counts as of each request, NodeInfo's windows included."""
        if not self._public_hosts:
            return None
        live = self.live
        return NodeInfoPages(
            self._public_hosts,
            lambda host, now: live.counts(now=now, windows=NODEINFO_WINDOWS, hosts={host}).get(host),
            lambda: self.prosody_version,
            self.clock,
        )

    def _find_version(self) -> None:
        if self._public_hosts:
            self.prosody_version = self._version_finder.find()

    def _resync(self, source: Source) -> None:
        log.info("%s: full resync", source.name)
        started = time.monotonic()
        self.refresher.refresh(source)
        log.info("%s: full resync ended after %.2f s", source.name, time.monotonic() - started)

    def _publish(self, only: Exporter | None = None) -> None:
        """Hands the counts as of now to the push exporters (each queues them and sends on its own thread)."""
        now = self.clock()
        counts = self.live.counts(now=now)
        if not self.options.per_host:
            counts = totals_only(counts, self.windows)
        snapshot = Snapshot(now, counts, self.windows)
        for exporter in [only] if only else self.exporters:
            exporter.publish(snapshot)

    def _probe_connected(self) -> None:
        connected = self.connected_probe.probe()
        if connected != self.live.connected:
            self.live.set_connected(connected)

    def _write_textfile(self) -> None:
        path = self.options.textfile
        if path is None:
            return
        with self._textfile_lock:
            try:
                write_atomically(path, generate_latest(self.registry).decode("utf-8"))
            except OSError as exc:
                if not self._textfile_failing:  # once per state change
                    log.error("cannot write the textfile %s: %s", path, exc.strerror or exc)
                self._textfile_failing = True
                return
            if self._textfile_failing:
                log.warning("writing the textfile %s works again", path)
                self._textfile_failing = False


def _clock(as_of: float | None) -> Callable[[], float]:
    if as_of is None:
        return time.time
    offset = as_of - time.time()
    return lambda: time.time() + offset


def _progress_bar() -> Callable[[int], None]:
    """A one-line counter of files read, redrawn at most every half second (only on a terminal)."""
    last = [0.0]

    def show(files: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5:
            last[0] = now
            sys.stderr.write(f"\rprosody-lastlog: counting: {files:,} user files read")
            sys.stderr.flush()

    return show

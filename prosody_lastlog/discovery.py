"""Decides, in one place, which sources to read: an SQL URL, a data directory, or Prosody's own config."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prosody_lastlog.connected import ConnectedMode
from prosody_lastlog.database import SqlSettings, parse_sql_url
from prosody_lastlog.prosody_config import HostSettings, load_prosody_config
from prosody_lastlog.prosody_server import DEFAULT_PIDFILES, ProsodyServer
from prosody_lastlog.records import Store
from prosody_lastlog.sources import FileSource, Source, SqlSource

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/prosody/prosody.cfg.lua")
DEFAULT_DATA_DIR = Path("/var/lib/prosody")  # Debian's and most packages' data_path
_READABLE_DRIVERS = {"internal", "sql"}


@dataclass(frozen=True)
class SourceOptions:
    """What the user said about where the data is; at most one of config, data_dir, sql_url is acted on."""

    config: Path | None = None
    data_dir: Path | None = None
    sql_url: str | None = None
    sql_password: str | None = field(default=None, repr=False)
    sql_method: str = "auto"
    hosts: Collection[str] = ()
    store: Store | None = None
    count_disabled: bool = False
    scan_workers: int | None = None  # processes reading the file store; None: FileStoreReader's default
    admin_socket: Path | None = None  # where to ask the running Prosody; default from the config or data dir
    pidfile: Path | None = None  # the running Prosody's pidfile; default from the config, else the usual places


@dataclass
class Plan:
    """The sources to read, the hosts the config declares (reported with zeros when they have no data), and
    where the running Prosody can be asked who is connected."""

    sources: list[Source]
    known_hosts: list[tuple[str, Store]] = field(default_factory=list)
    server: ProsodyServer = field(default_factory=ProsodyServer)

    @property
    def has_file_source(self) -> bool:
        """Whether any source reads the file store (the only kind whose counts include connected users)."""
        return any(isinstance(source, FileSource) for source in self.sources)

    def connected_detection(self, mode: ConnectedMode) -> dict[str, ConnectedMode]:
        """How each source finds connected users, when the probe answered in `mode`."""
        return {s.name: mode if isinstance(s, FileSource) else ConnectedMode.NONE for s in self.sources}


def plan_sources(options: SourceOptions, *, environ: Mapping[str, str]) -> Plan:
    """--sql beats --data-dir beats the Prosody config (--config, $PROSODY_CONFIG, then the default path)."""
    if options.sql_url:
        settings = parse_sql_url(options.sql_url, password=options.sql_password)
        log.info("reading Prosody's SQL table in %s", settings.describe())
        sql = SqlSource(
            settings,
            hosts=options.hosts,
            store=options.store,
            count_disabled=options.count_disabled,
            method=options.sql_method,
        )
        return Plan([sql], server=_server(options, admin_socket=None, pidfile=None))
    data_dir = options.data_dir
    if data_dir is None:
        config = options.config or _config_from_environment(environ)
        if config is not None:
            return _plan_from_config(config, options, environ=environ)
        data_dir = DEFAULT_DATA_DIR
        log.info("no Prosody config found; reading the file store in %s", data_dir)
    else:
        log.info("reading Prosody's file store in %s", data_dir)
    files = FileSource(
        data_dir,
        hosts=options.hosts,
        store=options.store,
        count_disabled=options.count_disabled,
        workers=options.scan_workers,
    )
    return Plan([files], server=_server(options, admin_socket=data_dir / "prosody.sock", pidfile=None))


def _server(options: SourceOptions, *, admin_socket: Path | None, pidfile: Path | None) -> ProsodyServer:
    """Where the running Prosody is: what the user said, else what the config says, else the usual places."""
    pidfile = options.pidfile or pidfile
    return ProsodyServer(options.admin_socket or admin_socket, (pidfile,) if pidfile else DEFAULT_PIDFILES)


def _config_from_environment(environ: Mapping[str, str]) -> Path | None:
    if environ.get("PROSODY_CONFIG"):
        return Path(environ["PROSODY_CONFIG"])
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def _plan_from_config(config_path: Path, options: SourceOptions, *, environ: Mapping[str, str]) -> Plan:
    config = load_prosody_config(config_path, environ=environ)
    log.info("read Prosody config %s: data_path %s", config_path, config.data_path)
    for warning in config.warnings:
        log.warning("%s", warning)
    for host, reason in config.skipped.items():
        log.info("skipping %s: %s", host, reason)
    wanted = {host.lower() for host in options.hosts}
    file_hosts: dict[Store, list[str]] = {}
    sql_hosts: dict[tuple[SqlSettings, Store], list[str]] = {}
    plan = Plan([], server=_server(options, admin_socket=config.admin_socket, pidfile=config.pidfile))
    for host, settings in config.hosts.items():
        if wanted and host not in wanted:
            continue
        store = _store_for(settings, options.store)
        if store is None:
            log.info("skipping %s: %s is not enabled there", host, options.store)
            continue
        driver = settings.stores[store]
        if driver not in _READABLE_DRIVERS or (driver == "sql" and settings.sql is None):
            log.info(
                "skipping %s: its %s store uses storage %r, which cannot be read from outside", host, store, driver
            )
            continue
        if driver == "sql" and settings.sql is not None:
            sql_hosts.setdefault((settings.sql, store), []).append(host)
        else:
            file_hosts.setdefault(store, []).append(host)
        plan.known_hosts.append((host, store))
    for store, hosts in file_hosts.items():
        plan.sources.append(
            FileSource(
                config.data_path,
                hosts=hosts,
                store=store,
                count_disabled=options.count_disabled,
                workers=options.scan_workers,
            )
        )
    for (sql, store), hosts in sql_hosts.items():
        plan.sources.append(
            SqlSource(sql, hosts=hosts, store=store, count_disabled=options.count_disabled, method=options.sql_method)
        )
    return plan


def _store_for(settings: HostSettings, forced: Store | None) -> Store | None:
    """The store the server's own mod_measure_active_users reads: account_activity (13), then lastlog2, lastlog."""
    if forced is not None:
        return forced if forced in settings.stores else None
    return next((store for store in Store if store in settings.stores), None)

"""Decides, in one place, which sources to read: an SQL URL, a data directory, or Prosody's own config."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from prosody_lastlog.core.connected import ConnectedMode
from prosody_lastlog.core.model import ACCOUNTS, CountingChoice, Store
from prosody_lastlog.core.rules import HostConfig, InstalledProsody, Policy
from prosody_lastlog.prosody.config import HostSettings, load_prosody_config
from prosody_lastlog.prosody.install import find_installed
from prosody_lastlog.prosody.pathnames import DEFAULT_DATA_PATH
from prosody_lastlog.prosody.running import DEFAULT_PIDFILES, ProsodyServer
from prosody_lastlog.prosody.sql_settings import SqlSettings, parse_sql_url
from prosody_lastlog.sources.kinds import FileSource, Source

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/prosody/prosody.cfg.lua")
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
    """The sources to read, the hosts the config declares (reported with zeros when they have no data, and how they
    would be counted), where the running Prosody can be asked who is connected, the Prosody installed here, and
    the hosts whose config lets anyone register (None without a config to say)."""

    sources: list[Source]
    known_hosts: list[tuple[str, CountingChoice]] = field(default_factory=list)
    server: ProsodyServer = field(default_factory=ProsodyServer)
    installed: InstalledProsody = field(default_factory=InstalledProsody)
    open_registration: frozenset[str] | None = None

    @property
    def has_file_source(self) -> bool:
        """Whether any source's counts include connected users (the file store's), so that asking is worth it."""
        return any(source.counts_connected for source in self.sources)

    def connected_detection(self, mode: ConnectedMode) -> dict[str, ConnectedMode]:
        """How each source finds connected users, when the probe answered in `mode`."""
        return {s.name: mode if s.counts_connected else ConnectedMode.NONE for s in self.sources}


def plan_sources(
    options: SourceOptions,
    *,
    environ: Mapping[str, str],
    find_install: Callable[[Sequence[Path]], InstalledProsody] = lambda dirs: find_installed(config_dirs=dirs),
) -> Plan:
    """--sql beats --data-dir beats the Prosody config (--config, $PROSODY_CONFIG, then the default path).

    `find_install` looks for this machine's Prosody, given the module directories the config (or the data directory)
    names before Prosody's own."""
    if options.sql_url:
        settings = parse_sql_url(options.sql_url, password=options.sql_password)
        log.info("reading Prosody's SQL table in %s", settings.describe())
        policy = _policy(options, find_install(()))
        return Plan(
            [_sql_source(settings, options.hosts, policy, options.sql_method)],
            server=_server(options, admin_socket=None, pidfile=None),
            installed=policy.installed,
        )
    data_dir = options.data_dir
    if data_dir is None:
        config = options.config or _config_from_environment(environ)
        if config is not None:
            return _plan_from_config(config, options, environ=environ, find_install=find_install)
        data_dir = DEFAULT_DATA_PATH
        log.info("no Prosody config found; reading the file store in %s", data_dir)
    else:
        log.info("reading Prosody's file store in %s", data_dir)
    policy = _policy(options, find_install((data_dir / "custom_plugins",)))
    files = FileSource(data_dir, hosts=options.hosts, policy=policy, workers=options.scan_workers)
    server = _server(options, admin_socket=data_dir / "prosody.sock", pidfile=None)
    return Plan([files], server=server, installed=policy.installed)


def _policy(
    options: SourceOptions, installed: InstalledProsody, hosts: Mapping[str, HostConfig] | None = None
) -> Policy:
    return Policy(installed, options.store, options.count_disabled, hosts or {})


def _server(options: SourceOptions, *, admin_socket: Path | None, pidfile: Path | None) -> ProsodyServer:
    """Where the running Prosody is: what the user said, else what the config says, else the usual places."""
    pidfile = options.pidfile or pidfile
    return ProsodyServer(options.admin_socket or admin_socket, (pidfile,) if pidfile else DEFAULT_PIDFILES)


def _config_from_environment(environ: Mapping[str, str]) -> Path | None:
    if environ.get("PROSODY_CONFIG"):
        return Path(environ["PROSODY_CONFIG"])
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def _plan_from_config(
    config_path: Path,
    options: SourceOptions,
    *,
    environ: Mapping[str, str],
    find_install: Callable[[Sequence[Path]], InstalledProsody],
) -> Plan:
    """One source per place the hosts' data is in. A host whose stores all live in one place is counted from the
    store the rules choose among those it has data in; one whose stores are split over places, from the one store
    the rules choose among those its modules write."""
    config = load_prosody_config(config_path, environ=environ)
    log.info("read Prosody config %s: data_path %s", config_path, config.data_path)
    for warning in config.warnings:
        log.warning("%s", warning)
    for host, reason in config.skipped.items():
        log.info("skipping %s: %s", host, reason)
    installed = find_install(config.module_dirs)
    wanted = {host.lower() for host in options.hosts}
    hosts = {name: settings for name, settings in config.hosts.items() if not wanted or name in wanted}
    policy = _policy(options, installed, {name: _host_config(settings) for name, settings in hosts.items()})
    server = policy.server(())  # before any data is read: what the install says
    places: dict[SqlSettings | None, dict[str, HostConfig]] = {}  # None: the file store
    plan = Plan(
        [],
        server=_server(options, admin_socket=config.admin_socket, pidfile=config.pidfile),
        installed=installed,
        open_registration=frozenset(name for name, settings in hosts.items() if settings.open_registration),
    )
    for host, settings in hosts.items():
        choice = policy.choose(host, settings.stores.keys(), server)
        if choice is None:
            continue
        driver = settings.drivers[choice.store.value]
        if driver not in _READABLE_DRIVERS or (driver == "sql" and settings.sql is None):
            log.info(
                "skipping %s: its %s store uses storage %r, which cannot be read from outside",
                host,
                choice.store,
                driver,
            )
            continue
        host_config = policy.hosts[host]
        if any(settings.drivers[store.value] != driver for store in Store):
            host_config = replace(host_config, stores=frozenset([choice.store]))
        if settings.drivers[ACCOUNTS] != driver:
            host_config = replace(host_config, accounts_storage=settings.drivers[ACCOUNTS])
        places.setdefault(settings.sql if driver == "sql" else None, {})[host] = host_config
        plan.known_hosts.append((host, choice))
    for sql, place_hosts in places.items():
        place_policy = replace(policy, hosts=place_hosts)
        if sql is None:
            source: Source = FileSource(
                config.data_path, hosts=list(place_hosts), policy=place_policy, workers=options.scan_workers
            )
        else:
            source = _sql_source(sql, list(place_hosts), place_policy, options.sql_method)
        plan.sources.append(source)
    return plan


def _sql_source(settings: SqlSettings, hosts: Collection[str], policy: Policy, method: str) -> Source:
    """An SQL source. Its modules are imported here, when a database is to be read: a count of the file store
    (a cron job) loads no database code."""
    from prosody_lastlog.sources.sql_source import SqlSource  # noqa: PLC0415

    return SqlSource(settings, hosts=hosts, policy=policy, method=method)


def _host_config(settings: HostSettings) -> HostConfig:
    return HostConfig(
        auth_provider=settings.auth_provider,
        count_disabled=settings.count_disabled,
        is_component=settings.is_component,
        measures=settings.measures,
    )

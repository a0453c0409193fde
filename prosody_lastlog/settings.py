"""Settings from argv and the settings file (TOML), every problem at once: each key is a command-line option;
options given on the command line win.

# /etc/prosody-lastlog.toml
config = "/etc/prosody/prosody.cfg.lua"
windows = ["1d", "7d", "30d", "90d"]
listen = "127.0.0.1:10522"
textfile = "/var/lib/prometheus/node-exporter/prosody.prom"

[exporters.graphite]          # push exporters: one table each, settings as keywords of the exporter
host = "graphite.example"
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path

from exporters import DEFAULT_PORT
from exporters.nodeinfo import host_name
from exporters.secrets import read_secret
from prosody_lastlog.core.connected import ConnectedSetting
from prosody_lastlog.core.model import Store
from prosody_lastlog.core.windows import parse_window, parse_windows
from prosody_lastlog.prosody.config import ConfigError
from prosody_lastlog.sources.plan import SourceOptions
from prosody_lastlog.sources.results import SQL_METHODS, DatabaseError, DataDirError

_WHERE_THE_DATA_IS = {"config", "data_dir", "sql"}
# Failures the admin can fix from the message alone: reported as such, exit 1
FATAL_ERRORS = (DataDirError, DatabaseError, ConfigError, OSError, ValueError)


class SettingsError(Exception):
    """The file is unreadable or has problems; the message lists every problem, each naming its key."""


def _text(value: object) -> object:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _path(value: object) -> object:
    return Path(str(_text(value)))


def _flag(value: object) -> object:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _texts(value: object) -> object:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError("expected a list of strings")
    return value


def _windows(value: object) -> object:
    for window in _texts(value):  # type: ignore[attr-defined]
        parse_window(window)
    return value


def _duration(value: object) -> object:
    parse_window(str(_text(value)))
    return value


def _positive_int(value: object) -> object:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


def _one_of(*choices: str) -> Callable[[object], object]:
    def check(value: object) -> object:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return check


def _node_names(value: object) -> object:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError('expected a table of host = "name"')
    return [f"{host}={name}" for host, name in value.items()]


def _exporter_sections(value: object) -> object:
    if not isinstance(value, dict) or not all(isinstance(section, dict) for section in value.values()):
        raise ValueError("expected tables: [exporters.graphite], [exporters.influxdb], ...")
    return value


# key in the file -> (argparse destination, checker returning the value to use)
KEYS: dict[str, tuple[str, Callable[[object], object]]] = {
    "config": ("config", _path),
    "data_dir": ("data_dir", _path),
    "sql": ("sql", _text),
    "sql_password_file": ("sql_password_file", _path),
    "sql_method": ("sql_method", _one_of(*SQL_METHODS)),
    "hosts": ("host", _texts),
    "windows": ("window", _windows),
    "inactive_windows": ("inactive_window", _windows),
    "store": ("store", _one_of(*(s.value for s in Store))),
    "count_disabled": ("count_disabled", _flag),
    "scan_workers": ("scan_workers", _positive_int),
    "totals_only": ("totals_only", _flag),
    "compat_metrics": ("compat_metrics", _flag),
    "listen": ("listen", _text),
    "textfile": ("textfile", _path),
    "resync_interval": ("resync_interval", _duration),
    "sql_interval": ("sql_interval", _duration),
    "sql_binlog": ("sql_binlog", _flag),
    "polling": ("polling", _flag),
    "connected": ("connected", _one_of(*(d.value for d in ConnectedSetting))),
    "connected_interval": ("connected_interval", _duration),
    "admin_socket": ("admin_socket", _path),
    "pidfile": ("pidfile", _path),
    "tls_cert": ("tls_cert", _path),
    "tls_key": ("tls_key", _path),
    "basic_auth_file": ("basic_auth_file", _path),
    "nodeinfo_hosts": ("nodeinfo_host", _texts),
    "nodeinfo_node_names": ("nodeinfo_node_name", _node_names),
    "prosody_version": ("prosody_version", _text),
    "exporters": ("exporters", _exporter_sections),
}


def read_settings_file(path: Path) -> dict[str, object]:
    """The file's settings by argparse destination; raises SettingsError naming every bad key at once."""
    import tomllib  # noqa: PLC0415  # here: most commands read no settings file

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
    settings: dict[str, object] = {}
    problems = []
    for key, value in data.items():
        if key not in KEYS:
            problems.append(f"{path}: {key}: unknown setting (known: {', '.join(sorted(KEYS))})")
            continue
        destination, check = KEYS[key]
        try:
            settings[destination] = check(value)
        except ValueError as exc:
            problems.append(f"{path}: {key}: {exc}")
    if problems:
        raise SettingsError("\n".join(problems))
    return settings


def with_settings_file(args: argparse.Namespace, given: Mapping[str, object]) -> argparse.Namespace:
    """Fills every option not given on the command line from --config-file (an option given wins, even when
    given its default value); `given`: the options the command line gives, as parsed without defaults."""
    if args.config_file is None:
        return args
    given = dict(given)
    if given.keys() & _WHERE_THE_DATA_IS:  # then the file's say on where the data is does not count
        given.update(
            dict.fromkeys(_WHERE_THE_DATA_IS if "sql" in given else {*_WHERE_THE_DATA_IS, "sql_password_file"})
        )
    merged = vars(args).copy()
    for destination, value in read_settings_file(args.config_file).items():
        if destination in merged and destination not in given:
            merged[destination] = value
    return argparse.Namespace(**merged)


def usage_problems(args: argparse.Namespace) -> list[str]:
    """Every problem of the merged options that argparse cannot see, one message each."""
    problems = []
    for option in ("window", "inactive_window"):
        try:
            parse_windows(getattr(args, option, []))
        except ValueError as exc:
            problems.append(f"--{option.replace('_', '-')}: {exc}")
    for option in ("older_than", "never_used_for"):
        if getattr(args, option, None) is not None:
            try:
                parse_window(getattr(args, option))
            except ValueError as exc:
                problems.append(f"--{option.replace('_', '-')}: {exc}")
    if sum(bool(x) for x in (args.sql, args.data_dir, args.config)) > 1:
        problems.append("--config, --data-dir and --sql each say where the data is: give at most one")
    if args.sql_password_file and not args.sql:
        problems.append("--sql-password-file goes with --sql")
    if args.command == "serve":
        problems.extend(_serve_problems(args))
    problems.extend(_nodeinfo_problems(args))
    return problems


_MAX_NODE_NAME = 200  # characters


def node_names(args: argparse.Namespace) -> dict[str, str]:
    """--nodeinfo-node-name HOST=NAME, by host (lower-case, as Prosody names hosts)."""
    names = {}
    for item in getattr(args, "nodeinfo_node_name", []):
        host, _, name = item.partition("=")
        names[host.strip().lower()] = name.strip()
    return names


def _nodeinfo_problems(args: argparse.Namespace) -> list[str]:
    problems = []
    for item in getattr(args, "nodeinfo_node_name", []):
        host, sep, name = item.partition("=")
        if not sep or not host.strip() or not name.strip():
            problems.append(f"--nodeinfo-node-name wants HOST=NAME, not {item!r}")
        elif len(name) > _MAX_NODE_NAME or not name.isprintable():
            problems.append(f"--nodeinfo-node-name {host}: a name of printable characters, at most {_MAX_NODE_NAME}")
    version = getattr(args, "prosody_version", None)
    if version is not None and (not version.strip() or not version.isprintable() or len(version) > 100):
        problems.append(f"--prosody-version: expected a version such as 13.0.1, not {version!r}")
    for host in getattr(args, "nodeinfo_host", []):
        if host_name(host) is None:
            problems.append(f"--nodeinfo-host wants a host name as in Prosody's config (example.org), not {host!r}")
    if getattr(args, "format", None) == "nodeinfo":
        if len(args.host) != 1 or host_name(args.host[0]) is None:
            problems.append("--format nodeinfo is the document of one host: give exactly one --host, a host name")
        problems += [f"--{option} does not go with --format nodeinfo" for option in ("cohorts", "totals-only")
                     if getattr(args, option.replace("-", "_"))]  # fmt: skip
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


def source_options(args: argparse.Namespace) -> SourceOptions:
    """Where the data is and how to count it, for the sources' plan."""
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

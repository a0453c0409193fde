"""The settings file (TOML) for `serve` and `count`: each key is a command-line option; flags given win.

# /etc/prosody-lastlog.toml
config = "/etc/prosody/prosody.cfg.lua"
windows = ["1d", "7d", "30d", "90d"]
listen = "127.0.0.1:10522"
textfile = "/var/lib/prometheus/node-exporter/prosody.prom"

[exporters.graphite]          # push exporters: one table each, settings as keywords of the exporter
host = "graphite.example"
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

from prosody_lastlog.core.model import Store
from prosody_lastlog.core.windows import parse_window
from prosody_lastlog.prosody.running import Detection
from prosody_lastlog.sources.sql import METHODS


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
    "sql_method": ("sql_method", _one_of(*METHODS)),
    "hosts": ("host", _texts),
    "windows": ("window", _windows),
    "store": ("store", _one_of(*(s.value for s in Store))),
    "count_disabled": ("count_disabled", _flag),
    "scan_workers": ("scan_workers", _positive_int),
    "totals_only": ("totals_only", _flag),
    "compat_metrics": ("compat_metrics", _flag),
    "listen": ("listen", _text),
    "textfile": ("textfile", _path),
    "resync_interval": ("resync_interval", _duration),
    "sql_interval": ("sql_interval", _duration),
    "polling": ("polling", _flag),
    "connected": ("connected", _one_of(*(d.value for d in Detection))),
    "connected_interval": ("connected_interval", _duration),
    "admin_socket": ("admin_socket", _path),
    "pidfile": ("pidfile", _path),
    "tls_cert": ("tls_cert", _path),
    "tls_key": ("tls_key", _path),
    "basic_auth_file": ("basic_auth_file", _path),
    "exporters": ("exporters", _exporter_sections),
}


def read_settings_file(path: Path) -> dict[str, object]:
    """The file's settings by argparse destination; raises SettingsError naming every bad key at once."""
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

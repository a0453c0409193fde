"""The configuration `serve` runs with in the soak: a Prosody config naming every source, and a TOML settings file.

One Prosody config lets one `serve` read all sources: the hosts of the real Prosody and the generated hosts use
the file store (its data_path), while the SQL hosts say `storage = "sql"` with their own `sql` table, pointing at
the private PostgreSQL and MariaDB (prosody_lastlog/sources/plan.py plans one source per store and SQL server).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.integration.live_prosody import lua_string

BAD_RELOADS = ("unknown-setting", "broken-prosody-config", "bad-exporter-port")


@dataclass(frozen=True)
class SqlHosts:
    """SQL-stored hosts on one server: Prosody's driver name, its port and superuser."""

    driver: str
    port: int
    username: str
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class ServeConfig:
    """Where the two files are and what they say."""

    prosody_config: Path
    settings: Path
    data_path: Path
    pidfile: Path
    file_hosts: tuple[str, ...]
    sql: tuple[SqlHosts, ...]
    listen_port: int
    textfile: Path
    carbon_port: int
    influx_url: str
    sql_interval: str = "2s"
    resync_interval: str = "30s"

    def prosody_text(self, *, broken: bool = False) -> str:
        """The Prosody config `serve` reads (never run by Prosody itself)."""
        lines = [
            "-- Written by the soak (soak/config.py): the Prosody config `prosody-lastlog serve` reads.",
            f"data_path = {lua_string(str(self.data_path))}",
            f"pidfile = {lua_string(str(self.pidfile))}",
            'modules_enabled = { "lastlog2" }',
        ]
        lines += [f"VirtualHost {lua_string(host)}" for host in self.file_hosts]
        for server in self.sql:
            for host in server.hosts:
                lines += [
                    f"VirtualHost {lua_string(host)}",
                    '\tstorage = "sql"',
                    f'\tsql = {{ driver = {lua_string(server.driver)}, database = "prosody", '
                    f'host = "127.0.0.1", port = {server.port}, username = {lua_string(server.username)} }}',
                ]
        if broken:
            lines.append("VirtualHost (  -- a syntax error, as a half-edited config has")
        return "\n".join(lines) + "\n"

    def settings_text(self, *, generation: int = 0, bad: str | None = None) -> str:
        """The TOML settings file; `generation` varies a harmless setting so each good reload changes something."""
        lines = [
            f"config = {_toml(str(self.prosody_config))}",
            f'listen = "127.0.0.1:{self.listen_port}"',
            f"textfile = {_toml(str(self.textfile))}",
            f'resync_interval = "{self.resync_interval}"',
            f'sql_interval = "{self.sql_interval}"',
            f'connected_interval = "{5 + generation % 2}s"',
        ]
        if bad == "unknown-setting":
            lines.append("no_such_setting = 1")
        carbon_port = 70000 if bad == "bad-exporter-port" else self.carbon_port
        exporters: Mapping[str, Sequence[str]] = {
            # resend: carbon drops the last second or so of points it acknowledged when it stops (soak/README.md)
            "graphite": [f"port = {carbon_port}", "interval = 1", "timeout = 2.0", "resend = 2"],
            "influxdb": [f"url = {_toml(self.influx_url)}", "interval = 1", "timeout = 2.0"],
        }
        for name, keys in exporters.items():
            lines += ["", f"[exporters.{name}]", *keys]
        return "\n".join(lines) + "\n"

    def write(self, *, generation: int = 0, bad: str | None = None) -> None:
        """Writes both files atomically: good ones, or the `bad` variant (one of BAD_RELOADS)."""
        _replace(self.prosody_config, self.prosody_text(broken=bad == "broken-prosody-config"))
        _replace(self.settings, self.settings_text(generation=generation, bad=bad))


def _toml(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _replace(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)

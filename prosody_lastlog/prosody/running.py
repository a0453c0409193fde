"""Finds who is connected to the running Prosody: its admin socket (exact, admin_socket.py), or its start time
(for the heuristic); and which version it is. Usernames read here stay in memory; they are never logged or exported.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prosody_lastlog.core.connected import NOBODY, ConnectedMode, ConnectedSetting, ConnectedUsers
from prosody_lastlog.core.rules import InstalledProsody
from prosody_lastlog.prosody.admin_socket import AdminSocketError, ask_connected_users, ask_version
from prosody_lastlog.prosody.install import read_version_file

log = logging.getLogger(__name__)

# Where packages put mod_posix's pidfile when the config does not say (Debian, and the older /var/run link).
DEFAULT_PIDFILES = (Path("/run/prosody/prosody.pid"), Path("/var/run/prosody/prosody.pid"))


@dataclass(frozen=True)
class ProsodyServer:
    """Where the running Prosody can be asked (admin socket) or observed (pidfile)."""

    admin_socket: Path | None = None
    pidfiles: Sequence[Path] = DEFAULT_PIDFILES  # the first that exists is used


def prosody_start_time(pidfile: Path) -> float | None:
    """When the Prosody process named in `pidfile` started; None if the file is gone or that process is not running."""
    try:
        pid = int(pidfile.read_text(encoding="ascii").split()[0])
        changed = pidfile.stat().st_mtime
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a stale pidfile: Prosody stopped or crashed
    except PermissionError:
        pass  # running, as another user
    return _process_start(pid) or changed  # mod_posix writes the pidfile as it starts


def _process_start(pid: int) -> float | None:
    """The process start time from /proc (Linux), or None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
        )
        ticks = int(stat.rpartition(")")[2].split()[19])  # field 22, starttime, counted after the "(comm)" field
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class ConnectedProbe:
    """Finds who is connected the best way available now, logging (once per change) which way that is."""

    def __init__(
        self,
        server: ProsodyServer,
        detection: ConnectedSetting = ConnectedSetting.AUTO,
        *,
        ask: Callable[[Path], dict[str, frozenset[str]]] = ask_connected_users,
        start_time: Callable[[Path], float | None] = prosody_start_time,
    ) -> None:
        self.server = server
        self.detection = detection
        self._ask = ask
        self._start_time = start_time
        self._last_note: str | None = None

    def probe(self) -> ConnectedUsers:
        """The current answer; never raises for an unreachable Prosody (the mode then says how it was found)."""
        socket_error = None
        if (
            self.detection in (ConnectedSetting.AUTO, ConnectedSetting.ADMIN_SOCKET)
            and self.server.admin_socket is not None
        ):
            try:
                users = self._ask(self.server.admin_socket)
            except AdminSocketError as exc:
                socket_error = str(exc)
            else:
                self._note(f"asking Prosody's admin socket {self.server.admin_socket}")
                return ConnectedUsers(ConnectedMode.ADMIN_SOCKET, users)
        if self.detection in (ConnectedSetting.AUTO, ConnectedSetting.HEURISTIC):
            pidfile = next((path for path in self.server.pidfiles if path.exists()), None)
            if pidfile is not None:
                started = self._start_time(pidfile)
                reason = f" ({socket_error})" if socket_error else ""
                self._note(f"a login with no later logout since Prosody started (pidfile {pidfile}){reason}")
                return ConnectedUsers(ConnectedMode.HEURISTIC, prosody_started=_whole_second(started))
        if self.detection is ConnectedSetting.OFF:
            self._note("off")
        else:
            self._note(f"not detected ({socket_error or 'no admin socket answered and no Prosody pidfile found'})")
        return NOBODY

    def _note(self, how: str) -> None:
        if how != self._last_note:
            log.info("connected users: %s", how)
            self._last_note = how


class VersionFinder:
    """Which Prosody version to publish (NodeInfo's software.version): the running server's, asked through its admin
    socket; else the installed package's (its prosody.version file, read again each time: an upgrade changes it);
    else `setting`; else None, never a guess. Logs (once per change) where it came from."""

    def __init__(
        self,
        server: ProsodyServer,
        installed: InstalledProsody,
        setting: str | None = None,
        *,
        ask: Callable[[Path], str] = ask_version,
    ) -> None:
        self._socket = server.admin_socket
        self._version_file = Path(installed.version_file) if installed.version_file else None
        self._setting = setting
        self._ask = ask
        self._last_note: str | None = None

    def find(self) -> str | None:
        """The version, by the first way that answers."""
        socket_error = "no admin socket"
        if self._socket is not None:
            try:
                return self._found(self._ask(self._socket), f"the running Prosody, asked at {self._socket}")
            except AdminSocketError as exc:
                socket_error = str(exc)
        if self._version_file is not None:
            version = read_version_file(self._version_file)
            if version:
                return self._found(version, f"the installed package's {self._version_file} ({socket_error})")
        if self._setting:
            how = f"the prosody_version setting ({socket_error}; no installed Prosody)"
            return self._found(self._setting, how, from_setting=True)
        self._note(
            f"Prosody's version is not known ({socket_error}; no installed Prosody found; no prosody_version setting)",
            logging.ERROR,
        )
        return None

    def _found(self, version: str, how: str, *, from_setting: bool = False) -> str:
        if self._setting and not from_setting:  # said, so as not to surprise whoever set it
            self._note(f"Prosody {version}, from {how}; the prosody_version setting is not used", logging.WARNING)
        else:
            self._note(f"Prosody {version}, from {how}", logging.INFO)
        return version

    def _note(self, text: str, level: int) -> None:
        if text != self._last_note:
            log.log(level, "version: %s", text)
            self._last_note = text


def _whole_second(started: float | None) -> int | None:
    # Prosody stamps logins with os.time(), whole seconds: a login in the second Prosody started counts.
    return None if started is None else math.floor(started)

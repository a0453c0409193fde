"""Asks the running Prosody who is connected: its admin socket (exact), or its start time (for the heuristic).

The admin socket is the one `prosodyctl shell` uses (mod_admin_socket, `prosody.sock` in data_path): an XML
stream in the `xmpp:prosody.im/admin` namespace carrying `<repl-input>` lines and `<repl-output>`/`<repl-result>`
answers. Connecting needs write access to the socket, which Prosody creates 0750 or 0755: in practice the prosody
user (or root).
Usernames read here stay in memory; they are never logged or exported.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError, XMLPullParser
from xml.sax.saxutils import escape

from prosody_lastlog.core.connected import NOBODY, ConnectedMode, ConnectedUsers

log = logging.getLogger(__name__)

# Where packages put mod_posix's pidfile when the config does not say (Debian, and the older /var/run link).
DEFAULT_PIDFILES = (Path("/run/prosody/prosody.pid"), Path("/var/run/prosody/prosody.pid"))
_STREAM_OPEN = (
    b"<?xml version='1.0'?><stream:stream xmlns='xmpp:prosody.im/admin' "
    b"xmlns:stream='http://etherx.jabber.org/streams' xml:lang='en' version='1.0'>"
)
# Runs in Prosody's shell: one output line "host<TAB>user" per user with a bound session (hosts[h].sessions,
# which is what mod_measure_active_users checks), then the number of lines as the result. Nodeprep and
# nameprep forbid tabs and newlines in both parts.
_LIST_SESSIONS = (
    ">local o = {} for h, host in pairs(prosody.hosts) do for u in pairs(host.sessions or {}) do "
    'o[#o + 1] = h .. "\\t" .. u end end print(table.concat(o, "\\n")) return #o'
)
_MAX_ANSWER_BYTES = 64 * 1024 * 1024


class AdminSocketError(Exception):
    """The admin socket could not be asked, or answered something unexpected."""


class Detection(StrEnum):
    """The `connected` setting: which ways of finding connected users may be used."""

    AUTO = "auto"  # the admin socket if it answers, else the heuristic if Prosody's pidfile is found
    ADMIN_SOCKET = "admin-socket"
    HEURISTIC = "heuristic"
    OFF = "off"


@dataclass(frozen=True)
class ProsodyServer:
    """Where the running Prosody can be asked (admin socket) or observed (pidfile)."""

    admin_socket: Path | None = None
    pidfiles: Sequence[Path] = DEFAULT_PIDFILES  # the first that exists is used


def ask_connected_users(path: Path, *, timeout: float = 5.0) -> dict[str, frozenset[str]]:
    """The users with a bound session, per host, as the running Prosody lists them through its admin socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            connection.connect(str(path))
            connection.sendall(_STREAM_OPEN + b"<repl-input>" + escape(_LIST_SESSIONS).encode() + b"</repl-input>")
            lines, expected = _read_answer(connection)
            connection.sendall(b"</stream:stream>")
    except OSError as exc:
        raise AdminSocketError(_why_not(path, exc)) from exc
    if len(lines) != expected:
        raise AdminSocketError(f"{path} listed {len(lines)} session(s) but counted {expected}")
    users: dict[str, set[str]] = {}
    for line in lines:
        host, _, user = line.partition("\t")
        users.setdefault(host, set()).add(user)
    return {host: frozenset(names) for host, names in users.items()}


def _why_not(path: Path, error: OSError) -> str:
    """Why the admin socket could not be asked, in the words an admin acts on."""
    if error.errno in (errno.ENOENT, errno.ECONNREFUSED):
        # Prosody 13 removes its socket when it stops; a socket left by a crash refuses connections.
        return f"Prosody is not running (no Prosody answers at {path})"
    if error.errno == errno.EACCES:
        return (
            f"no permission to connect to {path}: it takes write access to the socket, which Prosody makes for its "
            "own user and group only (run as the prosody user, or see docs/troubleshooting.md)"
        )
    return f"cannot ask {path}: {error.strerror or error}"


def _read_answer(connection: socket.socket) -> tuple[list[str], int]:
    parser: XMLPullParser[Element] = XMLPullParser(events=("end",))
    output: list[str] = []
    received = 0
    while True:
        chunk = connection.recv(65536)
        if not chunk:
            raise AdminSocketError("the admin socket closed the stream before answering")
        received += len(chunk)
        if received > _MAX_ANSWER_BYTES:
            raise AdminSocketError("the admin socket's answer is too large")
        try:
            parser.feed(chunk)
            events = list(parser.read_events())
        except ParseError as exc:
            raise AdminSocketError(f"the admin socket sent invalid XML: {exc}") from exc
        for event in events:
            element = event[-1]
            if not isinstance(element, Element):
                continue
            name = element.tag.rpartition("}")[2]
            if name == "repl-output":
                output.extend(line for line in (element.text or "").split("\n") if line)
            elif name == "repl-result":
                return output, _result_count(element.get("type"), element.text or "")
            elif name == "error":  # a stream error: e.g. not-authorized
                raise AdminSocketError("the admin socket refused the request")


def _result_count(kind: str | None, text: str) -> int:
    if kind == "error":
        raise AdminSocketError(f"Prosody's shell answered an error: {text[:200]}")
    prefix = "Result: "
    if not text.startswith(prefix) or not text[len(prefix) :].strip().isdigit():
        raise AdminSocketError(f"unexpected answer from Prosody's shell: {text[:200]!r}")
    return int(text[len(prefix) :])


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
        detection: Detection = Detection.AUTO,
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
        if self.detection in (Detection.AUTO, Detection.ADMIN_SOCKET) and self.server.admin_socket is not None:
            try:
                users = self._ask(self.server.admin_socket)
            except AdminSocketError as exc:
                socket_error = str(exc)
            else:
                self._note(f"asking Prosody's admin socket {self.server.admin_socket}")
                return ConnectedUsers(ConnectedMode.ADMIN_SOCKET, users)
        if self.detection in (Detection.AUTO, Detection.HEURISTIC):
            pidfile = next((path for path in self.server.pidfiles if path.exists()), None)
            if pidfile is not None:
                started = self._start_time(pidfile)
                reason = f" ({socket_error})" if socket_error else ""
                self._note(f"a login with no later logout since Prosody started (pidfile {pidfile}){reason}")
                return ConnectedUsers(ConnectedMode.HEURISTIC, prosody_started=_whole_second(started))
        if self.detection is Detection.OFF:
            self._note("off")
        else:
            self._note(f"not detected ({socket_error or 'no admin socket answered and no Prosody pidfile found'})")
        return NOBODY

    def _note(self, how: str) -> None:
        if how != self._last_note:
            log.info("connected users: %s", how)
            self._last_note = how


def _whole_second(started: float | None) -> int | None:
    # Prosody stamps logins with os.time(), whole seconds: a login in the second Prosody started counts.
    return None if started is None else math.floor(started)

"""Asks the running Prosody over its admin socket which users have a session, and which version it is.

The admin socket is the one `prosodyctl shell` uses (mod_admin_socket, `prosody.sock` in data_path): an XML
stream in the `xmpp:prosody.im/admin` namespace carrying `<repl-input>` lines and `<repl-output>`/`<repl-result>`
answers. Connecting needs write access to the socket, which Prosody creates 0750 or 0755: in practice the prosody
user (or root). Sockets and the XML parser are imported at the first question: most commands never ask.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

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
# One output line, `prosody.version` as the running server has it (0.12 and 13 alike), and 1 as the result.
_VERSION = ">print(prosody.version) return 1"
_MAX_ANSWER_BYTES = 64 * 1024 * 1024
_MAX_VERSION_CHARACTERS = 100


class AdminSocketError(Exception):
    """The admin socket could not be asked, or answered something unexpected."""


def ask_connected_users(path: Path, *, timeout: float = 5.0) -> dict[str, frozenset[str]]:
    """The users with a bound session, per host, as the running Prosody lists them through its admin socket."""
    lines = _ask(path, _LIST_SESSIONS, timeout=timeout, what="session(s)")
    users: dict[str, set[str]] = {}
    for line in lines:
        host, _, user = line.partition("\t")
        users.setdefault(host, set()).add(user)
    return {host: frozenset(names) for host, names in users.items()}


def ask_version(path: Path, *, timeout: float = 5.0) -> str:
    """The running Prosody's version (`prosody.version`: "0.12.3", "13.0.1", or a build's own), as it answers
    through its admin socket."""
    lines = _ask(path, _VERSION, timeout=timeout, what="version line(s)")
    version = lines[0].strip() if len(lines) == 1 else ""
    if not version or len(version) > _MAX_VERSION_CHARACTERS or not version.isprintable():
        raise AdminSocketError(f"{path} answered an unexpected version: {version[:_MAX_VERSION_CHARACTERS]!r}")
    return version


def _ask(path: Path, lua: str, *, timeout: float, what: str) -> list[str]:
    """The output lines of one line of Lua run in Prosody's shell, which must return how many lines it printed."""
    import html  # noqa: PLC0415
    import socket  # noqa: PLC0415

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            connection.connect(str(path))
            connection.sendall(
                _STREAM_OPEN + b"<repl-input>" + html.escape(lua, quote=False).encode() + b"</repl-input>"
            )
            lines, expected = _read_answer(connection)
            connection.sendall(b"</stream:stream>")
    except OSError as exc:
        raise AdminSocketError(_why_not(path, exc)) from exc
    if len(lines) != expected:
        raise AdminSocketError(f"{path} listed {len(lines)} {what} but counted {expected}")
    return lines


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
    from xml.etree.ElementTree import Element, ParseError, XMLPullParser  # noqa: PLC0415

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

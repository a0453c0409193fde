"""Minimal raw-socket clients for a real Prosody: an XMPP c2s login (RFC 6120) and its admin socket.

Just enough protocol for tests: plaintext stream, SASL PLAIN, stream restart, resource binding, initial presence,
and a clean close; `admin_shell` runs one line in Prosody's shell (mod_admin_socket, as `prosodyctl shell` does).
Standard library only.
"""

from __future__ import annotations

import base64
import socket
from pathlib import Path
from types import TracebackType
from xml.etree.ElementTree import Element, XMLPullParser
from xml.sax.saxutils import escape, quoteattr

STREAM_NS = "http://etherx.jabber.org/streams"
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND_NS = "urn:ietf:params:xml:ns:xmpp-bind"
ADMIN_NS = "xmpp:prosody.im/admin"
REGISTER_NS = "jabber:iq:register"


class XmppError(Exception):
    """The server refused a step, closed the stream, or answered something unexpected."""


class _StreamReader:
    """Reads the top-level children of one XML stream from a socket, one element at a time."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection
        self._parser: XMLPullParser[Element] = XMLPullParser(events=("start", "end"))
        self._depth = 0
        self._ready: list[Element] = []
        self.closed = False  # the peer sent its closing stream tag, or EOF

    def next(self) -> Element:
        """The next complete top-level element; raises XmppError when the stream ends first."""
        while not self._ready:
            if self.closed:
                raise XmppError("the stream was closed")
            self._feed()
        return self._ready.pop(0)

    def until_closed(self) -> list[Element]:
        """Every remaining top-level element, read until the peer closes its stream."""
        while not self.closed:
            self._feed()
        ready, self._ready = self._ready, []
        return ready

    def _feed(self) -> None:
        chunk = self._connection.recv(65536)
        if not chunk:
            self.closed = True
            return
        self._parser.feed(chunk)
        for item in self._parser.read_events():
            event, element = item[0], item[-1]
            if not isinstance(element, Element):
                continue
            if event == "start":
                self._depth += 1
                continue
            self._depth -= 1
            if self._depth == 1:
                self._ready.append(element)
            elif self._depth == 0:
                self.closed = True


def _local(element: Element) -> tuple[str, str]:
    """(namespace, local name) of an element."""
    if not element.tag.startswith("{"):
        return "", element.tag
    namespace, _, name = element.tag[1:].partition("}")
    return namespace, name


def _stream_error(element: Element) -> str:
    conditions = [_local(child)[1] for child in element if _local(child)[1] != "text"]
    return "stream error: " + (", ".join(conditions) or "unknown")


class XmppClient:
    """One c2s connection to 127.0.0.1 that logs a user in and keeps the session until `close`."""

    def __init__(self, port: int, domain: str, *, timeout: float = 5.0) -> None:
        self.domain = domain
        self.jid: str | None = None  # the bound full JID, once logged in
        self._connection = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._reader = _StreamReader(self._connection)
        self._opened = False  # whether we opened a stream (and so should close it)

    def __enter__(self) -> XmppClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def login(self, user: str, password: str, resource: str = "test") -> str:
        """Authenticates, binds `resource` and sends initial presence, like a client going online; returns the JID."""
        self.authenticate(user, password)
        jid = self.bind(resource)
        self._send("<presence/>")
        return jid

    def authenticate(self, user: str, password: str) -> None:
        """Opens the stream and authenticates with SASL PLAIN; the session has no resource yet."""
        features = self._open_stream()
        mechanisms = {m.text for m in features.iter(f"{{{SASL_NS}}}mechanism")}
        if "PLAIN" not in mechanisms:
            raise XmppError(f"the server does not offer SASL PLAIN (offers {sorted(filter(None, mechanisms))})")
        secret = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self._send(f"<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{secret}</auth>")
        answer = self._expect_element()
        if _local(answer) != (SASL_NS, "success"):
            raise XmppError(f"authentication failed: {[_local(c)[1] for c in answer] or _local(answer)[1]}")
        self._reader = _StreamReader(self._connection)  # the stream restarts after SASL

    def register(self, user: str, password: str) -> bool:
        """Opens the stream and registers an account in-band (XEP-0077); whether the server took it (False: it
        refused, e.g. registration is closed)."""
        self._open_stream()
        self._send(
            f"<iq type='set' id='register-1'><query xmlns='{REGISTER_NS}'><username>{escape(user)}</username>"
            f"<password>{escape(password)}</password></query></iq>"
        )
        answer = self._expect_element()
        if answer.get("id") != "register-1" or answer.get("type") not in ("result", "error"):
            raise XmppError(f"unexpected answer to a registration: {_local(answer)[1]} {answer.attrib}")
        return answer.get("type") == "result"

    def bind(self, resource: str) -> str:
        """Restarts the stream and binds `resource` (RFC 6120 section 7); returns the bound full JID."""
        features = self._open_stream()
        if features.find(f"{{{BIND_NS}}}bind") is None:
            raise XmppError("the server does not offer resource binding")
        self._send(
            f"<iq type='set' id='bind-1'><bind xmlns='{BIND_NS}'><resource>{escape(resource)}</resource></bind></iq>"
        )
        answer = self._expect_element()
        jid = answer.findtext(f"{{{BIND_NS}}}bind/{{{BIND_NS}}}jid")
        if answer.get("type") != "result" or not jid:
            raise XmppError(f"resource binding failed (iq type {answer.get('type')!r})")
        self.jid = jid
        return jid

    def close(self) -> None:
        """Closes the stream like a client logging out, waits for the server's closing tag, closes the socket."""
        try:
            if self._opened and not self._reader.closed:
                self._send("<presence type='unavailable'/></stream:stream>")
                self._reader.until_closed()
        except OSError:
            pass  # already gone: nothing left to close
        finally:
            self._connection.close()

    def drop(self) -> None:
        """Cuts the TCP connection without closing the stream, like a client that lost its network."""
        self._connection.shutdown(socket.SHUT_RDWR)
        self._connection.close()

    def closed_by_server(self) -> list[str]:
        """Waits for the server to close the stream; returns the conditions of the stream errors it sent."""
        return [
            _local(child)[1]
            for element in self._reader.until_closed()
            if _local(element) == (STREAM_NS, "error")
            for child in element
            if _local(child)[1] != "text"
        ]

    def _open_stream(self) -> Element:
        self._opened = True
        self._send(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            f"xmlns:stream='{STREAM_NS}' to={quoteattr(self.domain)} version='1.0' xml:lang='en'>"
        )
        features = self._expect_element()
        if _local(features) != (STREAM_NS, "features"):
            raise XmppError(f"expected stream features, got {_local(features)[1]}")
        return features

    def _expect_element(self) -> Element:
        element = self._reader.next()
        if _local(element) == (STREAM_NS, "error"):
            raise XmppError(_stream_error(element))
        return element

    def _send(self, text: str) -> None:
        self._connection.sendall(text.encode())


def admin_shell(path: Path, line: str, *, timeout: float = 5.0) -> str:
    """Runs one line in the shell behind Prosody's admin socket; returns the result text (raises on an error)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(path))
        connection.sendall(
            f"<?xml version='1.0'?><stream:stream xmlns='{ADMIN_NS}' xmlns:stream='{STREAM_NS}' version='1.0'>"
            f"<repl-input>{escape(line)}</repl-input>".encode()
        )
        reader = _StreamReader(connection)
        while True:
            element = reader.next()
            namespace, name = _local(element)
            if (namespace, name) == (STREAM_NS, "error"):
                raise XmppError(_stream_error(element))
            if name == "repl-result":
                connection.sendall(b"</stream:stream>")
                text = element.text or ""
                if element.get("type") == "error":
                    raise XmppError(f"Prosody's shell answered an error: {text}")
                return text

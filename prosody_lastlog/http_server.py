"""HTTP for Prometheus: a landing page at /, /metrics (text or OpenMetrics by Accept), and /healthz.

HTTP/1.1 with keep-alive, one thread per connection, each reply in one write. Every scrape counts afresh, but the text
is rendered again only when the counts changed (see Exposition).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import html
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from math import inf
from pathlib import Path
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from prosody_lastlog import __version__
from prosody_lastlog.snapshot import LiveCounts

log = logging.getLogger(__name__)

DEFAULT_PORT = 10522  # 9100-9999 (Prometheus' default port allocations) is fully taken; 10522 echoes XMPP's 5222
_WRITE_BUFFER = 1 << 16  # a reply up to this size leaves in one write (with its headers)
_RENDERED_FORMATS = 8  # distinct negotiated formats whose last body is kept
SWITCH_INTERVAL = 0.001  # seconds, while serving; Python's 0.005 costs a scrape up to 5 ms per socket call


class MetricsServer:
    """Serves one registry on a background thread; `stop()` closes the socket and joins the thread."""

    def __init__(
        self,
        registry: Collector,
        live: LiveCounts,
        *,
        host: str,
        port: int,
        max_age_seconds: Mapping[str, float],
        clock: Callable[[], float] = time.time,
        tls: ssl.SSLContext | None = None,
        credentials: Mapping[str, str] | None = None,
    ) -> None:
        handler = _handler_class(Exposition(registry), live, max_age_seconds, clock, credentials or {})
        self._server = _QuietServer((host, port), handler)
        self._scheme = "https" if tls else "http"
        if tls is not None:
            # The handshake then happens in the request's own thread: a client that connects and says nothing
            # must not hold up the accept loop.
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True, do_handshake_on_connect=False)
        # Request threads are joined on close, so stop() leaves no thread behind.
        self._server.daemon_threads = False
        self._server.block_on_close = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="prosody-lastlog-http", daemon=True)
        self._lowered = False  # the switch interval, by start()

    @property
    def url(self) -> str:
        """Where /metrics is served."""
        host, port = self._server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        shown = f"[{host}]" if ":" in host else host
        return f"{self._scheme}://{shown}:{port}/metrics"

    def start(self) -> None:
        """Starts serving, with the interpreter's switch interval lowered until stop() (see _SwitchInterval)."""
        if not self._lowered:
            _SWITCHING.lower()
            self._lowered = True
        self._thread.start()

    def stop(self) -> None:
        """Stops serving and releases the port; safe to call more than once, or before start()."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.close_connections()
        self._server.server_close()
        if self._lowered:
            _SWITCHING.restore()
            self._lowered = False


class _SwitchInterval:
    """The interpreter's switch interval, lowered while any server serves. Every socket call of a scrape lets go of
    the GIL, and while another thread runs Python code (a refresh), getting it back waits one interval."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers = 0
        self._before = sys.getswitchinterval()

    def lower(self) -> None:
        with self._lock:
            if self._servers == 0:
                self._before = sys.getswitchinterval()
                sys.setswitchinterval(min(self._before, SWITCH_INTERVAL))
            self._servers += 1

    def restore(self) -> None:
        with self._lock:
            self._servers -= 1
            if self._servers == 0:
                sys.setswitchinterval(self._before)


_SWITCHING = _SwitchInterval()


class _QuietServer(ThreadingHTTPServer):
    """One thread per connection, which HTTP/1.1 keeps open for the client's next request. Client errors (a dropped
    connection, plain HTTP on the TLS port) go to debug logging, not stderr with the client's address."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Ends reading on every open connection: a thread waiting for a client's next request returns at once, a
        reply being written still completes."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                # The plain socket's shutdown: an SSLSocket's own would drop its TLS state under the thread using it.
                socket.socket.shutdown(connection, socket.SHUT_RD)

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("http: a request failed", exc_info=True)


class Exposition:
    """/metrics bodies. The registry is collected on every scrape, so counts are as of that scrape; the text is only
    rendered again when the collected families differ from the last ones rendered in the same format, which makes
    a scrape cheap while nothing changed (counts move when data changes or a user ages out of a window)."""

    def __init__(self, registry: Collector) -> None:
        self._registry = registry
        self._rendered: dict[str, tuple[list[tuple[object, ...]], bytes]] = {}  # content type -> (families, body)

    def render(self, accept: str) -> tuple[str, bytes]:
        """The content type chosen by the Accept header, and the body: exactly what prometheus_client renders."""
        encoder, content_type = choose_encoder(accept)
        families = list(self._registry.collect())
        key = _rendering_key(families)
        last = self._rendered.get(content_type)
        if key is not None and last is not None and last[0] == key:
            return content_type, last[1]
        body = encoder(_Collected(families))
        if key is not None:
            if len(self._rendered) >= _RENDERED_FORMATS and content_type not in self._rendered:
                self._rendered.clear()  # clients asking for ever new versions do not grow it
            self._rendered[content_type] = (key, body)
        return content_type, body


class _Collected(Collector):
    """Families already collected, for an encoder that takes a registry."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _rendering_key(families: Iterable[Metric]) -> list[tuple[object, ...]] | None:
    """Everything of the families that their text depends on, compared exactly (float.hex tells 0.0 from -0.0,
    which compare equal but render differently); None for samples this does not cover, which are rendered every
    time."""
    key: list[tuple[object, ...]] = []
    for family in families:
        key.append((family.name, family.documentation, family.type, family.unit))
        for sample in family.samples:
            if sample.timestamp is not None or sample.exemplar is not None or sample.native_histogram is not None:
                return None
            key.append((sample.name, sample.labels, float(sample.value).hex()))
    return key


def health_problems(live: LiveCounts, *, now: float, max_age_seconds: Mapping[str, float]) -> list[str]:
    """Why /healthz should fail: sources whose last refresh failed or is older than their `max_age_seconds`."""
    problems = []
    for source in live.health():
        if not source.up:
            problems.append(f"{source.name}: {source.error or 'not refreshed yet'}")
        elif source.last_success is not None and now - source.last_success > max_age_seconds.get(source.name, inf):
            problems.append(f"{source.name}: last successful refresh {now - source.last_success:.0f} s ago")
    return problems


def load_tls(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server TLS context from PEM files (TLS 1.2 or newer)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def load_credentials(path: Path) -> dict[str, str]:
    """`user:password` lines (as for Prometheus' basic_auth); blank lines and `#` comments are skipped."""
    credentials = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            user, sep, password = line.partition(":")
            if not sep or not user or not password:
                raise ValueError(f"{path}:{number}: expected user:password")
            credentials[user] = password
    if not credentials:
        raise ValueError(f"{path}: no user:password line")
    return credentials


def _authorized(header: str | None, credentials: Mapping[str, str]) -> bool:
    if not credentials:
        return True
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    expected = credentials.get(user, "")
    # Compare even for unknown users, so timing does not tell which user names exist.
    return hmac.compare_digest(password.encode(), expected.encode()) and user in credentials


def _handler_class(
    exposition: Exposition,
    live: LiveCounts,
    max_age_seconds: Mapping[str, float],
    clock: Callable[[], float],
    credentials: Mapping[str, str],
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"prosody-lastlog/{__version__}"
        protocol_version = "HTTP/1.1"  # keep-alive: Prometheus and load generators reuse their connection
        timeout = 10  # seconds a client may stay silent (before a request or between two) before its thread gives up
        disable_nagle_algorithm = True
        wbufsize = _WRITE_BUFFER

        def version_string(self) -> str:
            return self.server_version  # not the standard library's "... Python/3.x.y"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
                self.close_connection = True  # a body we do not read must not be taken for the next request
            if not _authorized(self.headers.get("Authorization"), credentials):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="prosody-lastlog"')
                self.send_header("Content-Length", "0")
                self._end_headers()
                return
            if path == "/metrics":
                self._reply(200, *exposition.render(self.headers.get("Accept", "")))
            elif path == "/healthz":
                problems = health_problems(live, now=clock(), max_age_seconds=max_age_seconds)
                body = ("\n".join(problems) if problems else "ok") + "\n"
                self._reply(503 if problems else 200, "text/plain; charset=utf-8", body.encode())
            elif path == "/":
                self._reply(200, "text/html; charset=utf-8", _LANDING.encode())
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found: try /metrics\n")

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self._end_headers()
            self.wfile.write(body)

        def _end_headers(self) -> None:
            if self.close_connection:  # the client's choice (Connection: close, HTTP/1.0) or ours
                self.send_header("Connection", "close")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            log.debug("http: " + format, *args)

    return Handler


_LANDING = f"""<!doctype html>
<html><head><title>prosody-lastlog</title></head>
<body><h1>prosody-lastlog {html.escape(__version__)}</h1>
<p>Daily, weekly and monthly active users of this Prosody server.</p>
<ul><li><a href="/metrics">/metrics</a></li><li><a href="/healthz">/healthz</a></li></ul>
</body></html>
"""

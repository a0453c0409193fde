"""HTTP for Prometheus: a landing page at /, /metrics (text or OpenMetrics by Accept), and /healthz."""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from prosody_lastlog import __version__
from prosody_lastlog.snapshot import LiveCounts

log = logging.getLogger(__name__)

DEFAULT_PORT = 10522  # 9100-9999 (Prometheus' default port allocations) is fully taken; 10522 echoes XMPP's 5222


class MetricsServer:
    """Serves one registry on a background thread; `stop()` closes the socket and joins the thread."""

    def __init__(
        self,
        registry: CollectorRegistry,
        live: LiveCounts,
        *,
        host: str,
        port: int,
        max_age_seconds: float,
        clock: Callable[[], float] = time.time,
        tls: ssl.SSLContext | None = None,
        credentials: Mapping[str, str] | None = None,
    ) -> None:
        handler = _handler_class(registry, live, max_age_seconds, clock, credentials or {})
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

    @property
    def url(self) -> str:
        """Where /metrics is served."""
        host, port = self._server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        shown = f"[{host}]" if ":" in host else host
        return f"{self._scheme}://{shown}:{port}/metrics"

    def start(self) -> None:
        """Starts serving."""
        self._thread.start()

    def stop(self) -> None:
        """Stops serving and releases the port; safe to call more than once, or before start()."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


class _QuietServer(ThreadingHTTPServer):
    """Client errors (a dropped connection, plain HTTP on the TLS port) go to debug logging, not stderr with the
    client's address."""

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("http: a request failed", exc_info=True)


def health_problems(live: LiveCounts, *, now: float, max_age_seconds: float) -> list[str]:
    """Why /healthz should fail: sources whose last refresh failed or is older than `max_age_seconds`."""
    problems = []
    for source in live.health():
        if not source.up:
            problems.append(f"{source.name}: {source.error or 'not refreshed yet'}")
        elif source.last_success is not None and now - source.last_success > max_age_seconds:
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
    registry: CollectorRegistry,
    live: LiveCounts,
    max_age_seconds: float,
    clock: Callable[[], float],
    credentials: Mapping[str, str],
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"prosody-lastlog/{__version__}"
        timeout = 10  # seconds a client may stay silent before its thread gives up

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if not _authorized(self.headers.get("Authorization"), credentials):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="prosody-lastlog"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._reply(200, content_type, encoder(registry))
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
            self.end_headers()
            self.wfile.write(body)

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

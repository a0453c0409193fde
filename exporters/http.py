"""HTTP for Prometheus: a landing page at /, /metrics (text or OpenMetrics by Accept), and /healthz; NodeInfo for
the hosts opted in (exporters/nodeinfo_pages.py), public even where the rest asks for a password."""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from math import inf
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from exporters.http_transport import (
    CLOSE_REASONS,
    MAX_CONNECTIONS,
    PLAIN_TEXT,
    REQUEST_DEADLINE,
    HttpServer,
    Reply,
    Request,
)
from exporters.nodeinfo import PATHS as NODEINFO_PATHS
from exporters.nodeinfo_pages import NodeInfoPages
from exporters.prometheus import CountsView
from prosody_lastlog import __version__

_RENDERED_FORMATS = 8  # distinct negotiated formats whose last body is kept
_SERVER = f"prosody-lastlog/{__version__}"  # not the standard library's "... Python/3.x.y"


class MetricsServer:
    """Serves one registry over HTTP (see http_transport.HttpServer) on a background thread; `stop()` closes the
    listening socket and every connection, and joins the thread."""

    def __init__(
        self,
        registry: Collector,
        live: CountsView,
        *,
        host: str,
        port: int,
        max_age_seconds: Mapping[str, float],
        clock: Callable[[], float] = time.time,
        tls: ssl.SSLContext | None = None,
        credentials: Mapping[str, str] | None = None,
        max_connections: int = MAX_CONNECTIONS,
        request_deadline: float = REQUEST_DEADLINE,
        nodeinfo: NodeInfoPages | None = None,
    ) -> None:
        site = _Site(Exposition(registry), live, max_age_seconds, clock, credentials or {}, nodeinfo=nodeinfo)
        self._scheme = "https" if tls else "http"
        self._server = HttpServer(
            site,
            host=host,
            port=port,
            server_name=_SERVER,
            tls=tls,
            max_connections=max_connections,
            request_deadline=request_deadline,
        )
        self._connections = _ConnectionMetrics(self._server, max_connections)
        # The connection families go with the daemon's: on its /metrics, and wherever else its registry is shown.
        self._registry = registry if isinstance(registry, CollectorRegistry) else None
        if self._registry is not None:
            self._registry.register(self._connections)

    @property
    def url(self) -> str:
        """Where /metrics is served."""
        host, port = self._server.address
        shown = f"[{host}]" if ":" in host else host
        return f"{self._scheme}://{shown}:{port}/metrics"

    def start(self) -> None:
        """Starts serving."""
        self._server.start()

    def stop(self) -> None:
        """Stops serving, closing every connection (a reply being written is cut off), and releases the port; safe to
        call more than once, or before start()."""
        self._server.stop()
        if self._registry is not None:
            self._registry.unregister(self._connections)
            self._registry = None


class _ConnectionMetrics(Collector):
    """The `prosody_lastlog_http_*` families: the server's connections open now, and those it closed by reason."""

    def __init__(self, server: HttpServer, limit: int) -> None:
        self._server = server
        self._limit = limit

    def collect(self) -> Iterator[Metric]:
        open_now, closed = self._server.connections()
        connections = GaugeMetricFamily(
            "prosody_lastlog_http_connections",
            f"HTTP connections open now. At the cap ({self._limit}) a new one closes the one waiting longest for its "
            "request.",
        )
        connections.add_metric([], open_now)
        closes = CounterMetricFamily(
            "prosody_lastlog_http_connections_closed",
            "HTTP connections this server closed, by reason: cap (at the connection cap, for a new one), "
            "descriptors (out of file descriptors, for a new one), deadline (a request's head or its reply not "
            "through in time), idle (no byte of a request in time, TLS handshake included; also how keep-alive "
            "connections end), too_large (a 414 or 431 reply), bad_request (another error reply).",
            labels=["reason"],
        )
        for reason in CLOSE_REASONS:  # zeros rather than gaps
            closes.add_metric([reason], closed.get(reason, 0))
        yield from (connections, closes)


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


def health_problems(live: CountsView, *, now: float, max_age_seconds: Mapping[str, float]) -> list[str]:
    """Why /healthz should fail: sources whose last refresh failed or is older than their `max_age_seconds`, and
    file sources whose data directory is not watched as it should be."""
    problems = []
    for source in live.health():
        if not source.up:
            problems.append(f"{source.name}: {source.error or 'not refreshed yet'}")
        elif source.last_success is not None and now - source.last_success > max_age_seconds.get(source.name, inf):
            problems.append(f"{source.name}: last successful refresh {now - source.last_success:.0f} s ago")
        if source.unwatched is not None:
            problems.append(f"{source.name}: {source.unwatched}")
    return problems


def _modes(live: CountsView) -> list[str]:
    """A line per SQL source read incrementally: how it finds changes, and when it was last read in full."""
    return [
        f"{source.name}: changes found {source.changes_found}, last full read "
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(source.last_full_read))}"
        for source in live.health()
        if source.changes_found is not None and source.last_full_read is not None
    ]


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


class _Site:
    """What is served, and to whom."""

    def __init__(
        self,
        exposition: Exposition,
        live: CountsView,
        max_age_seconds: Mapping[str, float],
        clock: Callable[[], float],
        credentials: Mapping[str, str],
        *,
        nodeinfo: NodeInfoPages | None,
    ) -> None:
        self._exposition = exposition
        self._live = live
        self._max_age_seconds = max_age_seconds
        self._clock = clock
        self._credentials = credentials
        self._nodeinfo = nodeinfo

    def answer(self, request: Request) -> Reply:
        """A GET request's status, headers (but Content-Length) and body."""
        path = request.target.split("?", 1)[0]
        if self._nodeinfo is not None and path in NODEINFO_PATHS:  # public: crawlers have no password
            return self._nodeinfo.answer(request, path)
        if not _authorized(request.headers.get("authorization"), self._credentials):
            return HTTPStatus.UNAUTHORIZED, [("WWW-Authenticate", 'Basic realm="prosody-lastlog"')], b""
        if path == "/metrics":
            content_type, body = self._exposition.render(request.headers.get("accept", ""))
            return HTTPStatus.OK, [("Content-Type", content_type)], body
        if path == "/healthz":
            problems = health_problems(self._live, now=self._clock(), max_age_seconds=self._max_age_seconds)
            status = HTTPStatus.SERVICE_UNAVAILABLE if problems else HTTPStatus.OK
            lines = [*(problems or ["ok"]), *_modes(self._live)]
            return status, [("Content-Type", PLAIN_TEXT)], "".join(f"{line}\n" for line in lines).encode()
        if path == "/":
            return HTTPStatus.OK, [("Content-Type", "text/html; charset=utf-8")], _LANDING
        return HTTPStatus.NOT_FOUND, [("Content-Type", PLAIN_TEXT)], b"not found: try /metrics\n"


_LANDING = f"""<!doctype html>
<html><head><title>prosody-lastlog</title></head>
<body><h1>prosody-lastlog {html.escape(__version__)}</h1>
<p>Daily, weekly and monthly active users of this Prosody server.</p>
<ul><li><a href="/metrics">/metrics</a></li><li><a href="/healthz">/healthz</a></li></ul>
</body></html>
""".encode()

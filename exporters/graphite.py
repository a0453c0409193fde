"""Graphite: carbon's plaintext protocol (`<path> <value> <timestamp>` lines) over TCP or UDP.

Plain paths come from a template, by default `prosody.<host>.<name>.<window>` (`prosody.example_com.activity_records`
for series without a window). A host is ONE path node: its dots become `_` (`example.com` -> `example_com`), so
`a.b` and `a_b` would share a path. With `tagged=True` the series are Graphite 1.1 tagged series instead,
`prosody.active_users;host=example.com;window=1d`, where host names keep their dots.

Characters: a path node keeps only `A-Z a-z 0-9 _ -`; everything else (whitespace, `/ ; = ~ ( ) { } [ ] , * ? ' "`,
`| \\ # %`, control characters, ...) becomes `_`, as do the dots inside a host. Tag values keep the same characters
plus `.`. So neither can break a plaintext line, carbon's tag syntax (`;`, `=`, a leading `~`, the OpenMetrics form
`name{...}`) or a graphite-web target expression (globs, `|` pipes, quotes, function calls).
Non-ASCII host names are written in their IDNA ASCII form, each non-ASCII label as `xn--` + Punycode
(`münchen.example` -> `xn--mnchen-3ya_example`): carbon would store UTF-8 paths as file names, but Graphite's own
docs say non-ASCII names and tags are "not well tested" and "not recommended", carbon splits lines on Unicode
whitespace and line breaks (U+00A0, U+2028 would cut a path), and graphite-web's globbing and URL handling of
them is unreliable. Punycode is the DNS's own ASCII spelling of the name (Prosody's hosts are already nameprepped,
so it equals IDNA's ToASCII), reversible, and never collides with another ASCII host.

Carbon acknowledges nothing, and carbon-cache drops the points still in its cache (up to about a second of them, more
on a busy server) when it stops: a point sent just before a restart is lost although TCP delivered it. With
`resend = N` each push repeats the points of the previous N pushes that got through; whisper keeps one value per
timestamp, so a repeat costs only bytes (but carbon-aggregator sums repeats, hence off by default).

prometheus_client's GraphiteBridge is not used: it pushes over TCP only, stamps points with the push time instead
of the interval they belong to, turns every `.` in label values into `_` (tags too), and its thread cannot be
stopped.
"""

from __future__ import annotations

import functools
import math
import os
import re
import socket
import string
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from exporters.points import Point
from exporters.runner import ExportError, PushExporter

DEFAULT_TEMPLATE = "{prefix}.{host}.{name}.{window}"
TEMPLATE_FIELDS = ("prefix", "host", "name", "window")
REQUIRED_FIELDS = ("host", "name", "window")  # without one of them, different series would share a path
MAX_DATAGRAM = 1400  # bytes of UDP payload: fits a 1500-byte Ethernet MTU with IPv6 and UDP headers, no fragments

_NODE_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_NODE = re.compile(r"[A-Za-z0-9_-]+")
_TEMPLATE_TEXT = re.compile(r"[A-Za-z0-9_.-]*")


def format_plaintext(
    points: Sequence[Point],
    *,
    prefix: str = "prosody",
    template: str = DEFAULT_TEMPLATE,
    tagged: bool = False,
) -> bytes:
    """Carbon plaintext lines `<path> <value> <timestamp>\\n`, one per point, with the points' own timestamps.

    `template` makes the plain paths (fields {prefix}, {host}, {name}, {window}; nodes left empty, as {window}
    for per-host series, are dropped); with `tagged` each line is `<prefix>.<name>;host=<host>[;window=<w>]`.
    """
    check_prefix(prefix)
    check_template(template)
    lines = []
    for point in points:
        series = _tagged_series(point, prefix) if tagged else _path(point, prefix, template)
        lines.append(f"{series} {int(point.value)} {int(point.timestamp)}\n")
    return "".join(lines).encode("ascii")


def check_prefix(prefix: str) -> str:
    """The prefix if it is empty or dot-separated path nodes of `A-Z a-z 0-9 _ -`; else ValueError naming it."""
    if prefix and not all(_NODE.fullmatch(node) for node in prefix.split(".")):
        raise ValueError(
            f"prefix: {prefix!r} is not a Graphite path: expected non-empty nodes of A-Z a-z 0-9 _ - joined by dots"
        )
    return prefix


def check_template(template: str) -> str:
    """The template if it only uses the known fields, each of host, name and window, and path-safe text."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template: {template!r} does not parse: {exc}") from None
    used = set()
    for text, field, spec, conversion in parsed:
        if not _TEMPLATE_TEXT.fullmatch(text):
            raise ValueError(f"template: {template!r}: text between fields may only use A-Z a-z 0-9 _ - and dots")
        if field is None:
            continue
        if field not in TEMPLATE_FIELDS or spec or conversion:
            raise ValueError(
                f"template: {template!r}: unknown field {{{field}}} (known: "
                + ", ".join(f"{{{name}}}" for name in TEMPLATE_FIELDS)
                + ")"
            )
        used.add(field)
    missing = [f"{{{name}}}" for name in REQUIRED_FIELDS if name not in used]
    if missing:
        raise ValueError(f"template: {template!r} lacks {', '.join(missing)}: series would share a path")
    return template


def _path(point: Point, prefix: str, template: str) -> str:
    window = "" if point.window is None else _path_node(point.window)
    rendered = template.format(prefix=prefix, host=_path_node(point.host), name=_path_node(point.name), window=window)
    return ".".join(node for node in rendered.split(".") if node)


def _tagged_series(point: Point, prefix: str) -> str:
    name = _path_node(point.name)
    series = f"{prefix}.{name}" if prefix else name
    series += f";host={_tag_value(point.host)}"  # tags in carbon's own (sorted) order
    if point.window is not None:
        series += f";{point.label}={_tag_value(point.window)}"
    return series


def _ascii(name: str) -> str:
    """A name in its IDNA ASCII form: every non-ASCII dot-separated label becomes `xn--` + its Punycode."""
    return ".".join(
        label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii") for label in name.split(".")
    )


@functools.lru_cache(maxsize=4096)
def _path_node(text: str) -> str:
    """One non-empty path node: ASCII form, anything but A-Z a-z 0-9 _ - (dots included) replaced by `_`."""
    return _NODE_UNSAFE.sub("_", _ascii(text)) or "_"


@functools.lru_cache(maxsize=4096)
def _tag_value(text: str) -> str:
    """A non-empty tag value of A-Z a-z 0-9 _ - and dots (so never `;`, never a leading `~`)."""
    return _TAG_UNSAFE.sub("_", _ascii(text)) or "_"


def datagrams(payload: bytes, limit: int = MAX_DATAGRAM) -> Iterator[bytes]:
    """The payload's lines packed into datagrams of at most `limit` bytes, never splitting a line.

    A single line longer than `limit` goes alone in its own datagram (IP fragments it) rather than being lost.
    """
    *complete, rest = payload.split(b"\n")
    lines = [line + b"\n" for line in complete] + ([rest] if rest else [])
    chunk = b""
    for line in lines:
        if chunk and len(chunk) + len(line) > limit:
            yield chunk
            chunk = b""
        chunk += line
    if chunk:
        yield chunk


def _target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


@dataclass(frozen=True)
class TcpTransport:
    """Carbon's TCP line receiver: one connection per payload, connect and send each bounded by `timeout`."""

    host: str
    port: int
    timeout: float

    def send(self, payload: bytes) -> None:
        """Sends the payload and waits for the receiver to close; ExportError naming host:port if that fails.

        A returned sendall only means the kernel took the bytes: a carbon stopping meanwhile resets the
        connection instead of closing it after reading, and that batch is then retried.
        """
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as connection:
                connection.sendall(payload)  # the timeout bounds the whole sendall (Python ≥ 3.5)
                connection.shutdown(socket.SHUT_WR)
                try:
                    while connection.recv(4096):
                        pass
                except TimeoutError:
                    pass  # a receiver that keeps the connection open: all TCP can tell is that it was delivered
        except OSError as exc:
            raise ExportError(f"graphite {_target(self.host, self.port)} (tcp): {_reason(exc)}") from None


@dataclass(frozen=True)
class UdpTransport:
    """Carbon's UDP receiver: whole lines in datagrams of at most MAX_DATAGRAM bytes.

    UDP has no acknowledgement: a datagram lost on the way is lost. Errors the OS reports are raised, including a
    refusal (ICMP port unreachable) that arrives before the payload is sent, which on the same machine always does:
    a stopped local carbon is noticed and the points are kept for the retry.
    """

    host: str
    port: int
    timeout: float

    def send(self, payload: bytes) -> None:
        """Sends the payload; ExportError naming host:port on an error the OS reports."""
        try:
            family, kind, protocol, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
            with socket.socket(family, kind, protocol) as sock:
                sock.settimeout(self.timeout)
                sock.connect(address)  # a connected socket gets the ICMP errors for its destination
                for datagram in datagrams(payload):
                    sock.send(datagram)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, os.strerror(error))
        except OSError as exc:
            raise ExportError(f"graphite {_target(self.host, self.port)} (udp): {_reason(exc)}") from None


def create(
    *,
    host: str = "127.0.0.1",
    port: int = 2003,
    protocol: str = "tcp",
    prefix: str = "prosody",
    template: str = DEFAULT_TEMPLATE,
    tagged: bool = False,
    interval: float = 60,
    max_points: int = 100_000,
    timeout: float = 5.0,
    resend: int = 0,
) -> PushExporter:
    """The `graphite` push exporter from its `[exporters.graphite]` settings; ValueError names a bad setting."""
    if not isinstance(host, str) or not host or any(char.isspace() for char in host):
        raise ValueError(f"host: expected a host name or IP address, got {host!r}")
    if not _is_int(port) or not 1 <= port <= 65535:
        raise ValueError(f"port: expected an integer from 1 to 65535, got {port!r}")
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"protocol: expected tcp or udp, got {protocol!r}")
    if not isinstance(prefix, str):
        raise ValueError(f"prefix: expected a string, got {prefix!r}")
    if not isinstance(template, str):
        raise ValueError(f"template: expected a string, got {template!r}")
    check_prefix(prefix)
    check_template(template)
    if not isinstance(tagged, bool):
        raise ValueError(f"tagged: expected true or false, got {tagged!r}")
    if not _is_number(interval) or interval < 1:
        raise ValueError(f"interval: expected a number of seconds ≥ 1, got {interval!r}")
    if not _is_int(max_points) or max_points < 1:
        raise ValueError(f"max_points: expected a positive integer, got {max_points!r}")
    if not _is_number(timeout) or timeout <= 0:
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    if not _is_int(resend) or not 0 <= resend <= 10:
        raise ValueError(f"resend: expected an integer from 0 to 10, got {resend!r}")
    transport = (TcpTransport if protocol == "tcp" else UdpTransport)(host, port, float(timeout))
    delivered: deque[Sequence[Point]] = deque(maxlen=resend)  # the last pushes that got through, repeated

    def send(points: Sequence[Point]) -> None:
        repeated = [point for batch in delivered for point in batch]
        transport.send(format_plaintext([*repeated, *points], prefix=prefix, template=template, tagged=tagged))
        delivered.append(points)

    return PushExporter("graphite", send, interval=float(interval), max_points=max_points)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

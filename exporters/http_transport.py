"""HTTP/1.1 on one event-loop thread, bounded against hostile clients: it serves any Site and knows no metrics."""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol, TypeAlias

# The HTTP server's one logger, whichever of its modules logs: the name operators and tests filter on.
log = logging.getLogger("exporters.http")

# Seconds, while serving. Python's 0.005 would hold the loop thread up to 5 ms each time it waits for sockets while
# a refresh thread runs Python code.
SWITCH_INTERVAL = 0.001
# Against hostile clients. A connection holds at most one request head and a read, one reply and its TLS state;
# the cap plus the daemon's own descriptors stay well under systemd's default 1,024.
MAX_CONNECTIONS = 256  # open at once; at the cap a newcomer closes the connection waiting longest for its request
REQUEST_DEADLINE = 10.0  # seconds for a request's head (TLS handshake included) and again for its reply to be taken
MAX_LINE = 8192  # bytes of the request line or of one header line (as nginx and Apache)
MAX_HEADERS = 64
MAX_HEAD = 32768  # bytes of request line and headers together (nginx's 4 x 8k); a Prometheus scrape sends ~300
CLOSE_REASONS = ("cap", "descriptors", "deadline", "idle", "too_large", "bad_request")  # see HttpServer.connections
PLAIN_TEXT = "text/plain; charset=utf-8"  # of error replies, and of a Site's text
# Connections the kernel holds until accepted: a burst waits its turn (thousands are accepted a second) rather than
# have SYNs dropped, which a client (a scraper among attackers) retries only after a second.
_LISTEN_BACKLOG = 1024
_ACCEPTS_PER_TURN = 64  # connections accepted before the loop serves the others again
_READ_SIZE = 65536  # bytes of one read from a client
_ACCEPT_PAUSE = 0.1  # seconds without accepting when a connection cannot be accepted and none can make room
_ALARM_CHECK = 0.5  # seconds between checks whether an alarm ended


@dataclass(frozen=True)
class Request:
    """A request's head, parsed."""

    method: str
    target: str
    headers: Mapping[str, str]  # by lower-case name, the first of each
    keep_alive: bool  # HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`


Reply: TypeAlias = tuple[HTTPStatus, list[tuple[str, str]], bytes]  # a status, headers but Content-Length, and a body


class Site(Protocol):
    """What is served: the transport hands it each GET request and writes what it answers."""

    def answer(self, request: Request) -> Reply: ...


class HttpServer:
    """Serves one Site on a background thread running an event loop, with keep-alive, each reply in one write; with
    a TLS context, over TLS. Hostile clients are bounded (see _Connections): at most `max_connections` at once, each
    request's head due within `request_deadline` and held to MAX_LINE, MAX_HEADERS and MAX_HEAD bytes as it
    arrives, and each reply to be taken within `request_deadline` too. `stop()` closes the listening socket and
    every connection, and joins the thread."""

    def __init__(
        self,
        site: Site,
        *,
        host: str,
        port: int,
        server_name: str,
        tls: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
        request_deadline: float = REQUEST_DEADLINE,
    ) -> None:
        self._connections = _Connections(max_connections, request_deadline)
        self._socket = socket.create_server((host, port), backlog=_LISTEN_BACKLOG)
        self._socket.setblocking(False)
        self.address: tuple[str, int] = self._socket.getsockname()[:2]
        self._loop = asyncio.new_event_loop()
        self._listener = _Listener(self._socket, _Serving(self._loop, self._connections, site, tls, server_name))
        self._thread = threading.Thread(target=self._loop.run_forever, name="prosody-lastlog-http", daemon=True)
        self._lowered = False  # the switch interval, by start()

    def start(self) -> None:
        """Starts serving, with the interpreter's switch interval lowered until stop() (see _SwitchInterval)."""
        if not self._lowered:
            _SWITCHING.lower()
            self._lowered = True
        self._loop.call_soon(self._listener.open)
        self._thread.start()

    def stop(self) -> None:
        """Stops serving, closing every connection (a reply being written is cut off), and releases the port; safe to
        call more than once, or before start()."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._shut_down)
            self._thread.join()
        self._loop.close()
        self._socket.close()
        if self._lowered:
            _SWITCHING.restore()
            self._lowered = False

    def connections(self) -> tuple[int, dict[str, int]]:
        """The connections open now, and those this server closed by reason (of CLOSE_REASONS); from any thread."""
        return self._connections.counts()

    def _shut_down(self) -> None:
        """On the loop: stops accepting, closes every connection, and ends the loop."""
        self._listener.close()
        self._connections.close_all()
        self._loop.stop()


class _SwitchInterval:
    """The interpreter's switch interval, lowered while any server serves. The loop thread lets go of the GIL
    whenever it waits for sockets, and while another thread runs Python code (a refresh), getting it back waits one
    interval."""

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


class _Connections:
    """The open connections, and what bounds them against hostile clients. At most `limit` are open: at the cap, a
    newcomer closes the connection that has waited longest for its next request (idle, in its TLS handshake, or
    sending its head slowly) rather than being refused, so slow clients cannot lock a scraper out; connections whose
    reply is not taken yet are left alone (the deadline bounds them). Used on the loop thread, but for counts()."""

    def __init__(self, limit: int, deadline: float) -> None:
        self.limit = limit
        self.deadline = deadline
        self._open: set[_Connection] = set()
        self._waiting: dict[_Connection, None] = {}  # open and waiting for a request's head, longest first
        self._closed: Counter[str] = Counter()
        self._counting = threading.Lock()  # _closed, for counts() on other threads
        self._at_cap = _Alarm(
            "http: %d connections open, the cap: each new one now closes the one waiting longest for its request",
            "http: below the connection cap again, after %d connection(s) closed for room",
            quiet=deadline,
        )
        self._short_of_descriptors = _Alarm(
            "http: out of file descriptors with %d connections open: closing the one waiting longest for its "
            "request, or pausing accepts; raise LimitNOFILE",
            "http: accepting connections again, after %d time(s) out of file descriptors",
            quiet=deadline,
        )

    def opened(self, connection: _Connection) -> bool:
        """Counts a new connection in, making room at the cap; False if there is none (every reply is being taken)."""
        if len(self._open) >= self.limit:
            self._at_cap.hit(self.limit)
            if not self._make_room("cap"):
                self.count_close("cap")  # the newcomer's
                return False
        self._open.add(connection)
        self._waiting[connection] = None
        return True

    def waiting(self, connection: _Connection) -> None:
        """The connection now waits for its next request's head: the last in line to be closed for room."""
        self._waiting.pop(connection, None)
        self._waiting[connection] = None

    def replying(self, connection: _Connection) -> None:
        """The connection's request has arrived: it is not closed for room until its reply is taken."""
        self._waiting.pop(connection, None)

    def closed(self, connection: _Connection) -> None:
        """The connection's descriptor is closed."""
        self._open.discard(connection)
        self._waiting.pop(connection, None)

    def count_close(self, reason: str) -> None:
        """One connection closed by this server for `reason` (one of CLOSE_REASONS)."""
        with self._counting:
            self._closed[reason] += 1

    def out_of_descriptors(self) -> bool:
        """accept() failed for want of a descriptor: closes the connection waiting longest, freeing one; False if
        none waits."""
        self._short_of_descriptors.hit(len(self._open))
        return self._make_room("descriptors")

    def settle(self) -> None:
        """Logs the end of an alarm once a deadline passed without it."""
        self._at_cap.settle()
        self._short_of_descriptors.settle()

    def close_all(self) -> None:
        """Closes every connection at once, cutting off replies not all taken yet."""
        for connection in list(self._open):
            connection.close()

    def counts(self) -> tuple[int, dict[str, int]]:
        """The connections open now, and those closed by reason."""
        with self._counting:
            return len(self._open), dict(self._closed)

    def _make_room(self, reason: str) -> bool:
        """Closes the connection waiting longest for its request; False if none waits."""
        connection = next(iter(self._waiting), None)
        if connection is None:
            return False
        self.count_close(reason)
        connection.close()
        return True


class _Alarm:
    """A condition logged once as a warning when it begins, and once at info level when it ends: when `quiet`
    seconds pass without it."""

    def __init__(self, began: str, ended: str, *, quiet: float) -> None:
        self._began, self._ended, self._quiet = began, ended, quiet
        self._last: float | None = None  # when it last happened, while on
        self._times = 0

    def hit(self, *args: object) -> None:
        if self._last is None:
            log.warning(self._began, *args)
            self._times = 0
        self._last = time.monotonic()
        self._times += 1

    def settle(self) -> None:
        if self._last is not None and time.monotonic() - self._last > self._quiet:
            log.info(self._ended, self._times)
            self._last = None


@dataclass(frozen=True)
class _Serving:
    """What every connection of one server shares."""

    loop: asyncio.AbstractEventLoop
    connections: _Connections
    site: Site
    tls: ssl.SSLContext | None
    server_name: str  # in each reply's Server header


class _Listener:
    """Accepts connections on the event loop. Sockets and TLS are driven here rather than by asyncio's servers and
    transports: those pause accepting for a whole second when out of descriptors, hide a TLS connection from the
    server until its handshake is through (it could not be counted, nor closed for room), and keep a TLS reply in a
    buffer the protocol cannot see (it could not tell when the reply was taken)."""

    def __init__(self, listening: socket.socket, serving: _Serving) -> None:
        self._socket = listening
        self._serving = serving
        self._resume: asyncio.TimerHandle | None = None  # accepting again after a pause
        self._alarm_check: asyncio.TimerHandle | None = None

    def open(self) -> None:
        self._accepting()
        self._check_alarms()

    def close(self) -> None:
        """Stops accepting."""
        self._serving.loop.remove_reader(self._socket.fileno())
        for timer in (self._resume, self._alarm_check):
            if timer is not None:
                timer.cancel()

    def _accepting(self) -> None:
        self._resume = None
        self._serving.loop.add_reader(self._socket.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_TURN):
            try:
                client, _ = self._socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # reset by the client while queued
            except OSError as error:
                # Out of descriptors, the connection closed for room frees one for the next turn. Without one to
                # close (or out of kernel memory), accepting again at once would spin.
                short = error.errno in (errno.EMFILE, errno.ENFILE)
                if not (short and self._serving.connections.out_of_descriptors()):
                    log.debug("http: accepting failed, pausing", exc_info=True)
                    self._pause()
                return
            _Connection(client, self._serving).open()

    def _pause(self) -> None:
        self._serving.loop.remove_reader(self._socket.fileno())
        self._resume = self._serving.loop.call_later(_ACCEPT_PAUSE, self._accepting)

    def _check_alarms(self) -> None:
        self._serving.connections.settle()
        self._alarm_check = self._serving.loop.call_later(_ALARM_CHECK, self._check_alarms)


class _Connection:
    """One client's connection on the event loop, from accept to close: its TLS (on a TLS server), each request's
    head read within the deadline and the head limits, the reply written at once (what the socket does not take
    then, as the client takes it, within the deadline again), then the next request or the close."""

    def __init__(self, client: socket.socket, serving: _Serving) -> None:
        self._socket = client
        self._fd = client.fileno()
        self._serving = serving
        self._tls = _Tls(serving.tls) if serving.tls is not None else None
        self._input = _HeadBuffer()
        self._unsent = bytearray()  # what the socket did not take yet: of a reply, or of the TLS handshake
        self._replying = False  # a reply is written and not all taken yet
        self._closing = False  # once the reply is taken
        self._received = 0  # bytes of requests since the current step (a request's head, then its reply) began
        self._reading = False
        self._closed = False
        self._deadline: asyncio.TimerHandle | None = None  # of the current step

    def open(self) -> None:
        """Takes the accepted connection in, or closes it when the cap leaves no room."""
        if not self._serving.connections.opened(self):
            self._socket.close()
            return
        self._socket.setblocking(False)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)  # a reply's last bytes leave at once
        self._wait_for_request()

    def close(self) -> None:
        """Closes the connection at once; a reply not all taken yet is cut off."""
        if self._closed:
            return
        self._closed = True
        if self._deadline is not None:
            self._deadline.cancel()
        self._serving.loop.remove_reader(self._fd)
        self._serving.loop.remove_writer(self._fd)
        self._socket.close()
        self._serving.connections.closed(self)

    def _guarded(self, step: Callable[[], None]) -> None:
        """Runs a step on an event of the loop. A client gone, or not speaking TLS on the TLS port, closes the
        connection; so does any other failure (the site's, while answering), rather than reaching the loop."""
        try:
            step()
        except (OSError, EOFError) as error:  # ssl.SSLError is an OSError
            log.debug("http: connection ended: %s", error)
            self.close()
        except Exception:
            log.debug("http: a request failed", exc_info=True)
            self.close()

    def _wait_for_request(self) -> None:
        self._serving.connections.waiting(self)
        self._received = len(self._input)  # a pipelined request's start
        self._start_step()
        self._read(True)

    def _start_step(self) -> None:
        """Starts the deadline of a step: a request's head, or a reply the client has not taken at once."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._serving.loop.call_later(self._serving.connections.deadline, self._expire)

    def _expire(self) -> None:
        self._serving.connections.count_close("deadline" if self._replying or self._received else "idle")
        self.close()

    def _read(self, on: bool) -> None:
        """Starts or stops reading the client's requests."""
        if on != self._reading:
            self._reading = on
            if on:
                self._serving.loop.add_reader(self._fd, self._guarded, self._on_readable)
            else:
                self._serving.loop.remove_reader(self._fd)

    def _on_readable(self) -> None:
        try:
            data = self._socket.recv(_READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            raise EOFError("closed by the client")
        if self._tls is not None:
            data = self._tls.decrypt(data)
            self._send(self._tls.outgoing())  # of the handshake
        self._received += len(data)
        self._input.add(data)
        self._answer_received()

    def _answer_received(self) -> None:
        """Answers the requests received, one at a time: the next once the client has taken the reply before."""
        while not (self._replying or self._closed):
            try:
                head = self._input.next_head()
                if head is None:
                    return
                reply, close = self._answer(_parse_head(head))
            except _RequestError as error:
                reply, close = self._refusal(error), True
            self._reply(reply, close=close)

    def _answer(self, request: Request) -> tuple[bytes, bool]:
        """The reply to a request, and whether the connection closes after it."""
        if request.method != "GET":
            raise _RequestError(HTTPStatus.NOT_IMPLEMENTED, "only GET is served")
        # A body is never read: it must not be taken for the next request.
        close = not request.keep_alive or "content-length" in request.headers or "transfer-encoding" in request.headers
        status, headers, body = self._serving.site.answer(request)
        return _reply(status, headers, body, close=close, server_name=self._serving.server_name), close

    def _refusal(self, error: _RequestError) -> bytes:
        """The error reply to a request refused, after which the connection closes."""
        too_large = error.status in (HTTPStatus.REQUEST_URI_TOO_LONG, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        self._serving.connections.count_close("too_large" if too_large else "bad_request")
        body = f"{error.status.value} {error.status.phrase}: {error.why}\n".encode()
        return _reply(
            error.status, [("Content-Type", PLAIN_TEXT)], body, close=True, server_name=self._serving.server_name
        )

    def _reply(self, reply: bytes, *, close: bool) -> None:
        self._send(self._tls.encrypt(reply) if self._tls is not None else reply)
        self._closing = close
        if not self._unsent:
            self._taken()
            return
        self._replying = True
        self._serving.connections.replying(self)
        self._read(False)  # the next request waits until this reply is taken
        self._start_step()

    def _taken(self) -> None:
        """The reply is all with the socket."""
        self._replying = False
        if self._closing:
            self.close()
        else:
            self._wait_for_request()

    def _send(self, data: bytes) -> None:
        """Writes to the socket what it takes now, and the rest as it becomes writable."""
        if not data:
            return
        if not self._unsent:
            try:
                sent = self._socket.send(data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            self._serving.loop.add_writer(self._fd, self._guarded, self._on_writable)
            data = data[sent:]
        self._unsent += data

    def _on_writable(self) -> None:
        try:
            sent = self._socket.send(self._unsent)
        except BlockingIOError:
            return
        del self._unsent[:sent]
        if self._unsent:
            return
        self._serving.loop.remove_writer(self._fd)
        if self._replying:
            self._taken()
            self._answer_received()


class _Tls:
    """TLS over memory buffers, for one connection: decrypts what arrives, encrypts what leaves."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)

    def decrypt(self, data: bytes) -> bytes:
        """The plain bytes that `data` completes (none during the handshake); outgoing() then holds what TLS
        answers. Raises ssl.SSLError for what is not TLS, EOFError once the client ends TLS."""
        self._incoming.write(data)
        plain = bytearray()
        try:
            self._tls.do_handshake()  # returns at once after the handshake
            while chunk := self._tls.read(_READ_SIZE):
                plain += chunk
        except ssl.SSLWantReadError:
            return bytes(plain)
        raise EOFError("TLS ended by the client")  # read() returns b"" at its close_notify

    def encrypt(self, data: bytes) -> bytes:
        self._tls.write(data)
        return self.outgoing()

    def outgoing(self) -> bytes:
        return self._outgoing.read()


class _RequestError(Exception):
    """A request refused, with the status to answer it with."""

    def __init__(self, status: HTTPStatus, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


class _HeadBuffer:
    """A connection's request bytes, taken a request head at a time. Each head is held to MAX_LINE bytes a line,
    MAX_HEADERS and MAX_HEAD bytes in all as its bytes arrive (_RequestError beyond): no more than MAX_HEAD bytes
    and one read are ever kept."""

    def __init__(self) -> None:
        self._bytes = bytearray()
        self._line_start = 0  # of the line being received
        self._lines = 0  # complete lines of the head being received

    def __len__(self) -> int:
        return len(self._bytes)

    def add(self, data: bytes) -> None:
        self._bytes += data

    def next_head(self) -> bytes | None:
        """The next request's head, to its blank line included; None until all of it is here."""
        while True:
            end = self._bytes.find(b"\n", self._line_start) + 1  # 0: the line is not all here yet
            at_least = end or len(self._bytes) + 1  # where the line ends, or will at the earliest
            if at_least - self._line_start > MAX_LINE or at_least > MAX_HEAD:
                raise self._too_large()
            if not end:
                return None
            if self._bytes.startswith((b"\r\n", b"\n"), self._line_start):  # the blank line
                head = bytes(self._bytes[:end])
                del self._bytes[:end]
                self._line_start = self._lines = 0
                return head
            self._lines += 1
            if self._lines > MAX_HEADERS + 1:
                raise _RequestError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"at most {MAX_HEADERS} headers")
            self._line_start = end

    def _too_large(self) -> _RequestError:
        if self._lines == 0:
            return _RequestError(HTTPStatus.REQUEST_URI_TOO_LONG, f"a request line is at most {MAX_LINE} bytes")
        return _RequestError(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            f"a header line is at most {MAX_LINE} bytes, a request head at most {MAX_HEAD}",
        )


_VERSION = re.compile(r"HTTP/([0-9]{1,10})\.([0-9]{1,10})")
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110's token


def _parse_head(head: bytes) -> Request:
    """Raises _RequestError for a head that is not an HTTP/1.x request."""
    lines = [line.removesuffix("\r") for line in head.decode("latin-1").split("\n")[:-2]]  # the blank line off
    words = lines[0].split() if lines else []
    version = _VERSION.fullmatch(words[2]) if len(words) == 3 else None
    if version is None:
        raise _RequestError(HTTPStatus.BAD_REQUEST, "a request line is a method, a target and an HTTP version")
    major, minor = int(version[1]), int(version[2])
    if major != 1:
        raise _RequestError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "HTTP/1.x only")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _FIELD_NAME.fullmatch(name):
            raise _RequestError(HTTPStatus.BAD_REQUEST, "a header line is a name, a colon and a value")
        headers.setdefault(name.lower(), value.strip(" \t"))
    options = {option.strip().lower() for option in headers.get("connection", "").split(",")}
    keep_alive = "close" not in options and (minor >= 1 or "keep-alive" in options)
    return Request(words[0], words[1], headers, keep_alive)


def _reply(
    status: HTTPStatus, headers: Iterable[tuple[str, str]], body: bytes, *, close: bool, server_name: str
) -> bytes:
    """A whole reply, for one write."""
    lines = [f"HTTP/1.1 {status.value} {status.phrase}", f"Server: {server_name}", f"Date: {formatdate(usegmt=True)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if status is not HTTPStatus.NOT_MODIFIED:  # a 304 has no content, and its length would be the 200's
        lines.append(f"Content-Length: {len(body)}")
    if close:  # the client's choice (Connection: close, HTTP/1.0) or this server's
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

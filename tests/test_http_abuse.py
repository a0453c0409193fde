"""serve's HTTP server under connection abuse (issue 17): slow clients past the connection cap and past the file
descriptor limit, plain and TLS with basic auth, and trickling in lockstep, while a scraper keeps its latency; trickled
heads meet the deadline, and so do replies the client does not take, which stop() cuts off; oversized and malformed
heads get their status and the server's memory stays bounded; stop() returns during an attack. The attacked server
runs in a child process where the test needs its descriptors, CPU time or memory."""

from __future__ import annotations

import base64
import contextlib
import errno
import heapq
import http.client
import json
import logging
import math
import random
import select
import selectors
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import prosody_lastlog
from exporters.http import MetricsServer, load_tls
from exporters.http_transport import MAX_CONNECTIONS, MAX_HEAD, MAX_HEADERS, MAX_LINE
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon.state import LiveCounts
from tests.test_http_security import Values, self_signed

PACKAGE_ROOT = Path(prosody_lastlog.__file__).resolve().parent.parent
CREDENTIALS = {"prometheus": "s3cr3t pass"}
AUTHORIZATION = "Basic " + base64.b64encode(b"prometheus:s3cr3t pass").decode()
P99_LIMIT = 0.050  # seconds: the bound for a normal scraper during an attack

# The attacked server: options as JSON in argv[1]; prints its URL, then answers `usage` (CPU seconds and peak RSS),
# `exhaust`/`release` (takes or gives back every free descriptor) and `stop` (stops it, timed) on stdin.
SERVER = """
import json, logging, os, resource, sys, time
from prometheus_client import CollectorRegistry, Gauge
from exporters.http import MetricsServer, load_tls
from prosody_lastlog.daemon.state import LiveCounts
from prosody_lastlog.core.windows import DEFAULT_WINDOWS

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
options = json.loads(sys.argv[1])
descriptors = options.pop("descriptors", None)
if descriptors:
    resource.setrlimit(resource.RLIMIT_NOFILE, (descriptors, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
tls = options.pop("tls", None)
registry = CollectorRegistry(auto_describe=False)
Gauge("prosody_active_users", "Accounts.", ["host"], registry=registry).labels("example.com").set(13)
live = LiveCounts(windows=DEFAULT_WINDOWS, source_names=[])
server = MetricsServer(registry, live, host="127.0.0.1", port=0, max_age_seconds={},
                       tls=load_tls(*tls) if tls else None, **options)
server.start()
print(server.url, flush=True)
taken = []
for line in sys.stdin:
    if line == "usage\\n":
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"cpu": usage.ru_utime + usage.ru_stime, "maxrss_mib": usage.ru_maxrss / 1024}), flush=True)
    elif line == "exhaust\\n":
        try:
            while True:
                taken.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            print(json.dumps({"taken": len(taken)}), flush=True)
    elif line == "release\\n":
        for descriptor in taken:
            os.close(descriptor)
        taken = []
        print(json.dumps({}), flush=True)
    elif line == "stop\\n":
        started = time.monotonic()
        server.stop()
        print(json.dumps({"stop_seconds": time.monotonic() - started}), flush=True)
        break
"""


@dataclass
class Served:
    """The attacked server in its child process."""

    process: subprocess.Popen[str]
    address: tuple[str, int]
    log_file: Path
    context: ssl.SSLContext | None  # a client's, for a TLS server

    def ask(self, command: str) -> dict[str, float]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        assert select.select([self.process.stdout], [], [], 30)[0], f"no answer to {command}"
        answer: dict[str, float] = json.loads(self.process.stdout.readline())
        return answer

    def log(self) -> str:
        return self.log_file.read_text()

    def wait_for_log(self, text: str, seconds: float = 5.0) -> None:
        deadline = time.monotonic() + seconds
        while text not in self.log() and time.monotonic() < deadline:
            time.sleep(0.05)


@contextlib.contextmanager
def serving(tmp_path: Path, *, tls: bool = False, **options: object) -> Iterator[Served]:
    """The attacked server, with `options` for MetricsServer, `descriptors` for its RLIMIT_NOFILE, and with `tls` HTTPS
    and basic auth."""
    context = None
    if tls:
        cert, key = self_signed(tmp_path)
        options.update(tls=[str(cert), str(key)], credentials=CREDENTIALS)
        context = ssl.create_default_context(cafile=str(cert))
    log_file = tmp_path / "server.log"
    with (
        log_file.open("w") as stderr,
        subprocess.Popen(
            [sys.executable, "-c", SERVER, json.dumps(options)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=PACKAGE_ROOT,
        ) as process,
    ):  # fmt: skip
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert url, log_file.read_text()
            host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
            yield Served(process, (host, int(port)), log_file, context)
        finally:
            process.kill()


@dataclass
class _Client:
    sock: socket.socket
    step: str  # connecting, handshaking, sent


@dataclass
class SlowClients:
    """`count` clients, each sending the start of a request, then a byte of a header every `pause` seconds (0: on
    every turn of the loop, as fast as it goes), never the end. With `reconnect`, each the server closes connects
    again some `pause` later, each on its own time (a slowloris keeping up its count); `closed` counts those the
    server closed."""

    address: tuple[str, int]
    count: int
    context: ssl.SSLContext | None = None
    reconnect: bool = False
    pause: float = 0.5
    per_turn: int = 10  # connects per turn of the loop (~10 ms): a thousand a second, not a burst of SYNs to drop
    closed: int = 0
    starts: int = 0  # requests started, by clients connecting again too
    _owed: int = 0  # connects to make
    _reconnects: list[float] = field(default_factory=list)  # a heap of when to make more
    _jitter: random.Random = field(default_factory=lambda: random.Random(17))
    _stop: threading.Event = field(default_factory=threading.Event)
    _selector: selectors.DefaultSelector = field(default_factory=selectors.DefaultSelector)
    _clients: dict[socket.socket, _Client] = field(default_factory=dict)

    def __enter__(self) -> SlowClients:
        self._owed = self.count
        self._thread = threading.Thread(target=self._run, name="slow-clients")
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self._clients:
            sock.close()
        self._selector.close()

    def wait_until_started(self, seconds: float = 15.0) -> None:
        """Until as many requests were started as there are clients (or `seconds` passed: a server stuck
        accepting). Not until every client has sent its start: connecting again at once, some never have."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.starts < self.count:
            time.sleep(0.05)

    def _run(self) -> None:
        next_byte = time.monotonic() + self.pause
        while not self._stop.is_set():
            while self._reconnects and self._reconnects[0] <= time.monotonic():
                heapq.heappop(self._reconnects)
                self._owed += 1
            for _ in range(min(self.per_turn, self._owed)):
                self._owed -= 1
                self._connect()
            for key, _ in self._selector.select(timeout=max(0.0, min(0.01, next_byte - time.monotonic()))):
                self._step(key.data)
            if time.monotonic() >= next_byte:
                next_byte += self.pause
                for client in [c for c in self._clients.values() if c.step == "sent"]:
                    self._send(client, b"a")

    def _connect(self) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        if sock.connect_ex(self.address) not in (0, errno.EINPROGRESS):
            sock.close()
            return
        self._clients[sock] = client = _Client(sock, "connecting")
        self._selector.register(sock, selectors.EVENT_WRITE, client)

    def _step(self, client: _Client) -> None:
        try:
            if client.step == "connecting":
                if client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    raise ConnectionError
                if self.context is not None:
                    client.sock = self._tls(client)
                    client.step = "handshaking"
                else:
                    self._started(client)
            elif client.step == "handshaking":
                assert isinstance(client.sock, ssl.SSLSocket)
                client.sock.do_handshake()
                self._started(client)
            elif not client.sock.recv(4096):
                raise ConnectionError
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as want:
            events = selectors.EVENT_READ if isinstance(want, ssl.SSLWantReadError) else selectors.EVENT_WRITE
            self._selector.modify(client.sock, events, client)
        except OSError:
            self._drop(client)

    def _tls(self, client: _Client) -> ssl.SSLSocket:
        assert self.context is not None
        self._selector.unregister(client.sock)
        del self._clients[client.sock]
        wrapped = self.context.wrap_socket(client.sock, server_hostname="127.0.0.1", do_handshake_on_connect=False)
        self._clients[wrapped] = client
        self._selector.register(wrapped, selectors.EVENT_WRITE, client)
        return wrapped

    def _started(self, client: _Client) -> None:
        client.step = "sent"
        self.starts += 1
        self._selector.modify(client.sock, selectors.EVENT_READ, client)
        self._send(client, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")

    def _send(self, client: _Client, data: bytes) -> None:
        with contextlib.suppress(BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            try:
                client.sock.send(data)
            except OSError:
                self._drop(client)

    def _drop(self, client: _Client) -> None:
        self._selector.unregister(client.sock)
        del self._clients[client.sock]
        client.sock.close()
        self.closed += 1
        if self.reconnect:
            heapq.heappush(self._reconnects, time.monotonic() + self.pause * self._jitter.uniform(0.5, 1.5))


def scrape(address: tuple[str, int], context: ssl.SSLContext | None = None, timeout: float = 2.0) -> tuple[int, str]:
    """A normal scraper's GET /metrics on a new connection: the status and body."""
    host, port = address
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection(host, port, timeout=timeout)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": AUTHORIZATION})
        reply = conn.getresponse()
        return reply.status, reply.read().decode()
    finally:
        conn.close()


def scrape_p99(served: Served, scrapes: int = 120) -> float:
    """The p99 latency in seconds of `scrapes` scrapes; infinite once two failed or timed out (then it stops)."""
    latencies: list[float] = []
    for _ in range(scrapes):
        started = time.monotonic()
        try:
            status, _ = scrape(served.address, served.context)
            latencies.append(time.monotonic() - started if status == 200 else math.inf)
        except OSError:
            latencies.append(math.inf)
        if latencies.count(math.inf) >= 2:
            return math.inf
        time.sleep(0.005)
    return sorted(latencies)[math.ceil(0.99 * len(latencies)) - 1]


def samples(address: tuple[str, int], context: ssl.SSLContext | None = None) -> dict[str, float]:
    """The connection families' samples, as `name` or `name{reason}`."""
    _, text = scrape(address, context)
    return {
        sample.name + "".join(f"{{{value}}}" for value in sample.labels.values()): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("prosody_lastlog_http_")
        for sample in family.samples
    }


def large_heads(address: tuple[str, int], count: int) -> list[socket.socket]:
    """`count` connections that each send a request line and 100 headers of 64 KiB (the most Python's own header
    parser takes), not the blank line that would end them; returns them open once each is sent or cut off."""
    head = b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (n, b"a" * 65000) for n in range(100))
    connections = [socket.create_connection(address, timeout=10) for _ in range(count)]

    def send(connection: socket.socket) -> None:
        with contextlib.suppress(OSError):  # cut off by the server
            connection.sendall(head)

    senders = [threading.Thread(target=send, args=(c,)) for c in connections]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    return connections


def cpu_per_second(served: Served, seconds: float) -> float:
    """The server's CPU seconds per second over `seconds`: the cores it keeps busy."""
    before = served.ask("usage")["cpu"]
    time.sleep(seconds)
    return (served.ask("usage")["cpu"] - before) / seconds


# --- slow clients past the cap and past the descriptor limit ------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls-basic-auth"])
def test_scrapes_get_through_slow_clients_past_the_cap(tmp_path: Path, tls: bool) -> None:
    with (
        serving(tmp_path, tls=tls, max_connections=64) as served,
        SlowClients(served.address, 200, served.context, reconnect=True, pause=1.0) as attack,
    ):
        attack.wait_until_started()
        assert scrape_p99(served) <= P99_LIMIT
        values = samples(served.address, served.context)
        assert values["prosody_lastlog_http_connections"] <= 64 + 1  # and one closing to make room for it
        assert values["prosody_lastlog_http_connections_closed_total{cap}"] >= 200 - 64
        assert served.ask("stop")["stop_seconds"] < 3
    assert served.log().count("WARNING http: 64 connections open, the cap") == 1  # once for the whole attack


@pytest.mark.parametrize("pause", [0.5, 0.0], ids=["every-half-second", "flat-out"])
def test_scrapes_keep_their_latency_while_slow_clients_trickle_in_lockstep(tmp_path: Path, pause: float) -> None:
    # The default cap, and more slow clients, all in one loop sending each a byte every `pause` seconds (0: as fast
    # as it goes, as the soak's ConnectionLane does) and connecting again when closed. With a thread a connection,
    # the 256 woke together: every half second, 0.15-0.25 cores busy; flat out, 1.5 cores and scrapes of 0.7 s+.
    with serving(tmp_path) as served, SlowClients(served.address, 400, reconnect=True, pause=pause) as attack:
        attack.wait_until_started()
        assert scrape_p99(served) <= P99_LIMIT
        if pause:  # flat out, the server reads bytes as fast as they are sent
            assert cpu_per_second(served, 3) < 0.1
        assert samples(served.address)["prosody_lastlog_http_connections_closed_total{cap}"] >= 400 - 256
        assert served.ask("stop")["stop_seconds"] < 3


def test_out_of_descriptors_scrapes_get_through_and_the_accept_loop_rests(tmp_path: Path) -> None:
    # 256 descriptors, the default cap of 256 connections: descriptors run out first.
    with serving(tmp_path, descriptors=256) as served, SlowClients(served.address, 400) as attack:
        attack.wait_until_started()
        assert cpu_per_second(served, 1) < 0.3  # not a core spinning on accept()
        assert scrape_p99(served) <= P99_LIMIT
        assert samples(served.address)["prosody_lastlog_http_connections_closed_total{descriptors}"] >= 400 - 256
        assert served.ask("stop")["stop_seconds"] < 3
    assert served.log().count("WARNING http: out of file descriptors") == 1


def test_out_of_descriptors_with_none_to_free_the_accept_loop_waits_then_recovers(tmp_path: Path) -> None:
    with serving(tmp_path, descriptors=64, request_deadline=1.0) as served:
        served.ask("exhaust")
        with socket.create_connection(served.address, timeout=5) as client:  # waits in the listen queue
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert cpu_per_second(served, 1) < 0.3
            served.ask("release")
            assert client.recv(65536).startswith(b"HTTP/1.1 200 ")
        served.wait_for_log("INFO http: accepting connections again")  # a deadline without a shortage
        assert scrape(served.address)[0] == 200
        log = served.log()
    assert log.count("WARNING http: out of file descriptors") == 1
    assert log.count("INFO http: accepting connections again") == 1


# --- the whole-request deadline ---------------------------------------------------------------------------------


StartServer = Callable[..., tuple[MetricsServer, ssl.SSLContext | None]]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Starts a server in this process, plain or TLS, with a 1 s deadline (unless told) and its connection families
    in its registry; returns it and a client's TLS context."""
    servers: list[MetricsServer] = []

    def start(
        tls: bool, request_deadline: float = 1.0, max_connections: int = MAX_CONNECTIONS
    ) -> tuple[MetricsServer, ssl.SSLContext | None]:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Values())
        cert, key = self_signed(tmp_path) if tls else (None, None)
        server = MetricsServer(
            registry, LiveCounts(windows=DEFAULT_WINDOWS, source_names=[]), host="127.0.0.1", port=0,
            max_age_seconds={}, tls=load_tls(cert, key) if cert and key else None, request_deadline=request_deadline,
            max_connections=max_connections,
        )  # fmt: skip
        servers.append(server)
        server.start()
        return server, ssl.create_default_context(cafile=str(cert)) if cert else None

    yield start
    for server in servers:
        server.stop()


def address(server: MetricsServer) -> tuple[str, int]:
    host, port = server.url.split("//")[1].split("/")[0].rsplit(":", 1)
    return host, int(port)


def client_hello(context: ssl.SSLContext) -> bytes:
    """The first bytes a TLS client sends."""
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def seconds_until_closed(connection: socket.socket, start: bytes, trickle: bytes) -> float:
    """Sends `start`, then a byte of `trickle` every 0.1 s; the seconds until the server closes the connection
    (replies are read and dropped), or infinity after 5 s."""
    started = time.monotonic()
    connection.sendall(start)
    while time.monotonic() - started < 5:
        readable, _, _ = select.select([connection], [], [], 0.1)
        try:
            if readable and not connection.recv(65536):
                return time.monotonic() - started
            if trickle:
                connection.sendall(trickle[:1])
                trickle = trickle[1:]
        except OSError:
            return time.monotonic() - started
    return math.inf


SLOW_HEAD = (b"GET /metrics HTTP/1.1\r\nX-Slow: ", b"a" * 100)


@pytest.mark.parametrize(
    ("tls", "start", "trickle", "reason"),
    [
        (False, *SLOW_HEAD, "deadline"),
        (False, b"", b"", "idle"),
        (False, b"GET /metrics HTTP/1.1\r\n\r\n", b"", "idle"),  # keep-alive, then silence
        (True, *SLOW_HEAD, "deadline"),
        (True, b"", b"", "idle"),
    ],
    ids=["trickled-head", "silent", "idle-keep-alive", "tls-trickled-head", "tls-silent"],
)
def test_a_request_head_is_due_within_the_deadline_however_it_trickles(
    start_server: StartServer,
    tls: bool,
    start: bytes,
    trickle: bytes,
    reason: str,
) -> None:
    server, context = start_server(tls)
    with contextlib.ExitStack() as stack:
        connection = stack.enter_context(socket.create_connection(address(server), timeout=5))
        if context is not None:
            connection = stack.enter_context(context.wrap_socket(connection, server_hostname="127.0.0.1"))
        assert 0.9 < seconds_until_closed(connection, start, trickle) < 3  # the deadline is 1 s
    values = samples(address(server), context)
    assert values[f"prosody_lastlog_http_connections_closed_total{{{reason}}}"] == 1


def test_a_tls_handshake_is_due_within_the_deadline_however_it_trickles(
    start_server: StartServer,
) -> None:
    secured, context = start_server(True)
    assert context is not None
    with socket.create_connection(address(secured), timeout=5) as raw:
        assert 0.9 < seconds_until_closed(raw, b"", client_hello(context)) < 3


def not_reading(server: MetricsServer, context: ssl.SSLContext | None) -> socket.socket:
    """A connection asking for /metrics thousands of times in a row and reading none of the replies: they fill its
    socket buffers (a few MiB on loopback) until the server's writes wait."""
    connection = socket.create_connection(address(server), timeout=5)
    if context is not None:
        connection = context.wrap_socket(connection, server_hostname="127.0.0.1")
    connection.sendall(b"GET /metrics HTTP/1.1\r\n\r\n" * 4000)
    return connection


def waited(condition: Callable[[], bool], seconds: float = 5.0) -> float:
    """Seconds until `condition()` holds; infinity after `seconds`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            return math.inf
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_reply_is_due_within_the_deadline_however_slowly_it_is_taken(start_server: StartServer, tls: bool) -> None:
    server, context = start_server(tls)
    started = time.monotonic()
    with not_reading(server, context):
        deadline = "prosody_lastlog_http_connections_closed_total{deadline}"
        waited(lambda: samples(address(server), context)[deadline] == 1)
        assert 0.9 < time.monotonic() - started < 3  # the deadline is 1 s


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_stop_cuts_off_a_reply_not_taken(start_server: StartServer, tls: bool) -> None:
    server, context = start_server(tls, request_deadline=10.0)
    with not_reading(server, context):
        time.sleep(1)  # the server's writes wait for the client
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2  # not the 9 s the reply has left (the old server waited them out)


def test_at_the_cap_a_newcomer_is_refused_when_every_reply_is_being_taken() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Values())
    server = MetricsServer(registry, LiveCounts(windows=DEFAULT_WINDOWS, source_names=[]), host="127.0.0.1", port=0,
                           max_age_seconds={}, max_connections=2, request_deadline=1.0)  # fmt: skip
    server.start()

    def closed(reason: str) -> float | None:
        return registry.get_sample_value("prosody_lastlog_http_connections_closed_total", {"reason": reason})

    try:
        with not_reading(server, None), not_reading(server, None):
            time.sleep(0.5)  # both replies wait for their client
            with socket.create_connection(address(server), timeout=5) as newcomer:
                assert newcomer.recv(65536) == b""  # closed unanswered: neither reply was cut off for it
            assert waited(lambda: closed("deadline") == 2) < 5  # both cut off at their deadline instead
            assert (closed("cap"), closed("idle")) == (1, 0)
    finally:
        server.stop()


# --- request head limits and memory -----------------------------------------------------------------------------

GET = b"GET /metrics HTTP/1.1\r\n"


def request_line(length: int) -> bytes:
    """A request line of `length` bytes, its CRLF included."""
    return b"GET /" + b"a" * (length - len(b"GET / HTTP/1.1\r\n")) + b" HTTP/1.1\r\n"


def header(name: str, length: int) -> bytes:
    """A header line of `length` bytes, its CRLF included."""
    return f"{name}: ".encode() + b"a" * (length - len(name) - 4) + b"\r\n"


def filled(extra: int) -> bytes:
    """A head of exactly MAX_HEAD + `extra` bytes, in lines of at most MAX_LINE."""
    lines = [header(f"X-{n}", MAX_LINE) for n in range(3)]
    lines.append(header("X-3", MAX_HEAD - len(GET) - 3 * MAX_LINE - 2 + extra))
    return GET + b"".join(lines) + b"\r\n"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (request_line(MAX_LINE) + b"\r\n", 404),
        (request_line(MAX_LINE + 1) + b"\r\n", 414),
        (GET + header("X-Big", MAX_LINE) + b"\r\n", 200),
        (GET + header("X-Big", MAX_LINE + 1) + b"\r\n", 431),
        (GET + b"".join(header(f"X-{n}", 12) for n in range(MAX_HEADERS)) + b"\r\n", 200),
        (GET + b"".join(header(f"X-{n}", 12) for n in range(MAX_HEADERS + 1)) + b"\r\n", 431),
        (filled(0), 200),
        (filled(1), 431),
        (b"POST /metrics HTTP/1.1\r\n\r\n", 501),
    ],
    ids=["line", "line-over", "header", "header-over", "count", "count-over", "size", "size-over", "post"],
)
def test_request_heads_are_held_to_the_limits(start_server: StartServer, head: bytes, status: int) -> None:
    assert_answered(start_server, head, status)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /metrics\r\n\r\n", 400),  # HTTP/0.9
        (b"GET /metrics HTTP/1.1 x\r\n\r\n", 400),
        (b"GET /metrics HTTP/1\r\n\r\n", 400),
        (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
        (b"\r\n", 400),
        (GET + b"No colon\r\n\r\n", 400),
        (GET + b"Host : 127.0.0.1\r\n\r\n", 400),
        (GET + b"X-A: a\r\n folded\r\n\r\n", 400),  # obsolete line folding (RFC 9112, 5.2)
    ],
    ids=["http-0.9", "four-words", "version", "http-2", "blank", "no-colon", "space-before-colon", "folded"],
)
def test_malformed_requests_are_refused(start_server: StartServer, head: bytes, status: int) -> None:
    assert_answered(start_server, head, status)


REFUSED = {400: "bad_request", 414: "too_large", 431: "too_large", 501: "bad_request", 505: "bad_request"}


def assert_answered(start_server: StartServer, head: bytes, status: int) -> None:
    """`head` sent on a new connection gets `status`, the connection closed after an error reply and the close
    counted by its reason."""
    plain, _ = start_server(False)
    with socket.create_connection(address(plain), timeout=5) as client:
        client.sendall(head)
        reply = http.client.HTTPResponse(client)
        reply.begin()
        reply.read()
        assert reply.status == status
        assert reply.will_close == (status in REFUSED)
    values = samples(address(plain))
    for reason in ("too_large", "bad_request"):
        assert values[f"prosody_lastlog_http_connections_closed_total{{{reason}}}"] == (REFUSED.get(status) == reason)


def test_large_headers_do_not_grow_the_servers_memory(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        before = served.ask("usage")["maxrss_mib"]
        connections = large_heads(served.address, 60)
        held = served.ask("usage")["maxrss_mib"]
        for connection in connections:
            connection.close()
        time.sleep(0.5)  # the server reads their end
        after = served.ask("usage")["maxrss_mib"]
    assert max(held, after) - before < 32  # the old server: +350 MiB


def test_the_cap_is_logged_once_when_hit_and_once_when_over(caplog: pytest.LogCaptureFixture) -> None:
    live = LiveCounts(windows=DEFAULT_WINDOWS, source_names=[])
    server = MetricsServer(Values(), live, host="127.0.0.1", port=0, max_age_seconds={}, max_connections=4,
                           request_deadline=0.5)  # fmt: skip
    server.start()
    try:
        with caplog.at_level(logging.INFO, logger="exporters.http"):
            clients = [socket.create_connection(address(server), timeout=5) for _ in range(12)]
            deadline = time.monotonic() + 5  # their deadline, half a second without the cap, the accept loop's poll
            while time.monotonic() < deadline and not any(r.levelname == "INFO" for r in caplog.records):
                time.sleep(0.05)
            for client in clients:
                client.close()
    finally:
        server.stop()
    messages = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert [level for level, message in messages if "cap" in message] == ["WARNING", "INFO"]
    assert all("127.0.0.1" not in message for _, message in messages)

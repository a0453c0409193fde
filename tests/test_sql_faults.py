"""SQL faults hold up neither `serve`'s stop nor a connect (issue 17, cases 9 and 10).

A query waiting on a locked `prosody` table is cancelled when the daemon stops (private PostgreSQL and MariaDB
servers, tests/integration/private_sql.py); a server that trickles its handshake a byte at a time, or says nothing,
fails a connect within the connect limit and does not hold up a stop (fake servers on loopback, here).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing
from pathlib import Path
from typing import Any

import pytest

from prosody_lastlog.prosody.sql_settings import parse_sql_url
from prosody_lastlog.sources import database
from prosody_lastlog.sources.database import (
    CONNECT_TIMEOUT_SECONDS,
    Cancellation,
    StoppedError,
    connect,
)
from prosody_lastlog.sources.results import DatabaseError
from tests.integration.private_sql import PrivateServer, private_mariadb, private_postgres
from tests.integration.servers import free_port
from tests.integration.test_sql_restart import DATABASE, load_fixture

STOP_SECONDS = 5.0  # the bound on exiting after SIGTERM, well inside systemd's 90 s
MARGIN_SECONDS = 2.0  # over a time limit, for a loaded machine
TRICKLE_SECONDS = 0.5  # between two bytes a trickling server sends (under the short limit, too)
LIFETIME_SECONDS = 20.0  # a fake server's connection ends after this, so that a client that hangs fails the test
SHORT_LIMIT = 1  # the connect limit for in-process tests (psycopg's own is at least 2 s)

Talk = Callable[[socket.socket, threading.Event], None]


# ----------------------------------------------------------------------------------------------- fake servers


def _mysql_greeting() -> bytes:
    """A MariaDB handshake packet (protocol 10), as a server sends it first."""
    payload = b"\x0a5.5.5-10.11.6-MariaDB\x00" + struct.pack("<I", 7) + b"12345678\x00"
    payload += struct.pack("<HBHHB", 0xF7FE, 45, 2, 0x81FF, 21) + bytes(10) + b"123456789012\x00"
    payload += b"mysql_native_password\x00"
    return struct.pack("<I", len(payload))[:3] + b"\x00" + payload


_POSTGRES_NEGOTIATION = {80877103, 80877104}  # SSLRequest, GSSENCRequest: refused with "N"
_POSTGRES_AUTH_OK = b"R" + struct.pack("!II", 8, 0)
_POSTGRES_PARAMETER = b"S" + struct.pack("!I", 4 + 18) + b"server_version\x0016\x00"


def _receive(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client went away")
        data += chunk
    return data


def _trickle(connection: socket.socket, payload: bytes, stopping: threading.Event) -> None:
    """Sends `payload` a byte every TRICKLE_SECONDS, up to LIFETIME_SECONDS."""
    ends = time.monotonic() + LIFETIME_SECONDS
    for byte in payload:
        if stopping.wait(TRICKLE_SECONDS) or time.monotonic() > ends:
            return
        connection.sendall(bytes([byte]))


def silent(connection: socket.socket, stopping: threading.Event) -> None:
    """Accepts, then says nothing (a frozen server, or a wrong port)."""
    stopping.wait(LIFETIME_SECONDS)


def mysql_trickling(connection: socket.socket, stopping: threading.Event) -> None:
    """Sends a MySQL greeting a byte a second: PyMySQL's read timeout never fires."""
    _trickle(connection, _mysql_greeting(), stopping)


def postgres_trickling(connection: socket.socket, stopping: threading.Event) -> None:
    """Refuses TLS and GSS at once, then answers the startup message a byte a second."""
    while True:
        length, code = struct.unpack("!II", _receive(connection, 8))
        if code not in _POSTGRES_NEGOTIATION:
            _receive(connection, length - 8)
            break
        connection.sendall(b"N")
    _trickle(connection, _POSTGRES_AUTH_OK + _POSTGRES_PARAMETER * 100, stopping)


class FakeServer:
    """A TCP server on 127.0.0.1 that talks to each client as `talk` says, on a thread per client."""

    def __init__(self, talk: Talk, port: int = 0) -> None:
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port: int = self.listener.getsockname()[1]
        self.accepted = threading.Event()
        self._talk = talk
        self._stopping = threading.Event()
        self._clients: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept)]
        self._threads[0].start()

    def close(self) -> None:
        """Stops accepting, ends every conversation and waits for the threads."""
        self._stopping.set()
        for sock in [self.listener, *self._clients]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread waiting in accept or recv
        for thread in list(self._threads):
            thread.join()
        for sock in [self.listener, *self._clients]:
            sock.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._clients.append(client)
            thread = threading.Thread(target=self._converse, args=(client,))
            self._threads.append(thread)
            thread.start()
            self.accepted.set()

    def _converse(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self._talk(client, self._stopping)
            client.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def fake_server(talk: Talk, port: int = 0) -> Iterator[FakeServer]:
    server = FakeServer(talk, port)
    try:
        yield server
    finally:
        server.close()


FAKES: dict[str, tuple[str, Talk]] = {
    "mysql trickling": ("mysql", mysql_trickling),
    "mysql silent": ("mysql", silent),
    "postgresql trickling": ("postgresql", postgres_trickling),
    "postgresql silent": ("postgresql", silent),
}


def wait_for_connect_threads() -> None:
    """A connect given up ends by itself (psycopg's at its own deadline), after the caller went on: the leak check
    waits for it."""
    deadline = time.monotonic() + 2 * CONNECT_TIMEOUT_SECONDS
    while any(thread.name == "prosody-lastlog-connect" for thread in threading.enumerate()):
        assert time.monotonic() < deadline, "a connect's thread did not end"
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------------- connects


@pytest.mark.parametrize("fake", sorted(FAKES))
def test_a_connect_is_bounded_as_a_whole(fake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(database, "CONNECT_TIMEOUT_SECONDS", SHORT_LIMIT)
    scheme, talk = FAKES[fake]
    with fake_server(talk) as server:
        settings = parse_sql_url(f"{scheme}://prosody:secret@127.0.0.1:{server.port}/prosody")
        started = time.monotonic()
        with pytest.raises(DatabaseError, match=f"cannot connect to {settings.describe()}: ") as raised:
            connect(settings)
        took = time.monotonic() - started
        wait_for_connect_threads()  # psycopg's own limit is 2 s at least, past the short one
    assert took < SHORT_LIMIT + MARGIN_SECONDS, f"{fake}: the connect failed after {took:.1f} s"
    assert "secret" not in str(raised.value)


@pytest.mark.parametrize("fake", ["mysql trickling", "postgresql trickling"])
def test_a_cancelled_connect_stops_at_once_and_no_other_starts(fake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # psycopg's attempt, given up, ends at its own deadline: sooner than at the default limit, later than the cancel.
    monkeypatch.setattr(database, "CONNECT_TIMEOUT_SECONDS", 3)
    scheme, talk = FAKES[fake]
    cancellation = Cancellation()
    with fake_server(talk) as server:
        settings = parse_sql_url(f"{scheme}://prosody@127.0.0.1:{server.port}/prosody")
        canceller = threading.Timer(0.3, cancellation.cancel)
        canceller.start()
        started = time.monotonic()
        try:
            with pytest.raises(StoppedError, match=f"{settings.describe()}: stopped"):
                connect(settings, cancellation)
            took = time.monotonic() - started
        finally:
            canceller.join()
        assert server.accepted.is_set()
        started = time.monotonic()
        with pytest.raises(StoppedError):
            connect(settings, cancellation)
        assert time.monotonic() - started < 0.5
        wait_for_connect_threads()
    assert took < 0.3 + MARGIN_SECONDS / 2, f"the cancelled connect returned after {took:.1f} s"


def test_count_against_a_mysql_server_trickling_its_greeting_fails_within_the_connect_limit() -> None:
    with fake_server(mysql_trickling) as server:
        target = f"MySQL root@127.0.0.1:{server.port}/prosody"
        command = [sys.executable, "-m", "prosody_lastlog", "count", "--sql"]
        command += [f"mysql://root@127.0.0.1:{server.port}/prosody"]
        started = time.monotonic()
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=CONNECT_TIMEOUT_SECONDS + 3 * MARGIN_SECONDS, check=False
        )
        took = time.monotonic() - started
    assert done.returncode != 0
    assert took < CONNECT_TIMEOUT_SECONDS + MARGIN_SECONDS, f"count failed after {took:.1f} s"
    assert f"cannot connect to {target}: no complete handshake within {CONNECT_TIMEOUT_SECONDS} s" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_cancelled_sqlite_query_stops_at_once(tmp_path: Path) -> None:
    path = tmp_path / "prosody.sqlite"
    sqlite3.connect(path).close()
    cancellation = Cancellation()
    endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
    with closing(connect(parse_sql_url(f"sqlite://{path}"), cancellation)) as connection:
        canceller = threading.Timer(0.3, cancellation.cancel)
        canceller.start()
        started = time.monotonic()
        try:
            with pytest.raises(StoppedError):
                connection.query(endless)
        finally:
            canceller.join()
        assert time.monotonic() - started < 0.3 + MARGIN_SECONDS
        with pytest.raises(StoppedError):
            connection.query("SELECT 1")


# ----------------------------------------------------------------------------------------------- serve stops


class Serve:
    """`prosody-lastlog serve` of one SQL URL, refreshing every second, its output in files."""

    def __init__(self, url: str, directory: Path) -> None:
        self.stdout, self.stderr = directory / "stdout", directory / "stderr"
        command = [sys.executable, "-m", "prosody_lastlog", "serve", "--sql", url, "--sql-interval", "1s"]
        command += ["--listen", "127.0.0.1:0", "--connected", "off"]
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def wait_serving(self) -> None:
        deadline = time.monotonic() + 30
        while "serving" not in self.stdout.read_text():
            assert self.process.poll() is None, f"serve exited: {self.stderr.read_text()}"
            assert time.monotonic() < deadline, f"serve did not start: {self.stderr.read_text()}"
            time.sleep(0.05)

    def stop(self) -> float:
        """SIGTERM; the seconds until it exited (killed past STOP_SECONDS + a margin, then the test fails)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_SECONDS + 2 * MARGIN_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve still running {STOP_SECONDS + 2 * MARGIN_SECONDS} s after SIGTERM")
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def after_stopping(self) -> str:
        """What serve logged once it began to stop."""
        text = self.stderr.read_text()
        return text[text.index("stopping on signal") :]


@contextlib.contextmanager
def serving(url: str, directory: Path) -> Iterator[Serve]:
    serve = Serve(url, directory)
    try:
        serve.wait_serving()
        yield serve
    finally:
        serve.kill()


@pytest.mark.parametrize("fake", ["mysql trickling", "postgresql trickling"])
def test_serve_stops_at_once_while_connecting_to_a_trickling_server(fake: str, tmp_path: Path) -> None:
    """The port refuses at first (serve starts, the source down); then a server that trickles its handshake takes
    the next refresh's connect, and SIGTERM comes."""
    scheme, talk = FAKES[fake]
    port = free_port()
    with serving(f"{scheme}://root@127.0.0.1:{port}/prosody", tmp_path) as serve, fake_server(talk, port) as server:
        assert server.accepted.wait(10), "no refresh connected"
        took = serve.stop()
        assert serve.process.returncode == 0
        stopped = serve.after_stopping()
    assert took < STOP_SECONDS, f"{fake}: serve exited {took:.1f} s after SIGTERM"
    assert "Traceback" not in stopped and "ERROR" not in stopped, stopped


# ----------------------------------------------------------------------------------------------- locked table

SERVERS: dict[str, Callable[[], AbstractContextManager[PrivateServer]]] = {
    "postgresql": private_postgres,
    "mariadb": private_mariadb,
}
LOCK = {
    "PostgreSQL": 'LOCK TABLE "prosody" IN ACCESS EXCLUSIVE MODE',
    "MySQL": "LOCK TABLES prosody WRITE",
}
WAITING = {  # queries of the database waiting for the lock
    "PostgreSQL": "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
    "MySQL": "SELECT count(*) FROM information_schema.processlist WHERE db = %s AND state LIKE 'Waiting for table%%'",
}


@pytest.fixture(scope="module", params=sorted(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[PrivateServer]:
    """A private server holding the sample case's rows, for this module's tests."""
    with SERVERS[request.param]() as running:
        load_fixture(running)
        yield running


def waiting_queries(watcher: Any, driver: str) -> int:
    with closing(watcher.cursor()) as cursor:
        cursor.execute(WAITING[driver], (DATABASE,))
        return int(cursor.fetchone()[0])


def wait_for(what: str, condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.05)


@pytest.mark.integration
def test_serve_stops_at_once_while_its_query_waits_on_a_locked_table(server: PrivateServer, tmp_path: Path) -> None:
    """The refresh's query is cancelled: it ends on the server too, while the lock is still held."""
    with closing(server.connect(DATABASE)) as locker, closing(server.connect(DATABASE, autocommit=True)) as watcher:
        with serving(server.url(DATABASE), tmp_path) as serve:
            with closing(locker.cursor()) as cursor:
                cursor.execute(LOCK[server.driver])
            wait_for("a refresh waiting on the lock", lambda: waiting_queries(watcher, server.driver) == 1)
            took = serve.stop()
            assert serve.process.returncode == 0
            stopped = serve.after_stopping()
        wait_for("the query gone from the server", lambda: waiting_queries(watcher, server.driver) == 0)
        locker.rollback()  # PostgreSQL's lock ends with its transaction, MariaDB's with the session
    assert took < STOP_SECONDS, f"{server.driver}: serve exited {took:.1f} s after SIGTERM"
    assert "Traceback" not in stopped and "ERROR" not in stopped, stopped


@pytest.mark.integration
def test_serve_stops_at_once_while_its_first_count_waits_on_a_locked_table(
    server: PrivateServer, tmp_path: Path
) -> None:
    """The table is locked before serve starts: SIGTERM during the first count (the aggregate's queries run on
    threads of their own) cancels them rather than waiting for them."""
    with closing(server.connect(DATABASE)) as locker, closing(server.connect(DATABASE, autocommit=True)) as watcher:
        with closing(locker.cursor()) as cursor:
            cursor.execute(LOCK[server.driver])
        serve = Serve(server.url(DATABASE), tmp_path)
        try:
            wait_for("the first count waiting on the lock", lambda: waiting_queries(watcher, server.driver) >= 1)
            took = serve.stop()
            assert serve.process.returncode == 0
        finally:
            serve.kill()
        wait_for("the queries gone from the server", lambda: waiting_queries(watcher, server.driver) == 0)
        locker.rollback()
    assert took < STOP_SECONDS, f"{server.driver}: serve exited {took:.1f} s after SIGTERM"
    assert "Traceback" not in serve.stderr.read_text()

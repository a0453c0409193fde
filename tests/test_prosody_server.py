"""Finding connected users: the admin-socket client's handling of answers, the pidfile, and the mode chosen."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from prosody_lastlog.core.connected import ConnectedMode, ConnectedSetting
from prosody_lastlog.prosody.admin_socket import AdminSocketError, ask_connected_users
from prosody_lastlog.prosody.running import ConnectedProbe, ProsodyServer, prosody_start_time
from tests.conftest import as_nobody


@contextmanager
def admin_socket(path: Path, answer: bytes) -> Iterator[list[bytes]]:
    """A Unix socket that answers every connection with `answer` and records what it was sent."""
    received: list[bytes] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            received.append(connection.recv(65536))
            connection.sendall(answer)
            time.sleep(0.1)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield received
    finally:
        thread.join(5)
        server.close()


STREAM = b"<?xml version='1.0'?><stream:stream xmlns='xmpp:prosody.im/admin' xmlns:stream='http://etherx.jabber.org/streams'>"


def test_reads_users_per_host_from_the_shell_answer(tmp_path: Path) -> None:
    answer = STREAM + (
        b"<repl-output>example.com\talice\nexample.com\tbob\nother.example\tcarol</repl-output>"
        b"<repl-result type='ok'>Result: 3</repl-result>"
    )
    with admin_socket(tmp_path / "prosody.sock", answer) as received:
        users = ask_connected_users(tmp_path / "prosody.sock")
    assert users == {"example.com": frozenset({"alice", "bob"}), "other.example": frozenset({"carol"})}
    assert b"<repl-input>&gt;local o = {}" in received[0]  # the Lua line, XML-escaped


def test_nobody_connected(tmp_path: Path) -> None:
    answer = STREAM + b"<repl-output></repl-output><repl-result type='ok'>Result: 0</repl-result>"
    with admin_socket(tmp_path / "prosody.sock", answer):
        assert ask_connected_users(tmp_path / "prosody.sock") == {}


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"<repl-result type='error'>No module handled this query</repl-result>", "answered an error"),
        (b"<repl-output>example.com\talice</repl-output><repl-result>Result: 2</repl-result>", "counted 2"),
        (b"<repl-result type='ok'>Result: nil</repl-result>", "unexpected answer"),
        (b"<repl-output>oops</repl-outp", "closed the stream"),
        (b"<repl-output>a</wrong>", "invalid XML"),
        (b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>", "refused"),
    ],
)
def test_odd_answers_are_errors(tmp_path: Path, answer: bytes, reason: str) -> None:
    with admin_socket(tmp_path / "prosody.sock", STREAM + answer), pytest.raises(AdminSocketError, match=reason):
        ask_connected_users(tmp_path / "prosody.sock", timeout=2)


def test_a_missing_or_dead_socket_says_prosody_is_not_running(tmp_path: Path) -> None:
    """Prosody 13 removes its socket when it stops; one a crash left behind refuses connections."""
    with pytest.raises(AdminSocketError, match=r"^Prosody is not running \(no Prosody answers at .*prosody\.sock\)$"):
        ask_connected_users(tmp_path / "prosody.sock")
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(tmp_path / "prosody.sock"))  # bound, never listening: as after a crash
    try:
        with pytest.raises(AdminSocketError, match=r"^Prosody is not running"):
            ask_connected_users(tmp_path / "prosody.sock")
    finally:
        left.close()


def why_not(path: Path) -> bytes:
    """Why ask_connected_users(path) fails."""
    try:
        ask_connected_users(path, timeout=2)
    except AdminSocketError as error:
        return str(error).encode()
    return b"it answered"


def test_a_socket_without_permission_says_what_access_it_takes() -> None:
    """Connecting takes write access to the socket, which Prosody gives its own user (and group) only."""
    directory = Path(tempfile.mkdtemp())  # not under pytest's private tmp: another user must reach it
    try:
        directory.chmod(0o755)
        path = directory / "prosody.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(str(path))
            server.listen()
            path.chmod(0o755)  # as Prosody makes it
            if os.geteuid() == 0:  # root connects anyway: ask as nobody
                reason = as_nobody(lambda: why_not(path)).decode()
            else:
                path.chmod(0o555)  # no write access for its owner either
                reason = why_not(path).decode()
    finally:
        shutil.rmtree(directory)
    assert reason.startswith(f"no permission to connect to {path}: it takes write access"), reason


def test_start_time_of_a_running_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "prosody.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    started = prosody_start_time(pidfile)
    assert started is not None and started <= time.time()
    assert time.time() - started < 24 * 3600  # this test process started recently


@pytest.mark.parametrize("content", ["", "nonsense", "-1", "99999999"])  # 99999999 > pid_max: not running
def test_no_start_time_without_a_running_process(tmp_path: Path, content: str) -> None:
    pidfile = tmp_path / "prosody.pid"
    pidfile.write_text(content)
    assert prosody_start_time(pidfile) is None
    assert prosody_start_time(tmp_path / "missing.pid") is None


def probe(
    tmp_path: Path, detection: ConnectedSetting, *, socket_works: bool, pidfile: bool = True
) -> tuple[ConnectedProbe, Path]:
    pid = tmp_path / "prosody.pid"
    if pidfile:
        pid.write_text("1\n")

    def ask(path: Path) -> dict[str, frozenset[str]]:
        if not socket_works:
            raise AdminSocketError(f"cannot ask {path}: Permission denied")
        return {"example.com": frozenset({"alice"})}

    server = ProsodyServer(tmp_path / "prosody.sock", (pid,))
    return ConnectedProbe(server, detection, ask=ask, start_time=lambda _: 1_700_000_000.7), pid


def test_auto_prefers_the_admin_socket(tmp_path: Path) -> None:
    found = probe(tmp_path, ConnectedSetting.AUTO, socket_works=True)[0].probe()
    assert found.mode is ConnectedMode.ADMIN_SOCKET and found.users == {"example.com": frozenset({"alice"})}


def test_auto_falls_back_to_the_heuristic_and_says_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "prosody_lastlog")
    connected_probe = probe(tmp_path, ConnectedSetting.AUTO, socket_works=False)[0]
    found = connected_probe.probe()
    connected_probe.probe()
    assert found.mode is ConnectedMode.HEURISTIC and found.prosody_started == 1_700_000_000
    notes = [r.getMessage() for r in caplog.records if "connected users" in r.getMessage()]
    assert len(notes) == 1 and "Permission denied" in notes[0]  # logged once, not on every probe


def test_nothing_found_means_none(tmp_path: Path) -> None:
    assert (
        probe(tmp_path, ConnectedSetting.AUTO, socket_works=False, pidfile=False)[0].probe().mode is ConnectedMode.NONE
    )
    assert probe(tmp_path, ConnectedSetting.ADMIN_SOCKET, socket_works=False)[0].probe().mode is ConnectedMode.NONE


def test_the_chosen_mode_is_kept(tmp_path: Path) -> None:
    assert probe(tmp_path, ConnectedSetting.HEURISTIC, socket_works=True)[0].probe().mode is ConnectedMode.HEURISTIC
    assert probe(tmp_path, ConnectedSetting.OFF, socket_works=True)[0].probe().mode is ConnectedMode.NONE

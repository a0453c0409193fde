"""Finding connected users: the admin-socket client's handling of answers, the pidfile, and the mode chosen; and
which version of Prosody runs."""

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
from prosody_lastlog.core.rules import InstalledProsody
from prosody_lastlog.prosody.admin_socket import AdminSocketError, ask_connected_users, ask_version
from prosody_lastlog.prosody.running import ConnectedProbe, ProsodyServer, VersionFinder, prosody_start_time
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


# --------------------------------------------------------------------------- which version runs (NodeInfo)


def test_reads_the_version_from_the_shell_answer(tmp_path: Path) -> None:
    answer = STREAM + b"<repl-output>13.0.1</repl-output><repl-result type='ok'>Result: 1</repl-result>"
    with admin_socket(tmp_path / "prosody.sock", answer) as received:
        assert ask_version(tmp_path / "prosody.sock") == "13.0.1"
    assert b"<repl-input>&gt;print(prosody.version) return 1</repl-input>" in received[0]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"<repl-output></repl-output><repl-result>Result: 0</repl-result>", "unexpected version"),
        (b"<repl-output>1\n2</repl-output><repl-result>Result: 2</repl-result>", "unexpected version"),
        (b"<repl-output>" + b"9" * 101 + b"</repl-output><repl-result>Result: 1</repl-result>", "unexpected version"),
        (b"<repl-output>13.0.1\t(odd)</repl-output><repl-result>Result: 1</repl-result>", "unexpected version"),
        (b"<repl-output>13.0.1</repl-output><repl-result>Result: 2</repl-result>", "counted 2"),
        (b"<repl-result type='error'>Error: attempt to index nil</repl-result>", "answered an error"),
    ],
)
def test_odd_version_answers_are_errors(tmp_path: Path, answer: bytes, reason: str) -> None:
    with admin_socket(tmp_path / "prosody.sock", STREAM + answer), pytest.raises(AdminSocketError, match=reason):
        ask_version(tmp_path / "prosody.sock", timeout=2)


def finder(tmp_path: Path, asked: str | Exception, installed: str | None, setting: str | None) -> VersionFinder:
    """A VersionFinder whose admin socket answers `asked` (or raises it), with a prosody.version file holding
    `installed` (none if None)."""
    version_file = tmp_path / "prosody.version"
    if installed is not None:
        version_file.write_text(installed + "\n")

    def ask(_: Path) -> str:
        if isinstance(asked, Exception):
            raise asked
        return asked

    return VersionFinder(
        ProsodyServer(tmp_path / "prosody.sock"), InstalledProsody("0.12.3", str(version_file)), setting, ask=ask
    )


DOWN = AdminSocketError("Prosody is not running")


@pytest.mark.parametrize(
    ("asked", "installed", "setting", "found"),
    [
        ("13.0.2", "13.0.1", "1.0", "13.0.2"),  # the running server first
        (DOWN, "13.0.1", "1.0", "13.0.1"),  # else the package's file, read now (not the version planned with)
        (DOWN, "bd2fc0e9ff44", "1.0", "hg:bd2fc0e9ff44"),  # a build from Mercurial names its revision
        (DOWN, None, "1.0", "1.0"),  # else the setting
        (DOWN, "", "1.0", "1.0"),
        (DOWN, None, None, None),  # never a guess
    ],
)
def test_the_version_comes_from_prosody_then_the_package_then_the_setting(
    tmp_path: Path, asked: str | Exception, installed: str | None, setting: str | None, found: str | None
) -> None:
    assert finder(tmp_path, asked, installed, setting).find() == found


def test_where_the_version_came_from_is_logged_once_per_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "prosody_lastlog")
    versions = finder(tmp_path, DOWN, "13.0.1", None)
    for _ in range(3):
        assert versions.find() == "13.0.1"
    (tmp_path / "prosody.version").unlink()
    assert versions.find() is None
    notes = [(r.levelname, r.getMessage()) for r in caplog.records if r.getMessage().startswith("version: ")]
    assert notes == [
        ("INFO", f"version: Prosody 13.0.1, from the installed package's {tmp_path}/prosody.version "
         "(Prosody is not running)"),
        ("ERROR", "version: Prosody's version is not known (Prosody is not running; no installed Prosody found; no "
         "prosody_version setting)"),
    ]  # fmt: skip


def test_a_version_setting_that_is_not_used_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The running Prosody and the installed package come first; whoever set prosody_version is told it is not used."""
    caplog.set_level(logging.INFO, "prosody_lastlog")
    assert finder(tmp_path, "13.0.2", "13.0.1", "1.0").find() == "13.0.2"
    assert finder(tmp_path, DOWN, "13.0.1", "1.0").find() == "13.0.1"
    notes = [(r.levelname, r.getMessage()) for r in caplog.records if r.getMessage().startswith("version: ")]
    assert [level for level, _ in notes] == ["WARNING", "WARNING"]
    assert all(text.endswith("; the prosody_version setting is not used") for _, text in notes)

"""A full scan indexed in a child process gives the counting core's numbers, and fails as the reader does."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from prosody_lastlog.core import index as activity_index
from prosody_lastlog.core.compact import NameHash
from prosody_lastlog.core.connected import ConnectedMode, ConnectedUsers
from prosody_lastlog.core.counting import count_host
from prosody_lastlog.core.model import Store, UserActivity
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.sources import files, index_build
from prosody_lastlog.sources.files import FileStoreReader
from prosody_lastlog.sources.index_build import ScanProcessError, scan_indexes
from prosody_lastlog.sources.results import DataDirError, ReadResult
from tests.test_files_reader import another_thread, mixed_tree  # noqa: F401 (fixtures)

NOW = 1_763_900_000
CONNECTED = ConnectedUsers(ConnectedMode.HEURISTIC, prosody_started=0)


def same_as_in_process(tree: Path) -> None:
    """scan_indexes gives, host by host, what the core counts from an in-process read, and the same problems."""
    reader = FileStoreReader(tree, workers=2)
    read_here: list[int] = []
    read = reader.read(read_here.append)
    progress: list[int] = []
    scanned = scan_indexes(reader, CONNECTED, progress=progress.append)
    assert sorted(scanned.hosts) == sorted(read.hosts)
    for host, data in read.hosts.items():
        expected = count_host(data, now=NOW, windows=DEFAULT_WINDOWS, connected=CONNECTED)
        index = scanned.hosts[host]
        assert index.counts(now=NOW, windows=DEFAULT_WINDOWS) == expected
        assert index.connected is CONNECTED
        for user in data.users[:5]:  # names are found with the hash the child used
            index.remove(user.user)
        assert len(index) == len({user.user for user in data.users}) - min(5, len(data.users))
    assert scanned.problems == read.problems
    assert progress == sorted(progress) and progress[-1] == read_here[-1] > 0


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a small tree is read by several processes (where this process's settings reach: forked children)."""
    monkeypatch.setattr(files, "MIN_FILES_PER_WORKER", 1)


@pytest.mark.usefixtures("small_parts")
def test_an_index_built_in_a_forked_child_equals_the_core(mixed_tree: Path) -> None:  # noqa: F811
    same_as_in_process(mixed_tree)


@pytest.mark.usefixtures("another_thread")
def test_with_threads_running_the_index_is_built_by_a_clean_process_not_here(
    mixed_tree: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader = FileStoreReader(mixed_tree)
    expected = {host: index.counts(now=NOW, windows=DEFAULT_WINDOWS) for host, index in _in_process(reader).items()}
    monkeypatch.setattr(activity_index.HostIndex, "_load", _not_here)  # this process's only: the child is fresh
    scanned = scan_indexes(reader, CONNECTED)
    assert {host: index.counts(now=NOW, windows=DEFAULT_WINDOWS) for host, index in scanned.hosts.items()} == expected


def _in_process(reader: FileStoreReader) -> dict[str, activity_index.HostIndex]:
    read = reader.read()
    return {
        host: activity_index.HostIndex(
            host, data.store, CONNECTED, data.users, choice=data.choice, registered_accounts=data.registered_accounts
        )
        for host, data in read.hosts.items()
    }


def _not_here(*args: object) -> None:
    raise AssertionError("indexed in the daemon's own process")


def test_without_processes_it_is_all_done_here(mixed_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    def refuse(process: multiprocessing.process.BaseProcess) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
    same_as_in_process(mixed_tree)


def test_a_missing_data_dir_fails_as_the_reader_does(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match="cannot read data directory"):
        scan_indexes(FileStoreReader(tmp_path / "missing"), CONNECTED)


def test_a_child_that_dies_is_an_error(mixed_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(index_build, "_child", lambda job, sender: os._exit(1))
    with pytest.raises(ScanProcessError):
        scan_indexes(FileStoreReader(mixed_tree), CONNECTED)


class SlowReader(FileStoreReader):
    """A reader that takes far longer than any test: only ending its process ends the scan."""

    def read(self, progress: files.Progress | None = None) -> ReadResult:
        time.sleep(60)
        return super().read(progress)


def test_stopping_ends_a_running_scan_at_once(sample_tree: Path) -> None:
    processes = index_build.ScanProcesses()
    outcome: list[BaseException] = []

    def scan() -> None:
        try:
            scan_indexes(SlowReader(sample_tree), CONNECTED, processes=processes)
        except BaseException as exc:
            outcome.append(exc)

    scanning = threading.Thread(target=scan)
    scanning.start()
    threading.Event().wait(1.0)  # the child is started and reading
    processes.stop_all()
    scanning.join(10)
    assert not scanning.is_alive() and isinstance(outcome[0], ScanProcessError)


def test_an_index_travels_in_pieces_and_arrives_equal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every array of an index is sent apart, in pieces of at most PIECE_BYTES; the index rebuilt from them counts,
    finds and changes users as the original does."""
    monkeypatch.setattr(index_build, "PIECE_BYTES", 4096)
    users = [UserActivity(f"user{n}", NOW - 37 * n, registered=NOW - 400 * n if n % 3 else None) for n in range(5000)]
    sent = activity_index.HostIndex("example.com", Store.LASTLOG2, CONNECTED, users, hash_name=NameHash())
    receiver, sender = multiprocessing.Pipe(duplex=False)
    pieces: list[int] = []

    def receive_bytes() -> bytes:
        piece = receiver.recv_bytes()
        pieces.append(len(piece))
        return piece

    sending = threading.Thread(target=index_build._send_index, args=(sender, sent))
    sending.start()
    kind, (pickled, layout) = receiver.recv()
    received = index_build._receive_index(SimpleNamespace(recv_bytes=receive_bytes), pickled, layout)  # type: ignore[arg-type]
    sending.join()
    assert kind == "host"
    assert len(pickled) < 2_000  # the arrays' ~250 kB are not in it
    assert sum(pieces) == sum(size for _, size in layout) > 200_000
    assert max(pieces) == 4096
    assert received.counts(now=NOW, windows=DEFAULT_WINDOWS) == sent.counts(now=NOW, windows=DEFAULT_WINDOWS)
    assert {name: (type(value), getattr(value, "typecode", None)) for name, value in vars(received).items()} == {
        name: (type(value), getattr(value, "typecode", None)) for name, value in vars(sent).items()
    }
    for index in (sent, received):
        index.remove("user7")
        index.set(UserActivity("user5000", NOW))
    assert received.counts(now=NOW, windows=DEFAULT_WINDOWS) == sent.counts(now=NOW, windows=DEFAULT_WINDOWS)
    assert len(received) == len(sent) == 5000

"""The file-store reader on trees written by real Prosody, with odd and hostile files added."""

from __future__ import annotations

import gc
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prosody_lastlog.core.model import ReadProblem, Store, StoreBasis
from prosody_lastlog.core.rules import Policy
from prosody_lastlog.prosody.pathnames import encode_name
from prosody_lastlog.sources import file_records, files, parallel_read
from prosody_lastlog.sources.files import MAX_FILE_SIZE, MAX_WORKERS, FileStoreReader, default_workers
from prosody_lastlog.sources.results import DataDirError, ReadResult
from tests.conftest import case_data


def lastlog2_dir(tree: Path, host: str) -> Path:
    return tree / encode_name(host) / "lastlog2"


def a_real_file(tree: Path, host: str = "example.com") -> Path:
    return sorted(lastlog2_dir(tree, host).glob("*.dat"))[0]


def test_reads_every_host_decoded_with_its_store(sample_tree: Path) -> None:
    result = FileStoreReader(sample_tree).read()
    assert not result.problems
    assert "example.com" in result.hosts
    assert all("%" not in host for host in result.hosts)
    assert {data.store for data in result.hosts.values()} <= set(Store)
    users = {u.user for u in result.hosts["example.com"].users}
    assert all("%" not in user for user in users)


def test_scratch_files_are_ignored(sample_tree: Path) -> None:
    source = a_real_file(sample_tree)
    shutil.copy(source, source.with_name(source.name + "~"))
    (source.parent / "half-written.dat~").write_bytes(b"return {\n\t[")
    before = FileStoreReader(case_data("sample")).read()
    after = FileStoreReader(sample_tree).read()
    assert not after.problems
    assert len(after.hosts["example.com"].users) == len(before.hosts["example.com"].users)


def test_a_file_vanishing_between_listing_and_reading_is_normal(sample_tree: Path) -> None:
    victim = a_real_file(sample_tree)

    def scandir_then_delete(path: str) -> list[os.DirEntry[str]]:
        entries = list(os.scandir(path))
        if Path(path) == victim.parent and victim.exists():
            victim.unlink()
        return entries

    expected = len(FileStoreReader(case_data("sample")).read().hosts["example.com"].users) - 1
    result = FileStoreReader(sample_tree, scandir=scandir_then_delete).read()
    assert not result.problems
    assert len(result.hosts["example.com"].users) == expected


def test_an_unreadable_host_directory_is_a_problem_not_a_silent_gap(sample_tree: Path) -> None:
    locked = sample_tree / "example%2ecom"

    def scandir(path: str) -> list[os.DirEntry[str]]:
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied")
        return list(os.scandir(path))

    result = FileStoreReader(sample_tree, scandir=scandir).read()
    assert [(p.where, p.kind, p.reason) for p in result.problems] == [
        ("example%2ecom", "unreadable", "Permission denied")
    ]
    assert "example.com" not in result.hosts and "münchen.example" in result.hosts


def test_names_prosody_cannot_write_are_reported_or_ignored(sample_tree: Path) -> None:
    store = lastlog2_dir(sample_tree, "example.com")
    shutil.copy(a_real_file(sample_tree), os.fsdecode(bytes(store) + b"/\xff%41.dat"))
    shutil.copy(a_real_file(sample_tree), store / "dotted.name.dat")
    shutil.copy(a_real_file(sample_tree), store / "bad%ff.dat")  # not UTF-8 once decoded
    (sample_tree / "_global").mkdir()  # datamanager's directory for host-less data
    (sample_tree / "http_file_share").mkdir()  # another module's directory
    result = FileStoreReader(sample_tree).read()
    assert sorted(p.where for p in result.problems) == [
        "example%2ecom/lastlog2/\\xff%41.dat",
        "example%2ecom/lastlog2/bad%ff.dat",
        "example%2ecom/lastlog2/dotted.name.dat",
    ]
    assert {p.kind for p in result.problems} == {"unexpected"}
    assert all("%" not in host and "_" not in host for host in result.hosts)


def test_a_second_directory_for_the_same_host_is_reported(sample_tree: Path) -> None:
    shutil.copytree(sample_tree / "example%2ecom", sample_tree / "example%2Ecom")
    result = FileStoreReader(sample_tree).read()
    assert [(p.where, p.kind) for p in result.problems] == [("example%2ecom", "unexpected")]
    assert "example.com" in result.hosts


@pytest.mark.parametrize(
    ("name", "make", "kind"),
    [
        ("empty.dat", lambda p: p.write_bytes(b""), "empty"),
        ("huge.dat", lambda p: p.write_bytes(b"return {}" + b" " * MAX_FILE_SIZE), "limit"),
        ("loop.dat", lambda p: p.write_bytes(b"while true do end"), "limit"),
        ("shell.dat", lambda p: p.write_bytes(b'os.execute("touch /tmp/prosody-lastlog-pwned")'), "invalid"),
        ("truncated.dat", lambda p: p.write_bytes(b'return {\n\t["login"] = {\n\t\t["timest'), "invalid"),
        ("bytecode.dat", lambda p: p.write_bytes(b"\x1bLuaT\x00\x19\x93\r\n\x1a\n"), "invalid"),
        ("fifo.dat", os.mkfifo, "not_a_file"),
        ("dir.dat", lambda p: p.mkdir(), "not_a_file"),
        ("link.dat", lambda p: p.symlink_to("/etc/passwd"), "not_a_file"),
        ("odd.dat", lambda p: p.write_bytes(b'return { login = "now" };\n'), "unexpected"),
    ],
)
def test_bad_files_are_reported_by_name_and_the_rest_still_counts(
    sample_tree: Path, name: str, make: object, kind: str
) -> None:
    target = lastlog2_dir(sample_tree, "example.com") / name
    make(target)  # type: ignore[operator]
    clean = FileStoreReader(case_data("sample")).read()
    started = time.monotonic()
    result = FileStoreReader(sample_tree).read()
    assert time.monotonic() - started < 10
    assert [(p.where, p.kind) for p in result.problems] == [(f"example%2ecom/lastlog2/{name}", kind)]
    clean_users = {u.user for u in clean.hosts["example.com"].users}
    assert clean_users <= {u.user for u in result.hosts["example.com"].users}
    assert not Path("/tmp/prosody-lastlog-pwned").exists()


def test_host_filter(sample_tree: Path) -> None:
    result = FileStoreReader(sample_tree, hosts=["EXAMPLE.com"]).read()
    assert list(result.hosts) == ["example.com"]


def test_missing_data_dir_is_fatal_and_named(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match=str(tmp_path / "nope")):
        FileStoreReader(tmp_path / "nope").read()


def test_without_a_module_the_default_order_applies_and_store_forces_one() -> None:
    """No mod_measure_active_users known (an empty install): Prosody 13's data (account_activity) is counted from
    account_activity, 0.12's from lastlog2, else lastlog. --store wins, and keeps every host (with zeros)."""
    tree = case_data("account_activity")
    auto = FileStoreReader(tree).read()
    assert {data.store for data in auto.hosts.values()} == {Store.ACCOUNT_ACTIVITY}
    assert {data.counting.basis for data in auto.hosts.values()} == {StoreBasis.DEFAULT}
    assert auto.server is not None and auto.server.thirteen
    forced = FileStoreReader(tree, policy=Policy(forced_store=Store.LASTLOG2)).read()
    assert {data.store for data in forced.hosts.values()} == {Store.LASTLOG2}
    assert list(forced.hosts) == list(auto.hosts)  # only13.example has no lastlog2 data: kept, with no users
    assert not forced.hosts["only13.example"].users
    legacy = FileStoreReader(case_data("lastlog_legacy")).read()
    assert {data.store for data in legacy.hosts.values()} == {Store.LASTLOG, Store.LASTLOG2}
    assert legacy.server is not None and not legacy.server.thirteen


def test_progress_is_reported_per_batch(sample_tree: Path) -> None:
    seen: list[int] = []
    result = FileStoreReader(sample_tree).read(progress=seen.append)
    assert seen and seen == sorted(seen)
    assert seen[-1] == sum(len(data.users) for data in result.hosts.values())


@pytest.fixture
def mixed_tree(tmp_path: Path) -> Path:
    """Every kind of file at once: Prosody's own of every store, hostile ones, ones only the sandbox reads
    (escapes, the pre-0.11 serializer), odd names, and a disabled account."""
    tree = tmp_path / "data"
    for case in ("hostile", "large", "lastlog_legacy", "account_activity"):
        shutil.copytree(case_data(case), tree, dirs_exist_ok=True)
    store = lastlog2_dir(tree, "big.example")
    for index in range(40):
        (store / f"old{index}.dat").write_bytes(b'return {\n["login"] = {\n["timestamp"] = %d,\n},\n};\n' % index)
    (store / "odd.name.dat").write_bytes(b"return {};\n")
    accounts = tree / "big%2eexample" / "accounts"
    accounts.mkdir()
    users = sorted(p.name for p in store.glob("*.dat") if p.name != "odd.name.dat")
    for index, name in enumerate(users[:60]):
        disabled = index % 7 == 0  # 9 of them
        (accounts / name).write_bytes(b'return {\n\t["disabled"] = %s;\n};\n' % (b"true" if disabled else b"false"))
    (accounts / users[60]).write_bytes(b"return { disabled = ")
    (accounts / users[61]).write_bytes(b"")
    (accounts / "no%2dactivity.dat").write_bytes(b"return { disabled = ")  # an account with no activity data, invalid
    return tree


def same_read(a: ReadResult, b: ReadResult) -> None:
    """The same records and problems, in the same order."""
    assert list(a.hosts) == list(b.hosts)
    for host, data in a.hosts.items():
        assert (data.store, data.users) == (b.hosts[host].store, b.hosts[host].users)
    assert a.problems == b.problems


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a small tree is read by several processes, in many small parts."""
    monkeypatch.setattr(files, "MIN_FILES_PER_WORKER", 1)
    monkeypatch.setattr(file_records, "BATCH_SIZE", 4)  # where a batch for the sandbox ends
    monkeypatch.setattr(parallel_read, "BATCH_SIZE", 4)  # where a listing is cut into shares
    monkeypatch.setattr(parallel_read, "CHUNK", 12)


@pytest.mark.usefixtures("small_parts")
@pytest.mark.parametrize("workers", [2, 3])
def test_processes_read_what_one_reads_in_the_same_order(mixed_tree: Path, workers: int) -> None:
    seen_alone: list[int] = []
    alone = FileStoreReader(mixed_tree, workers=1).read(seen_alone.append)
    assert {p.kind for p in alone.problems} == {"empty", "invalid", "limit", "unexpected"}
    big = alone.hosts["big.example"]
    # Prosody 13's data (the account_activity case) and its default auth: missing and disabled accounts are marked.
    assert (sum(u.disabled for u in big.users), sum(not u.no_account for u in big.users)) == (9, 63)
    assert [u.user for u in big.users if u.account_only] == ["no-activity"]  # read as any account, after the rest
    account_problems = {p.where for p in alone.problems if p.where.startswith("big%2eexample/accounts/")}
    assert len(account_problems) == 3 and "big%2eexample/accounts/no%2dactivity.dat" in account_problems
    assert ("example%2ecom/accounts/charlie.dat", "limit") in [(p.where, p.kind) for p in alone.problems]  # hostile
    assert sum(u.user.startswith("old") for u in alone.hosts["big.example"].users) == 40
    seen: list[int] = []
    same_read(FileStoreReader(mixed_tree, workers=workers).read(seen.append), alone)
    assert seen == sorted(seen) and seen[-1] == seen_alone[-1] > 2000


def _refuse_to_start(process: multiprocessing.process.BaseProcess) -> None:
    raise BlockingIOError(11, "Resource temporarily unavailable")


@pytest.mark.usefixtures("small_parts")
@pytest.mark.parametrize(
    ("target", "name", "failure"),
    [
        (parallel_read, "_child", lambda share, sender: os._exit(1)),  # dies before sending anything
        (multiprocessing.process.BaseProcess, "start", _refuse_to_start),  # never starts
    ],
)
def test_a_failed_process_has_its_share_read_here(
    mixed_tree: Path, monkeypatch: pytest.MonkeyPatch, target: object, name: str, failure: object
) -> None:
    alone = FileStoreReader(mixed_tree, workers=1).read()
    monkeypatch.setattr(target, name, failure)
    same_read(FileStoreReader(mixed_tree, workers=3).read(), alone)


@pytest.fixture
def another_thread() -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    yield
    stop.set()
    thread.join()


@pytest.mark.usefixtures("another_thread")
def test_with_other_threads_running_the_processes_come_from_a_clean_server(
    mixed_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "MIN_FILES_PER_WORKER", 1)  # this process's setting only: the children's are fresh
    alone = FileStoreReader(mixed_tree, workers=1).read()
    same_read(FileStoreReader(mixed_tree, workers=2).read(), alone)


def test_one_user_read_again_is_read_as_in_the_whole_scan(mixed_tree: Path) -> None:
    reader = FileStoreReader(mixed_tree)
    result = reader.read()
    for host, data in result.hosts.items():
        for user in data.users:
            problems: list[ReadProblem] = []
            assert reader.read_user(host, data.counting, user.user, problems) == user
            assert set(problems) <= set(result.problems)


def test_default_workers_are_the_usable_cpus_within_a_cap() -> None:
    assert 1 <= default_workers() <= min(MAX_WORKERS, len(os.sched_getaffinity(0)))


def test_the_garbage_collector_is_paused_while_reading_only(sample_tree: Path) -> None:
    during: list[bool] = []
    FileStoreReader(sample_tree).read(lambda _: during.append(gc.isenabled()))
    assert during and not any(during)
    assert gc.isenabled()
    gc.disable()
    try:
        FileStoreReader(sample_tree).read()
        assert not gc.isenabled()  # left as it was
    finally:
        gc.enable()

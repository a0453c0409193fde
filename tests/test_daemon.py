"""The daemon end to end on loopback: startup count, /metrics, /healthz, live file changes, faults, shutdown."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from watchdog.events import EventsLostEvent

from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon import refresh, watcher
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.sources.index_build import ScannedIndexes, scan_indexes
from prosody_lastlog.sources.kinds import FileSource
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from tests.conftest import case_data

SAMPLE_NOW = json.loads((case_data("sample").parent / "expected.json").read_text())["now"]
STORE_SCRIPT = Path(__file__).with_name("datamanager_store.lua")


@pytest.fixture
def daemon(sample_tree: Path, tmp_path: Path) -> Iterator[Daemon]:
    plan = plan_sources(SourceOptions(data_dir=sample_tree), environ={})
    options = ServeOptions(port=0, as_of=SAMPLE_NOW, textfile=tmp_path / "prosody.prom")
    running = Daemon(plan, windows=DEFAULT_WINDOWS, options=options)
    running.start()
    yield running
    running.stop()


def get(daemon: Daemon, path: str, accept: str = "") -> tuple[int, str, str]:
    request = urllib.request.Request(daemon.server.url.replace("/metrics", path), headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def active(daemon: Daemon, host: str, window: str = "1d") -> float | None:
    _, _, text = get(daemon, "/metrics")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "prosody_active_users" and sample.labels == {"host": host, "window": window}:
                return sample.value
    return None


def wait_for(condition: Callable[[], bool], seconds: float = 2.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if condition():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"not true within {seconds} s")


def prosody_writes(data: Path, user: str, host: str, record: str, store: str = "lastlog2") -> None:
    """Writes like Prosody does (util.datamanager: `<user>.dat~`, then rename)."""
    subprocess.run(["lua5.4", str(STORE_SCRIPT), str(data), user, host, store, record], check=True)


def test_serves_the_same_counts_as_a_one_shot_count(daemon: Daemon) -> None:
    expected = json.loads((case_data("sample").parent / "expected.json").read_text())["active_users"]
    for host, by_window in expected.items():
        for window, value in by_window.items():
            assert active(daemon, host, window) == value


def test_landing_page_healthz_and_openmetrics(daemon: Daemon) -> None:
    status, content_type, body = get(daemon, "/")
    assert status == 200 and 'href="/metrics"' in body and "text/html" in content_type
    assert get(daemon, "/healthz")[:1] == (200,)
    status, content_type, body = get(daemon, "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and content_type.startswith("application/openmetrics-text") and body.endswith("# EOF\n")
    assert get(daemon, "/nope")[0] == 404


def test_a_login_shows_up_within_two_seconds(daemon: Daemon, sample_tree: Path) -> None:
    before = active(daemon, "example.com")
    assert before is not None
    prosody_writes(sample_tree, "newcomer", "example.com", f"{{ login = {{ timestamp = {SAMPLE_NOW - 5} }} }}")
    wait_for(lambda: active(daemon, "example.com") == before + 1)
    (sample_tree / "example%2ecom" / "lastlog2" / "newcomer.dat").unlink()  # account deleted
    wait_for(lambda: active(daemon, "example.com") == before)


def test_a_new_host_directory_is_picked_up(daemon: Daemon, sample_tree: Path) -> None:
    prosody_writes(sample_tree, "first", "brand-new.example", f"{{ logout = {{ timestamp = {SAMPLE_NOW - 5} }} }}")
    wait_for(lambda: active(daemon, "brand-new.example") == 1)


@pytest.fixture
def thirteen_daemon(tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    """A daemon on a copy of the Prosody 13 fixture (accounts must exist and be enabled there)."""
    data = tmp_path / "data"
    shutil.copytree(case_data("prosody13"), data)
    now = json.loads((case_data("prosody13").parent / "expected.json").read_text())["now"]
    plan = plan_sources(SourceOptions(data_dir=data), environ={})
    running = Daemon(plan, windows=DEFAULT_WINDOWS, options=ServeOptions(port=0, as_of=now))
    running.start()
    yield running, data
    running.stop()


def test_an_account_disabled_deleted_or_created_shows_within_two_seconds(thirteen_daemon: tuple[Daemon, Path]) -> None:
    """Prosody 13 counts a user only with an enabled account: each change to one shows as a login does."""
    daemon, data = thirteen_daemon
    before = active(daemon, "example.net")
    assert before
    # alice is active today: `prosodyctl shell user disable` rewrites her account record.
    prosody_writes(data, "alice", "example.net", '{ disabled = true; created = 1; salt = "s" }', store="accounts")
    wait_for(lambda: active(daemon, "example.net") == before - 1)
    prosody_writes(data, "alice", "example.net", '{ created = 1; salt = "s" }', store="accounts")  # enabled again
    wait_for(lambda: active(daemon, "example.net") == before)
    (data / "example%2enet" / "accounts" / "alice.dat").unlink()  # deleted, her activity left behind
    wait_for(lambda: active(daemon, "example.net") == before - 1)
    prosody_writes(data, "alice", "example.net", '{ created = 1; salt = "s" }', store="accounts")  # created again
    wait_for(lambda: active(daemon, "example.net") == before)


def test_an_unreadable_data_dir_keeps_the_last_counts_and_fails_healthz(daemon: Daemon, sample_tree: Path) -> None:
    before = active(daemon, "example.com")
    moved = sample_tree.with_name("moved-away")
    sample_tree.rename(moved)
    try:
        daemon.refresher.refresh_all()
        assert active(daemon, "example.com") == before
        status, _, body = get(daemon, "/healthz")
        assert status == 503 and "cannot read data directory" in body
        assert "prosody_lastlog_source_up{" in get(daemon, "/metrics")[2]
        assert f'prosody_lastlog_source_up{{source="files {sample_tree}"}} 0.0' in get(daemon, "/metrics")[2]
    finally:
        moved.rename(sample_tree)
    daemon.refresher.refresh_all()
    assert get(daemon, "/healthz")[0] == 200


def test_textfile_is_written_for_node_exporter(daemon: Daemon, tmp_path: Path) -> None:
    text = (tmp_path / "prosody.prom").read_text()
    assert 'prosody_active_users{host="example.com",window="30d"} 13.0' in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prosody.prom")]


def test_stop_releases_the_port(sample_tree: Path) -> None:
    plan = plan_sources(SourceOptions(data_dir=sample_tree), environ={})
    first = Daemon(plan, windows=DEFAULT_WINDOWS, options=ServeOptions(port=0))
    first.start()
    port = int(first.server.url.rsplit(":", 1)[1].split("/")[0])
    first.stop()
    second = Daemon(plan, windows=DEFAULT_WINDOWS, options=ServeOptions(port=port))
    second.start()
    second.stop()


def test_scratch_files_do_not_trigger_work(daemon: Daemon, sample_tree: Path) -> None:
    calls: list[tuple[object, ...]] = []
    original = daemon.refresher.apply_change

    def counting(*args: Any) -> bool:
        calls.append(args)
        return original(*args)

    daemon.refresher.apply_change = counting  # type: ignore[method-assign, assignment]
    (sample_tree / "example%2ecom" / "lastlog2" / "half.dat~").write_bytes(b"return {")
    time.sleep(0.4)
    assert calls == []


def spy(daemon: Daemon, name: str) -> list[tuple[object, ...]]:
    calls: list[tuple[object, ...]] = []
    original = getattr(daemon.refresher, name)

    def recording(*args: Any) -> Any:
        calls.append(args)
        return original(*args)

    setattr(daemon.refresher, name, recording)
    return calls


def test_a_login_rereads_one_user_not_the_whole_store(daemon: Daemon, sample_tree: Path) -> None:
    rescans, changes = spy(daemon, "refresh"), spy(daemon, "apply_change")
    prosody_writes(sample_tree, "alice", "example.com", f"{{ login = {{ timestamp = {SAMPLE_NOW - 5} }} }}")
    wait_for(lambda: bool(changes))
    time.sleep(0.3)
    assert rescans == [] and [c[-1] for c in changes] == ["alice"]


def test_account_changes_on_a_host_without_activity_data_do_not_rescan(daemon: Daemon, sample_tree: Path) -> None:
    rescans = spy(daemon, "refresh")
    prosody_writes(sample_tree, "newuser", "example.com", "{ created = 1 }", store="accounts")  # seeds the dir
    time.sleep(0.4)
    rescans.clear()
    prosody_writes(sample_tree, "someone", "quiet.example", "{ created = 1 }", store="accounts")
    prosody_writes(sample_tree, "someone", "quiet.example", "{ created = 2 }", store="accounts")
    time.sleep(0.4)
    assert len(rescans) <= 1  # at most the new host directory itself, never one per account change


def test_the_watcher_survives_a_failing_change(daemon: Daemon, sample_tree: Path) -> None:
    original = daemon.refresher.apply_change
    failures: list[tuple[object, ...]] = []

    def failing_once(*args: Any) -> bool:
        if not failures:
            failures.append(args)
            raise RuntimeError("boom")
        return original(*args)

    daemon.refresher.apply_change = failing_once  # type: ignore[method-assign, assignment]
    before = active(daemon, "example.com")
    assert before is not None
    prosody_writes(sample_tree, "first", "example.com", f"{{ login = {{ timestamp = {SAMPLE_NOW - 5} }} }}")
    wait_for(lambda: bool(failures))
    time.sleep(0.2)
    prosody_writes(sample_tree, "second", "example.com", f"{{ login = {{ timestamp = {SAMPLE_NOW - 5} }} }}")
    wait_for(lambda: active(daemon, "example.com") == before + 1)


def test_serving_starts_with_a_missing_data_dir_and_says_so(tmp_path: Path) -> None:
    plan = plan_sources(SourceOptions(data_dir=tmp_path / "not-yet"), environ={})
    running = Daemon(plan, windows=DEFAULT_WINDOWS, options=ServeOptions(port=0))
    running.start()
    try:
        status, _, body = get(running, "/healthz")
        assert status == 503 and "cannot read data directory" in body
        assert "prosody_active_users{" not in get(running, "/metrics")[2]  # no sentinel values
    finally:
        running.stop()
        running.stop()  # stopping twice is harmless


def test_read_problem_series_start_at_zero(daemon: Daemon) -> None:
    text = get(daemon, "/metrics")[2]
    assert 'prosody_lastlog_read_problems_total{reason="invalid",source=' in text


def test_an_unwritable_textfile_is_logged_once_and_recovers(
    sample_tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "not-yet" / "prosody.prom"
    plan = plan_sources(SourceOptions(data_dir=sample_tree), environ={})
    running = Daemon(plan, windows=DEFAULT_WINDOWS, options=ServeOptions(port=0, textfile=target))
    running.start()
    try:
        running.refresher.refresh_all()
        running.refresher.refresh_all()
        assert sum("cannot write the textfile" in r.message for r in caplog.records) == 1
        assert get(running, "/metrics")[0] == 200  # serving goes on
        target.parent.mkdir()
        running.refresher.refresh_all()
        assert "prosody_active_users" in target.read_text()
        assert any("works again" in r.message for r in caplog.records)
    finally:
        running.stop()


def test_a_change_during_a_slow_full_scan_is_applied_at_once_and_kept(
    daemon: Daemon, sample_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = daemon.refresher.sources[0]
    assert isinstance(source, FileSource)
    scanned, release = threading.Event(), threading.Event()

    def slow_scan(*args: Any, **options: Any) -> ScannedIndexes:
        result = scan_indexes(*args, **options)  # the scan has read the old data, and is still busy
        scanned.set()
        release.wait(10)
        return result

    monkeypatch.setattr(refresh, "scan_indexes", slow_scan)
    scan = threading.Thread(target=daemon.refresher.refresh, args=(source,))
    scan.start()
    try:
        assert scanned.wait(10)
        before = active(daemon, "example.com")
        assert before is not None
        prosody_writes(sample_tree, "newcomer", "example.com", f"{{ login = {{ timestamp = {SAMPLE_NOW - 5} }} }}")
        wait_for(lambda: active(daemon, "example.com") == before + 1)  # not held up by the scan
    finally:
        release.set()
        scan.join(10)
    assert active(daemon, "example.com") == before + 1  # the scan's older data did not overwrite it
    daemon.refresher.refresh(source)  # and the next resync reads it too
    assert active(daemon, "example.com") == before + 1


def test_a_resync_runs_at_a_lower_priority(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    nice: list[int] = []

    def scan(*args: Any, **options: Any) -> ScannedIndexes:
        nice.append(options["nice"])
        return scan_indexes(*args, **options)

    monkeypatch.setattr(refresh, "scan_indexes", scan)
    daemon.refresher.refresh_all()
    assert nice == [refresh.RESYNC_NICE]  # the first count (at start) ran at 0


def test_short_resync_intervals_get_a_proportional_jitter(sample_tree: Path) -> None:
    plan = plan_sources(SourceOptions(data_dir=sample_tree), environ={})
    running = Daemon(plan, windows=DEFAULT_WINDOWS, options=ServeOptions(port=0, resync_seconds=60))
    assert running._make_timers()[0]._jitter == 5.0  # the file source's resync: 60 s / 12, not 5 minutes
    running.stop()


def test_a_change_during_the_first_count_is_not_lost(sample_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watcher runs before the first count: a login written after the scan read the files still shows."""
    scanned, release = threading.Event(), threading.Event()

    def slow_scan(*args: Any, **options: Any) -> ScannedIndexes:
        result = scan_indexes(*args, **options)
        scanned.set()
        release.wait(10)
        return result

    monkeypatch.setattr(refresh, "scan_indexes", slow_scan)
    plan = plan_sources(SourceOptions(data_dir=sample_tree), environ={})
    running = Daemon(plan, windows=DEFAULT_WINDOWS, options=ServeOptions(port=0, as_of=SAMPLE_NOW))
    rescans = spy(running, "refresh")
    starting = threading.Thread(target=running.start)
    starting.start()
    try:
        assert scanned.wait(10)
        prosody_writes(sample_tree, "newcomer", "example.com", f"{{ login = {{ timestamp = {SAMPLE_NOW - 5} }} }}")
        time.sleep(0.5)  # the watcher's debounce, and its batch: noted, not a rescan
    finally:
        release.set()
        starting.join(10)
    try:
        expected = json.loads((case_data("sample").parent / "expected.json").read_text())["active_users"]
        assert active(running, "example.com") == expected["example.com"]["1d"] + 1
        assert len(rescans) == 1  # the first count only
    finally:
        running.stop()


def test_reading_the_data_dir_does_not_wake_the_watcher(
    daemon: Daemon, sample_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full scan opens every file: those reads must not even reach the kernel's event queue (16,384 events by
    default), or a scan of a large data directory overflows it, which loses events and costs a rescan."""
    delivered: list[str] = []
    monkeypatch.setattr(watcher._Handler, "on_any_event", lambda self, event: delivered.append(event.event_type))
    reader = "import pathlib, sys\nfor path in sorted(pathlib.Path(sys.argv[1]).rglob('*.dat')): path.read_bytes()"
    subprocess.run([sys.executable, "-c", reader, str(sample_tree)], check=True)  # as the scan's child process
    prosody_writes(sample_tree, "alice", "example.com", f"{{ login = {{ timestamp = {SAMPLE_NOW - 5} }} }}")
    wait_for(lambda: "moved" in delivered)
    assert "opened" not in delivered and "closed_no_write" not in delivered


def test_lost_events_rescan_the_data_dir(daemon: Daemon, sample_tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    """When the kernel's queue overflowed, some change is unknown: the data directory is scanned again, once."""
    rescans = spy(daemon, "refresh")
    handler = watcher._Handler(daemon._watchers[0], str(sample_tree), str(sample_tree))
    handler.dispatch(EventsLostEvent(str(sample_tree), is_directory=True))
    wait_for(lambda: bool(rescans))
    time.sleep(0.3)
    assert len(rescans) == 1
    assert "events were lost" in caplog.text and str(sample_tree) in caplog.text

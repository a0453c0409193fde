"""The watcher under faults: read errors never remove a user, linked and replaced directories stay watched, and a
directory inotify cannot watch is polled, retried, and named in health (issue: hold under abuse and faults)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.sources import file_records, files
from prosody_lastlog.sources.files import FileStoreReader
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from tests.integration.servers import free_port, stop_process
from tests.test_daemon import SAMPLE_NOW, active, get, prosody_writes, wait_for

HOST, HOST_DIR = "example.com", "example%2ecom"
CHILD_SCRIPT = Path(__file__).with_name("watch_limit_child.py")


def idle_user(data: Path) -> str:
    """A user of HOST not active in the last day, whose login would add one to the 1d count."""
    users = FileStoreReader(data).read().hosts[HOST].users
    return min(u.user for u in users if u.last_active and u.last_active < SAMPLE_NOW - 2 * 86400)


def login(data: Path, user: str, *, at: float = SAMPLE_NOW - 5) -> None:
    prosody_writes(data, user, HOST, f"{{ login = {{ timestamp = {int(at)} }} }}")


def start(data: Path, **options: Any) -> Daemon:
    plan = plan_sources(SourceOptions(data_dir=data), environ={})
    daemon = Daemon(plan, windows=DEFAULT_WINDOWS, options=ServeOptions(port=0, as_of=SAMPLE_NOW, **options))
    daemon.start()
    return daemon


@pytest.fixture
def daemon(sample_tree: Path) -> Iterator[Daemon]:
    running = start(sample_tree)
    yield running
    running.stop()


def test_a_read_error_keeps_the_user_and_the_change_is_read_again(
    daemon: Daemon, sample_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EMFILE (no descriptor left) while a changed file is read: the user stays counted as before, and the change
    shows once the file can be read again (not at the next resync)."""
    user, before, before_30d = idle_user(sample_tree), active(daemon, HOST), active(daemon, HOST, "30d")
    assert before is not None
    failing = [True]
    real_read = file_records.read_bounded

    def read_bounded(path: str, directory: int | None = None) -> bytes:
        if failing[0] and path.endswith(f"{user}.dat"):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_read(path, directory)

    monkeypatch.setattr(files, "read_bounded", read_bounded)
    login(sample_tree, user)
    wait_for(lambda: bool(daemon.live.health()[0].problems.get("unreadable")))
    assert (active(daemon, HOST), active(daemon, HOST, "30d")) == (before, before_30d)  # nobody left the counts
    failing[0] = False
    wait_for(lambda: active(daemon, HOST) == before + 1, seconds=4)


def test_a_symlinked_store_directory_is_watched(sample_tree: Path, tmp_path: Path) -> None:
    """The reader follows a linked store directory (as Prosody does): so does the watcher, at the link's target."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store = sample_tree / HOST_DIR / "lastlog2"
    shutil.move(store, elsewhere / "lastlog2")
    store.symlink_to(elsewhere / "lastlog2")
    user = idle_user(sample_tree)
    daemon = start(sample_tree)
    try:
        before = active(daemon, HOST)
        assert before is not None
        login(sample_tree, user)
        wait_for(lambda: active(daemon, HOST) == before + 1)
    finally:
        daemon.stop()


def test_a_symlinked_host_directory_made_while_serving_is_watched(
    daemon: Daemon, sample_tree: Path, tmp_path: Path
) -> None:
    linked = tmp_path / "linked-host"
    shutil.copytree(sample_tree / HOST_DIR, linked)
    (sample_tree / "example%2enet").symlink_to(linked)
    wait_for(lambda: active(daemon, "example.net") == active(daemon, HOST))
    before = active(daemon, "example.net")
    assert before is not None
    prosody_writes(
        sample_tree, idle_user(sample_tree), "example.net", f"{{ login = {{ timestamp = {SAMPLE_NOW - 5} }} }}"
    )
    wait_for(lambda: active(daemon, "example.net") == before + 1)


def test_a_data_directory_replaced_by_mv_is_watched_anew(daemon: Daemon, sample_tree: Path) -> None:
    """`mv` of a new directory over the data directory's name: the new one is scanned and watched within seconds."""
    user = idle_user(sample_tree)
    before = active(daemon, HOST)
    assert before is not None
    replacement = sample_tree.with_name("replacement")
    shutil.copytree(sample_tree, replacement)
    login(replacement, user)
    sample_tree.rename(sample_tree.with_name("old"))
    replacement.rename(sample_tree)
    wait_for(lambda: active(daemon, HOST) == before + 1, seconds=4)  # the new directory, scanned
    other = next(u for u in sorted(FileStoreReader(sample_tree).read().hosts[HOST].users, key=lambda u: u.user)
                 if u.last_active and u.last_active < SAMPLE_NOW - 2 * 86400 and u.user != user).user  # fmt: skip
    login(sample_tree, other)
    wait_for(lambda: active(daemon, HOST) == before + 2)  # and watched


def test_a_missing_data_directory_is_in_health_until_it_is_back(daemon: Daemon, sample_tree: Path) -> None:
    before = active(daemon, HOST)
    away = sample_tree.with_name("away")
    sample_tree.rename(away)
    wait_for(lambda: "is missing" in get(daemon, "/healthz")[2], seconds=4)
    assert get(daemon, "/healthz")[0] == 503 and active(daemon, HOST) == before
    away.rename(sample_tree)
    wait_for(lambda: get(daemon, "/healthz")[0] == 200, seconds=4)
    login(sample_tree, idle_user(sample_tree))
    assert before is not None
    wait_for(lambda: active(daemon, HOST) == before + 1)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it writes into the directory it made unreadable")
def test_an_unreadable_store_directory_never_removes_users(sample_tree: Path, tmp_path: Path) -> None:
    """A store directory unreadable for a while (chmod 000 and back) as users log in and a resync runs: the counts
    never drop, and the logins show once it is readable again. A real `serve`, without root's power to read anything
    (setpriv drops it)."""
    user, port = idle_user(sample_tree), free_port()
    argv = [sys.executable, "-m", "prosody_lastlog", "serve", "--data-dir", str(sample_tree), "--as-of",
            str(SAMPLE_NOW), "--listen", f"127.0.0.1:{port}", "--resync-interval", "1s"]  # fmt: skip
    if os.geteuid() == 0:
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *argv]
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: scrape(url) is not None, seconds=30)
        before = scrape(url)
        assert before is not None
        store = sample_tree / HOST_DIR / "lastlog2"
        store.chmod(0)
        login(sample_tree, user)
        seen = []
        for _ in range(50):  # 2.5 s: a resync (1 s) runs meanwhile
            seen.append(scrape(url))
            time.sleep(0.05)
        store.chmod(0o755)
        assert {accounts for accounts, _ in filter(None, seen)} == {before[0]}  # nobody removed
        wait_for(lambda: scrape(url) == (before[0], before[1] + 1), seconds=4)
    finally:
        stop_process(process)
    assert "Traceback" not in log.read_text()


def scrape(url: str) -> tuple[float, float] | None:
    """HOST's accounts and 1d active users, as served."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as response:
            families = text_string_to_metric_families(response.read().decode())
            samples = {(s.name, s.labels.get("window")): s.value for f in families for s in f.samples
                       if s.labels.get("host") == HOST}  # fmt: skip
    except OSError:
        return None
    if ("prosody_activity_records", None) not in samples:
        return None
    return samples["prosody_activity_records", None], samples["prosody_active_users", "1d"]


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_a_directory_inotify_cannot_watch_is_polled_named_in_health_and_watched_again(sample_tree: Path) -> None:
    """The inotify watch limit is reached (a user namespace's own limit, lowered) when a new host directory appears:
    it is polled meanwhile, health names it, and once watches are free it is watched with inotify again."""
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, str(CHILD_SCRIPT), str(sample_tree)],
        check=False, capture_output=True, text=True, timeout=90, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["health_at_start"].startswith("1 directory is polled, not watched (the inotify watch limit")
    assert report["health_at_start"].endswith(f"the data directory {sample_tree}")
    assert report["change_seen_while_root_polled"] and report["health_after_start"] is None
    assert report["health_while_limited"].startswith("1 directory is polled, not watched (the inotify watch limit")
    assert "example.org" in report["health_while_limited"] or "example%2eorg" in report["health_while_limited"]
    assert report["counted_new_host"] and report["change_seen_while_polled"]
    assert report["health_after"] is None and report["change_seen_after"]
    assert "Unable to watch" not in result.stderr

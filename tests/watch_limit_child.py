"""Run by tests/test_watch_faults.py as root of a new user namespace (`unshare --user --map-root-user`), whose own
inotify watch limit it may lower and raise: a daemon watches a data tree when a new host directory cannot get a watch.
Prints a JSON report on stdout."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon import watcher
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from tests.test_daemon import SAMPLE_NOW, prosody_writes

LIMIT = Path("/proc/sys/user/max_inotify_watches")
NEW_HOST = "example.org"
OLD_HOST = "example.com"


def until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def main(data: Path) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    watcher.RETRY_WATCH_SECONDS = 1.0
    directories = 1 + sum(1 for path in data.rglob("*") if path.is_dir())  # the watches the tree takes
    LIMIT.write_text("1")  # not even the data directory can be watched at start
    daemon = Daemon(
        plan_sources(SourceOptions(data_dir=data), environ={}),
        windows=DEFAULT_WINDOWS,
        options=ServeOptions(port=0, as_of=SAMPLE_NOW),
    )
    daemon.start()

    def active(host: str) -> int | None:
        counts = daemon.live.counts(now=daemon.clock()).get(host)
        return counts.active["1d"] if counts else None

    def unwatched() -> str | None:
        return daemon.live.health()[0].unwatched

    report: dict[str, object] = {}
    try:
        login = f"{{ login = {{ timestamp = {SAMPLE_NOW - 5} }} }}"
        report["health_at_start"] = unwatched()
        before = active(OLD_HOST)
        prosody_writes(data, "zed", OLD_HOST, login)
        report["change_seen_while_root_polled"] = before is not None and until(
            lambda: active(OLD_HOST) == before + 1, 5
        )
        LIMIT.write_text(str(directories))  # watches for the tree as it is, none to spare
        report["health_after_start"] = None if until(lambda: unwatched() is None, 5) else unwatched()
        prosody_writes(data, "first", NEW_HOST, login)  # a new host directory: no watch left for it
        limited = until(lambda: unwatched() is not None, 5)
        report["health_while_limited"] = unwatched() if limited else None
        report["counted_new_host"] = until(lambda: active(NEW_HOST) == 1, 5)
        prosody_writes(data, "second", NEW_HOST, login)
        report["change_seen_while_polled"] = until(lambda: active(NEW_HOST) == 2, 5)
        LIMIT.write_text("100000")  # watches free again
        report["health_after"] = None if until(lambda: unwatched() is None, 5) else unwatched()
        prosody_writes(data, "third", NEW_HOST, login)
        report["change_seen_after"] = until(lambda: active(NEW_HOST) == 3, 3)
    finally:
        daemon.stop()
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

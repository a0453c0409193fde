"""`prosody-lastlog` with a recording tap on the push exporters: `python -m soak.serve_tap TAP_FILE serve ...`.

The soak's only instrumentation of the daemon. Every snapshot a push exporter queues is appended to TAP_FILE as
one JSON line {"exporter", "ts", "points": [[name, host, window, value], ...]} before it is queued, so the soak
knows exactly which timestamps each target must end up with. Nothing else changes: the real CLI runs.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import TextIO

from exporters.points import aligned, points_of
from exporters.runner import PushExporter
from prosody_lastlog.cli import main
from prosody_lastlog.core.counting import Snapshot


def install_tap(tap: TextIO) -> None:
    """Wraps PushExporter.publish so that each call is recorded first."""
    lock = threading.Lock()
    publish = PushExporter.publish

    def recording_publish(self: PushExporter, snapshot: Snapshot) -> None:
        timestamp = aligned(snapshot.taken, self.interval)
        points = [[p.name, p.host, p.window, p.value] for p in points_of(snapshot, timestamp=timestamp)]
        line = json.dumps({"exporter": self.name, "ts": timestamp, "points": points}, ensure_ascii=False)
        with lock:
            tap.write(line + "\n")
            tap.flush()
        publish(self, snapshot)

    PushExporter.publish = recording_publish  # type: ignore[method-assign]


def run(argv: list[str]) -> int:
    """Runs the CLI with the tap writing to argv[0]."""
    with Path(argv[0]).open("a", encoding="utf-8") as tap:
        install_tap(tap)
        return main(argv[1:])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))

"""Fault lanes: each injects one kind of fault on its own schedule (so faults of different kinds overlap).

A schedule is a list of (offset from the start, hold seconds). Every lane puts things back in `close()`, also
after an error, and records each fault as a FaultEvent for the checks.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from soak.config import BAD_RELOADS, ServeConfig
from soak.observe import LogTail
from tests.integration.private_sql import PrivateServer

T = TypeVar("T")
RELOAD_SECONDS = 60.0  # bound on serve answering a SIGHUP in its log


@dataclass
class FaultEvent:
    """One injected fault: kind (postgresql, carbon, sighup, ...), mode, when it started and ended (time.time())."""

    kind: str
    mode: str
    start: float
    end: float | None = None
    error: str | None = None  # the lane could not inject or undo it
    notes: list[str] = field(default_factory=list)


Schedule = list[tuple[float, float]]


class Lane:
    """A thread running one kind of fault on a schedule, from `t0`, until the schedule ends or `stop()`."""

    kind = "lane"

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.events: list[FaultEvent] = []
        self.active: FaultEvent | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"soak-{self.kind}", daemon=True)
        self._t0 = 0.0

    def start(self, t0: float) -> None:
        self._t0 = t0
        self._thread.start()

    def stop(self) -> None:
        """Ends the schedule early; the fault in progress is undone."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def close(self) -> None:
        """Puts everything back (called from the soak's finally)."""

    def _run(self) -> None:
        for number, (offset, hold) in enumerate(self.schedule):
            if self._stop.wait(max(0.0, self._t0 + offset - time.time())):
                return
            event = FaultEvent(self.kind, self.mode(number), time.time())
            self.events.append(event)
            self.active = event
            try:
                self.inject(event)
                self._stop.wait(hold)
            except Exception as exc:  # recorded and failed in the checks
                event.error = f"inject: {type(exc).__name__}: {exc}"
            try:
                self.recover(event)
            except Exception as exc:
                event.error = (event.error or "") + f" recover: {type(exc).__name__}: {exc}"
            event.end = time.time()
            self.active = None

    def mode(self, number: int) -> str:
        return "outage"

    def inject(self, event: FaultEvent) -> None:
        raise NotImplementedError

    def recover(self, event: FaultEvent) -> None:
        raise NotImplementedError


class SqlLane(Lane):
    """Stops and starts a private database server, or freezes it (SIGSTOP to it and its backends) and thaws it."""

    def __init__(self, kind: str, server: PrivateServer, schedule: Schedule, modes: tuple[str, ...]) -> None:
        self.kind, self.server, self.modes = kind, server, modes
        super().__init__(schedule)

    def mode(self, number: int) -> str:
        return self.modes[number % len(self.modes)]

    def inject(self, event: FaultEvent) -> None:
        if event.mode == "stop":
            self.server.stop()
        else:
            self.server.freeze()

    def recover(self, event: FaultEvent) -> None:
        self.close()
        if not self.server.running:
            self.server.start()

    def close(self) -> None:
        self.server.thaw()


class ServerLane(Lane, Generic[T]):
    """Stops and starts a push target whose context manager starts it (on the same port and data directory)."""

    def __init__(self, kind: str, start: Callable[[], AbstractContextManager[T]], schedule: Schedule) -> None:
        self.kind, self._factory = kind, start
        self._stack = ExitStack()
        self.current: T | None = None
        super().__init__(schedule)

    def up(self) -> T:
        """Starts the server (first start and after each outage)."""
        self._stack = ExitStack()
        self.current = self._stack.enter_context(self._factory())
        return self.current

    def inject(self, event: FaultEvent) -> None:
        self.close()

    def recover(self, event: FaultEvent) -> None:
        if self.current is None:
            self.up()

    def close(self) -> None:
        self.current = None
        self._stack.close()


class DiskLane(Lane):
    """Fills the textfile's small filesystem with a filler file, then deletes it."""

    kind = "disk"

    def __init__(self, directory: Path, schedule: Schedule) -> None:
        self.filler = directory / "filler"
        super().__init__(schedule)

    def inject(self, event: FaultEvent) -> None:
        chunk = b"\0" * 4096
        descriptor = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(descriptor, chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        finally:
            os.close(descriptor)
        event.notes.append(f"filler {self.filler.stat().st_size} bytes")

    def recover(self, event: FaultEvent) -> None:
        self.close()

    def close(self) -> None:
        self.filler.unlink(missing_ok=True)


class SighupLane(Lane):
    """Rewrites serve's configuration, good and bad alternately, and sends SIGHUP; waits for its answer."""

    kind = "sighup"

    def __init__(
        self, pid: int, config: ServeConfig, log: LogTail, schedule: Schedule, allowed: Callable[[], bool]
    ) -> None:
        self.pid, self.config, self.log, self.allowed = pid, config, log, allowed
        self._generation = 0
        super().__init__(schedule)

    def mode(self, number: int) -> str:
        return "good" if number % 2 == 0 else BAD_RELOADS[(number // 2) % len(BAD_RELOADS)]

    def inject(self, event: FaultEvent) -> None:
        while not self.allowed():  # --isolate-reloads: not while a push target is down or a queue is full
            if self._stop.wait(0.5):
                return
        event.start = time.time()
        if event.mode == "good":
            self._generation += 1
            self.config.write(generation=self._generation)
        else:
            self.config.write(generation=self._generation, bad=event.mode)
        os.kill(self.pid, signal.SIGHUP)
        for at, line in self._answers(event.start):
            event.notes.append(f"+{at - event.start:.2f}s {line}")
            return
        event.error = f"no reload answer in serve's log within {RELOAD_SECONDS} s"

    def _answers(self, since: float) -> Iterator[tuple[float, str]]:
        deadline = time.time() + RELOAD_SECONDS
        while time.time() < deadline:
            for text in ("reloaded", "reload refused", "did not start"):
                found = self.log.matching(text, since=since)
                if found:
                    yield found[0]
                    return
            time.sleep(0.1)

    def recover(self, event: FaultEvent) -> None:
        self.config.write(generation=self._generation)  # a bad file never outlives its reload

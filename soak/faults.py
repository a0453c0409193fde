"""Fault lanes: each injects one kind of fault on its own schedule (so faults of different kinds overlap).

A schedule is a list of (offset from the start, hold seconds). Every lane puts things back in `close()`, also
after an error, and records each fault as a FaultEvent for the checks.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import socket
import stat
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


class ConnectionLane(Lane):
    """Holds many slow HTTP clients on serve's port: each sends part of a request, then one byte every half second,
    and is opened again when serve closes it (as an attacker would keep the pressure on)."""

    kind = "connections"
    CLIENTS = 400  # above the connection cap
    TRICKLE_SECONDS = 0.5

    def __init__(self, port: int, schedule: Schedule) -> None:
        self.port = port
        self._clients: list[socket.socket | None] = []
        self._ceasing = threading.Event()
        self._attacker: threading.Thread | None = None
        super().__init__(schedule)

    def inject(self, event: FaultEvent) -> None:
        self._ceasing.clear()
        self._clients = [None] * self.CLIENTS
        self._attacker = threading.Thread(target=self._attack, args=(event,), name="soak-slow-clients", daemon=True)
        self._attacker.start()

    def _attack(self, event: FaultEvent) -> None:
        reopened = 0
        while not self._ceasing.is_set():
            for place, client in enumerate(self._clients):
                try:
                    if client is None:
                        self._clients[place] = self._open()
                    else:
                        client.sendall(b"a")
                except OSError:
                    if client is not None:
                        client.close()
                        reopened += 1
                    self._clients[place] = None
            self._ceasing.wait(self.TRICKLE_SECONDS)
        event.notes.append(f"{self.CLIENTS} slow clients, {reopened} closed by serve and opened again")

    def _open(self) -> socket.socket:
        client = socket.create_connection(("127.0.0.1", self.port), timeout=1)
        try:
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nX-Slow: ")
        except OSError:
            client.close()
            raise
        return client

    def recover(self, event: FaultEvent) -> None:
        self.close()

    def close(self) -> None:
        self._ceasing.set()
        if self._attacker is not None:
            self._attacker.join()
            self._attacker = None
        for client in self._clients:
            if client is not None:
                client.close()
        self._clients = []


class DataDirLane(Lane):
    """Replaces the data directory under its name with a copy of it, as an admin restoring or migrating it would
    (`mv data.new data`); exchanged atomically, so Prosody and the generator never meet a missing directory."""

    kind = "datadir"

    def __init__(self, data: Path, schedule: Schedule) -> None:
        self.data = data
        self.old = data.with_name(data.name + ".replaced")
        super().__init__(schedule)

    def mode(self, number: int) -> str:
        return "replaced"

    def inject(self, event: FaultEvent) -> None:
        copy = self.data.with_name(self.data.name + ".new")
        shutil.rmtree(copy, ignore_errors=True)
        sockets = _copy_live_tree(self.data, copy)
        for path in sockets:  # a socket stays bound when renamed: Prosody's admin socket keeps working
            path.rename(copy / path.relative_to(self.data))
        _exchange(copy, self.data)
        copy.rename(self.old)
        event.notes.append(f"inode {self.data.stat().st_ino} replaced {self.old.stat().st_ino}")

    def recover(self, event: FaultEvent) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self.old, ignore_errors=True)


def _copy_live_tree(source: Path, target: Path) -> list[Path]:
    """Copies a tree that Prosody and the generator write to meanwhile: scratch files (`*~`) and files renamed or
    deleted under the copy are left out (the rescan after the exchange reads what the new tree holds). Returns the
    sockets found, which are not copied."""
    sockets = []
    for directory, _, names in os.walk(source):
        relative = Path(directory).relative_to(source)
        (target / relative).mkdir(parents=True, exist_ok=True)
        for name in names:
            path = Path(directory) / name
            try:
                mode = path.lstat().st_mode
                if stat.S_ISSOCK(mode):
                    sockets.append(path)
                elif stat.S_ISREG(mode) and not name.endswith("~"):
                    shutil.copy2(path, target / relative / name)
            except FileNotFoundError:
                continue
    return sockets


_RENAME_EXCHANGE = 2  # renameat2(2)
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> None:
    """Swaps two paths atomically (renameat2 with RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number), str(second))

"""Watches Prosody's data directory and re-reads only what changed, a burst of events at a time.

Prosody saves a record by writing `<user>.dat~` and renaming it over `<user>.dat` (moved-to), deletes a file
whose record emptied, and creates host and store directories on first write. A changed `.dat` re-reads that
one user; a new or removed directory rescans the data directory; scratch files are ignored.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
    FileSystemMovedEvent,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from prosody_lastlog.pathnames import decode_name
from prosody_lastlog.records import Store
from prosody_lastlog.refresh import Refresher
from prosody_lastlog.sources import FileSource

log = logging.getLogger(__name__)

_DAT = ".dat"
_STORES = {store.value: store for store in Store}
_ACCOUNT_STORES = ("accounts", "account_details")  # what they say of a user completes its activity record
_WATCHDOG_DOUBLE_WATCH = r"Callback with id .* already exists for watch"
# The events that can mean a changed record or directory. Reads (opened, closed unwritten) are left out so that they
# never enter the kernel's queue: a full scan opens every file, and would overflow it (16,384 events by default).
_WATCHED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
    EventsLostEvent,
]


@dataclass(frozen=True)
class _UserChange:
    host: str
    store_dir: str
    user: str


@dataclass(frozen=True)
class _Rescan:
    pass


class DataDirWatcher:
    """Turns file events under one data directory into per-user updates and rescans, debounced."""

    def __init__(
        self,
        sources: list[FileSource],
        refresher: Refresher,
        *,
        debounce_seconds: float = 0.1,
        polling: bool = False,
    ) -> None:
        self._sources = sources  # every file source reading this data directory
        self._refresher = refresher
        self._root = os.path.abspath(sources[0].data_dir)
        self._debounce = debounce_seconds
        self._pending: set[_UserChange | _Rescan] = set()
        self._wake = threading.Condition()
        self._stopping = False
        self._worker = threading.Thread(target=self._run, name="prosody-lastlog-watch", daemon=True)
        self._observer = self._start_observer(polling)
        self._worker.start()

    def stop(self) -> None:
        """Stops watching and waits for the threads."""
        self._observer.stop()
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._observer.join()
        self._worker.join()

    def _start_observer(self, polling: bool) -> BaseObserver:
        if not os.path.isdir(self._root):
            raise FileNotFoundError(f"no such directory: {self._root}")
        handler = _Handler(self)
        makers: list[Callable[[], BaseObserver]] = [PollingObserver] if polling else [Observer, PollingObserver]
        for make in makers:
            observer = make()
            try:
                observer.schedule(handler, self._root, recursive=True, event_filter=_WATCHED_EVENTS)
                observer.start()
            except OSError as exc:  # e.g. the inotify watch limit reached: fall back to polling
                observer.unschedule_all()
                observer.stop()
                log.warning("%s: %s failed (%s)", self._root, type(observer).__name__, exc)
                failure = exc
                continue
            log.info("watching %s with %s", self._root, type(observer).__name__)
            return observer
        raise failure

    def events_lost(self) -> None:
        """The kernel's event queue overflowed: some change is unknown, so the data directory is scanned again."""
        log.warning("%s: file events were lost (inotify queue overflowed); scanning it again", self._root)
        with self._wake:
            self._pending.add(_Rescan())
            self._wake.notify()

    def notice(self, path: str, *, is_directory: bool) -> None:
        """Queues what one event path means; anything unrelated is dropped here."""
        parts = os.path.relpath(path, self._root).split(os.sep)
        change: _UserChange | _Rescan | None = None
        if is_directory:
            if len(parts) <= 2 and parts[0] != "..":
                change = _Rescan()  # a new or removed host or store directory
        elif len(parts) == 3 and parts[2].endswith(_DAT) and (parts[1] in _STORES or parts[1] in _ACCOUNT_STORES):
            host, user = decode_name(parts[0]), decode_name(parts[2][: -len(_DAT)])
            if host is not None and user is not None:
                change = _UserChange(host, parts[1], user)
        if change is not None:
            with self._wake:
                self._pending.add(change)
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
            # Let the burst (write ~, rename, a logout right after a login) settle, then apply it once.
            time.sleep(self._debounce)
            with self._wake:
                batch, self._pending = self._pending, set()
            try:
                self._apply(batch)
            except Exception as exc:  # the watcher must outlive any one bad batch; the resync repairs it
                log.error("applying file changes failed (%s); the next resync will catch up", type(exc).__name__)
                log.debug("file change failure", exc_info=True)

    def _apply(self, batch: set[_UserChange | _Rescan]) -> None:
        if any(isinstance(change, _Rescan) for change in batch):
            self._rescan()
            return
        for change in batch:
            assert isinstance(change, _UserChange)
            if self._refresher.file_source_for_host(change.host) is None:
                continue  # a host this daemon does not count (--host, or the config skips it)
            choice = self._refresher.live.index.choice_of(change.host)
            if choice is None:
                if self._refresher.note_change(change.host, change.user):
                    continue  # a full scan is reading this host now, and reads this user again at its end
                if change.store_dir not in _ACCOUNT_STORES:  # an account change alone brings no activity data
                    self._rescan()  # a host with its first data
                    return
                continue
            if change.store_dir == choice.store.value or change.store_dir in _ACCOUNT_STORES:
                self._refresher.apply_change(change.host, change.user)
        self._refresher.changed()

    def _rescan(self) -> None:
        for source in self._sources:
            self._refresher.refresh(source)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: DataDirWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, EventsLostEvent):
            self._watcher.events_lost()
            return
        self._watcher.notice(os.fsdecode(event.src_path), is_directory=event.is_directory)
        if isinstance(event, FileSystemMovedEvent):
            self._watcher.notice(os.fsdecode(event.dest_path), is_directory=event.is_directory)


def watch_file_sources(refresher: Refresher, *, polling: bool = False) -> list[DataDirWatcher]:
    """One watcher per distinct data directory among the file sources; one that cannot be watched is logged."""
    # watchdog's inotify observer warns when a new directory is registered twice (by its creation event and by the
    # scan of its parent) and keeps the one callback: harmless, and its text names data paths.
    warnings.filterwarnings("ignore", _WATCHDOG_DOUBLE_WATCH, RuntimeWarning)
    by_directory: dict[Path, list[FileSource]] = {}
    for source in refresher.sources:
        if isinstance(source, FileSource):
            by_directory.setdefault(source.data_dir, []).append(source)
    watchers = []
    for directory, sources in by_directory.items():
        try:
            watchers.append(DataDirWatcher(sources, refresher, polling=polling))
        except OSError as exc:
            log.error("cannot watch %s (%s): counts follow its changes at each resync only", directory, exc)
    return watchers

"""Watches Prosody's data directory and re-reads only what changed, a burst of events at a time.

Prosody saves a record by writing `<user>.dat~` and renaming it over `<user>.dat` (moved-to), deletes a file
whose record emptied, and creates host and store directories on first write. A changed `.dat` re-reads that
one user; a new or removed directory rescans the data directory; scratch files are ignored.

What keeps it watching when the tree misbehaves:
- A host or store directory that is a symbolic link (the reader follows it) is watched at its target.
- A data directory replaced under its name (`mv new data`) is noticed within a second (its inode changed) and
  watched anew, then rescanned; a missing one is reported until it is back.
- A directory inotify cannot watch (the watch limit reached) is polled instead, and inotify is tried again every
  RETRY_WATCH_SECONDS; health says which directories are polled meanwhile.
- A user whose file cannot be read (other than "no such file") keeps what was known, and is read again later.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
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
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from prosody_lastlog.core.model import ACCOUNT_DETAILS, ACCOUNTS, Store
from prosody_lastlog.daemon.refresh import Refresher
from prosody_lastlog.prosody.pathnames import decode_name
from prosody_lastlog.sources.kinds import Source

log = logging.getLogger(__name__)

CHECK_SECONDS = 1.0  # how often the data directory's identity is checked (a stat)
RETRY_WATCH_SECONDS = 30.0  # how often inotify is tried again for a polled directory
POLL_SECONDS = 1.0  # how often a polled directory is listed (--polling, or one inotify cannot watch)
RETRY_READ_SECONDS = (1.0, 60.0)  # first and longest wait before reading an unreadable user's file again
_DAT = ".dat"
_STORES = {store.value: store for store in Store}
_ACCOUNT_STORES = (ACCOUNTS, ACCOUNT_DETAILS)  # what they say of a user completes its activity record;
# a change in the accounts store also changes the host's registered accounts
_WATCHDOG_DOUBLE_WATCH = r"Callback with id .* already exists for watch"
_WATCHDOG_UNWATCHED = "Unable to watch %r: %s"  # watchdog's inotify emitter, when a new directory gets no watch
_WATCHDOG_INOTIFY_LOGGER = "watchdog.observers.inotify"
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
class UserChange:
    """A user's file changed in a store directory (`store_dir`, as on disk): that user is read again."""

    host: str
    store_dir: str
    user: str


@dataclass(frozen=True)
class Rescan:
    """A change the per-user rules cannot follow (a directory came or went, events were lost): read all again."""


Change = UserChange | Rescan


def changes_of(event: FileSystemEvent, root: str, *, is_link: Callable[[str], bool] = os.path.islink) -> set[Change]:
    """What one event, its paths under the data directory `root`, means for the counts; nothing for the rest.
    `is_link` says whether a path is (or was, if it is gone) a symbolic link."""
    if isinstance(event, EventsLostEvent):
        return {Rescan()}
    paths = [event.src_path, event.dest_path] if isinstance(event, FileSystemMovedEvent) else [event.src_path]
    changes = (_change_at(os.fsdecode(path), root, event.is_directory, is_link) for path in paths)
    return {change for change in changes if change is not None}


def _change_at(path: str, root: str, is_directory: bool, is_link: Callable[[str], bool]) -> Change | None:
    parts = os.path.relpath(path, root).split(os.sep)
    if parts[0] == "..":
        return None
    if len(parts) <= 2 and (is_directory or is_link(path)):
        return Rescan()  # a new or removed host or store directory, or a link to one
    if len(parts) == 3 and parts[2].endswith(_DAT) and (parts[1] in _STORES or parts[1] in _ACCOUNT_STORES):
        host, user = decode_name(parts[0]), decode_name(parts[2][: -len(_DAT)])
        if host is not None and user is not None:
            return UserChange(host, parts[1], user)
    return None  # Prosody's scratch file (`.dat~`), another store, a name Prosody could not have written


@dataclass(frozen=True)
class _Unwatched:
    """inotify gave a new directory no watch: it is to be polled."""

    directory: str
    reason: str


_Queued = UserChange | Rescan | _Unwatched


@dataclass
class _Polled:
    """A directory inotify could not watch, polled meanwhile."""

    watch: ObservedWatch
    reason: str
    retry_at: float


class DataDirWatcher:
    """Turns file events under one data directory into per-user updates and rescans, debounced.

    One worker thread does everything that changes watches or counts; watchdog's threads only queue what they saw.
    Nothing runs until `start()`.
    """

    def __init__(
        self,
        directory: Path,
        sources: Sequence[Source],
        refresher: Refresher,
        *,
        debounce_seconds: float = 0.1,
        polling: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._directory = directory  # as the sources name it, for the log
        self._sources = sources  # every source watched in this data directory
        self._refresher = refresher
        self._root = os.path.abspath(directory)
        self._polling = polling
        self._debounce = debounce_seconds
        self._monotonic = monotonic
        self._pending: set[_Queued] = set()
        self._retries: dict[UserChange, float] = {}  # unreadable users: when to read them again
        self._waits: dict[UserChange, float] = {}  # and the last wait before that, which doubles
        self._wake = threading.Condition()
        self._stopping = False
        self._lock = threading.Lock()  # over the watches below, which the worker changes and others read
        self._inotify: BaseObserver | None = None if polling else Observer()
        self._poller = PollingObserver(timeout=POLL_SECONDS)
        self._root_watch: ObservedWatch | None = None
        self._root_identity: tuple[int, int] | None = None
        self._links: dict[str, tuple[str, ObservedWatch | None]] = {}  # linked directory -> its target, its watch
        self._watched: dict[str, tuple[str, ObservedWatch]] = {}  # directories inotify watches again: where, watch
        self._polled: dict[str, _Polled] = {}  # directories polled for want of an inotify watch
        self._missing = False  # the data directory is not there: then watched once it is
        self._failure: str | None = None  # why the data directory itself could not be watched
        self._reported: str | None = "(nothing yet)"  # the last health note given
        self._next_check = 0.0
        self._worker = threading.Thread(target=self._run, name="prosody-lastlog-watch", daemon=True)

    def start(self) -> None:
        """Watches the data directory and starts the worker. A data directory that cannot be watched at all is
        logged and named in health; its counts then follow its changes at each resync only."""
        _take_watchdog_notes()
        _UNWATCHED.add(self)
        self._missing = not os.path.isdir(self._root)
        try:
            for observer in (self._inotify, self._poller):
                if observer is not None:
                    observer.start()  # first: a watch scheduled then is made at once, and its failure seen here
            if not self._missing:
                self._watch_root()
                self._watch_links()
        except BaseException as exc:
            _UNWATCHED.discard(self)
            self._stop_observers()
            if not isinstance(exc, OSError):
                raise
            log.error("cannot watch %s (%s): counts follow its changes at each resync only", self._directory, exc)
            for source in self._sources:
                self._refresher.live.set_watch_problem(source.name, f"cannot watch {self._directory}: {exc}")
            return
        log.info("watching %s%s", self._root, " by polling" if self._polling else "")
        self._report()
        self._worker.start()

    def stop(self) -> None:
        """Stops watching and waits for the threads (none if it was not started, or could not watch)."""
        _UNWATCHED.discard(self)
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._worker.is_alive():
            self._worker.join()  # first: it may be making a watch
        self._stop_observers()

    def health(self) -> str | None:
        """What is not watched as it should be, in one line; None when everything is."""
        with self._lock:
            if self._missing:
                return f"data directory {self._root} is missing; watching for it to come back"
            if self._failure is not None:
                return f"cannot watch {self._root} ({self._failure}): counts follow its changes at each resync only"
            if not self._polled:
                return None
            directories = sorted(_shown(path, self._root) for path in self._polled)
            named = ", ".join(directories[:5]) + (f" and {len(directories) - 5} more" if len(directories) > 5 else "")
            reason = next(iter(self._polled.values())).reason
            count = "1 directory is" if len(directories) == 1 else f"{len(directories)} directories are"
            return f"{count} polled, not watched ({reason}): {named}"

    # --- what watchdog's threads tell -------------------------------------------------------------------------

    def notice(self, event: FileSystemEvent) -> None:
        """Queues what one event (its paths under the data directory) means; anything unrelated is dropped here."""
        if isinstance(event, EventsLostEvent):  # some change is unknown: changes_of says to scan again
            log.warning("%s: file events were lost (inotify queue overflowed); scanning it again", self._root)
        for change in changes_of(event, self._root, is_link=self._is_link):
            self._queue(change)

    def _is_link(self, path: str) -> bool:
        return path in self._links or os.path.islink(path)  # a link gone is no link now

    def unwatched(self, path: str, reason: str) -> bool:
        """inotify could not watch a new directory (watchdog says so): queues it to be polled; False if the
        directory is not this watcher's."""
        logical = self._logical(path)
        if logical is None:
            return False
        self._queue(_Unwatched(logical, reason))
        return True

    def _queue(self, change: _Queued) -> None:
        with self._wake:
            self._pending.add(change)
            self._wake.notify()

    # --- the worker ---------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._pending and not self._stopping:
                    self._wake.wait(self._until_next_duty())
                if self._stopping:
                    return
                burst = bool(self._pending)
            if burst:  # let the burst (write ~, rename, a logout right after a login) settle, then apply it once
                time.sleep(self._debounce)
            with self._wake:
                batch, self._pending = self._pending, set()
            try:
                self._check_watches()
                batch.update(self._due_retries())
                if batch:
                    self._apply(batch)
            except Exception as exc:  # the watcher must outlive any one bad batch; the resync repairs it
                log.error("applying file changes failed (%s); the next resync will catch up", type(exc).__name__)
                log.debug("file change failure", exc_info=True)

    def _until_next_duty(self) -> float:
        now = self._monotonic()
        due = [self._next_check, *self._retries.values()]
        with self._lock:
            due.extend(polled.retry_at for polled in self._polled.values())
        return max(0.0, min(due) - now)

    def _due_retries(self) -> list[UserChange]:
        now = self._monotonic()
        due = [change for change, at in self._retries.items() if at <= now]
        for change in due:
            del self._retries[change]
        return due

    def _apply(self, batch: set[_Queued]) -> None:
        unwatched = [change for change in batch if isinstance(change, _Unwatched)]
        for directory in sorted(unwatched, key=lambda item: item.directory):  # a directory before those below it
            self._poll_unwatched(directory)
        if self._missing:
            return  # nothing to read; the last counts stay until the data directory is back
        if any(isinstance(change, Rescan | _Unwatched) for change in batch):
            self._rescan()  # a new or removed directory; or one polled from now on, which may have changed meanwhile
            return
        for change in batch:
            assert isinstance(change, UserChange)
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
                if self._refresher.apply_change(change.host, change.user):
                    self._waits.pop(change, None)
                else:
                    self._retry_later(change)
        self._recount_accounts(batch)
        self._refresher.changed()

    def _recount_accounts(self, batch: set[_Queued]) -> None:
        """Counts again the registered accounts of each host whose accounts store changed (an account made or
        deleted); one that cannot be listed keeps its last count, and the next resync lists it again."""
        for host in {c.host for c in batch if isinstance(c, UserChange) and c.store_dir == ACCOUNTS}:
            if self._refresher.live.index.choice_of(host) is not None:
                self._refresher.recount_accounts(host)

    def _retry_later(self, change: UserChange) -> None:
        """A user whose file could not be read: read again after a wait that doubles, up to the longest (a full
        scan meanwhile keeps the facts last known; this reads the change once the file can be read)."""
        first, longest = RETRY_READ_SECONDS
        wait = min(2 * self._waits[change], longest) if change in self._waits else first
        self._retries[change], self._waits[change] = self._monotonic() + wait, wait

    def _rescan(self) -> None:
        for source in self._sources:
            self._refresher.refresh(source)
        self._watch_links()

    # --- keeping watch ------------------------------------------------------------------------------------------

    def _check_watches(self) -> None:
        """Once a CHECK_SECONDS: a replaced or missing data directory, and inotify again for polled directories."""
        now = self._monotonic()
        if now < self._next_check:
            return
        self._next_check = now + CHECK_SECONDS
        try:
            identity = _identity(self._root)
        except OSError:
            identity = None
        if identity != self._root_identity:
            self._root_replaced(identity)
        with self._lock:
            retry = [path for path, polled in self._polled.items() if polled.retry_at <= now]
        for path in retry:
            self._retry_inotify(path)

    def _root_replaced(self, identity: tuple[int, int] | None) -> None:
        if identity is None:
            if not self._missing:
                log.error("%s is missing: the counts stay as they were until it is back", self._root)
            self._unwatch_all()  # the old directory's events are not this data directory's
            with self._lock:
                self._missing, self._root_identity = True, None  # back under any identity: watched anew
            self._report()
            return
        if self._missing:
            log.warning("%s is there: watching it and scanning it", self._root)
        else:
            log.warning("%s was replaced by another directory: watching the new one and scanning it", self._root)
        self._unwatch_all()
        with self._lock:
            self._missing = False
        try:
            self._watch_root()
        except OSError as exc:
            log.error("cannot watch %s (%s)", self._root, exc)
            with self._lock:
                self._failure, self._root_identity = str(exc), None  # tried again at the next check
        self._report()
        self._rescan()

    def _watch_root(self) -> None:
        """Watches the data directory (inotify, else polling), noting which directory that is."""
        identity = _identity(self._root)
        watch = self._watch(self._root, self._root)
        with self._lock:
            self._root_identity, self._root_watch, self._failure = identity, watch, None

    def _watch(self, logical: str, physical: str) -> ObservedWatch | None:
        """Watches `physical` (recursively) as the directory `logical`; with inotify unless polling was chosen, and
        by polling if inotify cannot. None if it is polled for want of inotify (see `_polled`)."""
        handler = _Handler(self, physical, logical)
        observer = self._poller if self._inotify is None else self._inotify
        try:
            return observer.schedule(handler, physical, recursive=True, event_filter=_WATCHED_EVENTS)
        except OSError as exc:
            if self._inotify is None:
                raise
            self._poll(logical, _reason(exc), physical)
            return None

    def _poll_unwatched(self, change: _Unwatched) -> None:
        """Polls a directory inotify gave no watch (unless polled already, with all below it)."""
        with self._lock:
            if any(_within(change.directory, polled) for polled in self._polled):
                return
        try:
            self._poll(change.directory, change.reason)
        except OSError as exc:  # gone already, or unreadable: the rescan that follows reads what is there
            log.debug("cannot poll %s either: %s", change.directory, exc)

    def _poll(self, logical: str, reason: str, physical: str | None = None) -> None:
        physical = physical or os.path.realpath(logical)
        watch = self._poller.schedule(
            _Handler(self, physical, logical), physical, recursive=True, event_filter=_WATCHED_EVENTS
        )
        with self._lock:
            self._polled[logical] = _Polled(watch, reason, self._monotonic() + RETRY_WATCH_SECONDS)
        log.warning(
            "%s: cannot watch it with inotify (%s); polling it every %g s, and trying inotify again every %g s",
            logical, reason, POLL_SECONDS, RETRY_WATCH_SECONDS,
        )  # fmt: skip
        self._report()

    def _retry_inotify(self, logical: str) -> None:
        assert self._inotify is not None
        with self._lock:
            polled = self._polled.get(logical)
        if polled is None:
            return
        physical = os.path.realpath(logical)
        if not os.path.isdir(physical):  # gone
            self._poller.unschedule(polled.watch)
            with self._lock:
                del self._polled[logical]
            self._report()
            return
        try:
            watch = self._inotify.schedule(
                _Handler(self, physical, logical), physical, recursive=True, event_filter=_WATCHED_EVENTS
            )
        except OSError as exc:
            polled.reason, polled.retry_at = _reason(exc), self._monotonic() + RETRY_WATCH_SECONDS
            return
        self._poller.unschedule(polled.watch)
        with self._lock:
            del self._polled[logical]
            if logical == self._root:
                self._root_watch = watch
            elif logical in self._links:
                self._links[logical] = (physical, watch)
            else:
                self._watched[logical] = (physical, watch)
        log.warning("%s: watched with inotify again", logical)
        self._report()
        self._queue(Rescan())  # a change between the last poll and the watch

    def _watch_links(self) -> None:
        """Watches, at their targets, the host and store directories that are links; forgets links gone, and
        directories watched apart that are gone."""
        found: dict[str, str] = {}
        for directory in [self._root, *_subdirectories(self._root)]:
            for path in _subdirectories(directory):
                if os.path.islink(path):
                    found[path] = os.path.realpath(path)
        with self._lock:
            gone = [(path, watch) for path, (target, watch) in self._links.items() if found.get(path) != target]
            gone += [(path, watch) for path, (_, watch) in self._watched.items() if not os.path.isdir(path)]
            for path, _ in gone:
                self._links.pop(path, None)
                self._watched.pop(path, None)
            new = [(path, target) for path, target in found.items() if path not in self._links]
        for _, watch in gone:
            self._unwatch(watch)
        for path, target in new:
            watch = self._watch(path, target)
            with self._lock:
                self._links[path] = (target, watch)

    def _unwatch(self, watch: ObservedWatch | None) -> None:
        if watch is None:
            return
        for observer in (self._inotify, self._poller):
            if observer is not None:
                with contextlib.suppress(KeyError):  # not one of this observer's
                    observer.unschedule(watch)

    def _unwatch_all(self) -> None:
        """Drops every watch."""
        with self._lock:
            apart = [watch for _, watch in (*self._links.values(), *self._watched.values())]
            watches = [self._root_watch, *apart, *(polled.watch for polled in self._polled.values())]
            self._root_watch, self._links, self._watched, self._polled = None, {}, {}, {}
        for watch in watches:  # not under the lock: watchdog's threads may be waiting for it, holding their own
            self._unwatch(watch)

    def _logical(self, physical: str) -> str | None:
        """The path under the data directory that a watched path is (through a link), if any."""
        if _within(physical, self._root):
            return physical
        with self._lock:
            apart = [(target, link) for link, (target, _) in self._links.items()]
            apart += [(where, directory) for directory, (where, _) in self._watched.items()]
        for where, directory in apart:
            if _within(physical, where):
                return directory + physical[len(where) :]
        return None

    def _report(self) -> None:
        """Hands the watch's health to every source of this data directory, when it changed."""
        note = self.health()
        if note == self._reported:
            return
        self._reported = note
        for source in self._sources:
            self._refresher.live.set_watch_problem(source.name, note)

    def _stop_observers(self) -> None:
        for observer in (self._inotify, self._poller):
            if observer is not None and observer.is_alive():
                observer.stop()
                observer.join()


class _Handler(FileSystemEventHandler):
    """Events of one watched directory, their paths made into paths under the data directory."""

    def __init__(self, watcher: DataDirWatcher, physical: str, logical: str) -> None:
        self._watcher = watcher
        self._physical = physical
        self._logical = logical

    def on_any_event(self, event: FileSystemEvent) -> None:
        if self._physical != self._logical:
            source, destination = self._translated(event.src_path), self._translated(event.dest_path)
            event = replace(event, src_path=source, dest_path=destination)
        self._watcher.notice(event)

    def _translated(self, path: bytes | str) -> str:
        text = os.fsdecode(path)
        if self._physical == self._logical or not text.startswith(self._physical):
            return text
        return self._logical + text[len(self._physical) :]


class _UnwatchedDirectories(logging.Filter):
    """Takes watchdog's warning that a new directory got no inotify watch (its text names a data path) to the
    watcher of that directory, which polls it and says so in health, instead of a bare line on stderr."""

    def __init__(self) -> None:
        super().__init__()
        self._watchers: set[DataDirWatcher] = set()
        self._lock = threading.Lock()

    def add(self, watcher: DataDirWatcher) -> None:
        with self._lock:
            self._watchers.add(watcher)

    def discard(self, watcher: DataDirWatcher) -> None:
        with self._lock:
            self._watchers.discard(watcher)

    def filter(self, record: logging.LogRecord) -> bool:
        """False (the line is not shown) when a watcher takes it."""
        if record.msg != _WATCHDOG_UNWATCHED or not isinstance(record.args, tuple) or len(record.args) != 2:
            return True
        path, error = record.args
        directory = os.fsdecode(path) if isinstance(path, bytes | str) else str(path)
        with self._lock:
            watchers = list(self._watchers)
        return not any([watcher.unwatched(directory, _reason(error)) for watcher in watchers])


_UNWATCHED = _UnwatchedDirectories()


def _shown(path: str, root: str) -> str:
    """A directory as health names it: relative to the data directory, or the data directory itself."""
    return f"the data directory {root}" if path == root else os.path.relpath(path, root)


def _within(path: str, directory: str) -> bool:
    """Whether `path` is `directory` or below it."""
    return path == directory or path.startswith(directory + os.sep)


def _identity(path: str) -> tuple[int, int]:
    """Which directory a path names now (links followed)."""
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _subdirectories(directory: str) -> list[str]:
    """The directories in `directory` (links to directories included); none if it cannot be listed."""
    try:
        with os.scandir(directory) as entries:
            return [entry.path for entry in entries if _is_dir(entry)]
    except OSError:
        return []


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _reason(error: object) -> str:
    """Why a watch failed, for logs and health."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "the inotify watch limit is reached: raise fs.inotify.max_user_watches"
    if isinstance(error, OSError) and error.errno == errno.EMFILE:
        return "the inotify instance limit is reached: raise fs.inotify.max_user_instances"
    return str(error)


def watchers_for(refresher: Refresher, *, polling: bool = False) -> list[DataDirWatcher]:
    """One watcher, not started, per distinct directory the refresher's sources are watched in."""
    by_directory: dict[Path, list[Source]] = {}
    for source in refresher.sources:
        if source.watch_dir is not None:
            by_directory.setdefault(source.watch_dir, []).append(source)
    return [DataDirWatcher(where, sources, refresher, polling=polling) for where, sources in by_directory.items()]


def _take_watchdog_notes() -> None:
    """Quiets or takes over what watchdog says of data paths."""
    # Its inotify observer warns when a new directory is registered twice (by its creation event and by the scan of
    # its parent) and keeps the one callback: harmless, and its text names data paths.
    warnings.filterwarnings("ignore", _WATCHDOG_DOUBLE_WATCH, RuntimeWarning)
    inotify_log = logging.getLogger(_WATCHDOG_INOTIFY_LOGGER)
    if _UNWATCHED not in inotify_log.filters:
        inotify_log.addFilter(_UNWATCHED)

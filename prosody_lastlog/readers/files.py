"""Reads Prosody's internal file store: <data_path>/<host>/<store>/<user>.dat, names percent-encoded."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

from prosody_lastlog.pathnames import decode_name, encode_name, encode_store
from prosody_lastlog.readers import ReadResult
from prosody_lastlog.readers.stores import interpret
from prosody_lastlog.records import HostData, ReadProblem, Store, UserActivity
from prosody_lastlog.sandbox import BATCH_SIZE, Loaded, LuaSandbox, PlainValue

MAX_FILE_SIZE = 256 * 1024  # a real last-activity file is a few hundred bytes
_DAT = ".dat"
_ACCOUNTS = "accounts"


class DataDirError(Exception):
    """The data directory itself is missing or unreadable (one file's trouble is a ReadProblem)."""


Scandir = Callable[[str], Iterable[os.DirEntry[str]]]


class FileStoreReader:
    """Reads last-activity data for every host (or the chosen ones) under a Prosody data directory."""

    def __init__(
        self,
        data_dir: Path,
        *,
        hosts: Collection[str] = (),
        store: Store | None = None,
        count_disabled: bool = False,
        sandbox: LuaSandbox | None = None,
        scandir: Scandir = os.scandir,
    ) -> None:
        self._data_dir = data_dir
        self._prefix = os.path.join(str(data_dir), "")
        self._hosts = {host.lower() for host in hosts}
        self._forced_store = store
        self._count_disabled = count_disabled
        self._sandbox = sandbox or LuaSandbox()
        self._scandir = scandir

    def read(self, progress: Callable[[int], None] | None = None) -> ReadResult:
        """Scans the whole tree; raises DataDirError only if the data directory cannot be listed.

        `progress`, if given, is called with the number of user files read so far, once per batch.
        """
        result = ReadResult()
        files_read = 0
        for host, host_dir in self._host_dirs(result.problems):
            subdirs = self._subdirectories(host_dir, result.problems)
            store = self._choose_store(subdirs)
            if store is None:
                continue
            data = HostData(host, store)
            disabled = set()
            if _ACCOUNTS in subdirs and not self._count_disabled:
                disabled = self._disabled_users(os.path.join(host_dir, _ACCOUNTS), result.problems)
            for batch in _batches(self._user_files(host_dir, store, result.problems)):
                self._read_batch(batch, store, data, disabled, result.problems)
                files_read += len(batch)
                if progress is not None:
                    progress(files_read)
            result.hosts[host] = data
        return result

    def read_user(self, host: str, store: Store, user: str, problems: list[ReadProblem]) -> UserActivity | None:
        """Reads one user's record again after a change; None when it is gone or unusable (then a problem)."""
        host_dir = os.path.join(self._data_dir, encode_name(host))
        path = os.path.join(host_dir, encode_store(store.value), encode_name(user) + _DAT)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                problems.append(ReadProblem(self._where(path), "not_a_file", "not a regular file"))
                return None
        except FileNotFoundError:
            return None  # the record was emptied or the account deleted
        except OSError as exc:
            problems.append(ReadProblem(self._where(path), "unreadable", exc.strerror or str(exc)))
            return None
        text = self._read_text(path, problems)
        if text is None:
            return None
        loaded = self._sandbox.load(text, os.path.basename(path))
        if loaded.error is not None:
            problems.append(self._load_problem(path, loaded))
            return None
        interpreted = interpret(store, user, loaded.value)
        problems.extend(ReadProblem(self._where(path), "unexpected", odd) for odd in interpreted.oddities)
        activity = interpreted.activity
        if activity is not None and not self._count_disabled and self._is_disabled(host_dir, user, problems):
            activity = replace(activity, disabled=True)
        return activity

    def _is_disabled(self, host_dir: str, user: str, problems: list[ReadProblem]) -> bool:
        path = os.path.join(host_dir, _ACCOUNTS, encode_name(user) + _DAT)
        try:
            text = _read_bounded(path)
        except OSError:
            return False  # no account record (or none readable): nothing says it is disabled
        if b"disabled" not in text:
            return False
        loaded = self._sandbox.load(text, os.path.basename(path))
        if loaded.error is not None:
            problems.append(self._load_problem(path, loaded))
            return False
        return _says_disabled(loaded.value)

    def _host_dirs(self, problems: list[ReadProblem]) -> Iterator[tuple[str, str]]:
        try:
            entries = sorted(self._scandir(str(self._data_dir)), key=lambda entry: entry.name)
        except OSError as exc:
            raise DataDirError(f"cannot read data directory {self._data_dir}: {exc.strerror or exc}") from exc
        seen: set[str] = set()
        for entry in entries:
            host = decode_name(entry.name)
            # Other modules keep directories here too (`_global`, `http_file_share`): not host names, not ours.
            if host is None or not _is_dir(entry) or (self._hosts and host not in self._hosts):
                continue
            if host in seen:
                problems.append(ReadProblem(entry.name, "unexpected", f"a second directory for host {host}"))
                continue
            seen.add(host)
            yield host, entry.path

    def _subdirectories(self, host_dir: str, problems: list[ReadProblem]) -> set[str]:
        try:
            return {entry.name for entry in self._scandir(host_dir) if _is_dir(entry)}
        except OSError as exc:
            problems.append(ReadProblem(self._where(host_dir), "unreadable", exc.strerror or str(exc)))
            return set()

    def _choose_store(self, subdirs: set[str]) -> Store | None:
        """The store the server's own mod_measure_active_users would read: 13's first, then lastlog2, lastlog."""
        candidates = [self._forced_store] if self._forced_store else list(Store)
        return next((store for store in candidates if encode_store(store.value) in subdirs), None)

    def _user_files(
        self, host_dir: str, store: Store, problems: list[ReadProblem]
    ) -> Iterator[tuple[os.DirEntry[str], str]]:
        """Each `<user>.dat` of the store with its decoded user name; odd names become problems."""
        store_dir = os.path.join(host_dir, encode_store(store.value))
        try:
            entries = list(self._scandir(store_dir))
        except OSError as exc:
            problems.append(ReadProblem(self._where(store_dir), "unreadable", exc.strerror or str(exc)))
            return
        for entry in entries:
            # Prosody's users() takes every name ending in .dat; `<user>.dat~` is a scratch file mid-write.
            if not entry.name.endswith(_DAT):
                continue
            user = _user_name(entry)
            if user is None:
                where = os.fsencode(self._where(entry.path)).decode("utf-8", "backslashreplace")
                problems.append(ReadProblem(where, "unexpected", "not a name Prosody writes (percent-encoded UTF-8)"))
            elif _is_regular_file(entry):
                yield entry, user
            elif os.path.lexists(entry.path):  # else removed since listing: normal
                problems.append(
                    ReadProblem(self._where(entry.path), "not_a_file", "not a regular file (links are not followed)")
                )

    def _read_batch(
        self,
        batch: list[tuple[os.DirEntry[str], str]],
        store: Store,
        data: HostData,
        disabled: set[str],
        problems: list[ReadProblem],
    ) -> None:
        readable: list[tuple[os.DirEntry[str], str]] = []
        texts: list[tuple[bytes, str]] = []
        for entry, user in batch:
            text = self._read_text(entry.path, problems)
            if text is not None:
                readable.append((entry, user))
                texts.append((text, entry.name))
        for (entry, user), loaded in zip(readable, self._sandbox.load_many(texts), strict=True):
            if loaded.error is not None:
                problems.append(self._load_problem(entry.path, loaded))
                continue
            interpreted = interpret(store, user, loaded.value)
            for oddity in interpreted.oddities:
                problems.append(ReadProblem(self._where(entry.path), "unexpected", oddity))
            if interpreted.activity is not None:
                activity = interpreted.activity
                if user in disabled:
                    activity = replace(activity, disabled=True)
                data.users.append(activity)

    def _read_text(self, path: str, problems: list[ReadProblem]) -> bytes | None:
        try:
            text = _read_bounded(path)
        except FileNotFoundError:
            return None  # removed between listing and reading: Prosody deletes emptied records
        except OSError as exc:
            problems.append(ReadProblem(self._where(path), "unreadable", exc.strerror or str(exc)))
            return None
        if not text:
            problems.append(ReadProblem(self._where(path), "empty", "empty file (Prosody reads it as no record)"))
            return None
        if len(text) > MAX_FILE_SIZE:
            problems.append(ReadProblem(self._where(path), "limit", f"larger than {MAX_FILE_SIZE} bytes"))
            return None
        return text

    def _disabled_users(self, accounts_dir: str, problems: list[ReadProblem]) -> set[str]:
        """Users whose `accounts` record sets `disabled` (Prosody 13's mod_auth_internal_hashed; truthy as in Lua)."""
        try:
            entries = list(self._scandir(accounts_dir))
        except OSError as exc:
            problems.append(ReadProblem(self._where(accounts_dir), "unreadable", exc.strerror or str(exc)))
            return set()
        candidates: list[tuple[str, str, bytes]] = []
        for entry in entries:
            user = _user_name(entry) if entry.name.endswith(_DAT) else None
            if user is not None and _is_regular_file(entry):
                text = self._read_text(entry.path, problems)
                # Accounts files hold password hashes: only those that mention `disabled` are evaluated at all.
                if text is not None and b"disabled" in text:
                    candidates.append((user, entry.path, text))
        loaded = self._sandbox.load_many([(text, os.path.basename(path)) for _, path, text in candidates])
        disabled: set[str] = set()
        for (user, path, _), result in zip(candidates, loaded, strict=True):
            if result.error is not None:
                problems.append(self._load_problem(path, result))
            elif _says_disabled(result.value):
                disabled.add(user)
        return disabled

    def _load_problem(self, path: str, loaded: Loaded) -> ReadProblem:
        """The problem a chunk that failed to load makes: a hit sandbox limit, or invalid content."""
        return ReadProblem(self._where(path), "limit" if loaded.hit_limit else "invalid", loaded.error or "")

    def _where(self, path: str) -> str:
        return path[len(self._prefix) :] if path.startswith(self._prefix) else path


def _says_disabled(account: PlainValue | None) -> bool:
    # Prosody 13: `enabled = not account.disabled`, so anything but nil/false disables.
    return isinstance(account, dict) and account.get("disabled") not in (None, False)


def _user_name(entry: os.DirEntry[str]) -> str | None:
    return decode_name(entry.name[: -len(_DAT)])


def _batches(files: Iterator[tuple[os.DirEntry[str], str]]) -> Iterator[list[tuple[os.DirEntry[str], str]]]:
    batch: list[tuple[os.DirEntry[str], str]] = []
    for user_file in files:
        batch.append(user_file)
        if len(batch) == BATCH_SIZE:
            yield batch
            batch = []
    if batch:
        yield batch


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_regular_file(entry: os.DirEntry[str]) -> bool:
    # A FIFO or device named `x.dat` would block or stream forever on open(), and a link may point at
    # anything on the machine: only regular files are read.
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def _read_bounded(path: str) -> bytes:
    """At most MAX_FILE_SIZE + 1 bytes of a file, never following a link nor blocking on a FIFO."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        # One read: Prosody replaces files by rename, so a file does not change while it is open.
        return os.read(descriptor, min(os.fstat(descriptor).st_size, MAX_FILE_SIZE) + 1)
    finally:
        os.close(descriptor)

"""Reads Prosody's internal file store: <data_path>/<host>/<store>/<user>.dat, names percent-encoded.

This module walks the tree and lists each host's files; file_records.py turns them into records, and
parallel_read.py shares a large tree out to several processes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path

from prosody_lastlog.core.model import (
    ACCOUNT_DETAILS,
    ACCOUNTS,
    AccountRule,
    CountingChoice,
    HostData,
    ReadProblem,
    Store,
    UserActivity,
)
from prosody_lastlog.core.rules import Policy
from prosody_lastlog.prosody.canonical import activity_reader
from prosody_lastlog.prosody.pathnames import decode_name, encode_name, encode_store
from prosody_lastlog.sources.file_records import (
    DAT,
    MAX_FILE_SIZE,
    AccountDirs,
    AccountFiles,
    Progress,
    RecordLoader,
    UserFiles,
    as_records,
    interpreted,
    load_problem,
    no_progress,
    odd_name,
    read_bounded,
    unusable,
    user_name,
)
from prosody_lastlog.sources.parallel_read import collector_paused, read_in_processes, read_serially
from prosody_lastlog.sources.results import DataDirError, ReadResult

__all__ = ["MAX_FILE_SIZE", "FileStoreReader", "Progress", "RecordUnreadableError", "default_workers"]

MAX_WORKERS = 4  # the default cap on processes: beyond a few, the kernel's and the disk's share of the work dominates
MIN_FILES_PER_WORKER = 20_000  # a process takes milliseconds to start (a hundred without `fork`): not for small trees


class RecordUnreadableError(Exception):
    """A file of one user's record could not be read for a reason other than "no such file" (permissions, no
    descriptor left): whether the record is gone is not known, so what was known of it stands."""


Scandir = Callable[[str], Iterable[os.DirEntry[str]]]


def default_workers() -> int:
    """The CPUs this process may run on, at most MAX_WORKERS."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))


class FileStoreReader:
    """Reads last-activity data for every host (or the chosen ones) under a Prosody data directory.

    Which store each host is read from and which accounts count are `policy`'s choices (rules.py), made from the
    stores each host has data in. A full read uses up to `workers` processes (default: the CPUs this process may use,
    at most MAX_WORKERS), but no more than one per MIN_FILES_PER_WORKER files.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        hosts: Collection[str] = (),
        policy: Policy | None = None,
        scandir: Scandir = os.scandir,
        workers: int | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._prefix = os.path.join(str(data_dir), "")
        self._hosts = {host.lower() for host in hosts}
        self.policy = policy or Policy()
        self._scandir = scandir
        self._workers = default_workers() if workers is None else max(1, workers)
        self._loader = RecordLoader()

    def read(self, progress: Progress | None = None) -> ReadResult:
        """Scans the whole tree; raises DataDirError only if the data directory cannot be listed. What cannot be read
        for another reason than "no such file" is a problem, and named in the result's `unreadable_*`.

        `progress`, if given, is called with the number of user files read so far, about every BATCH_SIZE files.
        Records and problems come in the same order however many processes read (see `RecordLoader._activity`).
        """
        result = ReadResult()
        entries = [(host, path, self._host_entries(path, result.problems)) for host, path in self._host_dirs(result)]
        server = self.policy.server({name for _, _, names in entries for name in names or ()})
        result.server = server
        listed: list[UserFiles] = []  # each host's store files, then its accounts with no activity record
        for host, host_dir, names in entries:
            if names is None:
                result.unreadable_hosts.add(host)
                continue
            choice = self.policy.choose(host, {store for store in Store if encode_store(store.value) in names}, server)
            if choice is None:
                continue
            result.hosts[host] = HostData(host, choice.store, choice=choice)
            directory = os.path.join(host_dir, encode_store(choice.store.value))
            accounts = self._accounts(host, host_dir, names, choice, thirteen=server.thirteen, problems=result.problems)
            # (--store may name a store this host has no data in.)
            files = self._user_files(directory, result.problems) if encode_store(choice.store.value) in names else []
            if accounts is None or files is None:
                result.unreadable_hosts.add(host)
                continue
            dirs, result.hosts[host].registered_accounts, account_names = accounts
            if files:
                listed.append(UserFiles(host, choice.store, directory, self._where(directory), files, dirs))
            if self.policy.lists_accounts(host):
                recorded = set(files)
                if without := [name for name in account_names if name not in recorded]:
                    listed.append(self._accounts_only(host, choice.store, host_dir, dirs, without))
        total = sum(len(files.names) for files in listed)
        workers = min(self._workers, total // MIN_FILES_PER_WORKER)
        with collector_paused():
            if workers < 2:
                read = [as_records(part) for part in read_serially(self._loader, listed, progress or no_progress)]
            else:
                read = read_in_processes(self._loader, listed, workers, progress)
            for host, users, problems, unreadable in read:
                result.hosts[host].users.extend(users)
                result.problems.extend(problems)
                if unreadable:
                    result.unreadable_users.setdefault(host, set()).update(unreadable)
        return result

    def read_user(
        self, host: str, choice: CountingChoice, user: str, problems: list[ReadProblem]
    ) -> UserActivity | None:
        """Reads one user's record again after a change (with its account's, as a full read would); None when it is
        gone or unusable (then a problem). Raises RecordUnreadableError (after adding the problem) when one of its files
        cannot be read for another reason than "no such file"."""
        host_dir = os.path.join(self._data_dir, encode_name(host))
        name = encode_name(user) + DAT
        path = os.path.join(host_dir, encode_store(choice.store.value), name)
        text = self._read_regular_file(path, problems)
        if text is None:
            return None if self._is_regular_file(path, []) else self._account_only(host, host_dir, user, choice)
        row = activity_reader(choice.store)(user, text)
        if row is None:
            loaded = self._loader.load(text, name)
            if loaded.error is not None:
                problems.append(load_problem(self._where(path), loaded))
                return None
            row = interpreted(choice.store, user, self._where(path), loaded.value, problems)
            if row is None:
                return None
        with AccountFiles(
            self._loader, self._one_account(host_dir, name, choice, problems), self._where(host_dir), problems
        ) as accounts:
            row = accounts.complete(name, row)
            if accounts.unreadable:
                raise RecordUnreadableError(problems[-1].where)
            return UserActivity(*row)

    def _account_only(self, host: str, host_dir: str, user: str, choice: CountingChoice) -> UserActivity | None:
        """A user with no activity file, as a full read makes them: a registered account with no activity data if
        the host's accounts are listed and theirs is there; else None."""
        name = encode_name(user) + DAT
        problems: list[ReadProblem] = []
        dirs = self._one_account(host_dir, name, choice, problems)
        if not self.policy.lists_accounts(host) or name not in dirs.names:
            return None
        job = self._accounts_only(host, choice.store, host_dir, dirs, [name])
        _, users, problems, unreadable = as_records(self._loader.read(job, no_progress, 0))
        if unreadable:
            raise RecordUnreadableError(problems[-1].where)
        return users[0] if users else None

    def _accounts_only(self, host: str, store: Store, host_dir: str, dirs: AccountDirs, names: list[str]) -> UserFiles:
        """The account files `names` of a host, to be read as registered accounts with no activity record."""
        directory = os.path.join(host_dir, ACCOUNTS)
        return UserFiles(host, store, directory, self._where(directory), names, dirs, account_only=True)

    def registered_accounts(self, host: str, problems: list[ReadProblem]) -> int | None:
        """One host's registered accounts, listed again (after a change in its accounts store) as a full read counts
        them. Raises RecordUnreadableError (after adding the problem) if the directory cannot be listed."""
        directory = os.path.join(self._data_dir, encode_name(host), ACCOUNTS)
        present = os.path.isdir(directory)
        listed = self._user_files(directory, problems) if present else []
        if listed is None:
            raise RecordUnreadableError(problems[-1].where)
        return self.policy.registered_accounts(host, len(listed) if present else None)

    def _accounts(
        self,
        host: str,
        host_dir: str,
        names: set[str],
        choice: CountingChoice,
        *,
        thirteen: bool,
        problems: list[ReadProblem],
    ) -> tuple[AccountDirs, int | None, list[str]] | None:
        """What a full read of the host takes from its account directories: Prosody 13's account files (`created`,
        `disabled`) and, for users with no registration time otherwise, mod_register_ibr's account_details; the
        registered accounts, as many as usermanager lists (the `<user>.dat` files of `accounts`, names not
        decoded: Prosody's users() does not either), as Policy.registered_accounts says; and those files. None if a
        directory cannot be listed."""
        check = choice.accounts is AccountRule.ENABLED
        listed: list[str] | None = []
        if ACCOUNTS in names and (thirteen or check or self.policy.keeps_accounts(host) is not False):
            listed = self._user_files(os.path.join(host_dir, ACCOUNTS), problems)
        details: list[str] | None = []
        if ACCOUNT_DETAILS in names:
            details = self._user_files(os.path.join(host_dir, ACCOUNT_DETAILS), problems)
        if listed is None or details is None:
            return None
        registered = self.policy.registered_accounts(host, len(listed) if ACCOUNTS in names else None)
        completing = frozenset(listed) if thirteen or check else frozenset()  # else no record needs them
        dirs = AccountDirs(host_dir, completing, read=thirteen, check=check, details=frozenset(details))
        return dirs, registered, listed

    def _one_account(
        self, host_dir: str, name: str, choice: CountingChoice, problems: list[ReadProblem]
    ) -> AccountDirs:
        """The account directories' part in one user's record: as `_accounts`, for that user's file only."""
        listed = {
            store
            for store in (ACCOUNTS, ACCOUNT_DETAILS)
            if self._is_regular_file(os.path.join(host_dir, store, name), problems)
        }
        return AccountDirs(
            host_dir,
            frozenset([name] if ACCOUNTS in listed else []),
            read=True,  # a Prosody 0.12 account file has neither `created` nor `disabled`: reading it changes nothing
            check=choice.accounts is AccountRule.ENABLED,
            details=frozenset([name] if ACCOUNT_DETAILS in listed else []),
        )

    def _host_dirs(self, result: ReadResult) -> Iterator[tuple[str, str]]:
        problems = result.problems
        try:
            entries = sorted(self._scandir(str(self._data_dir)), key=lambda entry: entry.name)
        except OSError as exc:
            raise DataDirError(f"cannot read data directory {self._data_dir}: {exc.strerror or exc}") from exc
        seen: set[str] = set()
        for entry in entries:
            host = decode_name(entry.name)
            # Other modules keep directories here too (`_global`, `http_file_share`): not host names, not ours.
            if host is None or (self._hosts and host not in self._hosts):
                continue
            try:
                if not entry.is_dir():  # a link to a directory is followed, as Prosody follows it
                    continue
            except FileNotFoundError:
                continue
            except OSError as exc:  # a link whose target cannot be looked at: not known to be gone
                problems.append(ReadProblem(entry.name, "unreadable", exc.strerror or str(exc)))
                result.unreadable_hosts.add(host)
                continue
            if host in seen:
                problems.append(ReadProblem(entry.name, "unexpected", f"a second directory for host {host}"))
                continue
            seen.add(host)
            yield host, entry.path

    def _host_entries(self, host_dir: str, problems: list[ReadProblem]) -> set[str] | None:
        """The stores a host directory holds: its subdirectories (per-user stores) and, without `.dat`, its files
        (host-level records such as Prosody 13's `cron.dat`); None if it cannot be listed (then a problem)."""
        try:
            entries = list(self._scandir(host_dir))
            names = {entry.name for entry in entries if _is_dir(entry)}
        except FileNotFoundError:
            return set()  # removed since listed
        except OSError as exc:
            problems.append(ReadProblem(self._where(host_dir), "unreadable", exc.strerror or str(exc)))
            return None
        return names | {entry.name[: -len(DAT)] for entry in entries if entry.name.endswith(DAT)}

    def _user_files(self, store_dir: str, problems: list[ReadProblem]) -> list[str] | None:
        """The names of the regular `<user>.dat` files of a store (or `accounts`) directory; other entries so named
        become problems. None if it cannot be listed (then a problem); none if it is gone.

        Names are decoded as the files are read (where a name Prosody cannot write becomes a problem).
        """
        try:
            entries = list(self._scandir(store_dir))
        except FileNotFoundError:
            return []  # removed since the host's listing: Prosody deletes a store whose last record emptied
        except OSError as exc:
            problems.append(ReadProblem(self._where(store_dir), "unreadable", exc.strerror or str(exc)))
            return None
        names: list[str] = []
        for entry in entries:
            # Prosody's users() takes every name ending in .dat; `<user>.dat~` is a scratch file mid-write.
            name = entry.name
            if not name.endswith(DAT):
                continue
            if _is_regular_file(entry):
                names.append(name)
            elif user_name(name) is None:
                problems.append(odd_name(self._where(entry.path)))
            elif os.path.lexists(entry.path):  # else removed since listing: normal
                problems.append(
                    ReadProblem(self._where(entry.path), "not_a_file", "not a regular file (links are not followed)")
                )
        return names

    def _read_regular_file(self, path: str, problems: list[ReadProblem]) -> bytes | None:
        """The text of a user's file, if it is a regular file and usable; None if it is gone (the record was emptied
        or the account deleted) or not usable (then a problem); RecordUnreadableError if it cannot be read."""
        if not self._is_regular_file(path, problems):
            return None
        try:
            text = read_bounded(path)
        except FileNotFoundError:
            return None  # removed between listing and reading: Prosody deletes emptied records
        except OSError as exc:
            raise self._unreadable(path, exc, problems) from exc
        why = unusable(text)
        if why is not None:
            problems.append(ReadProblem(self._where(path), *why))
            return None
        return text

    def _is_regular_file(self, path: str, problems: list[ReadProblem]) -> bool:
        """Whether `path` is a regular file; one that is not is a problem, none is not; RecordUnreadableError if it
        cannot be looked at."""
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                return True
            problems.append(ReadProblem(self._where(path), "not_a_file", "not a regular file"))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._unreadable(path, exc, problems) from exc
        return False

    def _unreadable(self, path: str, exc: OSError, problems: list[ReadProblem]) -> RecordUnreadableError:
        """The problem of a file that cannot be read, added; and the exception that says so."""
        problems.append(ReadProblem(self._where(path), "unreadable", exc.strerror or str(exc)))
        return RecordUnreadableError(problems[-1].where)

    def _where(self, path: str) -> str:
        return path[len(self._prefix) :] if path.startswith(self._prefix) else path


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """Whether an entry is a directory (a link to one followed); False if it is gone, OSError if that cannot be
    told (a link whose target cannot be looked at)."""
    try:
        return entry.is_dir()
    except FileNotFoundError:
        return False


def _is_regular_file(entry: os.DirEntry[str]) -> bool:
    # A FIFO or device named `x.dat` would block or stream forever on open(), and a link may point at
    # anything on the machine: only regular files are read.
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False

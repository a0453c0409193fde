"""Reads Prosody's internal file store: <data_path>/<host>/<store>/<user>.dat, names percent-encoded.

A file in the exact form Prosody writes is read by `canonical.parse`; any other goes to the Lua sandbox. A large
tree is read by several processes at once, each taking a contiguous share of the listing, merged back in order.
"""

from __future__ import annotations

import gc
import os
import stat
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import starmap
from pathlib import Path
from typing import TYPE_CHECKING

from prosody_lastlog.core.model import AccountRule, CountingChoice, HostData, ReadProblem, Store, UserActivity
from prosody_lastlog.core.rules import Policy
from prosody_lastlog.prosody.canonical import ActivityRow, account_fields, activity_reader, parse
from prosody_lastlog.prosody.decode import account_facts, interpret, registration, registration_time
from prosody_lastlog.prosody.pathnames import decode_name, encode_name, encode_store
from prosody_lastlog.prosody.sandbox import BATCH_SIZE, Loaded, LuaSandbox, PlainValue
from prosody_lastlog.sources.processes import ProcessContext, forker_of, process_context, set_up_child
from prosody_lastlog.sources.results import DataDirError, ReadResult

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

MAX_FILE_SIZE = 256 * 1024  # a real last-activity file is a few hundred bytes
MAX_WORKERS = 4  # the default cap on processes: beyond a few, the kernel's and the disk's share of the work dominates
MIN_FILES_PER_WORKER = 20_000  # a process takes milliseconds to start (a hundred without `fork`): not for small trees
PARENT_SHARE = 0.9  # this process also makes the others' records into UserActivity, so it reads fewer files
CHUNK = 32 * BATCH_SIZE  # files a child reads between two sends of what it found (a multiple of BATCH_SIZE)
_DAT = ".dat"
_ACCOUNTS = "accounts"
_DETAILS = "account_details"
_FIRST_READ = 16 * 1024  # one read() gets a whole real file
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # never follow a link nor block on a FIFO


class RecordUnreadableError(Exception):
    """A file of one user's record could not be read for a reason other than "no such file" (permissions, no
    descriptor left): whether the record is gone is not known, so what was known of it stands."""


Scandir = Callable[[str], Iterable[os.DirEntry[str]]]
Progress = Callable[[int], None]
# From some of a host's files: its records, the problems met, and the users whose files could not be read.
_Read = tuple[str, list[ActivityRow], list[ReadProblem], list[str]]
_Records = tuple[str, list[UserActivity], list[ReadProblem], list[str]]  # the same, records made into UserActivity


@dataclass(frozen=True, slots=True)
class _Accounts:
    """What a host's `accounts` and `account_details` directories add to each user's activity record."""

    host_dir: str
    names: frozenset[str] = frozenset()  # the `<user>.dat` files of its accounts directory
    read: bool = False  # read them (Prosody 13 stores `created` and `disabled` there)
    check: bool = False  # mark users without an account record or with a disabled one (AccountRule.ENABLED)
    details: frozenset[str] = frozenset()  # the files of account_details (mod_register_ibr's `registered`)


_NO_ACCOUNTS = _Accounts("")


@dataclass(frozen=True, slots=True)
class _Files:
    """User files to read: a contiguous slice of the listing of one host's store directory, with what the host's
    account directories add to each record."""

    host: str
    store: Store  # the store the host's activity is read from
    directory: str
    where: str  # the directory, as problems name it (relative to the data directory)
    names: list[str]  # `<user>.dat`, regular files when listed
    accounts: _Accounts = _NO_ACCOUNTS
    first: int = 0  # the place of names[0] in the whole listing of the directory

    def part(self, start: int, stop: int) -> _Files:
        """Some of the files; cut at multiples of BATCH_SIZE, so a part's records come in the whole's order."""
        return replace(self, names=self.names[start:stop], first=self.first + start)


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
        self._loader = _Loader()

    def read(self, progress: Progress | None = None) -> ReadResult:
        """Scans the whole tree; raises DataDirError only if the data directory cannot be listed. What cannot be read
        for another reason than "no such file" is a problem, and named in the result's `unreadable_*`.

        `progress`, if given, is called with the number of user files read so far, about every BATCH_SIZE files.
        Records and problems come in the same order however many processes read (see `_Loader._activity`).
        """
        result = ReadResult()
        entries = [(host, path, self._host_entries(path, result.problems)) for host, path in self._host_dirs(result)]
        server = self.policy.server({name for _, _, names in entries for name in names or ()})
        result.server = server
        listed: list[_Files] = []
        for host, host_dir, names in entries:
            if names is None:
                result.unreadable_hosts.add(host)
                continue
            choice = self.policy.choose(host, {store for store in Store if encode_store(store.value) in names}, server)
            if choice is None:
                continue
            result.hosts[host] = HostData(host, choice.store, choice=choice)
            directory = os.path.join(host_dir, encode_store(choice.store.value))
            if encode_store(choice.store.value) not in names:
                continue  # --store names a store this host has no data in: zeros
            accounts = self._accounts(host_dir, names, choice, server.thirteen, result.problems)
            files = self._user_files(directory, result.problems)
            if accounts is None or files is None:
                result.unreadable_hosts.add(host)
                continue
            listed.append(_Files(host, choice.store, directory, self._where(directory), files, accounts))
        total = sum(len(files.names) for files in listed)
        workers = min(self._workers, total // MIN_FILES_PER_WORKER)
        with _collector_paused():
            if workers < 2:
                read = [_records(part) for part in _read_serially(self._loader, listed, progress or _ignore)]
            else:
                read = _Parallel(self._loader, _shares(listed, workers), progress).run()
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
        name = encode_name(user) + _DAT
        path = os.path.join(host_dir, encode_store(choice.store.value), name)
        text = self._read_regular_file(path, problems)
        if text is None:
            return None
        row = activity_reader(choice.store)(user, text)
        if row is None:
            loaded = self._loader.load(text, name)
            if loaded.error is not None:
                problems.append(_load_problem(self._where(path), loaded))
                return None
            row = _interpreted(choice.store, user, self._where(path), loaded.value, problems)
            if row is None:
                return None
        with _AccountFiles(
            self._loader, self._one_account(host_dir, name, choice, problems), self._where(host_dir), problems
        ) as accounts:
            row = accounts.complete(name, row)
            if accounts.unreadable:
                raise RecordUnreadableError(problems[-1].where)
            return UserActivity(*row)

    def _accounts(
        self, host_dir: str, names: set[str], choice: CountingChoice, thirteen: bool, problems: list[ReadProblem]
    ) -> _Accounts | None:
        """What a full read of the host takes from its account directories: Prosody 13's account files (`created`,
        `disabled`) and, for users with no registration time otherwise, mod_register_ibr's account_details; None
        if one of them cannot be listed."""
        check = choice.accounts is AccountRule.ENABLED
        listed: list[str] | None = []
        if _ACCOUNTS in names and (thirteen or check):
            listed = self._user_files(os.path.join(host_dir, _ACCOUNTS), problems)
        details: list[str] | None = []
        if _DETAILS in names:
            details = self._user_files(os.path.join(host_dir, _DETAILS), problems)
        if listed is None or details is None:
            return None
        return _Accounts(host_dir, frozenset(listed), read=thirteen, check=check, details=frozenset(details))

    def _one_account(self, host_dir: str, name: str, choice: CountingChoice, problems: list[ReadProblem]) -> _Accounts:
        """The account directories' part in one user's record: as `_accounts`, for that user's file only."""
        listed = {
            store
            for store in (_ACCOUNTS, _DETAILS)
            if self._is_regular_file(os.path.join(host_dir, store, name), problems)
        }
        return _Accounts(
            host_dir,
            frozenset([name] if _ACCOUNTS in listed else []),
            read=True,  # a Prosody 0.12 account file has neither `created` nor `disabled`: reading it changes nothing
            check=choice.accounts is AccountRule.ENABLED,
            details=frozenset([name] if _DETAILS in listed else []),
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
        return names | {entry.name[: -len(_DAT)] for entry in entries if entry.name.endswith(_DAT)}

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
            if not name.endswith(_DAT):
                continue
            if _is_regular_file(entry):
                names.append(name)
            elif _user_name(name) is None:
                problems.append(_odd_name(self._where(entry.path)))
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
            text = _read_bounded(path)
        except FileNotFoundError:
            return None  # removed between listing and reading: Prosody deletes emptied records
        except OSError as exc:
            raise self._unreadable(path, exc, problems) from exc
        why = _unusable(text)
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


class _Loader:
    """Turns user files into records: the canonical reader first, the Lua sandbox (made on first need) else."""

    def __init__(self) -> None:
        self._sandbox: LuaSandbox | None = None

    def __reduce__(self) -> tuple[type[_Loader], tuple[()]]:
        return _Loader, ()  # a fresh one in another process: a sandbox does not travel

    def load(self, text: bytes, name: str) -> Loaded:
        """One file's value, as the sandbox gives it."""
        value = parse(text)
        return Loaded(value) if value is not None else self._load_many([(text, name)])[0]

    def read(self, files: _Files, progress: Progress, done_before: int) -> _Read:
        """What `files` hold, and the problems met; `progress` gets the files done (plus `done_before`)."""
        problems: list[ReadProblem] = []
        unreadable: list[str] = []  # users
        try:
            directory = os.open(files.directory, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return files.host, [], problems, unreadable  # removed since listed: the host's last record emptied
        except OSError as exc:
            problems.append(ReadProblem(files.where, "unreadable", exc.strerror or str(exc)))
            return files.host, [], problems, [user for name in files.names if (user := _user_name(name)) is not None]
        try:
            with _AccountFiles(self, files.accounts, files.where.rpartition("/")[0], problems) as accounts:
                rows = self._activity(
                    files, directory, accounts, problems, unreadable, progress=progress, done_before=done_before
                )
            if accounts.unreadable:  # their account facts are not known: nor is whether they count
                left_out = {user for name in accounts.unreadable if (user := _user_name(name)) is not None}
                rows = [row for row in rows if row[0] not in left_out]
                unreadable.extend(left_out)
            return files.host, rows, problems, unreadable
        finally:
            os.close(directory)

    def _activity(
        self,
        files: _Files,
        directory: int,
        accounts: _AccountFiles,
        problems: list[ReadProblem],
        unreadable: list[str],
        *,
        progress: Progress,
        done_before: int,
    ) -> list[ActivityRow]:
        """The records of `files` (in the open `directory`), each completed by `accounts`; users whose file cannot be
        read are added to `unreadable`.

        They come in listing order, but those of files the sandbox evaluates (gathered for it) come at the end of
        their batch: the BATCH_SIZE files from a multiple of BATCH_SIZE in the listing. The order is thus the same
        however the listing is cut into parts at such multiples.
        """
        rows: list[ActivityRow] = []
        pending: list[tuple[str, str, bytes]] = []  # name, user, text: for the sandbox
        recognize, keep = activity_reader(files.store), rows.append  # the loop is hot
        complete = accounts.complete if accounts.needed else None
        for place, name in enumerate(files.names, files.first):
            if place % BATCH_SIZE == 0:
                if pending:
                    self._evaluate(files, pending, rows, accounts, problems)
                    pending = []
                progress(done_before + place - files.first)
            user = decode_name(name[:-4])  # less `.dat`
            if user is None:
                problems.append(_odd_name(f"{files.where}/{name}"))
                continue
            try:
                text = _read_bounded(name, directory)
            except FileNotFoundError:
                continue  # removed between listing and reading: Prosody deletes emptied records
            except OSError as exc:
                problems.append(ReadProblem(f"{files.where}/{name}", "unreadable", exc.strerror or str(exc)))
                unreadable.append(user)
                continue
            row = recognize(user, text)
            if row is None:
                if (why := _unusable(text)) is not None:
                    problems.append(ReadProblem(f"{files.where}/{name}", *why))
                    continue
                value = parse(text)
                if value is None:
                    pending.append((name, user, text))
                    continue
                row = _interpreted(files.store, user, f"{files.where}/{name}", value, problems)
                if row is None:
                    continue
            keep(complete(name, row) if complete else row)
        self._evaluate(files, pending, rows, accounts, problems)
        progress(done_before + len(files.names))
        return rows

    def _evaluate(
        self,
        files: _Files,
        pending: list[tuple[str, str, bytes]],
        rows: list[ActivityRow],
        accounts: _AccountFiles,
        problems: list[ReadProblem],
    ) -> None:
        loaded = self._load_many([(text, name) for name, _, text in pending])
        for (name, user, _), result in zip(pending, loaded, strict=True):
            if result.error is not None:
                problems.append(_load_problem(f"{files.where}/{name}", result))
                continue
            row = _interpreted(files.store, user, f"{files.where}/{name}", result.value, problems)
            if row is not None:
                rows.append(accounts.complete(name, row) if accounts.needed else row)

    def _load_many(self, chunks: list[tuple[bytes, str]]) -> list[Loaded]:
        if not chunks:
            return []
        if self._sandbox is None:
            self._sandbox = LuaSandbox()
        return self._sandbox.load_many(chunks)


class _AccountFiles:
    """A host's account directories, opened once, completing each of its users' activity records."""

    def __init__(self, loader: _Loader, accounts: _Accounts, host_where: str, problems: list[ReadProblem]) -> None:
        self._loader = loader
        self._accounts = accounts
        self._host_where = host_where
        self._problems = problems
        self.needed = bool(accounts.names or accounts.check or accounts.details)  # else records stay as they are
        self.unreadable: set[str] = set()  # `<user>.dat` whose account files could not be read: rows not to trust
        self._directories: dict[str, int] = {}

    def __enter__(self) -> _AccountFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        for directory in self._directories.values():
            os.close(directory)

    def complete(self, name: str, row: ActivityRow) -> ActivityRow:
        """`row` completed: the registration time by the precedence Prosody 13's `created`, the store's own
        `registered`, account_details' `registered`; and, where the host's rule asks, whether the account is missing
        or disabled. Account files hold password hashes: only these fields are ever taken from them."""
        accounts = self._accounts
        user, last_active, registered, _, session_open, _ = row
        created, disabled, details, no_account = None, False, None, name not in accounts.names
        if not no_account and accounts.read:
            created, disabled = account_facts(self._record(_ACCOUNTS, name, account=True))
        if created is None and registered is None and name in accounts.details:
            details = registration_time(self._record(_DETAILS, name, account=False))
        check = accounts.check
        return (
            user,
            last_active,
            registration(created, registered, details),
            check and disabled,
            session_open,
            check and no_account,
        )

    def _record(self, store: str, name: str, *, account: bool) -> PlainValue | None:
        """What `<store>/<name>` holds of the fields wanted (an account's `created` and `disabled`, else the whole
        record of account_details); None if it holds none of them (then it is not evaluated) or cannot be read."""
        where = f"{self._host_where}/{store}/{name}"
        text = self._text(store, name, where)
        if text is None or not (b"created" in text or b"disabled" in text if account else b"registered" in text):
            return None  # none of the fields wanted: not evaluated
        fields = account_fields(text) if account else None
        if fields is not None:
            return fields
        loaded = self._loader.load(text, name)
        if loaded.error is not None:
            self._problems.append(_load_problem(where, loaded))
            return None
        return loaded.value

    def _text(self, store: str, name: str, where: str) -> bytes | None:
        """The file's text, if there is one and it can hold a record (else a problem)."""
        try:
            if store not in self._directories:  # opened once, on first need
                self._directories[store] = os.open(
                    os.path.join(self._accounts.host_dir, store), os.O_RDONLY | os.O_DIRECTORY
                )
            text = _read_bounded(name, self._directories[store])
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._problems.append(ReadProblem(where, "unreadable", exc.strerror or str(exc)))
            self.unreadable.add(name)
            return None
        if (why := _unusable(text)) is not None:
            self._problems.append(ReadProblem(where, *why))
            return None
        return text


def _interpreted(
    store: Store, user: str, where: str, value: PlainValue | None, problems: list[ReadProblem]
) -> ActivityRow | None:
    interpreted = interpret(store, user, value)
    for oddity in interpreted.oddities:
        problems.append(ReadProblem(where, "unexpected", oddity))
    found = interpreted.activity
    if found is None:
        return None
    return found.user, found.last_active, found.registered, found.disabled, found.session_open, found.no_account


def _records(read: _Read) -> _Records:
    host, rows, problems, unreadable = read
    return host, list(starmap(UserActivity, rows)), problems, unreadable


def _read_serially(loader: _Loader, listed: list[_Files], progress: Progress) -> list[_Read]:
    results = []
    done = 0
    for files in listed:
        results.append(loader.read(files, progress, done))
        done += len(files.names)
    return results


def _shares(listed: list[_Files], workers: int) -> list[list[_Files]]:
    """The listings cut into `workers` contiguous shares, the last (read by this process) PARENT_SHARE as large
    as the others; each directory's listing is cut at multiples of BATCH_SIZE."""
    total = sum(len(files.names) for files in listed)
    size = total / (workers - 1 + PARENT_SHARE)
    ends = [round(size * index) for index in range(1, workers)]  # of the shares but the last, in all listings
    shares: list[list[_Files]] = [[] for _ in range(workers)]
    offset = 0  # of `files`, in all listings
    for files in listed:
        cuts = [min(max(end - offset, 0) // BATCH_SIZE * BATCH_SIZE, len(files.names)) for end in ends]
        for share, start, stop in zip(shares, [0, *cuts], [*cuts, len(files.names)], strict=True):
            if start < stop:
                share.append(files.part(start, stop))
        offset += len(files.names)
    return shares


@dataclass
class _Child:
    """A process reading a share, and what it sent so far."""

    share: list[_Files]
    process: BaseProcess | None = None
    receiver: Connection | None = None
    done: int = 0  # files read
    received: list[_Records] = field(default_factory=list)
    finished: bool = False
    failed: bool = False  # then its share is read here in the end


class _Parallel:
    """Reads every share but the last in a child process each, and the last here.

    A child sends what it found every CHUNK files, so the pipe never fills, and its records are made into
    UserActivity here as they come, not all at the end; they are kept apart until the child is done, as a failed
    child's share is read here again.
    """

    def __init__(self, loader: _Loader, shares: list[list[_Files]], progress: Progress | None) -> None:
        self._loader = loader
        self._own = shares[-1]
        self._own_done = 0
        self._children = [_Child(share) for share in shares[:-1]]
        self._progress = progress

    def run(self) -> list[_Records]:
        context = process_context(__name__)
        try:
            for child in self._children:
                self._start(child, context)
            own = [_records(part) for part in _read_serially(self._loader, self._own, self._step)]
            results: list[_Records] = []
            for child in self._children:
                self._receive(child, wait=True)
                if child.failed:
                    child.received = [_records(part) for part in _read_serially(self._loader, child.share, _ignore)]
                results.extend(child.received)
            return results + own
        finally:
            for child in self._children:
                if child.receiver is not None:
                    child.receiver.close()
                if child.process is not None:
                    child.process.kill()  # done already, unless this process is leaving on an error
                    child.process.join()

    def _start(self, child: _Child, context: ProcessContext) -> None:
        receiver, sender = context.Pipe(duplex=False)
        try:
            process = context.Process(target=_child, args=(child.share, sender, forker_of(context)), daemon=True)
            process.start()
        except OSError:  # no process to be had (a limit, a sandbox): the share is read here
            receiver.close()
            child.finished = child.failed = True
            return
        finally:
            sender.close()
        child.process, child.receiver = process, receiver

    def _step(self, done: int) -> None:
        """Progress here: also takes in what the children sent meanwhile."""
        self._own_done = done
        for child in self._children:
            self._receive(child, wait=False)
        self._report()

    def _receive(self, child: _Child, *, wait: bool) -> None:
        while not child.finished and child.receiver is not None and (wait or child.receiver.poll()):
            try:
                message = child.receiver.recv()
            except (EOFError, OSError):  # the child failed
                child.finished = child.failed = True
                child.done = 0
                return
            if message is None:
                child.finished = True
            else:
                count, read = message
                child.done += count
                child.received.append(_records(read))
                if wait:
                    self._report()

    def _report(self) -> None:
        if self._progress is not None:
            self._progress(self._own_done + sum(child.done for child in self._children))


def _child(share: list[_Files], sender: Connection, forker: int | None) -> None:
    """Runs in a child process: reads a share, sending (files read, records) every CHUNK files, then None."""
    set_up_child(forker)
    loader = _Loader()
    try:
        for files in share:
            for start in range(0, len(files.names), CHUNK):
                chunk = files.part(start, start + CHUNK)
                sender.send((len(chunk.names), loader.read(chunk, _ignore, 0)))
        sender.send(None)
    except BrokenPipeError:
        pass  # the parent stopped waiting
    finally:
        sender.close()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused, process-wide. A scan makes millions of objects, none in a cycle,
    and every full collection meanwhile would walk them all: a fifth of the time of a scan of 1M users."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load_problem(where: str, loaded: Loaded) -> ReadProblem:
    """The problem a chunk that failed to load makes: a hit sandbox limit, or invalid content."""
    return ReadProblem(where, "limit" if loaded.hit_limit else "invalid", loaded.error or "")


def _odd_name(where: str) -> ReadProblem:
    printable = os.fsencode(where).decode("utf-8", "backslashreplace")
    return ReadProblem(printable, "unexpected", "not a name Prosody writes (percent-encoded UTF-8)")


def _unusable(text: bytes) -> tuple[str, str] | None:
    """Why `text` cannot hold a record (a problem's kind and reason); None if it can."""
    if not text:
        return "empty", "empty file (Prosody reads it as no record)"
    if len(text) > MAX_FILE_SIZE:
        return "limit", f"larger than {MAX_FILE_SIZE} bytes"
    return None


def _ignore(_: int) -> None:
    """No progress wanted."""


def _user_name(name: str) -> str | None:
    return decode_name(name[: -len(_DAT)])


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


def _read_bounded(path: str, directory: int | None = None) -> bytes:
    """At most MAX_FILE_SIZE + 1 bytes of a file (`path` relative to the open `directory` if given), never
    following a link nor blocking on a FIFO.

    One read is enough for a real file, and consistent: Prosody replaces files by rename, never in place.
    """
    descriptor = os.open(path, _OPEN_FLAGS, dir_fd=directory)
    try:
        text = os.read(descriptor, _FIRST_READ)
        if len(text) == _FIRST_READ:
            text += os.read(descriptor, MAX_FILE_SIZE + 1 - _FIRST_READ)
        return text
    finally:
        os.close(descriptor)

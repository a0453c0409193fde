"""Turns a host's user files into activity records: the exact form Prosody writes by `canonical.parse`, any other
by the Lua sandbox; each record completed by the host's account files (registration time, disabled, missing)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import starmap

from prosody_lastlog.core.model import ACCOUNT_DETAILS, ACCOUNTS, ReadProblem, Store, UserActivity
from prosody_lastlog.prosody.canonical import ActivityRow, account_fields, activity_reader, parse
from prosody_lastlog.prosody.decode import account_facts, interpret, registration, registration_time
from prosody_lastlog.prosody.pathnames import decode_name
from prosody_lastlog.prosody.sandbox import BATCH_SIZE, Loaded, LuaSandbox, PlainValue

MAX_FILE_SIZE = 256 * 1024  # a real last-activity file is a few hundred bytes
DAT = ".dat"
_FIRST_READ = 16 * 1024  # one read() gets a whole real file
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # never follow a link nor block on a FIFO

Progress = Callable[[int], None]
# From some of a host's files: its records, the problems met, the users whose files could not be read, and whether
# the records are of registered accounts with no activity record (UserFiles.account_only).
ReadPart = tuple[str, list[ActivityRow], list[ReadProblem], list[str], bool]
RecordsPart = tuple[str, list[UserActivity], list[ReadProblem], list[str]]  # the same, records made into UserActivity


@dataclass(frozen=True, slots=True)
class AccountDirs:
    """What a host's `accounts` and `account_details` directories add to each user's activity record."""

    host_dir: str
    names: frozenset[str] = frozenset()  # the `<user>.dat` files of its accounts directory
    read: bool = False  # read them (Prosody 13 stores `created` and `disabled` there)
    check: bool = False  # mark users without an account record or with a disabled one (AccountRule.ENABLED)
    details: frozenset[str] = frozenset()  # the files of account_details (mod_register_ibr's `registered`)


NO_ACCOUNTS = AccountDirs("")


@dataclass(frozen=True, slots=True)
class UserFiles:
    """User files to read: a contiguous slice of the listing of one host's store directory, with what the host's
    account directories add to each record."""

    host: str
    store: Store  # the store the host's activity is read from
    directory: str
    where: str  # the directory, as problems name it (relative to the data directory)
    names: list[str]  # `<user>.dat`, regular files when listed
    accounts: AccountDirs = NO_ACCOUNTS
    first: int = 0  # the place of names[0] in the whole listing of the directory
    # The names are account files (of the `accounts` directory) whose users have no activity record: each is a
    # registered account never active, with the facts its account file gives (registration time, disabled).
    account_only: bool = False

    def part(self, start: int, stop: int) -> UserFiles:
        """Some of the files; cut at multiples of BATCH_SIZE, so a part's records come in the whole's order."""
        return replace(self, names=self.names[start:stop], first=self.first + start)


class RecordLoader:
    """Turns user files into records: the canonical reader first, the Lua sandbox (made on first need) else."""

    def __init__(self) -> None:
        self._sandbox: LuaSandbox | None = None

    def __reduce__(self) -> tuple[type[RecordLoader], tuple[()]]:
        return RecordLoader, ()  # a fresh one in another process: a sandbox does not travel

    def load(self, text: bytes, name: str) -> Loaded:
        """One file's value, as the sandbox gives it."""
        value = parse(text)
        return Loaded(value) if value is not None else self._load_many([(text, name)])[0]

    def read(self, files: UserFiles, progress: Progress, done_before: int) -> ReadPart:
        """What `files` hold, and the problems met; `progress` gets the files done (plus `done_before`)."""
        if files.account_only:
            part = self._account_only(files)
            progress(done_before + len(files.names))
            return part
        problems: list[ReadProblem] = []
        unreadable: list[str] = []  # users
        try:
            directory = os.open(files.directory, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return files.host, [], problems, unreadable, False  # removed since listed: the host's last record emptied
        except OSError as exc:
            problems.append(ReadProblem(files.where, "unreadable", exc.strerror or str(exc)))
            users = [user for name in files.names if (user := user_name(name)) is not None]
            return files.host, [], problems, users, False
        try:
            with AccountFiles(self, files.accounts, files.where.rpartition("/")[0], problems) as accounts:
                rows = self._activity(
                    files, directory, accounts, problems, unreadable, progress=progress, done_before=done_before
                )
            if accounts.unreadable:  # their account facts are not known: nor is whether they count
                left_out = {user for name in accounts.unreadable if (user := user_name(name)) is not None}
                rows = [row for row in rows if row[0] not in left_out]
                unreadable.extend(left_out)
            return files.host, rows, problems, unreadable, False
        finally:
            os.close(directory)

    def _activity(
        self,
        files: UserFiles,
        directory: int,
        accounts: AccountFiles,
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
                problems.append(odd_name(f"{files.where}/{name}"))
                continue
            try:
                text = read_bounded(name, directory)
            except FileNotFoundError:
                continue  # removed between listing and reading: Prosody deletes emptied records
            except OSError as exc:
                problems.append(ReadProblem(f"{files.where}/{name}", "unreadable", exc.strerror or str(exc)))
                unreadable.append(user)
                continue
            row = recognize(user, text)
            if row is None:
                if (why := unusable(text)) is not None:
                    problems.append(ReadProblem(f"{files.where}/{name}", *why))
                    continue
                value = parse(text)
                if value is None:
                    pending.append((name, user, text))
                    continue
                row = interpreted(files.store, user, f"{files.where}/{name}", value, problems)
                if row is None:
                    continue
            keep(complete(name, row) if complete else row)
        self._evaluate(files, pending, rows, accounts, problems)
        progress(done_before + len(files.names))
        return rows

    def _evaluate(
        self,
        files: UserFiles,
        pending: list[tuple[str, str, bytes]],
        rows: list[ActivityRow],
        accounts: AccountFiles,
        problems: list[ReadProblem],
    ) -> None:
        loaded = self._load_many([(text, name) for name, _, text in pending])
        for (name, user, _), result in zip(pending, loaded, strict=True):
            if result.error is not None:
                problems.append(load_problem(f"{files.where}/{name}", result))
                continue
            row = interpreted(files.store, user, f"{files.where}/{name}", result.value, problems)
            if row is not None:
                rows.append(accounts.complete(name, row) if accounts.needed else row)

    def _account_only(self, files: UserFiles) -> ReadPart:
        """The records of registered accounts with no activity data (`files.names`: account files), each completed
        by the account files as any other (registration time, disabled)."""
        problems: list[ReadProblem] = []
        rows: list[ActivityRow] = []
        host_where = files.where.rpartition("/")[0]
        with AccountFiles(self, files.accounts, host_where, problems) as accounts:
            for name in files.names:
                user = user_name(name)
                if user is None:
                    problems.append(odd_name(f"{files.where}/{name}"))
                    continue
                row = accounts.complete(name, (user, None, None, False, None, False))
                if name not in accounts.unreadable:
                    rows.append(row)
        unreadable = [user for name in accounts.unreadable if (user := user_name(name)) is not None]
        return files.host, rows, problems, unreadable, True

    def _load_many(self, chunks: list[tuple[bytes, str]]) -> list[Loaded]:
        if not chunks:
            return []
        if self._sandbox is None:
            self._sandbox = LuaSandbox()
        return self._sandbox.load_many(chunks)


class AccountFiles:
    """A host's account directories, opened once, completing each of its users' activity records."""

    def __init__(
        self, loader: RecordLoader, accounts: AccountDirs, host_where: str, problems: list[ReadProblem]
    ) -> None:
        self._loader = loader
        self._accounts = accounts
        self._host_where = host_where
        self._problems = problems
        self.needed = bool(accounts.names or accounts.check or accounts.details)  # else records stay as they are
        self.unreadable: set[str] = set()  # `<user>.dat` whose account files could not be read: rows not to trust
        self._directories: dict[str, int] = {}

    def __enter__(self) -> AccountFiles:
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
            created, disabled = account_facts(self._record(ACCOUNTS, name, account=True))
        if created is None and registered is None and name in accounts.details:
            details = registration_time(self._record(ACCOUNT_DETAILS, name, account=False))
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
            self._problems.append(load_problem(where, loaded))
            return None
        return loaded.value

    def _text(self, store: str, name: str, where: str) -> bytes | None:
        """The file's text, if there is one and it can hold a record (else a problem)."""
        try:
            if store not in self._directories:  # opened once, on first need
                self._directories[store] = os.open(
                    os.path.join(self._accounts.host_dir, store), os.O_RDONLY | os.O_DIRECTORY
                )
            text = read_bounded(name, self._directories[store])
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._problems.append(ReadProblem(where, "unreadable", exc.strerror or str(exc)))
            self.unreadable.add(name)
            return None
        if (why := unusable(text)) is not None:
            self._problems.append(ReadProblem(where, *why))
            return None
        return text


def interpreted(
    store: Store, user: str, where: str, value: PlainValue | None, problems: list[ReadProblem]
) -> ActivityRow | None:
    interpreted = interpret(store, user, value)
    for oddity in interpreted.oddities:
        problems.append(ReadProblem(where, "unexpected", oddity))
    found = interpreted.activity
    if found is None:
        return None
    return found.user, found.last_active, found.registered, found.disabled, found.session_open, found.no_account


def as_records(read: ReadPart) -> RecordsPart:
    """The rows made into UserActivity (marked account_only where they are)."""
    host, rows, problems, unreadable, account_only = read
    if account_only:
        return host, [UserActivity(*row, account_only=True) for row in rows], problems, unreadable
    return host, list(starmap(UserActivity, rows)), problems, unreadable


def load_problem(where: str, loaded: Loaded) -> ReadProblem:
    """The problem a chunk that failed to load makes: a hit sandbox limit, or invalid content."""
    return ReadProblem(where, "limit" if loaded.hit_limit else "invalid", loaded.error or "")


def odd_name(where: str) -> ReadProblem:
    printable = os.fsencode(where).decode("utf-8", "backslashreplace")
    return ReadProblem(printable, "unexpected", "not a name Prosody writes (percent-encoded UTF-8)")


def unusable(text: bytes) -> tuple[str, str] | None:
    """Why `text` cannot hold a record (a problem's kind and reason); None if it can."""
    if not text:
        return "empty", "empty file (Prosody reads it as no record)"
    if len(text) > MAX_FILE_SIZE:
        return "limit", f"larger than {MAX_FILE_SIZE} bytes"
    return None


def no_progress(_: int) -> None:
    """No progress wanted."""


def user_name(name: str) -> str | None:
    return decode_name(name[: -len(DAT)])


def read_bounded(path: str, directory: int | None = None) -> bytes:
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

"""Reads last-activity data from Prosody's SQL table, counting in the engine where it can."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import chain, groupby
from typing import Any

from prosody_lastlog.core.counting import HostCounts, count_hosts
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
from prosody_lastlog.core.rules import THIRTEEN_INDEX, THIRTEEN_STORES, Policy, ServerFacts
from prosody_lastlog.core.windows import DEFAULT_AGES, Window
from prosody_lastlog.prosody.decode import account_facts, interpret, registration, registration_time
from prosody_lastlog.prosody.sandbox import PlainValue
from prosody_lastlog.prosody.sql_settings import SqlSettings
from prosody_lastlog.sources import sql_queries as queries
from prosody_lastlog.sources.database import (
    Cancellation,
    Connection,
    NoAnswerError,
    StoppedError,
    connect,
    first_line,
)
from prosody_lastlog.sources.results import SQL_METHODS, DatabaseError, ReadResult, SourceCount
from prosody_lastlog.sources.sql_changes import ChangeMark, changed_accounts, mark

log = logging.getLogger(__name__)

# PostgreSQL and MariaDB count the accounts in this many hash partitions at once, each on its own connection
# (a server process each); the per-account grouping, most of the work, is then spread over the server's cores.
PARTS = 2
# What Lua's tonumber reads as a decimal number, which is how Prosody reads a `number` row back; Python's float()
# also takes `1_000`, `inf` and non-ASCII digits.
_NUMBER = re.compile(r"[ \t\n\v\f\r]*[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?[ \t\n\v\f\r]*")
_USERS_PER_QUERY = 500  # accounts read again per query, by the table's (host, user, store, key) index
_NOT_UTF8 = "Could not decode to UTF-8"  # how sqlite3 refuses text that is not UTF-8 (SQLite stores any bytes)


class _NotUtf8Error(Exception):
    """SQLite holds text that is not UTF-8 (it stores any bytes), which sqlite3 refuses to read by default."""


class SqlReader:
    """Reads the stores of Prosody's mod_storage_sql table `prosody(host, user, store, key, type, value)`.

    `cancellation`, when cancelled, ends the reading at once with StoppedError.
    """

    def __init__(
        self,
        settings: SqlSettings,
        *,
        hosts: Collection[str] = (),
        policy: Policy | None = None,
        method: str = "auto",
        parts: int = PARTS,
        cancellation: Cancellation | None = None,
    ) -> None:
        if method not in SQL_METHODS:
            raise ValueError(f"unknown SQL counting method {method!r}")
        self._settings = settings
        self._hosts = sorted({host.lower() for host in hosts})
        self._policy = policy or Policy()
        self._method = method
        self._parts = max(1, parts)
        self._cancellation = cancellation or Cancellation()

    def read(self) -> ReadResult:
        """Streams every row of the chosen store per host into activity records."""
        with _connection(self._settings, self._cancellation) as connection:
            return self._read(connection, self._hosts)

    def snapshot(self, *, now: int, binlog: bool = False) -> tuple[ReadResult, ChangeMark]:
        """Every row read into records (as read()), each host's registered accounts, and the mark to look for
        changes from (taken before the rows are read: a change meanwhile is read again later); with `binlog`,
        the mark says where the binary log stood too."""
        with _connection(self._settings, self._cancellation) as connection:
            since = mark(connection, now, binlog=binlog)
            result = self._read(connection, self._hosts)
            registered = self._registered(connection)
            for host, data in result.hosts.items():
                data.registered_accounts = registered(host)
            return result, since

    def read_changes(
        self, since: ChangeMark, chosen: Mapping[str, CountingChoice], server: ServerFacts, *, now: int
    ) -> ChangedAccounts:
        """The accounts of the `chosen` hosts changed since `since` (sql_changes), each read again as a full read
        reads it; with every chosen host's registered accounts now, which hosts' account stores changed, and the
        next mark."""
        with _connection(self._settings, self._cancellation) as connection:
            found = ChangedAccounts(mark(connection, now))
            self._read_again(connection, changed_accounts(connection, self._hosts, since, now), chosen, server, found)
            registered = self._registered(connection)
            found.registered = {host: registered(host) for host in chosen}
            return found

    def read_accounts(
        self,
        changed: Iterable[tuple[str, str, str]],
        chosen: Mapping[str, CountingChoice],
        server: ServerFacts,
        since: ChangeMark,
        *,
        now: int,
    ) -> ChangedAccounts:
        """The accounts of these (host, user, store) rows (from the binary log), read again as read_changes reads
        them; the registered accounts recounted only on the hosts whose account stores changed (the log tells of
        every change there, deletions too). The next mark is `since` moved to now: were the log lost, a look by
        time would take up from here."""
        with _connection(self._settings, self._cancellation) as connection:
            found = ChangedAccounts(replace(since, value=now))
            covered = [(host, user, store) for host, user, store in changed if self._covers(host)]
            self._read_again(connection, covered, chosen, server, found)
            if found.accounts_changed:
                registered = self._registered(connection)
                found.registered = {host: registered(host) for host in found.accounts_changed}
            return found

    def _covers(self, host: str) -> bool:
        """Whether this source reads the host (all hosts when none were named; as the engine's collation matches
        them, case aside)."""
        return not self._hosts or host.lower() in self._hosts

    def _read_again(
        self,
        connection: Connection,
        changed: Iterable[tuple[Any, Any, Any]],
        chosen: Mapping[str, CountingChoice],
        server: ServerFacts,
        found: ChangedAccounts,
    ) -> None:
        """Reads the accounts of the changed (host, user, store) rows again into `found`."""
        users: dict[str, set[str]] = {}
        for host, user, store in changed:
            if host not in chosen:
                if _is_text(host):
                    found.new_hosts.add(host)
                continue
            if isinstance(user, str):
                users.setdefault(host, set()).add(user)
            if store in (ACCOUNTS, ACCOUNT_DETAILS):
                found.accounts_changed.add(host)
        for host, names in sorted(users.items()):
            self._read_users(connection, host, sorted(names), chosen[host], thirteen=server.thirteen, into=found)

    def _read_users(
        self,
        connection: Connection,
        host: str,
        users: list[str],
        choice: CountingChoice,
        *,
        thirteen: bool,
        into: ChangedAccounts,
    ) -> None:
        """These users' records, as the full read makes them (None: no longer any), in batches the table's
        (host, user, ...) index serves."""
        for start in range(0, len(users), _USERS_PER_QUERY):
            batch = users[start : start + _USERS_PER_QUERY]
            try:
                accounts = self._accounts(connection, [host], thirteen, batch)
                result = ReadResult(hosts={host: HostData(host, choice.store, choice=choice)})
                seen: set[tuple[str, str]] = set()
                with closing(connection.stream(*queries.rows_of(choice.store, [host], batch))) as rows:
                    self._collect(rows, choice.store, {host: choice}, accounts, result, seen=seen)
            except connection.errors as exc:
                raise DatabaseError(f"cannot read {connection.settings.describe()}: {first_line(exc)}") from exc
            records: dict[str, UserActivity | None] = dict.fromkeys(batch)
            records |= {activity.user: activity for activity in result.hosts[host].users}
            if self._policy.lists_accounts(host):
                for _, user in accounts.holders - seen:
                    records[user] = accounts.account_only(host, user, choice)
            into.records.extend((host, user, activity) for user, activity in records.items())
            into.problems.extend(result.problems)

    def count(self, *, now: int, windows: Sequence[Window], ages: Sequence[Window] = DEFAULT_AGES) -> SourceCount:
        """Counts per host: one aggregate query in the engine, else (or for hosts with odd rows) the stream."""
        with _connection(self._settings, self._cancellation) as connection:
            server = self._server(connection)
            result = SourceCount(server=server)
            to_stream: list[str] | None = None  # None: every host this reader covers
            if self._method != "stream" and self._supports_pushdown(connection):
                to_stream = self._pushdown(connection, result, now=now, windows=windows, ages=ages)
            if to_stream is None or to_stream:
                streamed = self._read(connection, self._hosts if to_stream is None else to_stream, server)
                result.problems.extend(streamed.problems)
                streamed_counts = count_hosts(streamed.hosts.values(), now=now, windows=windows, ages=ages)
                for host, counts in streamed_counts.items():
                    result.counts[host] = counts
                    result.methods[host] = "stream"
            registered = self._registered(connection)
            result.counts = {
                host: replace(counts, registered_accounts=registered(host))
                for host, counts in sorted(result.counts.items())
            }
            return result

    def _registered(self, connection: Connection) -> Callable[[str], int | None]:
        """Each host's registered accounts, as Policy.registered_accounts says from the users with rows in the
        accounts store: one query, whichever way the activity was counted."""
        found = dict(connection.query(*queries.registered_accounts(self._hosts)))
        return lambda host: self._policy.registered_accounts(host, found.get(host))

    def _server(self, connection: Connection) -> ServerFacts:
        """The server that wrote the table: Prosody 13 makes an index of its own at start, and writes stores 0.12
        does not (looked for, in the rows of the hosts read, only where the index is not there)."""
        try:
            markers = (
                [THIRTEEN_INDEX]
                if connection.query(queries.DIALECTS[connection.settings.driver].thirteen_index)
                else []
            )
        except connection.errors:  # no access to the catalog: the rows tell
            markers = []
        if not markers:
            stores = sorted(THIRTEEN_STORES)
            markers = [store for (store,) in connection.query(*queries.stores_among(stores, self._hosts))]
        return self._policy.server(markers)

    def _supports_pushdown(self, connection: Connection) -> bool:
        dialect = queries.DIALECTS[connection.settings.driver]
        try:
            connection.query(dialect.probe, dialect.patterns)
        except connection.errors as exc:
            if self._method == "pushdown":
                raise DatabaseError(
                    f"{connection.settings.describe()} lacks the JSON or regular expression functions counting "
                    f"needs: {first_line(exc)}"
                ) from exc
            log.info(
                "%s lacks the JSON or regular expression functions counting needs (%s); counting by streaming rows",
                connection.settings.describe(),
                first_line(exc),
            )
            return False
        return True

    def _pushdown(
        self,
        connection: Connection,
        result: SourceCount,
        *,
        now: int,
        windows: Sequence[Window],
        ages: Sequence[Window],
    ) -> list[str] | None:
        """Fills `result` from the aggregate query; returns the hosts to stream instead (None: all of them)."""
        server = result.server
        assert server is not None
        seconds = sorted({w.seconds for w in (*windows, *ages)})
        answers = self._answers(connection, now=now, seconds=seconds, accounts=server.thirteen)
        if answers is None:
            return None
        tallies = _tally(answers, len(queries.DIALECTS[connection.settings.driver].host_key))
        if tallies is None:
            log.info(
                "%s has a host name the database cannot key (too long, or not text); streaming rows",
                connection.settings.describe(),
            )
            return None
        fallback = []
        labels, age_labels = [w.label for w in windows], [a.label for a in ages]
        for host, per_store in tallies.items():
            present = [store for store, tally in per_store.items() if tally.records]
            choice = self._policy.choose(host, present, server) if present else None  # as the stream finds hosts
            if choice is None:
                continue
            tally = per_store.get(choice.store) or _Tally()
            if tally.suspect:
                fallback.append(host)
                continue
            counted = tally.counted(
                choice.accounts,
                account_only=self._policy.lists_accounts(host),
                windows=[seconds.index(w.seconds) for w in windows],
                ages=[seconds.index(a.seconds) for a in ages],
            )
            result.counts[host] = HostCounts(
                choice.store,
                tally.records,
                counted.never,
                counted.left_out,
                counted.future,
                dict(zip(labels, counted.active, strict=True)),
                dict(zip(labels, counted.registered, strict=True)),
                no_account=counted.no_account,
                choice=choice,
                returning=dict(zip(labels, counted.returning, strict=True)),
                inactive=dict(zip(age_labels, counted.inactive, strict=True)),
                never_used=dict(zip(age_labels, counted.never_used, strict=True)),
            )
            result.methods[host] = "pushdown"
        if fallback:
            log.info("%d host(s) have rows the database cannot check; streaming those", len(fallback))
        return fallback

    def _answers(
        self, connection: Connection, *, now: int, seconds: list[int], accounts: bool
    ) -> list[tuple[Any, ...]] | None:
        """The aggregate's rows, its parts counted at once; None if the database could not count (then the stream
        names the rows at fault)."""
        dialect = queries.DIALECTS[connection.settings.driver]
        parts = self._parts if dialect.partition else 1
        statements = [
            queries.aggregate(
                dialect, hosts=self._hosts, now=now, windows=seconds, accounts=accounts, part=(index, parts)
            )
            for index in range(parts)
        ]
        failures: tuple[type[Exception], ...] = (DatabaseError, *connection.errors)
        try:
            # Cancelled on a stop before the pool waits for its queries, which may wait on a lock for minutes.
            with ThreadPoolExecutor(max_workers=parts) as pool, self._cancellation.on_stop():
                return list(chain.from_iterable(pool.map(partial(self._aggregate, dialect), statements)))
        except (NoAnswerError, StoppedError):
            raise  # streaming would wait for the same silent server again, or start work that is cancelled
        except failures as exc:
            # E.g. PostgreSQL meeting text that is not JSON: the stream reports the rows at fault.
            log.warning(
                "%s: counting in the database failed (%s); streaming rows instead, -v names bad rows",
                connection.settings.describe(),
                first_line(exc),
            )
            return None

    def _aggregate(self, dialect: queries.Dialect, statement: tuple[str, tuple[object, ...]]) -> list[tuple[Any, ...]]:
        """One part of the aggregate, on a connection of its own whose session settings die with it."""
        connection = connect(self._settings, self._cancellation)
        try:
            for setting in dialect.session:
                connection.query(setting)
            return connection.query(*statement)
        finally:
            connection.close()

    def _read(self, connection: Connection, hosts: Sequence[str], server: ServerFacts | None = None) -> ReadResult:
        """The rows of `hosts`, made into records; `server`: what the server is, if known (else the rows tell)."""
        try:
            return self._read_once(connection, hosts, server)
        except _NotUtf8Error:
            # Read again, slower, with such bytes kept as surrogates: the rows at fault are then reported.
            connection.raw.text_factory = _lenient_text
            return self._read_once(connection, hosts, server)

    def _read_once(self, connection: Connection, hosts: Sequence[str], server: ServerFacts | None) -> ReadResult:
        result = ReadResult()
        try:
            present: dict[str, set[Store]] = {}
            for host, store in connection.query(*queries.stores_present(hosts)):
                if _is_text(host):
                    present.setdefault(host, set()).add(Store(store))
                else:  # rows of no host Prosody serves
                    where = f"{self._settings.describe()} host={_printable(host)} store={store}"
                    result.problems.append(ReadProblem(where, "invalid", f"the host is {_odd_text(host)}"))
            server = server or self._server(connection)
            result.server = server
            chosen: dict[str, CountingChoice] = {}
            for host, found in present.items():
                choice = self._policy.choose(host, found, server)
                if choice is not None:
                    chosen[host] = choice
                    result.hosts[host] = HostData(host, choice.store, choice=choice)
            accounts = self._accounts(connection, sorted(chosen), server.thirteen)
            seen: set[tuple[str, str]] = set()  # (host, user) with rows in the host's store, usable or not
            for store in Store:
                store_hosts = sorted(host for host, choice in chosen.items() if choice.store is store)
                if store_hosts:
                    # closed here even when collecting fails, so its time bound ends with it
                    with closing(connection.stream(*queries.rows_of(store, store_hosts))) as rows:
                        self._collect(rows, store, chosen, accounts, result, seen=seen)
            for host, user in sorted(accounts.holders - seen):  # registered accounts with no activity data
                if self._policy.lists_accounts(host):
                    result.hosts[host].users.append(accounts.account_only(host, user, chosen[host]))
        except connection.errors as exc:
            if isinstance(exc, sqlite3.OperationalError) and str(exc).startswith(_NOT_UTF8):
                raise _NotUtf8Error from None  # the message quotes the text, maybe a user name
            raise DatabaseError(f"cannot read {connection.settings.describe()}: {first_line(exc)}") from exc
        result.hosts = dict(sorted(result.hosts.items()))
        return result

    def _accounts(
        self, connection: Connection, hosts: Sequence[str], thirteen: bool, users: Sequence[str] | None = None
    ) -> _AccountRows:
        """What the account stores say of each user of `hosts` (or these users of the one host): who has an account
        record, and Prosody 13's `created` and `disabled` and account_details' `registered` (no other account row
        is read)."""
        found = _AccountRows()
        if not hosts:
            return found
        found.holders = {
            (host, user)
            for host, user in connection.query(*queries.account_holders(hosts, users))
            if isinstance(user, str)
        }
        with closing(connection.stream(*queries.account_fields(hosts, users))) as rows:
            for host, user, store, key, kind, text in rows:
                if store == ACCOUNTS and not thirteen:
                    continue  # Prosody 0.12 writes neither field
                where = f"{self._settings.describe()} host={host} store={store} user={_printable(user)}"
                record = _record([(key, kind, text)], where, found.problems)
                facts = found.facts.setdefault((host, user), [None, False, None])
                if store == ACCOUNT_DETAILS:
                    facts[2] = registration_time(record)
                else:
                    created, disabled = account_facts(record)
                    facts[0] = created if key == "created" else facts[0]
                    facts[1] = (facts[1] or disabled) if key == "disabled" else facts[1]  # duplicates: any, as MAX
        return found

    def _collect(
        self,
        rows: Iterator[tuple[Any, ...]],
        store: Store,
        chosen: Mapping[str, CountingChoice],
        accounts: _AccountRows,
        result: ReadResult,
        *,
        seen: set[tuple[str, str]],
    ) -> None:
        result.problems.extend(accounts.problems)
        accounts.problems = []
        for (host, user), user_rows in groupby(rows, key=lambda row: (row[0], row[1])):
            seen.add((host, user))
            where = f"{self._settings.describe()} host={host} store={store.value} user={_printable(user)}"
            if not isinstance(user, str):  # NULL or (SQLite) a blob: no account Prosody can name
                result.problems.append(ReadProblem(where, "invalid", f"the user is {_odd_text(user)}"))
                continue
            if not _is_text(user):  # Lua strings are bytes: Prosody counts it all the same
                result.problems.append(ReadProblem(where, "unexpected", "the user name is not valid UTF-8"))
            record = _record(((key, kind, value) for _, _, key, kind, value in user_rows), where, result.problems)
            interpreted = interpret(store, user, record)
            result.problems.extend(ReadProblem(where, "unexpected", odd) for odd in interpreted.oddities)
            if interpreted.activity is not None:
                activity = accounts.complete(host, interpreted.activity, chosen[host])
                result.hosts[host].users.append(activity)


@dataclass
class ChangedAccounts:
    """What read_changes found: each changed account's record as a full read makes it (None: no longer any), each
    host's registered accounts now, the hosts whose account stores changed, hosts not read before, the next mark."""

    mark: ChangeMark
    records: list[tuple[str, str, UserActivity | None]] = field(default_factory=list)  # (host, user, record)
    registered: dict[str, int | None] = field(default_factory=dict)
    accounts_changed: set[str] = field(default_factory=set)  # hosts with a changed accounts or account_details row
    new_hosts: set[str] = field(default_factory=set)  # with changed rows, but not among the hosts read: read all
    problems: list[ReadProblem] = field(default_factory=list)


@dataclass
class _AccountRows:
    """The account stores' part in each user's record, keyed by (host, user)."""

    holders: set[tuple[str, str]] = field(default_factory=set)  # who has an account record
    facts: dict[tuple[str, str], list[Any]] = field(default_factory=dict)  # created, disabled, details' registered
    problems: list[ReadProblem] = field(default_factory=list)

    def complete(self, host: str, activity: UserActivity, choice: CountingChoice) -> UserActivity:
        """`activity` completed as the file reader completes a record (files._Loader.with_account)."""
        created, disabled, details = self.facts.get((host, activity.user), (None, False, None))
        registered = registration(created, activity.registered, details)
        check = choice.accounts is AccountRule.ENABLED
        no_account = check and (host, activity.user) not in self.holders
        return replace(activity, registered=registered, disabled=check and bool(disabled), no_account=no_account)

    def account_only(self, host: str, user: str, choice: CountingChoice) -> UserActivity:
        """A registered account with no activity data, as the file reader makes one."""
        return self.complete(host, UserActivity(user, None, account_only=True), choice)


def _record(rows: Iterable[tuple[Any, Any, Any]], where: str, problems: list[ReadProblem]) -> dict[Any, PlainValue]:
    """Rebuilds one user's record from keyval/map rows, as mod_storage_sql's get does."""
    record: dict[Any, PlainValue] = {}
    spill: dict[Any, PlainValue] = {}
    for key, kind, text in rows:
        if not isinstance(text, str):
            problems.append(ReadProblem(f"{where} key={key}", "invalid", f"the value is {_odd_text(text)}"))
            continue
        try:
            value = _decode(kind, text)
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deeply
            problems.append(ReadProblem(f"{where} key={key}", "invalid", f"{kind} value does not parse: {exc}"))
            continue
        if value is None:
            continue
        if key == "":  # keyval rows for non-string keys, merged in by Prosody
            if isinstance(value, dict):
                spill.update(value)
            continue
        # 0.12 has no unique index: of duplicate rows, the latest activity wins.
        record[key] = _later(record[key], value) if key in record else value
    return {**spill, **record}


def _decode(kind: str, text: str) -> PlainValue | None:
    if kind == "json":
        return json.loads(text)  # type: ignore[no-any-return]
    if kind == "number":
        if _NUMBER.fullmatch(text) is None:
            raise ValueError("not a decimal number")
        return float(text)
    if kind == "boolean":
        return text == "true"
    return text


def _is_text(value: object) -> bool:
    """Whether a column holds text, and valid UTF-8 (see `_lenient_text`)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _odd_text(value: object) -> str:
    """What a column that is not valid text holds, for a problem's reason."""
    if value is None:
        return "NULL"
    return "not valid UTF-8" if isinstance(value, str) else "not text"


def _printable(value: object) -> str:
    """A column's value for a problem's `where`: bytes that are not UTF-8 escaped, NULL named."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        value = value.encode(errors="surrogateescape")
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else str(value)


def _lenient_text(data: bytes) -> str:
    """SQLite text as str, bytes that are not UTF-8 kept as lone surrogates (PEP 383)."""
    return data.decode(errors="surrogateescape")


def _later(old: PlainValue, new: PlainValue) -> PlainValue:
    """Of two duplicate rows, the later timestamp; a number beats text beats nothing, in any row order."""
    return new if _rank(new) > _rank(old) else old


def _rank(value: PlainValue) -> tuple[int, float, str]:
    if isinstance(value, dict):
        value = value.get("timestamp")  # type: ignore[assignment]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (2, float(value), "")
    if isinstance(value, str):
        return (1, 0.0, value)
    return (0, 0.0, "")


@dataclass
class _Counted:
    """One host's store, its account rule applied; lists per window, or per inactive window."""

    active: list[int]
    registered: list[int]
    returning: list[int]
    inactive: list[int]
    never_used: list[int]
    never: int = 0
    left_out: int = 0
    no_account: int = 0
    future: int = 0


# (has data in the store, has an account, disabled, class of the last activity, in the future, class of the
# registration, class of the earlier of the two); a class is the shortest window the time is within, -1 no time.
_Key = tuple[bool, bool, bool, int, bool, int, int]


@dataclass
class _Tally:
    """One host's store, summed from the aggregate's rows, kept apart by what the host's rules need."""

    records: int = 0  # accounts with data in the store
    suspect: int = 0
    classes: dict[_Key, int] = field(default_factory=dict)  # -> accounts

    def counted(
        self, rule: AccountRule, *, account_only: bool, windows: Sequence[int], ages: Sequence[int]
    ) -> _Counted:
        """The counts once `rule` says which accounts count (the connected ones are not known in SQL), with the
        accounts that have no data in the store if `account_only`; `windows` and `ages` are positions among the
        query's ascending windows. The same arithmetic as counting.count_host, on classes."""
        counted = _Counted([0] * len(windows), [0] * len(windows), [0] * len(windows), [0] * len(ages), [0] * len(ages))
        for (has_data, has_account, disabled, last, future, registered, earlier), count in self.classes.items():
            if not has_data and not account_only:
                continue
            for i, position in enumerate(windows):
                counted.registered[i] += count if 0 <= registered <= position else 0
            if rule.leaves_out(disabled=disabled, no_account=not has_account):
                counted.left_out += count
                counted.no_account += count if rule.for_want_of_account(no_account=not has_account) else 0
            elif last < 0:
                counted.never += count
                for j, position in enumerate(ages):
                    if registered > position:  # registered, and not within the inactive window
                        counted.inactive[j] += count
                        counted.never_used[j] += count
            else:
                counted.future += count if future else 0
                for i, position in enumerate(windows):
                    if last <= position:
                        counted.active[i] += count
                        counted.returning[i] += count if not 0 <= earlier <= position else 0
                for j, position in enumerate(ages):
                    counted.inactive[j] += count if last > position else 0
        return counted


def _tally(rows: Iterable[Sequence[Any]], host_columns: int) -> dict[str, dict[Store, _Tally]] | None:
    """Sums `sql_queries.aggregate`'s rows per host and store. None when a host name could not be keyed."""
    tallies: dict[str, dict[Store, _Tally]] = {}
    for row in rows:
        host = _host_name(row[:host_columns])
        if host is None:
            return None
        code, suspect, account, disabled, has_data, last, future, registered, earlier, count = (
            int(n) for n in row[host_columns:]
        )
        tally = tallies.setdefault(host, {}).setdefault(Store(queries.STORES[code - 1]), _Tally())
        tally.records += count if has_data else 0
        tally.suspect += count if suspect else 0
        key = (bool(has_data), bool(account), bool(disabled), last, bool(future), registered, earlier)
        tally.classes[key] = tally.classes.get(key, 0) + count
    return tallies


def _host_name(key: Sequence[Any]) -> str | None:
    """A host from its key: the name itself, or (MariaDB/MySQL) a zero-padded binary copy and its length."""
    if len(key) == 1:
        return key[0] if _is_text(key[0]) else None
    if key[0] is None:
        return None
    padded, length = bytes(key[0]), int(key[1])
    return padded[:length].decode() if length <= len(padded) else None


@contextmanager
def _connection(settings: SqlSettings, cancellation: Cancellation) -> Iterator[Connection]:
    connection = connect(settings, cancellation)
    try:
        try:
            connection.query('SELECT 1 FROM "prosody" WHERE 1 = 0')
        except connection.errors as exc:
            raise DatabaseError(
                f"{settings.describe()} has no readable `prosody` table ({first_line(exc)}): is this the database "
                'Prosody\'s storage = "sql" writes to, and has it run?'
            ) from exc
        yield connection
    finally:
        connection.close()

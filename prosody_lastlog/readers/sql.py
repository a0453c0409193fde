"""Reads last-activity data from Prosody's SQL table, counting in the engine where it can."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from itertools import chain, groupby
from typing import Any

from prosody_lastlog.counting import HostCounts, count_hosts
from prosody_lastlog.database import Connection, DatabaseError, NoAnswerError, SqlSettings, connect, first_line
from prosody_lastlog.readers import ReadResult, SourceCount
from prosody_lastlog.readers import sql_queries as queries
from prosody_lastlog.readers.stores import interpret
from prosody_lastlog.records import HostData, ReadProblem, Store
from prosody_lastlog.sandbox import PlainValue
from prosody_lastlog.windows import Window

log = logging.getLogger(__name__)

METHODS = ("auto", "pushdown", "stream")
# PostgreSQL and MariaDB count the accounts in this many hash partitions at once, each on its own connection
# (a server process each); the per-account grouping, most of the work, is then spread over the server's cores.
PARTS = 2
# What Lua's tonumber reads as a decimal number, which is how Prosody reads a `number` row back; Python's float()
# also takes `1_000`, `inf` and non-ASCII digits.
_NUMBER = re.compile(r"[ \t\n\v\f\r]*[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?[ \t\n\v\f\r]*")
_NOT_UTF8 = "Could not decode to UTF-8"  # how sqlite3 refuses text that is not UTF-8 (SQLite stores any bytes)


class _NotUtf8Error(Exception):
    """SQLite holds text that is not UTF-8 (it stores any bytes), which sqlite3 refuses to read by default."""


class SqlReader:
    """Reads the stores of Prosody's mod_storage_sql table `prosody(host, user, store, key, type, value)`."""

    def __init__(
        self,
        settings: SqlSettings,
        *,
        hosts: Collection[str] = (),
        store: Store | None = None,
        count_disabled: bool = False,
        method: str = "auto",
        parts: int = PARTS,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown SQL counting method {method!r}")
        self._settings = settings
        self._hosts = sorted({host.lower() for host in hosts})
        self._forced_store = store
        self._count_disabled = count_disabled
        self._method = method
        self._parts = max(1, parts)

    def read(self) -> ReadResult:
        """Streams every row of the chosen store per host into activity records."""
        with _connection(self._settings) as connection:
            return self._read(connection, self._hosts)

    def count(self, *, now: int, windows: Sequence[Window]) -> SourceCount:
        """Counts per host: one aggregate query in the engine, else (or for hosts with odd rows) the stream."""
        with _connection(self._settings) as connection:
            result = SourceCount()
            to_stream: list[str] | None = None  # None: every host this reader covers
            if self._method != "stream" and self._supports_pushdown(connection):
                to_stream = self._pushdown(connection, result, now=now, windows=windows)
            if to_stream is None or to_stream:
                streamed = self._read(connection, self._hosts if to_stream is None else to_stream)
                result.problems.extend(streamed.problems)
                for host, counts in count_hosts(streamed.hosts.values(), now=now, windows=windows).items():
                    result.counts[host] = counts
                    result.methods[host] = "stream"
            result.counts = dict(sorted(result.counts.items()))
            return result

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
        self, connection: Connection, result: SourceCount, *, now: int, windows: Sequence[Window]
    ) -> list[str] | None:
        """Fills `result` from the aggregate query; returns the hosts to stream instead (None: all of them)."""
        seconds = sorted({w.seconds for w in windows})
        dialect = queries.DIALECTS[connection.settings.driver]
        parts = self._parts if dialect.partition else 1
        statements = [
            queries.aggregate(
                dialect,
                hosts=self._hosts,
                now=now,
                windows=seconds,
                check_disabled=not self._count_disabled,
                part=(index, parts),
            )
            for index in range(parts)
        ]
        failures: tuple[type[Exception], ...] = (DatabaseError, *connection.errors)
        try:
            with ThreadPoolExecutor(max_workers=parts) as pool:
                answers = list(pool.map(partial(self._aggregate, dialect), statements))
        except NoAnswerError:
            raise  # streaming would wait for the same silent server again
        except failures as exc:
            # E.g. PostgreSQL meeting text that is not JSON: the stream reports the rows at fault.
            log.warning(
                "%s: counting in the database failed (%s); streaming rows instead, -v names bad rows",
                connection.settings.describe(),
                first_line(exc),
            )
            return None
        positions = [seconds.index(w.seconds) for w in windows]
        tallies = _tally(chain.from_iterable(answers), len(dialect.host_key), positions)
        if tallies is None:
            log.info(
                "%s has a host name the database cannot key (too long, or not text); streaming rows",
                connection.settings.describe(),
            )
            return None
        fallback = []
        for host, per_store in tallies.items():
            store = self._choose(per_store.keys())
            if store is None:
                continue
            tally = per_store[store]
            if tally.suspect:
                fallback.append(host)
                continue
            labels = [w.label for w in windows]
            result.counts[host] = HostCounts(
                store,
                tally.accounts,
                tally.never,
                tally.disabled,
                tally.future,
                dict(zip(labels, tally.active, strict=True)),
                dict(zip(labels, tally.registered, strict=True)),
            )
            result.methods[host] = "pushdown"
        if fallback:
            log.info("%d host(s) have rows the database cannot check; streaming those", len(fallback))
        return fallback

    def _aggregate(self, dialect: queries.Dialect, statement: tuple[str, tuple[object, ...]]) -> list[tuple[Any, ...]]:
        """One part of the aggregate, on a connection of its own whose session settings die with it."""
        connection = connect(self._settings)
        try:
            for setting in dialect.session:
                connection.query(setting)
            return connection.query(*statement)
        finally:
            connection.close()

    def _choose(self, present: Iterable[Store]) -> Store | None:
        available = set(present)
        if self._forced_store:
            return self._forced_store if self._forced_store in available else None
        return next((store for store in Store if store in available), None)

    def _read(self, connection: Connection, hosts: Sequence[str]) -> ReadResult:
        try:
            return self._read_once(connection, hosts)
        except _NotUtf8Error:
            # Read again, slower, with such bytes kept as surrogates: the rows at fault are then reported.
            connection.raw.text_factory = _lenient_text
            return self._read_once(connection, hosts)

    def _read_once(self, connection: Connection, hosts: Sequence[str]) -> ReadResult:
        result = ReadResult()
        try:
            present: dict[str, set[Store]] = {}
            for host, store in connection.query(*queries.stores_present(hosts)):
                if _is_text(host):
                    present.setdefault(host, set()).add(Store(store))
                else:  # rows of no host Prosody serves
                    where = f"{self._settings.describe()} host={_printable(host)} store={store}"
                    result.problems.append(ReadProblem(where, "invalid", f"the host is {_odd_text(host)}"))
            chosen = {host: store for host, stores in present.items() if (store := self._choose(stores))}
            for store in Store:
                store_hosts = sorted(host for host, s in chosen.items() if s is store)
                if store_hosts:
                    disabled = self._disabled(connection, store_hosts)
                    # closed here even when collecting fails, so its time bound ends with it
                    with closing(connection.stream(*queries.rows_of(store, store_hosts))) as rows:
                        self._collect(rows, store, disabled, result)
        except connection.errors as exc:
            if isinstance(exc, sqlite3.OperationalError) and str(exc).startswith(_NOT_UTF8):
                raise _NotUtf8Error from None  # the message quotes the text, maybe a user name
            raise DatabaseError(f"cannot read {connection.settings.describe()}: {first_line(exc)}") from exc
        result.hosts = dict(sorted(result.hosts.items()))
        return result

    def _disabled(self, connection: Connection, hosts: Sequence[str]) -> set[tuple[str, str]]:
        if self._count_disabled:
            return set()
        return {(host, user) for host, user in connection.query(*queries.disabled_accounts(hosts))}

    def _collect(
        self, rows: Iterator[tuple[Any, ...]], store: Store, disabled: set[tuple[str, str]], result: ReadResult
    ) -> None:
        for (host, user), user_rows in groupby(rows, key=lambda row: (row[0], row[1])):
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
                activity = interpreted.activity
                if (host, user) in disabled:
                    activity = replace(activity, disabled=True)
                result.hosts.setdefault(host, HostData(host, store)).users.append(activity)


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
class _Tally:
    """One host's store, summed from the aggregate's rows; `active`/`registered` per window."""

    active: list[int]
    registered: list[int]
    accounts: int = 0
    suspect: int = 0
    disabled: int = 0
    never: int = 0
    future: int = 0


def _tally(
    rows: Iterable[Sequence[Any]], host_columns: int, positions: Sequence[int]
) -> dict[str, dict[Store, _Tally]] | None:
    """Sums `sql_queries.aggregate`'s rows per host and store; `positions[i]` is window i's index among the
    query's ascending windows. None when a host name could not be keyed."""
    tallies: dict[str, dict[Store, _Tally]] = {}
    for row in rows:
        host = _host_name(row[:host_columns])
        if host is None:
            return None
        code, suspect, disabled, last_class, future, registered_class, count = (int(n) for n in row[host_columns:])
        per_store = tallies.setdefault(host, {})
        store = Store(queries.STORES[code - 1])
        tally = per_store.setdefault(store, _Tally([0] * len(positions), [0] * len(positions)))
        tally.accounts += count
        tally.suspect += count if suspect else 0
        for i, position in enumerate(positions):
            # A class is the shortest window the time is within; -1 is no time at all.
            tally.registered[i] += count if 0 <= registered_class <= position else 0
        if disabled:
            tally.disabled += count
        elif last_class < 0:
            tally.never += count
        else:
            tally.future += count if future else 0
            for i, position in enumerate(positions):
                tally.active[i] += count if last_class <= position else 0
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
def _connection(settings: SqlSettings) -> Iterator[Connection]:
    connection = connect(settings)
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

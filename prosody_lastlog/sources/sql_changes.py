"""Which accounts changed in Prosody's SQL table since an earlier look, with SELECT only and nothing left behind.

PostgreSQL: every row version carries the transaction that wrote it (xmin); rows written since a look are those
newer than the oldest transaction that look's snapshot could not see. Exact for inserts and updates.

MariaDB and SQLite show a SELECT no row version. Prosody writes the time (os.time()) into every row that changes
what is counted (a login or logout, account_activity, an account's `created` and `updated`, account_details'
`registered`): the rows changed since a look are found by that time, with SLACK_SECONDS for the clocks of
Prosody's host and ours. A row written with no time (an account made by Prosody 0.12's prosodyctl) or a clock
further off waits for the next full read.

Deleted rows leave nothing to find on either: the daemon's periodic full read (the reconcile) catches them.
With --sql-binlog, MariaDB's binary log tells of every change, deletions too (sql_binlog); the mark then also
holds where the log stood.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prosody_lastlog.sources import sql_queries as queries
from prosody_lastlog.sources.database import Connection
from prosody_lastlog.sources.sql_binlog import BinlogPosition, BinlogSetupError, binlog_position

SLACK_SECONDS = 120  # how far Prosody's clock may be from ours for a change to be found by its time
PREFIXES = 2  # at most, of the time's leading digits scanned for: one 1,000-second block, two across a boundary
_WHOLE_SECONDS = re.compile(r"(?<![0-9])[0-9]{9,11}(?![0-9])")  # a Unix time's whole seconds, 1973 to 5138


@dataclass(frozen=True)
class ChangeMark:
    """Where a look at the table left off: PostgreSQL, its snapshot's oldest unseen transaction; else the time."""

    value: int
    by_version: bool  # PostgreSQL's xmin; else the time in the values
    binlog: BinlogPosition | None = None  # where MariaDB's binary log stood, when it is followed
    binlog_error: str | None = None  # why it could not be found, when it was asked for


def mark(connection: Connection, now: int, *, binlog: bool = False) -> ChangeMark:
    """The mark of a look starting now (taken before its rows are read: a change meanwhile is found again); with
    `binlog`, where the binary log stands too, exactly as what the connection reads next (a snapshot), or why it
    cannot be followed (the looks by time go on meanwhile)."""
    if connection.settings.driver == "PostgreSQL":
        ((xmin,),) = connection.query(queries.snapshot_mark())
        return ChangeMark(int(xmin), by_version=True)
    if not binlog:
        return ChangeMark(now, by_version=False)
    try:
        return ChangeMark(now, by_version=False, binlog=binlog_position(connection, consistent=True))
    except BinlogSetupError as exc:
        return ChangeMark(now, by_version=False, binlog_error=str(exc))


def changed_accounts(
    connection: Connection, hosts: list[str], since: ChangeMark, now: int
) -> set[tuple[str, str, str]]:
    """(host, user, store) of the rows of the counted and account stores written since `since`."""
    if since.by_version:
        sql, params = queries.changed_since_xmin(hosts, since.value)
        return {(host, user, store) for host, user, store in connection.query(sql, params)}
    start, end = since.value - SLACK_SECONDS, now + SLACK_SECONDS
    # One prefix scanned for (two where the span crosses one) costs a third of the four that would match the span
    # alone; the rows it finds are then kept by their exact time.
    prefixes = queries.time_prefixes(start, end, most=PREFIXES)
    sql, params = queries.changed_since_time(hosts, prefixes)
    return {
        (host, user, store) for host, user, store, value in connection.query(sql, params) if _holds(value, start, end)
    }


def _holds(value: object, start: int, end: int) -> bool:
    """Whether a value holds a time from `start` to `end` (a number, or one in JSON), or one that may be: a value
    that is not text is read again rather than missed."""
    if not isinstance(value, str):
        return True
    return any(start <= int(digits) <= end for digits in _WHOLE_SECONDS.findall(value))

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

from dataclasses import dataclass

from prosody_lastlog.sources import sql_queries as queries
from prosody_lastlog.sources.database import Connection
from prosody_lastlog.sources.sql_binlog import BinlogPosition, binlog_position

SLACK_SECONDS = 120  # how far Prosody's clock may be from ours for a change to be found by its time


@dataclass(frozen=True)
class ChangeMark:
    """Where a look at the table left off: PostgreSQL, its snapshot's oldest unseen transaction; else the time."""

    value: int
    by_version: bool  # PostgreSQL's xmin; else the time in the values
    binlog: BinlogPosition | None = None  # where MariaDB's binary log stood, when it is followed


def mark(connection: Connection, now: int, *, binlog: bool = False) -> ChangeMark:
    """The mark of a look starting now (taken before its rows are read: a change meanwhile is found again); with
    `binlog`, where the binary log stands too."""
    if connection.settings.driver == "PostgreSQL":
        ((xmin,),) = connection.query(queries.snapshot_mark())
        return ChangeMark(int(xmin), by_version=True)
    return ChangeMark(now, by_version=False, binlog=binlog_position(connection) if binlog else None)


def changed_accounts(
    connection: Connection, hosts: list[str], since: ChangeMark, now: int
) -> set[tuple[str, str, str]]:
    """(host, user, store) of the rows of the counted and account stores written since `since`."""
    if since.by_version:
        sql, params = queries.changed_since_xmin(hosts, since.value)
    else:
        prefixes = queries.time_prefixes(since.value - SLACK_SECONDS, now + SLACK_SECONDS)
        sql, params = queries.changed_since_time(hosts, prefixes)
    return {(host, user, store) for host, user, store in connection.query(sql, params)}

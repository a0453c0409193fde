"""SQL text for Prosody's `prosody` table: the aggregate pushed into the engine, and the row stream.

Every value from outside is a `?` parameter; only fixed fragments are formatted into the text. A row's
timestamp is NULL unless it is a clean JSON number below 1e15, and a row that should hold one but doesn't
counts as `suspect`: the reader then streams that host's rows instead, which names them, so both paths agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prosody_lastlog.records import Store

STORES = tuple(store.value for store in Store)


@dataclass(frozen=True)
class Dialect:
    """How one engine reads a JSON number out of a text column: parse once, then test and convert."""

    name: str
    field: str  # {v}: the column; its JSON object's "timestamp" member, NULL if the text is not JSON
    whole: str  # {v}: the column; the whole text as a JSON value, NULL if it is not JSON
    is_number: str  # {x}: a value from `field`/`whole`; true when it is a JSON number
    is_small: str  # {x}: a JSON number; true when below 1e15 in magnitude
    to_double: str  # {x}: a JSON number as a double
    fence: str  # keeps the engine from merging the parsing sub-query into its users (parsing each row again)
    probe: str  # a query that fails where the JSON functions are missing


SQLITE = Dialect(
    "SQLite3",
    field="CASE WHEN json_valid({v}) THEN json_extract({v}, '$.timestamp') END",
    whole="CASE WHEN json_valid({v}) THEN json_extract({v}, '$') END",
    is_number="typeof({x}) IN ('integer', 'real')",
    is_small="abs({x}) < 1e15",
    to_double="{x}",
    fence=" LIMIT -1 OFFSET 0",
    probe="SELECT json_valid('{}'), json_extract('1', '$')",
)
# PostgreSQL has no "is this valid JSON" test before 16: invalid JSON makes the cast fail the whole query,
# which the reader also answers by falling back to the row stream.
POSTGRESQL = Dialect(
    "PostgreSQL",
    field="(({v})::jsonb -> 'timestamp')",
    whole="({v})::jsonb",
    is_number="jsonb_typeof({x}) = 'number'",
    is_small="abs(({x})::numeric) < 1e15",
    to_double="(({x})::numeric)::double precision",
    fence=" OFFSET 0",
    probe="SELECT jsonb_typeof('1'::jsonb)",
)
MYSQL = Dialect(
    "MySQL",
    field="CASE WHEN JSON_VALID({v}) THEN JSON_EXTRACT({v}, '$.timestamp') END",
    whole="CASE WHEN JSON_VALID({v}) THEN JSON_EXTRACT({v}, '$') END",
    is_number="JSON_TYPE({x}) IN ('INTEGER', 'UNSIGNED INTEGER', 'DOUBLE', 'DECIMAL')",
    is_small="ABS(CAST({x} AS DOUBLE)) < 1e15",
    to_double="CAST({x} AS DOUBLE)",
    fence=" LIMIT 18446744073709551615",
    probe="SELECT JSON_VALID('{}'), JSON_TYPE('1')",
)
DIALECTS = {d.name: d for d in (SQLITE, POSTGRESQL, MYSQL)}


def _in_list(count: int) -> str:
    return "(" + ", ".join("?" * count) + ")"


def host_filter(hosts: Sequence[str], column: str = '"host"') -> tuple[str, tuple[str, ...]]:
    """An `AND host IN (...)` clause and its parameters; empty for all hosts."""
    return (f" AND {column} IN {_in_list(len(hosts))}", tuple(hosts)) if hosts else ("", ())


def stores_present(hosts: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Which last-activity stores have rows, per host."""
    where, params = host_filter(hosts)
    sql = (
        f'SELECT "host", "store" FROM "prosody" WHERE "store" IN {_in_list(len(STORES))}{where} '
        'GROUP BY "host", "store"'
    )
    return sql, STORES + params


def rows_of(store: Store, hosts: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Every row of `store` for the hosts, grouped by host and user for streaming."""
    where, params = host_filter(hosts)
    sql = (
        'SELECT "host", "user", "key", "type", "value" FROM "prosody" '
        f'WHERE "store" = ?{where} ORDER BY "host", "user", "key"'
    )
    return sql, (store.value, *params)


def disabled_accounts(hosts: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Accounts Prosody 13 marked disabled: a `disabled` row in the accounts store that is not boolean false."""
    where, params = host_filter(hosts)
    sql = (
        'SELECT DISTINCT "host", "user" FROM "prosody" WHERE "store" = \'accounts\' AND "key" = \'disabled\' '
        f"AND NOT (\"type\" = 'boolean' AND \"value\" = 'false'){where}"
    )
    return sql, params


def aggregate(
    dialect: Dialect, *, hosts: Sequence[str], now: int, windows: Sequence[int], check_disabled: bool
) -> tuple[str, tuple[object, ...]]:
    """One query: per (host, store), accounts, suspect rows, disabled, never active, future, active and
    registered per window, with mod_measure_active_users' arithmetic (active iff now - last < window)."""
    where, host_params = host_filter(hosts, 'p."host"')

    # Each row is classified and its JSON parsed once, in fenced sub-queries. kind: 1 lastlog2 login/logout,
    # 2 lastlog2 registered, 3 a number `timestamp` (lastlog, account_activity), 4 a lastlog event, 5 a ""
    # keyval row. `ts` is NULL where the row should hold a timestamp but holds no clean number.
    parsed_rows = f"""
        SELECT p."host", p."store", p."user", p."type",
          CASE
            WHEN p."key" = '' THEN 5
            WHEN p."store" = 'lastlog2' AND p."key" IN ('login', 'logout') THEN 1
            WHEN p."store" = 'lastlog2' AND p."key" = 'registered' THEN 2
            WHEN p."store" <> 'lastlog2' AND p."key" = 'timestamp' THEN 3
            WHEN p."store" = 'lastlog' AND p."key" = 'event' THEN 4
            ELSE 0
          END AS kind,
          CASE WHEN p."store" = 'lastlog' AND p."key" = 'event' THEN p."value" END AS event,
          CASE
            WHEN p."store" = 'lastlog2' AND p."key" IN ('login', 'logout', 'registered') AND p."type" = 'json'
              THEN {dialect.field.format(v='p."value"')}
            WHEN p."store" <> 'lastlog2' AND p."key" = 'timestamp' AND p."type" = 'number'
              THEN {dialect.whole.format(v='p."value"')}
          END AS j
        FROM "prosody" p
        WHERE p."store" IN {_in_list(len(STORES))}{where}{dialect.fence}
    """
    number = dialect.to_double.format(x="q.j")
    timed_rows = f"""
        SELECT q."host", q."store", q."user", q."type", q.kind, q.event,
          CASE WHEN {dialect.is_number.format(x="q.j")} THEN
            CASE WHEN {dialect.is_small.format(x="q.j")} THEN {number} END END AS ts
        FROM ({parsed_rows}) q{dialect.fence}
    """
    per_user = f"""
        SELECT r."host", r."store", r."user",
          MAX(CASE WHEN r.kind = 1 THEN r.ts END) AS l2_active,
          MAX(CASE WHEN r.kind = 2 THEN r.ts END) AS l2_registered,
          MAX(CASE WHEN r.kind = 3 THEN r.ts END) AS stamp,
          MAX(CASE WHEN r.kind = 4 AND r."type" = 'string' THEN r.event END) AS event,
          SUM(CASE
              WHEN r.kind IN (1, 2, 3) AND r.ts IS NULL THEN 1
              WHEN r.kind = 5 THEN 1
              WHEN r.kind = 4 AND r."type" <> 'string' THEN 1
              ELSE 0 END) AS suspect_rows,
          SUM(CASE WHEN r.kind = 4 THEN 1 ELSE 0 END) AS events
        FROM ({timed_rows}) r
        GROUP BY r."host", r."store", r."user"
    """
    if check_disabled:
        disabled_join = """
        LEFT JOIN (SELECT DISTINCT a."host", a."user" FROM "prosody" a WHERE a."store" = 'accounts'
                   AND a."key" = 'disabled' AND NOT (a."type" = 'boolean' AND a."value" = 'false')) d
          ON d."host" = u."host" AND d."user" = u."user"
        """
        disabled = 'CASE WHEN d."user" IS NULL THEN 0 ELSE 1 END'
    else:
        disabled_join, disabled = "", "0"
    per_user_final = f"""
        SELECT u."host", u."store",
          CASE WHEN u.suspect_rows > 0 OR u.events > 1 THEN 1 ELSE 0 END AS suspect,
          CASE u."store"
            WHEN 'lastlog2' THEN u.l2_active
            WHEN 'account_activity' THEN u.stamp
            ELSE CASE WHEN u.event IS NULL OR u.event IN ('login', 'logout') THEN u.stamp END
          END AS last_active,
          CASE u."store"
            WHEN 'lastlog2' THEN u.l2_registered
            WHEN 'lastlog' THEN CASE WHEN u.event = 'registered' THEN u.stamp END
          END AS registered,
          {disabled} AS disabled
        FROM ({per_user}) u{disabled_join}
    """
    active = "".join(",\n SUM(CASE WHEN v.disabled = 0 AND ? - v.last_active < ? THEN 1 ELSE 0 END)" for _ in windows)
    new = "".join(",\n SUM(CASE WHEN ? - v.registered < ? THEN 1 ELSE 0 END)" for _ in windows)
    sql = f"""
        SELECT v."host", v."store", COUNT(*), SUM(v.suspect), SUM(v.disabled),
          SUM(CASE WHEN v.disabled = 0 AND v.last_active IS NULL THEN 1 ELSE 0 END),
          SUM(CASE WHEN v.disabled = 0 AND v.last_active > ? THEN 1 ELSE 0 END){active}{new}
        FROM ({per_user_final}) v
        GROUP BY v."host", v."store"
    """
    window_params = tuple(p for w in windows for p in (now, w))
    # Placeholders in text order: the outer select list comes before the sub-queries.
    return sql, (now, *window_params, *window_params, *STORES, *host_params)

"""SQL text for Prosody's `prosody` table: the aggregate pushed into the engine, and the row stream.

Every value from outside is a `?` parameter; only fixed fragments are formatted into the text. A row's
timestamp is NULL unless it is a clean JSON number below 1e15, and a row that should hold one but doesn't
counts as `suspect`: the reader then streams that host's rows instead, which names them, so both paths agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prosody_lastlog.core.model import ACCOUNT_DETAILS, ACCOUNTS, Store
from prosody_lastlog.core.rules import THIRTEEN_INDEX

STORES = tuple(store.value for store in Store)  # the activity stores; a store's code is its place here, from 1
# A per-user maximum at or above this marks a suspect row: real timestamps are below 1e15.
SUSPECT = "1e300"
# Session memory for a count's per-account grouping, about 210 bytes per account (spread over the parts) on
# PostgreSQL and MariaDB; the engines take it as the accounts need it, and spill to disk beyond it.
PG_WORK_MEM = "256MB"
MYSQL_TMP_TABLE = 1 << 30

# The canonical text Prosody writes (util.json for a lastlog2 value, Lua's tostring for a number), matched
# whole and case-sensitively: whatever matches is valid JSON holding that timestamp, a number below 1e15.
_IP = '"ip":"[0-9A-Za-z.:_-]*"'
_NUMBER = "(0|[1-9][0-9]{0,14})([.][0-9]+)?"
CANONICAL_MEMBER = f'(?-i)^[{{]({_IP},)?"timestamp":{_NUMBER}(,{_IP})?[}}]\\z'
CANONICAL_NUMBER = f"(?-i)^{_NUMBER}\\z"


@dataclass(frozen=True)
class Dialect:
    """How one engine reads a JSON number out of a text column, and keys rows by account."""

    name: str
    member: str  # {v}: the column; its JSON object's "timestamp" member, as parsed by `number`
    whole: str  # {v}: the column; the whole text as a JSON value, as parsed by `number`
    patterns: tuple[str, ...]  # the parameters of `member`, then of `whole`
    number: str  # {x}: a value from `member`/`whole`; a double if it is a JSON number below 1e15, else NULL
    fence: str  # keeps the engine from merging a parsing sub-query into its users (parsing each row again)
    store_code: str  # {c}: the store column; its position in STORES, from 1
    host_key: tuple[str, ...]  # {c}: the host column; expressions grouping rows by host, exactly
    user_key: tuple[str, ...]  # {c}: the user column; expressions grouping rows by account, exactly
    unkeyed: str  # {c}: the user column; true where `user_key` cannot tell accounts apart, or no user (suspect)
    unordered: str  # after a GROUP BY: no implicit sorting of the groups
    partition: str  # {c}: the user column; true for the accounts in part i of n (parameters n, i); "" for none
    session: tuple[str, ...]  # statements preparing a counting connection (its own, closed after the count)
    probe: str  # a query, given `patterns`, that fails where the functions the aggregate uses are missing
    thirteen_index: str  # a row where Prosody 13's mod_storage_sql made its `prosody_unique_index` (it does at start)


SQLITE = Dialect(
    "SQLite3",
    # SQLite reads the first of duplicate keys, and not escaped ones, where Python's json reads the last; it also
    # reads JSON in a blob, and stops at a NUL byte, where the stream finds no text or refuses the rest.
    member="CASE WHEN typeof({v}) = 'text' AND json_valid({v}) AND instr({v}, '\\') = 0 "
    "AND instr({v}, char(0)) = 0 AND instr(substr({v}, instr({v}, '\"timestamp\"') + 1), '\"timestamp\"') = 0 "
    "THEN json_extract({v}, '$.timestamp') END",
    whole="CASE WHEN typeof({v}) = 'text' AND json_valid({v}) AND instr({v}, char(0)) = 0 "
    "THEN json_extract({v}, '$') END",
    patterns=(),
    number="CASE WHEN typeof({x}) IN ('integer', 'real') AND abs({x}) < 1e15 THEN {x} END",
    fence=" LIMIT -1 OFFSET 0",
    store_code="CASE {c} " + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(STORES, 1)) + " END",
    host_key=("{c}",),
    user_key=("{c}",),
    unkeyed="typeof({c}) <> 'text'",  # NULL, or a blob
    unordered="",
    partition="",
    session=(),
    probe="SELECT json_valid('{}'), json_extract('1', '$')",
    thirteen_index=f"SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = '{THIRTEEN_INDEX}'",
)
# PostgreSQL has no "is this valid JSON" test before 16: invalid JSON makes the cast fail the whole query,
# which the reader also answers by falling back to the row stream.
POSTGRESQL = Dialect(
    "PostgreSQL",
    member="(({v})::json -> 'timestamp')",
    whole="({v})::json",
    patterns=(),
    number="CASE WHEN json_typeof({x}) = 'number' THEN CASE WHEN abs(({x})::text::numeric) < 1e15 "
    "THEN ({x})::text::double precision END END",
    fence=" OFFSET 0",
    store_code="CASE {c} " + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(STORES, 1)) + " END",
    host_key=("{c}",),
    user_key=("{c}",),
    unkeyed="{c} IS NULL",
    unordered="",
    partition="mod(hashtext(COALESCE({c}, '')) & 2147483647, ?) = ?",  # a NULL user too is in a part
    # Room for the per-account hash table (up to twice work_mem), never less than the role has; no sorting,
    # which the planner would otherwise pick for a part whose size it cannot estimate.
    session=(
        f"SELECT set_config('work_mem', '{PG_WORK_MEM}', false) "
        f"WHERE pg_size_bytes(current_setting('work_mem')) < pg_size_bytes('{PG_WORK_MEM}')",
        "SELECT set_config('enable_sort', 'off', false)",
    ),
    probe="SELECT jsonb_typeof('1'::jsonb)",
    thirteen_index=f"SELECT 1 FROM pg_indexes WHERE tablename = 'prosody' AND indexname = '{THIRTEEN_INDEX}'",
)
# MariaDB/MySQL group TEXT columns in on-disk temporary tables, so rows are keyed by fixed-size binary
# copies of host and user (zero-padded, hence with their byte lengths): longer users are suspect, a longer
# host name makes the reader stream every host. (Any arithmetic or CASE in a grouping key makes MariaDB's
# grouping twice as slow.) Only Prosody's canonical text is read, with string functions: MariaDB's JSON
# functions accept text Python's json.loads refuses (`5.`, `"\x41"`) and take the first of duplicate keys
# where it takes the last, so any other text is suspect.
MYSQL = Dialect(
    "MySQL",
    member="CASE WHEN {v} REGEXP ? THEN CAST(SUBSTRING_INDEX(SUBSTRING_INDEX(SUBSTRING_INDEX({v}, "
    "'\"timestamp\":', -1), ',', 1), '}}', 1) AS DOUBLE) END",
    whole="CASE WHEN {v} REGEXP ? THEN CAST({v} AS DOUBLE) END",
    patterns=(CANONICAL_MEMBER, CANONICAL_NUMBER),
    number="{x}",
    fence="",
    store_code="FIELD({c}, " + ", ".join(f"'{s}'" for s in STORES) + ")",
    host_key=("CAST({c} AS BINARY(64))", "LENGTH({c})"),
    user_key=("CAST({c} AS BINARY(64))", "LENGTH({c})"),
    unkeyed="LENGTH({c}) > 64 OR {c} IS NULL",
    unordered=" ORDER BY NULL",
    partition="MOD(CRC32(COALESCE({c}, '')), ?) = ?",
    session=(
        f"SET SESSION max_heap_table_size = GREATEST(@@max_heap_table_size, {MYSQL_TMP_TABLE}), "
        f"tmp_table_size = GREATEST(@@tmp_table_size, {MYSQL_TMP_TABLE})",
    ),
    probe="SELECT '1' REGEXP ?, '1' REGEXP ?",  # PCRE or ICU: MariaDB 10.0.5+, MySQL 8.0.4+
    thirteen_index="SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE() "
    f"AND table_name = 'prosody' AND index_name = '{THIRTEEN_INDEX}' LIMIT 1",
)
DIALECTS = {d.name: d for d in (SQLITE, POSTGRESQL, MYSQL)}


def _in_list(count: int) -> str:
    return "(" + ", ".join("?" * count) + ")"


def host_filter(hosts: Sequence[str], column: str = '"host"') -> tuple[str, tuple[str, ...]]:
    """An `AND host IN (...)` clause and its parameters; empty for all hosts."""
    return (f" AND {column} IN {_in_list(len(hosts))}", tuple(hosts)) if hosts else ("", ())


def _filter(hosts: Sequence[str], users: Sequence[str] | None) -> tuple[str, tuple[str, ...]]:
    """host_filter, and with `users` (of the one host given) an `AND user IN (...)` the table's index serves."""
    where, params = host_filter(hosts)
    if users is None:
        return where, params
    return f'{where} AND "user" IN {_in_list(len(users))}', (*params, *users)


def stores_present(hosts: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Which last-activity stores have rows, per host."""
    where, params = host_filter(hosts)
    sql = f'SELECT "host", "store" FROM "prosody" WHERE "store" IN {_in_list(len(STORES))}{where} GROUP BY 1, 2'
    return sql, STORES + params


def stores_among(stores: Sequence[str], hosts: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Which of `stores` have rows (of the hosts)."""
    where, params = host_filter(hosts)
    sql = f'SELECT "store" FROM "prosody" WHERE "store" IN {_in_list(len(stores))}{where} GROUP BY 1'
    return sql, (*stores, *params)


def rows_of(store: Store, hosts: Sequence[str], users: Sequence[str] | None = None) -> tuple[str, tuple[str, ...]]:
    """Every row of `store` for the hosts (or these users of the one host), grouped by host and user for
    streaming."""
    where, params = _filter(hosts, users)
    sql = (
        'SELECT "host", "user", "key", "type", "value" FROM "prosody" '
        f'WHERE "store" = ?{where} ORDER BY "host", "user", "key"'
    )
    return sql, (store.value, *params)


def account_holders(hosts: Sequence[str], users: Sequence[str] | None = None) -> tuple[str, tuple[str, ...]]:
    """The accounts that exist (of these users of the one host): users with any row in the accounts store."""
    where, params = _filter(hosts, users)
    return f'SELECT DISTINCT "host", "user" FROM "prosody" WHERE "store" = ?{where}', (ACCOUNTS, *params)


def registered_accounts(hosts: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """The number of accounts per host: users with any row in the accounts store, as mod_storage_sql's users()
    lists them for usermanager."""
    where, params = host_filter(hosts)
    sql = f'SELECT "host", COUNT(DISTINCT "user") FROM "prosody" WHERE "store" = ?{where} GROUP BY "host"'
    return sql, (ACCOUNTS, *params)


def account_fields(hosts: Sequence[str], users: Sequence[str] | None = None) -> tuple[str, tuple[str, ...]]:
    """The only account rows whose values are read (the others hold password hashes): Prosody 13's `created` and
    `disabled`, and mod_register_ibr's account_details `registered`; ordered by account (of these users of the
    one host)."""
    where, params = _filter(hosts, users)
    sql = (
        'SELECT "host", "user", "store", "key", "type", "value" FROM "prosody" '
        f'WHERE (("store" = ? AND "key" IN (?, ?)) OR ("store" = ? AND "key" = ?)){where} '
        'ORDER BY "host", "user", "store", "key"'
    )
    return sql, (ACCOUNTS, "created", "disabled", ACCOUNT_DETAILS, "registered", *params)


def _keys(templates: tuple[str, ...], column: str, prefix: str) -> list[tuple[str, str]]:
    """(expression, alias) pairs of a row key."""
    return [(t.format(c=column), f"{prefix}{i}") for i, t in enumerate(templates)]


_EVENT = """CASE p."value" WHEN 'login' THEN 1 WHEN 'logout' THEN 2 WHEN 'registered' THEN 3 ELSE 4 END"""


def _window_class(value: str, windows: Sequence[int]) -> str:
    """The index of the first (shortest) window `value` is within, len(windows) for none, -1 for NULL."""
    cases = "".join(f" WHEN ? - {value} < ? THEN {i}" for i in range(len(windows)))
    return f"CASE WHEN {value} IS NULL THEN -1{cases} ELSE {len(windows)} END"


def aggregate(
    dialect: Dialect,
    *,
    hosts: Sequence[str],
    now: int,
    windows: Sequence[int],
    accounts: bool,
    part: tuple[int, int] = (0, 1),
) -> tuple[str, tuple[object, ...]]:
    """One query over every account (of one part), with mod_measure_active_users' arithmetic: active iff
    now - last < window.

    It returns few rows: the number of accounts per host key, store code (position in `STORES`, from 1; an account
    is there once per store it has data in, and once per store it has no data in but an account record), suspect,
    has an account record, is disabled (read, with `created`, only if `accounts`: Prosody 13), has data in the
    store, class of the last activity, whether that is in the future, class of the registration (Prosody 13's
    `created`, else the store's own, else account_details'), and class of the earlier of the two; a class being
    `_window_class` over the ascending, distinct `windows`. `sql._tally` applies the host's rules to them.
    """
    where, host_params = host_filter(hosts, 'p."host"')
    index, parts = part
    part_params: tuple[int, ...] = ()
    if parts > 1:  # the accounts of one part, for counting the parts at once on several connections
        where += " AND " + dialect.partition.format(c='p."user"')
        part_params = (parts, index)
    host_key = _keys(dialect.host_key, 'p."host"', "h")
    user_key = _keys(dialect.user_key, 'p."user"', "u")
    keys = [alias for _, alias in host_key + user_key]
    host_columns = keys[: len(host_key)]
    aa, l2, ll = (f"'{store}'" for store in STORES)
    stores = (*STORES, ACCOUNTS)  # all their rows; of account_details, `registered` only

    # Each row's JSON is parsed once, in a fenced sub-query; `odd` marks rows only the stream can read. Of the
    # account stores only `created`, `disabled` and `registered` are looked at.
    parsed_rows = f"""
        SELECT {", ".join(f"{expr} AS {alias}" for expr, alias in host_key + user_key)}, p."store", p."key",
          CASE WHEN p."key" = '' OR {dialect.unkeyed.format(c='p."user"')} THEN 1 ELSE 0 END AS odd,
          CASE WHEN p."store" = {l2} AND p."key" IN ('login', 'logout', 'registered') AND p."type" = 'json'
            THEN {dialect.member.format(v='p."value"')} END AS jm,
          CASE WHEN ((p."store" IN ({aa}, {ll}) AND p."key" = 'timestamp') OR (p."store" = '{ACCOUNTS}' AND p."key" =
            'created') OR p."store" = '{ACCOUNT_DETAILS}') AND p."type" = 'number'
            THEN {dialect.whole.format(v='p."value"')} END AS jw,
          CASE WHEN p."store" = {ll} AND p."key" = 'event' THEN CASE WHEN p."type" = 'string' THEN {_EVENT} ELSE 0
            END END AS ev,
          CASE WHEN p."store" = '{ACCOUNTS}' AND p."key" = 'disabled' THEN CASE p."type"
            WHEN 'boolean' THEN CASE WHEN p."value" = 'true' THEN 1 ELSE 0 END WHEN 'string' THEN 1 ELSE 2 END
            ELSE 0 END AS dis
        FROM "prosody" p
        WHERE (p."store" IN {_in_list(len(stores))} OR (p."store" = '{ACCOUNT_DETAILS}' AND p."key" = 'registered'))
          {where}{dialect.fence}
    """
    number_m, number_w = dialect.number.format(x="q.jm"), dialect.number.format(x="q.jw")
    # Prosody 0.12 writes neither `created` nor `disabled`: its account records only say an account exists.
    # (Still a number when not read: a bare NULL would be text to PostgreSQL.)
    read = "1 = 1" if accounts else "1 = 0"
    created = f"""MAX(CASE WHEN {read} AND q."store" = '{ACCOUNTS}' AND q."key" = 'created'
            THEN COALESCE({number_w}, {SUSPECT}) END)"""
    disabled = "MAX(q.dis)" if accounts else "0"

    def latest(store: str, condition: str, number: str) -> str:
        """Per account: the latest time of `store`'s rows meeting `condition`, SUSPECT where a row should hold a
        time and does not, or is odd."""
        return (
            f'MAX(CASE WHEN q."store" = {store} THEN CASE WHEN q.odd = 1 THEN {SUSPECT} '
            f"WHEN {condition} THEN COALESCE({number}, {SUSPECT}) END END)"
        )

    # Per account, every store at once; lastlog events coded 1 login, 2 logout, 3 registered, 4 any other, 0 (an
    # event that is no string) suspect.
    present = ", ".join(
        f'MAX(CASE WHEN q."store" = {s} THEN 1 ELSE 0 END) AS p{i}' for i, s in enumerate((aa, l2, ll), 1)
    )
    timestamp, event = """q."key" = 'timestamp'""", """q."key" IN ('login', 'logout')"""
    per_user = f"""
        SELECT {", ".join(f"q.{k}" for k in keys)}, {present},
          {latest(aa, timestamp, number_w)} AS a1,
          {latest(l2, event, number_m)} AS a2,
          MAX(CASE WHEN q."store" = {l2} AND q."key" = 'registered' THEN COALESCE({number_m}, {SUSPECT}) END) AS r2,
          {latest(ll, timestamp, number_w)} AS a3,
          MIN(q.ev) AS ev_lo, MAX(q.ev) AS ev_hi,
          MAX(CASE WHEN q."store" = '{ACCOUNTS}' THEN 1 ELSE 0 END) AS acc, {disabled} AS dis,
          {created} AS cr,
          MAX(CASE WHEN q."store" = '{ACCOUNT_DETAILS}' THEN COALESCE({number_w}, {SUSPECT}) END) AS dr
        FROM ({parsed_rows}) q
        GROUP BY {", ".join(f"q.{k}" for k in keys)}{dialect.unordered}
    """
    # Each account once per store it has data in. A lastlog record is one event, named in `event`, at its
    # `timestamp`: two different events are suspect, and only a login or logout is activity.
    codes = " UNION ALL ".join(f"SELECT {i} AS sc" for i in range(1, len(STORES) + 1))
    activity = "CASE s.sc WHEN 1 THEN u.a1 WHEN 2 THEN u.a2 ELSE u.a3 END"
    has_data = "CASE s.sc WHEN 1 THEN u.p1 WHEN 2 THEN u.p2 ELSE u.p3 END"
    own_registration = "CASE s.sc WHEN 2 THEN u.r2 WHEN 3 THEN CASE WHEN u.ev_hi = 3 THEN u.a3 END END"
    per_store = f"""
        SELECT {", ".join(f"u.{k}" for k in host_columns)}, s.sc,
          CASE WHEN u.cr >= {SUSPECT} OR u.dr >= {SUSPECT} OR u.dis = 2 OR ({has_data} = 1 AND ({activity} >= {SUSPECT}
            OR (s.sc = 2 AND u.r2 >= {SUSPECT}) OR (s.sc = 3 AND (u.ev_lo <> u.ev_hi OR u.ev_lo = 0))))
            THEN 1 ELSE 0 END AS suspect,
          u.acc, u.dis, {has_data} AS rec,
          CASE WHEN s.sc <> 3 OR u.ev_hi IS NULL OR u.ev_hi IN (1, 2) THEN {activity} END AS last,
          COALESCE(u.cr, {own_registration}, u.dr) AS registered
        FROM ({per_user}) u JOIN ({codes}) s
          ON u.acc = 1 OR (s.sc = 1 AND u.p1 = 1) OR (s.sc = 2 AND u.p2 = 1) OR (s.sc = 3 AND u.p3 = 1)
    """
    earlier = "(CASE WHEN v.last IS NULL THEN NULL WHEN v.last < v.registered THEN v.last ELSE v.registered END)"
    sql = f"""
        SELECT {", ".join(f"v.{k}" for k in host_columns)}, v.sc, v.suspect, v.acc, v.dis, v.rec,
          {_window_class("v.last", windows)}, CASE WHEN v.last > ? THEN 1 ELSE 0 END,
          {_window_class("v.registered", windows)}, {_window_class(earlier, windows)}, COUNT(*)
        FROM ({per_store}) v
        GROUP BY {", ".join(str(i) for i in range(1, len(host_key) + 10))}
    """
    window_params = tuple(p for w in windows for p in (now, w))
    # Placeholders in text order: the outer select list comes before the sub-queries.
    return sql, (
        *window_params,
        now,
        *window_params,
        *window_params,
        *dialect.patterns,
        *stores,
        *host_params,
        *part_params,
    )


# The stores whose rows a change of what is counted writes: the activity stores and the account stores.
CHANGE_STORES = (*STORES, ACCOUNTS, ACCOUNT_DETAILS)


def snapshot_mark() -> str:
    """PostgreSQL: the oldest transaction the current snapshot cannot see; every row written since has an xmin at
    or after it."""
    return "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


def changed_since_xmin(hosts: Sequence[str], mark: int) -> tuple[str, tuple[object, ...]]:
    """PostgreSQL: the accounts with a row of CHANGE_STORES written since `mark` (an earlier snapshot_mark): those
    whose xmin is at most as old as `mark` is, by age() (transactions before the current one). xmin is a 32-bit
    counter kept even in frozen rows, and age() counts modulo 2^32 as a signed number: a row more than 2^31
    transactions old has a negative age, and is left out with the rest. age() of a row costs a third of taking
    its xmin as a number."""
    where, params = host_filter(hosts, 'p."host"')
    sql = (
        'SELECT DISTINCT p."host", p."user", p."store" FROM "prosody" p '
        f'WHERE p."store" IN {_in_list(len(CHANGE_STORES))}{where} '
        "AND age(p.xmin) BETWEEN 0 AND age(mod(?, 4294967296)::text::xid)"
    )
    return sql, (*CHANGE_STORES, *params, mark)


def changed_since_time(hosts: Sequence[str], prefixes: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """MariaDB, SQLite (no row version a SELECT sees): the rows of CHANGE_STORES whose value holds one of
    `prefixes` (time_prefixes), as Prosody writes os.time() into every such row it changes; with their values, for
    the exact time to be checked by the caller (a prefix is cheaper to scan for than a span)."""
    where, params = host_filter(hosts)
    anywhere = " OR ".join('INSTR("value", ?) > 0' for _ in prefixes)
    sql = (
        f'SELECT "host", "user", "store", "value" FROM "prosody" WHERE "store" IN {_in_list(len(CHANGE_STORES))}'
        f"{where} AND ({anywhere})"
    )
    return sql, (*CHANGE_STORES, *params, *prefixes)


def time_prefixes(start: int, end: int, most: int = 8) -> list[str]:
    """The fewest leading digits that every whole second from `start` to `end` begins with, as at most `most`
    prefixes (the longest that do): a value holding a time in the span holds one of them."""
    for length in range(len(str(end)), 0, -1):
        prefixes = sorted({str(t)[:length] for t in range(start, end + 1, 10 ** max(0, len(str(end)) - length))})
        prefixes = sorted({str(start)[:length], str(end)[:length], *prefixes})
        if len(prefixes) <= most:
            return prefixes
    return [""]

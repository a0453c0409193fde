"""The hostile-input corpus (fixtures/hostile/manifest.json): each file and row, added alone to the real sample, is
reported by name with its kind, quickly, runs nothing outside the sandbox, and leaves every other count as it was."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from prosody_lastlog.cli import main
from prosody_lastlog.core.counting import HostCounts, zero_counts
from prosody_lastlog.core.model import PROBLEM_KINDS, CountingChoice, ReadProblem, Store
from prosody_lastlog.core.rules import InstalledProsody, Policy
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.prosody.pathnames import decode_name
from prosody_lastlog.prosody.sql_settings import SqlSettings, parse_sql_url
from prosody_lastlog.sources.files import FileStoreReader
from prosody_lastlog.sources.kinds import FileSource
from prosody_lastlog.sources.sql import SqlReader
from tests import prosody_table
from tests.conftest import CASES, FIXTURES, as_nobody, case_data
from tests.prosody_table import Row
from tests.sql_servers import fresh_mysql_database, fresh_postgres_database

Case = dict[str, Any]
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "hostile" / "manifest.json").read_text())
CORPUS = FIXTURES / "hostile" / "data"
NOW: int = MANIFEST["now"]
FILE_CASES: list[Case] = MANIFEST["files"]
SQL_CASES: list[Case] = MANIFEST["sql"]
ENGINES = {"SQLite3": "sqlite_db", "PostgreSQL": "postgres_db", "MySQL": "mysql_db"}  # their fixtures
SECONDS = 2.0  # wall time a read of the sample plus one hostile file may take; the sandbox stops a chunk at 0.25 s CPU
SQL_SECONDS = 5.0  # the same for a count on a database server, both methods
# How a case is read: as the sample (Prosody 0.12's data), or, for one with `read_as`, as Prosody 13's (whose account
# files are read) with every account counting, so that the counts stay the sample's.
POLICIES = {None: Policy(), "Prosody 13": Policy(InstalledProsody("13.0.1"), count_disabled=True)}


def test_the_manifest_uses_the_documented_words() -> None:
    assert set(MANIFEST["kinds"]) == set(PROBLEM_KINDS)
    for case in FILE_CASES + SQL_CASES:
        assert case["kind"] in (*PROBLEM_KINDS, None), case["name"]
        assert case["counts_as"] in MANIFEST["counts_as"], case["name"]
        assert case.get("made_at_run_time", "file") in MANIFEST["made_at_run_time"], case["name"]
        assert case.get("read_as") in POLICIES, case["name"]
    assert len({case["name"] for case in FILE_CASES}) == len(FILE_CASES)
    assert len({case["name"] for case in SQL_CASES}) == len(SQL_CASES)
    stored = {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*") if p.is_file()}
    assert stored == {case["path"] for case in FILE_CASES if "made_at_run_time" not in case}


# --------------------------------------------------------------------------- files


def make(tree: Path, case: Case, outside: Path) -> None:
    """Puts one case's file into a data tree; `outside` is a directory beside the tree, for link targets."""
    path = os.fsencode(tree) + b"/" + os.fsencode(case["path"])  # the path may hold bytes that are not UTF-8
    os.makedirs(os.path.dirname(path), exist_ok=True)
    made = case.get("made_at_run_time")
    if made is None:
        shutil.copyfile(CORPUS / case["path"], path)
    elif made in ("file", "unreadable"):
        Path(os.fsdecode(path)).write_text(case["content"])
        if made == "unreadable":
            os.chmod(path, 0)
    elif made == "symlink_outside":
        target = outside / "recent.dat"
        target.write_text(case["content"])
        os.symlink(target, path)
    elif made == "symlink_inside":
        os.symlink(case["target"], path)
    elif made == "symlink_dangling":
        os.symlink("no-such-user.dat", path)
    elif made == "fifo":
        os.mkfifo(path)
    else:
        assert made == "directory"
        os.mkdir(path)


def expectation(tree: Path, case: Case) -> tuple[str | None, str]:
    """The kind (None: no problem) and effect on counts a case must have here; root reads an unreadable file."""
    if case.get("made_at_run_time") == "unreadable":
        try:
            (tree / case["path"]).read_bytes()
        except PermissionError:
            pass
        else:  # root, or CAP_DAC_OVERRIDE: the mode does not stop it
            return case["as_root"]["kind"], case["as_root"]["counts_as"]
    return case["kind"], case["counts_as"]


def printable(path: str) -> str:
    """A path as problems name it: bytes that are not UTF-8 escaped."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def counted(
    clean: dict[str, HostCounts], host: str | None, store: str, counts_as: str, *, account_file: bool = False
) -> dict[str, HostCounts]:
    """The clean counts with one more account on `host` of `store` as `counts_as` says (see the manifest); with
    `account_file` (a file in the host's accounts store, whatever it holds) one more registered account, as Prosody's
    usermanager lists it."""
    expected = dict(clean)
    if account_file and host in expected:
        expected[host] = replace(expected[host], registered_accounts=(expected[host].registered_accounts or 0) + 1)
    if counts_as != "nothing":
        assert host is not None
        base = expected.get(host) or zero_counts(CountingChoice(Store(store)), DEFAULT_WINDOWS)
        more = 1 if counts_as == "active" else 0
        expected[host] = replace(
            base,
            activity_records=base.activity_records + 1,
            never_active=base.never_active + (counts_as == "never"),
            active={window: n + more for window, n in base.active.items()},
            returning={window: n + more for window, n in base.returning.items()},  # (no registration time)
            inactive={age: n + (counts_as == "inactive") for age, n in base.inactive.items()},
        )
    return dict(sorted(expected.items()))


def host_of(case: Case) -> str | None:
    return decode_name(case["path"].split("/", maxsplit=1)[0])


def is_account_file(case: Case) -> bool:
    path: str = case["path"]
    return path.split("/")[1:2] == ["accounts"]


@pytest.fixture(scope="module")
def clean() -> dict[str | None, dict[str, HostCounts]]:
    """The sample's counts, which are those Prosody's own mod_measure_active_users reported, read each way."""
    oracle = json.loads((CASES / "sample" / "expected.json").read_text())["active_users"]
    counts = {}
    for read_as, policy in POLICIES.items():
        source = FileSource(case_data("sample"), policy=policy, workers=1)
        counts[read_as] = source.count(now=NOW, windows=DEFAULT_WINDOWS).counts
        assert {host: dict(c.active) for host, c in counts[read_as].items()} == oracle
    return counts


@pytest.fixture
def no_escape() -> Iterator[None]:
    """The files that os.execute, io.open and load would create must not exist, before or after."""
    canaries = [Path(case["canary"]) for case in FILE_CASES if "canary" in case]
    assert not [c for c in canaries if c.exists()], "a canary exists already: remove it, and find out who made it"
    yield
    assert not [c for c in canaries if c.exists()], "a hostile file ran code outside the sandbox"


@pytest.mark.usefixtures("no_escape")
@pytest.mark.parametrize("case", FILE_CASES, ids=lambda case: case["name"])
def test_each_file_is_reported_and_the_rest_counts(
    case: Case, clean: dict[str | None, dict[str, HostCounts]], tmp_path: Path
) -> None:
    tree = tmp_path / "data"
    shutil.copytree(case_data("sample"), tree)
    make(tree, case, tmp_path)
    kind, counts_as = expectation(tree, case)
    started = time.monotonic()
    result = FileSource(tree, policy=POLICIES[case.get("read_as")], workers=1).count(now=NOW, windows=DEFAULT_WINDOWS)
    assert time.monotonic() - started < SECONDS
    assert [(p.where, p.kind) for p in result.problems] == ([] if kind is None else [(printable(case["path"]), kind)])
    if kind is not None and kind == case["kind"]:
        assert case["reason"] in result.problems[0].reason
        assert "\n" not in result.problems[0].reason
    assert result.counts == counted(
        clean[case.get("read_as")], host_of(case), "lastlog2", counts_as, account_file=is_account_file(case)
    )


def test_an_unreadable_file_is_reported_to_a_reader_without_privileges() -> None:
    """Root reads a file of mode 000 (see the manifest's `as_root`); any other user gets `unreadable`."""
    [case] = [case for case in FILE_CASES if case.get("made_at_run_time") == "unreadable"]
    top = Path(tempfile.mkdtemp())
    try:
        top.chmod(0o755)  # another user may reach the tree
        tree = top / "data"
        shutil.copytree(case_data("sample"), tree)
        make(tree, case, top)
        problems = read_as_nobody(tree) if os.geteuid() == 0 else FileStoreReader(tree).read().problems
    finally:
        shutil.rmtree(top)
    assert [(p.where, p.kind, p.reason) for p in problems] == [(case["path"], "unreadable", case["reason"])]


def read_as_nobody(tree: Path) -> list[ReadProblem]:
    """The problems the file reader meets in `tree` when run, in a child process, as the user `nobody`."""

    def read() -> bytes:
        found = FileStoreReader(tree, workers=1).read().problems
        return json.dumps([[p.where, p.kind, p.reason] for p in found]).encode()

    return [ReadProblem(*problem) for problem in json.loads(as_nobody(read))]


@pytest.fixture
def corpus_tree(tmp_path: Path) -> Path:
    """The sample with every file case at once."""
    tree = tmp_path / "data"
    shutil.copytree(case_data("sample"), tree)
    for case in FILE_CASES:
        make(tree, case, tmp_path)
    return tree


@pytest.mark.usefixtures("no_escape")
def test_count_on_the_whole_corpus_exits_0_and_names_kinds_not_users(
    corpus_tree: Path, clean: dict[str | None, dict[str, HostCounts]], capsys: pytest.CaptureFixture[str]
) -> None:
    problems, counts = [], clean[None]
    for case in FILE_CASES:
        kind, counts_as = expectation(corpus_tree, case)
        if kind is not None and "read_as" not in case:  # read as Prosody 0.12's data, account files are not
            problems.append((printable(case["path"]), kind))
        counts = counted(counts, host_of(case), "lastlog2", counts_as, account_file=is_account_file(case))
    result = FileSource(corpus_tree).count(now=NOW, windows=DEFAULT_WINDOWS)
    assert sorted((p.where, p.kind) for p in result.problems) == sorted(problems)
    assert result.counts == counts
    assert main(["count", "--data-dir", str(corpus_tree), "--now", str(NOW)]) == 0
    out, err = capsys.readouterr()
    assert_names_kinds_not_users(out, err, Counter(kind for _, kind in problems), user_names(corpus_tree))


def user_names(tree: Path) -> set[str]:
    """Every user name in a tree, as a file name and decoded."""
    names = set()
    for path in tree.glob("*/*/*"):
        names.add(printable(path.name))
        user = decode_name(path.name.removesuffix(".dat"))
        if user is not None and user not in PROBLEM_KINDS:  # "empty" is also a kind
            names.add(user)
    return names


def assert_names_kinds_not_users(out: str, err: str, kinds: Counter[str], users: set[str]) -> None:
    """stderr sums the problems up by kind, and no output names a user (as a word: `eve` is in `never`)."""
    summary = ", ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items()))
    assert f"{kinds.total()} problem(s) reading data ({summary}); -v lists them" in err
    assert not [name for name in users if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", out + err)]


# --------------------------------------------------------------------------- SQL


def column(value: Any) -> tuple[str, Any]:
    """A manifest column as (SQL placeholder form, parameter); `?` stands for the driver's placeholder."""
    if isinstance(value, dict) and "hex" in value:
        return "CAST(? AS TEXT)", bytes.fromhex(value["hex"])  # SQLite keeps the bytes as they are
    if isinstance(value, dict) and "blob" in value:
        return "?", bytes.fromhex(value["blob"])
    if isinstance(value, dict):
        return "?", "".join(part if isinstance(part, str) else part[0] * part[1] for part in value["concat"])
    return "?", value


def fill(connection: Any, driver: str, rows: list[Row], extra: list[list[Any]]) -> None:
    """The table holds `rows`, then the manifest rows `extra`."""
    prosody_table.replace_rows(connection, driver, rows)
    table = "`prosody`" if driver == "MySQL" else '"prosody"'
    cursor = connection.cursor()
    for row in extra:
        forms, params = zip(*(column(value) for value in row), strict=True)
        marks = ", ".join(forms).replace("?", "?" if driver == "SQLite3" else "%s")
        cursor.execute(f"INSERT INTO {table} VALUES ({marks})", params)
    connection.commit()


def create_lax(connection: Any, driver: str) -> None:
    """Prosody's table, but without NOT NULL: a hand-made table may hold NULLs."""
    cursor = connection.cursor()
    for statement in prosody_table.DDL[driver]:
        cursor.execute(statement.replace(" NOT NULL", ""))
    connection.commit()


@dataclass(frozen=True)
class Database:
    """A throwaway database holding a lax `prosody` table."""

    url: str
    connection: Any

    @property
    def settings(self) -> SqlSettings:
        return parse_sql_url(self.url)


@pytest.fixture(scope="module")
def sample_rows() -> list[Row]:
    with sqlite3.connect(CASES / "sample-sqlite" / "prosody.sqlite") as connection:
        return connection.execute('SELECT * FROM "prosody"').fetchall()


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    path = tmp_path_factory.mktemp("hostile") / "prosody.sqlite"
    connection = sqlite3.connect(path, check_same_thread=False)
    create_lax(connection, "SQLite3")
    yield Database(f"sqlite://{path}", connection)
    connection.close()


@pytest.fixture(scope="module")
def postgres_db() -> Iterator[Database]:
    with fresh_postgres_database() as server:
        connection = psycopg.connect(
            host=server.host, port=server.port, dbname=server.database, user=server.username, password=server.password
        )
        create_lax(connection, "PostgreSQL")
        yield Database(server.url(), connection)
        connection.close()


@pytest.fixture(scope="module")
def mysql_db() -> Iterator[Database]:
    with fresh_mysql_database() as server:
        connection = pymysql.connect(
            host=server.host, port=server.port, user=server.username, password=server.password,
            database=server.database, charset="utf8mb4",
        )  # fmt: skip
        create_lax(connection, "MySQL")
        yield Database(server.url(), connection)
        connection.close()


Problems = list[tuple[str, str, str]]


def numbers(counts: dict[str, HostCounts]) -> dict[str, HostCounts]:
    """The counts without how each host is counted (whose reasons name how the data was read)."""
    return {host: replace(host_counts, choice=None) for host, host_counts in counts.items()}


def count_both_ways(database: Database, engine: str, rows: list[Row], case: Case) -> list[tuple[Any, Problems]]:
    """The sample's rows and a case's, counted in the database and by streaming: (counts, problems) each."""
    fill(database.connection, engine, rows, case["rows"])
    outcomes = []
    for method in ("pushdown", "stream"):
        started = time.monotonic()
        # Rows of account_activity make the table Prosody 13's: every account counts, so the sample's counts stay.
        reader = SqlReader(database.settings, method=method, policy=Policy(count_disabled=True))
        result = reader.count(now=NOW, windows=DEFAULT_WINDOWS)
        assert time.monotonic() - started < SQL_SECONDS, method
        outcomes.append((numbers(result.counts), [(p.where, p.kind, p.reason) for p in result.problems]))
    return outcomes


@pytest.mark.parametrize("case", SQL_CASES, ids=lambda case: case["name"])
def test_each_row_is_reported_and_both_methods_count_the_same(
    case: Case, sample_rows: list[Row], clean: dict[str | None, dict[str, HostCounts]], request: pytest.FixtureRequest
) -> None:
    engines = case.get("engines", list(ENGINES))
    databases: list[Database] = [request.getfixturevalue(ENGINES[engine]) for engine in engines]
    with ThreadPoolExecutor(len(engines)) as pool:  # the engines are independent: counted at once
        outcomes = list(
            pool.map(count_both_ways, databases, engines, [sample_rows] * len(engines), [case] * len(engines))
        )
    host, _, store = case["rows"][0][:3]
    expected = numbers(counted(clean[None], host, store, case["counts_as"]))
    for engine, database, outcome in zip(engines, databases, outcomes, strict=True):
        [(pushdown_counts, pushdown), (stream_counts, stream)] = outcome
        assert pushdown_counts == stream_counts == expected, engine
        assert set(pushdown) <= set(stream), engine  # a host with a row the engine cannot check is streamed
        if case["kind"] is None:
            assert stream == [], engine
        else:
            [(where, kind, reason)] = stream
            assert (where, kind) == (f"{database.settings.describe()} {case['where']}", case["kind"]), engine
            assert case["reason"] in reason and "\n" not in reason, engine


@pytest.mark.parametrize("engine", ENGINES)
def test_count_on_every_row_at_once_exits_0_and_names_kinds_not_users(
    engine: str, sample_rows: list[Row], request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    database: Database = request.getfixturevalue(ENGINES[engine])
    cases = [case for case in SQL_CASES if engine in case.get("engines", ENGINES)]
    rows = [row for case in cases for row in case["rows"]]
    fill(database.connection, engine, sample_rows, rows)
    assert main(["count", "--sql", database.url, "--now", str(NOW)]) == 0
    out, err = capsys.readouterr()
    users = set()
    for row in [*sample_rows, *rows]:
        user = column(row[1])[1]  # as problems name it: bytes that are not UTF-8 escaped
        if user is not None:
            users.add(user.decode(errors="backslashreplace") if isinstance(user, bytes) else user)
    assert_names_kinds_not_users(out, err, Counter(case["kind"] for case in cases if case["kind"]), users)

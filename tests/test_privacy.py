"""Privacy and exposure (issue 8): at the default log level no user name, IP address or password leaves the tool,
and the HTTP server answers only /metrics, /healthz and its landing page (and NodeInfo for the hosts opted in,
aggregates only), on 127.0.0.1 unless told otherwise.

The secrets are every user name and IP address in fixtures/cases (file stores evaluated in the project's Lua
sandbox, the SQLite fixtures read with sqlite3), a few hostile SQL rows added here, and canary passwords. A user
name or IP address is found only as a whole token (case-sensitive; no letter, digit or `_` next to a name, no
hex digit, `.` or `:` next to an address), so `eve` is not found in `never` nor `admin` in `admin_socket`. The
user names that are words the tool prints itself (TOOL_WORDS) are looked for as their file names (`empty.dat`).
Passwords are found anywhere, as plain substrings.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from psycopg import sql

from exporters import DEFAULT_PORT
from exporters.nodeinfo import PATHS as NODEINFO_PATHS
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.prosody.pathnames import decode_name, encode_name
from prosody_lastlog.prosody.sandbox import LuaSandbox, PlainValue
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from tests import prosody_table
from tests.conftest import CASES, FIXTURES, case_data
from tests.http_recorder import Recorder, Request, recording_server
from tests.integration.servers import free_port
from tests.sql_servers import SqlServer, fresh_mysql_database, fresh_postgres_database
from tests.test_http_security import self_signed

NOW = 1763900000  # the fixtures' `now`
CLI = [sys.executable, "-m", "prosody_lastlog"]
FORMATS = ("table", "json", "prom", "influx", "graphite")
# Their hosts do not overlap, so one data_path holds them all; hostile is sample plus bad files.
FILE_CASES = ("hostile", "account_activity", "boundaries", "lastlog_legacy", "large")

SQL_PASSWORD = "sqlCanary-q7Zp4vX2"
WRONG_SQL_PASSWORD = "wrongCanary-K3m9Tr8w"
INFLUX_PASSWORD = "influxCanary-V5n2Lq8j"
PUSH_PASSWORD = "pushCanary-B8x4Hs1d"
SCRAPE_PASSWORD = "scrapeCanary-J2r7Wc5y"
PASSWORDS = (SQL_PASSWORD, WRONG_SQL_PASSWORD, INFLUX_PASSWORD, PUSH_PASSWORD, SCRAPE_PASSWORD)
ACCOUNT_SECRETS = ("salt", "stored_key", "server_key", "password")  # what Prosody keeps of a password

# User names of the fixtures that the tool prints as words of its own, so only their file names are secrets.
TOOL_WORDS = {
    "admin": "the --admin-socket option in usage messages",
    "empty": "a read-problem kind",
    "future": "the clock-skew warning (`in the future`)",
}

# Rows Prosody would never write: the counting streams them and reports them as problems, naming them only with -v.
HOSTILE_ROWS: list[prosody_table.Row] = [
    ("example.com", "sqlrow_mallet", "lastlog2", "login", "json", '{"timestamp":"1763892800","ip":"203.0.113.201"}'),
    ("example.com", "sqlrow_trudy", "lastlog2", "login", "json", '{"timestamp":1763892800,"ip":"203.0.113.202"'),
    ("example.com", "sqlrow_walter", "lastlog2", "logout", "string", "203.0.113.203"),
]

_IP_TEXT = re.compile(r'\[?"ip"\]?\s*[=:]\s*"([^"]+)"')  # in files the sandbox refuses to evaluate, and JSON
_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")


# --------------------------------------------------------------------------- the secrets


@dataclass(frozen=True)
class Secrets:
    """Everything that must never be printed, served or pushed, and a finder for it."""

    names: frozenset[str]  # decoded user names and `<encoded>.dat` file names
    ips: frozenset[str]
    passwords: tuple[str, ...]
    _patterns: list[tuple[str, re.Pattern[str]]] = field(default_factory=list, compare=False)

    def __post_init__(self) -> None:
        alternatives = {
            "user": (self.names, r"(?<!\w)(?:{})(?!\w)"),
            "ip": (self.ips, r"(?<![0-9A-Fa-f.:])(?:{})(?![0-9A-Fa-f:]|\.\d)"),
            "password": (frozenset(self.passwords), "(?:{})"),
        }
        for kind, (texts, template) in alternatives.items():
            joined = "|".join(re.escape(text) for text in sorted(texts, key=len, reverse=True))
            self._patterns.append((kind, re.compile(template.format(joined))))

    def find(self, text: str) -> list[str]:
        """Each secret found in `text`, as `kind 'secret' in '...context...'`."""
        found = []
        for kind, pattern in self._patterns:
            for match in pattern.finditer(text):
                context = text[max(0, match.start() - 40) : match.end() + 40]
                found.append(f"{kind} {match.group()!r} in {context!r}")
        return found

    def assert_clean(self, where: str, text: str) -> None:
        """Fails naming the first secrets found in `text`."""
        found = self.find(text)
        assert not found, f"{where} leaks {len(found)} secret(s):\n" + "\n".join(found[:10])


def _ips_in(value: PlainValue | None, into: set[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "ip" and isinstance(item, str):
                into.add(item)
            _ips_in(item, into)


def _sql_rows(path: Path) -> list[prosody_table.Row]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        return connection.execute('SELECT "host", "user", "store", "key", "type", "value" FROM "prosody"').fetchall()


def fixture_sql_rows() -> list[prosody_table.Row]:
    """Every row of the SQLite fixtures, then HOSTILE_ROWS."""
    rows = [row for path in sorted(CASES.glob("*-sqlite/prosody.sqlite")) for row in _sql_rows(path)]
    return rows + HOSTILE_ROWS


@cache
def secrets() -> Secrets:
    """The user names and IP addresses of every fixture, read as the tool reads them, the password hashes of the
    Prosody 13 fixtures' account records (salts and keys), and the canary passwords."""
    names: set[str] = set()
    ips: set[str] = set()
    hashes: set[str] = set()
    sandbox = LuaSandbox()
    for path in sorted(CASES.glob("*/data/*/*/*")):
        stem = path.name.split(".dat")[0]
        user = decode_name(stem) or stem
        names.add(encode_name(user) + ".dat")
        if user not in TOOL_WORDS:
            names.add(user)
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 1 << 20:
            text = path.read_bytes()
            value = sandbox.load(text, "fixture").value
            _ips_in(value, ips)
            ips.update(_IP_TEXT.findall(text.decode("utf-8", "replace")))
            if path.parent.name == "accounts" and isinstance(value, dict):
                hashes.update(str(value[key]) for key in ACCOUNT_SECRETS if key in value)
    for _, user, store, key, _, value in fixture_sql_rows():
        if user not in TOOL_WORDS:
            names.add(user)
        if key == "ip":
            ips.add(value)
        elif store == "accounts" and key in ACCOUNT_SECRETS:
            hashes.add(value)
        else:
            ips.update(_IP_TEXT.findall(value), _IPV4.findall(value))
    ips.discard("")
    names.discard("")  # Prosody 13's host-level rows (mod_cron's) have an empty user
    return Secrets(frozenset(names), frozenset(ips), (*PASSWORDS, *sorted(hashes)))


def test_the_secrets_are_found_and_the_tools_own_words_are_not() -> None:
    found = secrets()
    assert {"alice", "jürgen", "os_execute", "os%5fexecute.dat", "empty.dat", "sqlrow_trudy"} <= found.names
    assert {"192.0.2.1", "2001:db8::3", "203.0.113.202"} <= found.ips
    assert len(found.names) > 2000 and len(found.ips) > 1000
    assert len(found.passwords) > len(PASSWORDS) + 20  # the Prosody 13 fixtures' salts and keys
    for leak in ["user alice logged in", "j%c3%bcrgen.dat", "ip 2001:db8::3.", "x=sqlCanary-q7Zp4vX2&"]:
        assert found.find(leak), leak
    words = "never admin_socket 2001:db8::30 f2001:db8::3 192.0.2.1.5 empty: 1 in the future (clock skew?) eve_x"
    assert found.find(words) == []


# --------------------------------------------------------------------------- data and databases


@pytest.fixture(scope="module")
def merged_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data_path holding the hosts of every file fixture (their hosts do not overlap)."""
    target = tmp_path_factory.mktemp("privacy") / "data"
    target.mkdir()
    for case in FILE_CASES:
        for host in case_data(case).iterdir():
            assert not (target / host.name).exists(), f"{case}: {host.name} is in two cases"
            shutil.copytree(host, target / host.name, symlinks=True)
    return target


@pytest.fixture(scope="module")
def merged_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite database holding the rows of every SQLite fixture plus the hostile rows."""
    path = tmp_path_factory.mktemp("privacy-sqlite") / "prosody.sqlite"
    with closing(sqlite3.connect(path)) as connection:
        prosody_table.create(connection, "SQLite3")
        prosody_table.replace_rows(connection, "SQLite3", fixture_sql_rows())
    return path


@dataclass(frozen=True)
class Reader:
    """A throwaway database with the fixture rows, and a role that may read them, with password SQL_PASSWORD."""

    scheme: str
    port: int
    database: str
    role: str

    def url(self, password: str | None = SQL_PASSWORD, *, port: int | None = None) -> str:
        """The --sql URL, with `password` in it unless None."""
        userinfo = self.role + (f":{password}" if password is not None else "")
        return f"{self.scheme}://{userinfo}@127.0.0.1:{port or self.port}/{self.database}"


def _role_name() -> str:
    return f"pl_privacy_{uuid.uuid4().hex[:10]}"  # short enough for MySQL's 32-character user names


def _postgres_admin(server: SqlServer, database: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(
        host=server.host,
        port=server.port,
        user=server.username,
        password=server.password or None,
        dbname=database,
        autocommit=True,
    )


@pytest.fixture(scope="module")
def postgres_reader() -> Iterator[Reader]:
    """The shared PostgreSQL (trust auth: a wrong password is not refused there, see test_privacy_live.py)."""
    role, admin = _role_name(), None
    try:
        with fresh_postgres_database() as server:
            admin = server
            with _postgres_admin(server, server.database) as connection:
                prosody_table.create(connection, "PostgreSQL")
                prosody_table.replace_rows(connection, "PostgreSQL", fixture_sql_rows())
                role_id = sql.Identifier(role)
                connection.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role_id, SQL_PASSWORD))
                connection.execute(sql.SQL("GRANT SELECT ON prosody TO {}").format(role_id))
            yield Reader("postgresql", server.port, server.database, role)
    finally:
        if admin is not None:  # the database is gone, and with it the role's privileges
            with _postgres_admin(admin, "postgres") as connection:
                connection.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture(scope="module")
def mariadb_reader() -> Iterator[Reader]:
    """The shared MariaDB, which checks passwords."""
    role = _role_name()
    with fresh_mysql_database() as server:
        connection = pymysql.connect(
            host=server.host,
            port=server.port,
            user=server.username,
            password=server.password,
            database=server.database,
            autocommit=True,
            charset="utf8mb4",
        )
        try:
            prosody_table.create(connection, "MySQL")
            prosody_table.replace_rows(connection, "MySQL", fixture_sql_rows())
            with connection.cursor() as cursor:
                cursor.execute("CREATE USER %s@'127.0.0.1' IDENTIFIED BY %s", (role, SQL_PASSWORD))
                cursor.execute(f"GRANT SELECT ON `{server.database}`.`prosody` TO %s@'127.0.0.1'", (role,))
            yield Reader("mysql", server.port, server.database, role)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("DROP USER IF EXISTS %s@'127.0.0.1'", (role,))
            connection.close()


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --------------------------------------------------------------------------- count


@dataclass(frozen=True)
class Ran:
    """One finished command."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def _environment() -> dict[str, str]:
    # No libpq or Prosody settings of the caller: only what the command line says.
    return {key: value for key, value in os.environ.items() if not key.startswith(("PG", "PROSODY_"))}


def run_all(commands: Mapping[str, list[str]]) -> dict[str, Ran]:
    """Runs the CLI with each argument list, four at a time."""

    def run(args: list[str]) -> Ran:
        done = subprocess.run(
            [*CLI, *args], capture_output=True, text=True, timeout=60, check=False, env=_environment()
        )
        return Ran(args, done.returncode, done.stdout, done.stderr)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(commands, pool.map(run, commands.values()), strict=True))


def assert_runs(runs: Mapping[str, Ran], expected: Callable[[str], int]) -> None:
    """Each run exited as expected and printed no secret."""
    for label, ran in runs.items():
        assert ran.returncode == expected(label), f"{label}: {ran.argv}\n{ran.stderr}"
        secrets().assert_clean(f"{label}: stdout", ran.stdout)
        secrets().assert_clean(f"{label}: stderr", ran.stderr)


def every_format(label: str, args: list[str]) -> dict[str, list[str]]:
    """`count` with `args` in each output format."""
    return {f"{label} --format {fmt}": ["count", *args, "--now", str(NOW), "--format", fmt] for fmt in FORMATS}


def test_count_on_files_prints_no_user_or_address(merged_tree: Path, tmp_path: Path) -> None:
    textfile = tmp_path / "count.prom"
    commands = every_format("files", ["--data-dir", str(merged_tree)])
    commands["files --format prom"] += ["--output", str(textfile)]  # node_exporter's textfile, written atomically
    runs = run_all(commands)
    assert_runs(runs, lambda _: 0)
    assert "prosody_active_users{" in textfile.read_text()
    secrets().assert_clean("the --output textfile", textfile.read_text())
    # The only bad files of the merged tree: the hostile case's, and, as the Prosody 13 fixtures' stores make the whole
    # tree Prosody 13's, the hostile account file such a read opens too.
    thirteen_only = [
        case for case in hostile_manifest()["files"] if case.get("read_as") and "made_at_run_time" not in case
    ]
    bad_files = len(hostile_problems()) + len(thirteen_only)
    for ran in runs.values():  # reported by kind only
        assert f"WARNING: {bad_files} problem(s) reading data (" in ran.stderr and "; -v lists them" in ran.stderr
    assert json.loads(runs["files --format json"].stdout)["problems"] == bad_files


def test_inactive_prints_names_on_stdout_only_and_no_address_or_hash(merged_tree: Path, merged_sqlite: Path) -> None:
    """`inactive` is the one command that prints user names: on its stdout, in every format; its stderr stays clean,
    and nothing it prints holds an IP address, a password hash or a canary password."""
    commands = {
        f"{label} --format {fmt}": ["inactive", *source, "--now", str(NOW), "--older-than", "1d", "--format", fmt]
        for label, source in (
            ("files", ["--data-dir", str(merged_tree)]),
            ("sqlite", ["--sql", f"sqlite://{merged_sqlite}"]),
        )
        for fmt in ("names", "json", "prosodyctl")
    }
    found = secrets()
    without_names = Secrets(frozenset({"\0no user"}), found.ips, found.passwords)  # the addresses and hashes only
    for label, ran in run_all(commands).items():
        assert ran.returncode == 0, f"{label}: {ran.stderr}"
        found.assert_clean(f"{label}: stderr", ran.stderr)
        without_names.assert_clean(f"{label}: stdout", ran.stdout)
        assert any(kind == "user" for kind, _ in _kinds(found.find(ran.stdout))), label  # it does list accounts


def _kinds(found: list[str]) -> list[tuple[str, str]]:
    return [tuple(item.split(" ", 1)) for item in found]  # type: ignore[misc]


def hostile_manifest() -> dict[str, Any]:
    """The hostile corpus's list of cases."""
    manifest: dict[str, Any] = json.loads((FIXTURES / "hostile" / "manifest.json").read_text())
    return manifest


def hostile_problems() -> dict[str, str]:
    """The hostile case's bad files (`example%2ecom/lastlog2/os%5fexecute.dat`) and their kinds."""
    problems: dict[str, str] = json.loads((CASES / "hostile" / "expected.json").read_text())["problems"]
    return problems


def test_bad_files_are_named_with_verbose_only() -> None:
    problems = hostile_problems()
    assert problems
    args = ["count", "--data-dir", str(case_data("hostile")), "--now", str(NOW)]
    runs = run_all({"default": args, "-v": [*args, "-v"]})
    assert runs["default"].returncode == runs["-v"].returncode == 0
    for where in problems:  # e.g. example%2ecom/lastlog2/os%5fexecute.dat
        assert where in runs["-v"].stderr
        assert where.rsplit("/", 1)[1] not in runs["default"].stderr
    assert secrets().find(runs["-v"].stderr)  # documented: -v names files, and so users
    secrets().assert_clean("count at the default level", runs["default"].stderr + runs["default"].stdout)


def test_count_on_sqlite_prints_no_user_or_address(merged_sqlite: Path) -> None:
    runs = run_all(every_format("sqlite", ["--sql", f"sqlite://{merged_sqlite}"]))
    assert_runs(runs, lambda _: 0)
    for ran in runs.values():  # the hostile rows are reported, by kind only
        assert "problem(s) reading data" in ran.stderr and "-v lists them" in ran.stderr
    verbose = run_all({"-v": ["count", "--sql", f"sqlite://{merged_sqlite}", "--now", str(NOW), "-v"]})["-v"]
    assert "sqlrow_trudy" in verbose.stderr  # the rows are named with -v


def test_count_nodeinfo_prints_no_user_or_address(merged_tree: Path, merged_sqlite: Path) -> None:
    """The NodeInfo document of every host, from files and from SQLite: aggregates only."""
    commands = {}
    for label, where in [
        ("files", ["--data-dir", str(merged_tree)]),
        ("sqlite", ["--sql", f"sqlite://{merged_sqlite}"]),
    ]:
        listed = run_all({"json": ["count", *where, "--now", str(NOW), "--format", "json"]})["json"]
        for host in json.loads(listed.stdout)["hosts"]:
            commands[f"{label} {host}"] = ["count", *where, "--now", str(NOW), "--format", "nodeinfo", "--host", host]
    assert len(commands) > 10
    runs = run_all(commands)
    assert_runs(runs, lambda _: 0)
    assert all('"activeMonth"' in ran.stdout for ran in runs.values())


def test_served_nodeinfo_holds_no_user_or_address(merged_tree: Path) -> None:
    """Every host of every file fixture opted in: each NodeInfo document, as served, holds aggregates only."""
    plan = plan_sources(SourceOptions(data_dir=merged_tree), environ={})
    names = tuple(name for host in merged_tree.iterdir() if (name := decode_name(host.name)) is not None)
    options = ServeOptions(port=0, as_of=NOW, nodeinfo_hosts=names, node_names={names[0]: "A name"})
    daemon = Daemon(plan, windows=DEFAULT_WINDOWS, options=options)
    daemon.start()
    try:
        served = 0
        for name in names:
            for path in NODEINFO_PATHS:
                status, _, body = raw_request(daemon, "GET", path, {"Host": name.encode("idna").decode()})
                assert status in (200, 503), (name, path, body)  # 503: a host with no data counted
                secrets().assert_clean(f"{name}{path}", body.decode())
                served += status == 200
        assert served > 20
    finally:
        daemon.stop()


def sql_commands(reader: Reader, password_file: Path, *, bad_urls: bool) -> dict[str, list[str]]:
    """Every format with the password in the URL and from a file, connection errors, and (`bad_urls`) URLs or
    arguments refused before connecting."""
    password_file.write_text(SQL_PASSWORD + "\n")
    wrong_file = password_file.with_name("wrong-password")
    wrong_file.write_text(WRONG_SQL_PASSWORD + "\n")
    from_file = ["--sql", reader.url(None), "--sql-password-file", str(password_file)]
    now = ["--now", str(NOW)]
    commands = every_format("password in the URL", ["--sql", reader.url()])
    for fmt in ["table", "json"]:  # the format changes nothing about the connection
        commands[f"password file --format {fmt}"] = ["count", *from_file, *now, "--format", fmt]
    port = closed_port()
    commands |= {
        "error: closed port, URL": ["count", "--sql", reader.url(port=port), *now],
        "error: closed port, file": ["count", "--sql", reader.url(None, port=port), "--sql-password-file",
                                     str(password_file), *now],
        "error: wrong password, URL": ["count", "--sql", reader.url(WRONG_SQL_PASSWORD), *now],
        "error: wrong password, file": ["count", "--sql", reader.url(None), "--sql-password-file",
                                        str(wrong_file), *now],
    }  # fmt: skip
    if bad_urls:
        commands |= {
            "error: URL port not a number": ["count", "--sql", reader.url().replace(f":{reader.port}/", ":x/"), *now],
            "usage: two sources": ["count", "--sql", reader.url(), "--data-dir", str(password_file.parent), *now],
            "usage: bad format": ["count", "--sql", reader.url(), "--format", "xml"],
            "error: bad scheme": ["count", "--sql", "ftp" + reader.url().partition(":")[2]],
        }
    return commands


def expected_exit(label: str, *, wrong_password_refused: bool) -> int:
    """0 counted, 1 the source cannot be read, 2 bad arguments."""
    if label.startswith("usage"):
        return 2
    if label.startswith("error: wrong password"):
        return 1 if wrong_password_refused else 0
    return 1 if label.startswith("error") else 0


def test_count_on_postgres_prints_no_password(postgres_reader: Reader, tmp_path: Path) -> None:
    runs = run_all(sql_commands(postgres_reader, tmp_path / "password", bad_urls=True))
    assert_runs(runs, lambda label: expected_exit(label, wrong_password_refused=False))  # trust auth
    assert "cannot connect to PostgreSQL" in runs["error: closed port, URL"].stderr
    assert '"problems": 3' in runs["password file --format json"].stdout


def test_count_on_mariadb_prints_no_password(mariadb_reader: Reader, tmp_path: Path) -> None:
    runs = run_all(sql_commands(mariadb_reader, tmp_path / "password", bad_urls=False))
    assert_runs(runs, lambda label: expected_exit(label, wrong_password_refused=True))
    for label in ["error: wrong password, URL", "error: wrong password, file"]:
        assert "Access denied" in runs[label].stderr
    assert "cannot connect to MySQL" in runs["error: closed port, URL"].stderr
    assert '"problems": 3' in runs["password in the URL --format json"].stdout


# --------------------------------------------------------------------------- serve


class CarbonListener:
    """A loopback TCP server that keeps every byte sent to it (carbon's plaintext protocol is one-way)."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.05)
        self.port = int(self._socket.getsockname()[1])
        self._received = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="carbon-listener")

    @property
    def received(self) -> str:
        """Everything received so far."""
        with self._lock:
            return self._received.decode("utf-8", "replace")

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                try:
                    while chunk := connection.recv(65536):
                        with self._lock:
                            self._received += chunk
                except OSError:
                    pass

    @contextmanager
    def running(self) -> Iterator[CarbonListener]:
        """Accepts connections until the block ends; the thread is joined and the socket closed."""
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self._socket.close()


class Served:
    """A `serve` process whose stdout and stderr go to files, so the test reads them while it runs."""

    def __init__(self, args: Sequence[str], directory: Path) -> None:
        self.stdout_path, self.stderr_path = directory / "serve.out", directory / "serve.err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [*CLI, "serve", *args], stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=_environment()
            )

    @property
    def stdout(self) -> str:
        """What it printed so far."""
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        """What it logged so far."""
        return self.stderr_path.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool], what: str, seconds: float = 20) -> None:
        """Polls `condition` until it holds; fails with the process' output otherwise."""
        deadline = time.monotonic() + seconds
        while not condition():
            assert self.process.poll() is None, f"serve exited ({self.process.returncode}):\n{self.stderr}"
            assert time.monotonic() < deadline, f"{what}: not within {seconds} s; stderr:\n{self.stderr}"
            time.sleep(0.05)

    def wait_for_log(self, text: str, times: int = 1) -> None:
        """Waits until `text` has been logged `times` times."""
        self.wait_for(lambda: self.stderr.count(text) >= times, f"{text!r} logged {times} time(s)")

    def signal(self, number: signal.Signals) -> None:
        """Sends it a signal."""
        self.process.send_signal(number)

    def stop(self) -> int:
        """SIGTERM, and its exit status; killed if it does not stop within 20 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


@contextmanager
def serving(args: Sequence[str], directory: Path) -> Iterator[Served]:
    """Runs `serve` until the block ends, and then makes sure it is gone."""
    served = Served(args, directory)
    try:
        served.wait_for(lambda: "serving " in served.stdout, "serving")
        yield served
    finally:
        if served.process.poll() is None:
            served.process.kill()
        served.process.wait()


def http_get(
    url: str, headers: Mapping[str, str] | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, dict[str, str], str]:
    """Status, headers and body of a GET, also for error statuses."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            return int(reply.status), dict(reply.headers.items()), reply.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), dict(error.headers.items()), error.read().decode()


def exporter_tables(influx: Recorder, gateway: Recorder, carbon: CarbonListener, push_password: Path) -> str:
    """The [exporters.*] tables: every target on loopback, credentials where the protocol has them."""
    return f"""
[exporters.graphite]
host = "127.0.0.1"
port = {carbon.port}
interval = 1
timeout = 2

[exporters.influxdb]
url = "{influx.url}"
database = "prosody"
username = "writer"
password = "{INFLUX_PASSWORD}"
interval = 1
timeout = 2

[exporters.pushgateway]
url = "{gateway.url}"
username = "pusher"
password_file = {json.dumps(str(push_password))}
interval = 1
timeout = 2
"""


def _userinfo(url: str, userinfo: str) -> str:
    return url.replace("://", f"://{userinfo}@", 1)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def reload(served: Served, settings: Path, text: str, *, log: str, times: int) -> None:
    """Writes the settings file, sends SIGHUP, and waits until `log` has been logged `times` times."""
    settings.write_text(text)
    served.signal(signal.SIGHUP)
    served.wait_for_log(log, times)


def assert_pushes_clean(target: str, requests: list[Request], user: str, password: str) -> None:
    """The pushes carried the counts, and the credentials only in the Authorization header."""
    assert len(requests) >= 3, target
    assert any(b"prosody_active_users" in request.body for request in requests), target
    for request in requests:
        assert request.headers["Authorization"] == _basic(user, password)
        secrets().assert_clean(f"{target} body", request.body.decode())
        others = {**request.headers, "Authorization": "", "path": request.path, "query": request.query}
        secrets().assert_clean(f"{target} URL and headers", json.dumps(others, ensure_ascii=False))


def test_serve_prints_serves_and_pushes_no_user_address_or_password(
    merged_tree: Path, postgres_reader: Reader, tmp_path: Path
) -> None:
    port, textfile, settings = free_port(), tmp_path / "prosody.prom", tmp_path / "settings.toml"
    push_password, sql_password = tmp_path / "push-password", tmp_path / "sql-password"
    push_password.write_text(PUSH_PASSWORD + "\n")
    sql_password.write_text(SQL_PASSWORD + "\n")
    scraped: list[str] = []

    def scrape(health: int) -> str:
        """/healthz (returned), /metrics, / and the textfile, kept for the checks at the end."""
        status, _, body = http_get(f"http://127.0.0.1:{port}/healthz")
        assert status == health, body
        scraped.extend([body, *(http_get(f"http://127.0.0.1:{port}{path}")[2] for path in ["/metrics", "/"])])
        scraped.append(textfile.read_text())
        return body

    common = f'listen = "127.0.0.1:{port}"\ntextfile = {json.dumps(str(textfile))}\n'
    files = f"data_dir = {json.dumps(str(merged_tree))}\n{common}"
    with recording_server() as influx, recording_server(200) as gateway, CarbonListener().running() as carbon:
        influx.answers.append((500, b"temporarily unavailable\n", {}))  # so that "push failed" is logged
        gateway.answers.append((503, b"", {}))
        exporters = exporter_tables(influx, gateway, carbon, push_password)
        settings.write_text(files + exporters)
        with serving(["--config-file", str(settings), "--as-of", str(NOW)], tmp_path) as served:
            served.wait_for_log("influxdb: push works again")
            served.wait_for_log("pushgateway: push works again")
            served.wait_for(lambda: "active_users" in carbon.received and textfile.exists(), "graphite, textfile")
            scrape(200)
            in_urls = exporters.replace(influx.url, _userinfo(influx.url, f"writer:{INFLUX_PASSWORD}"))
            in_urls = in_urls.replace(gateway.url, _userinfo(gateway.url, f"pusher:{PUSH_PASSWORD}"))
            bad = [  # settings errors, an SQL URL that does not parse, exporter URLs with credentials
                f'sql = "{postgres_reader.url()}"\nwindows = ["1month"]\n{common}',
                f'sql = "{postgres_reader.url().replace(f":{postgres_reader.port}/", ":x/")}"\n{common}',
                files + in_urls,
            ]
            for number, text in enumerate(bad, start=1):
                reload(served, settings, text, log="reload refused", times=number)
            failing = f'sql = "{postgres_reader.url(port=closed_port())}"\n{common}{exporters}'
            reload(served, settings, failing, log="reloaded", times=1)
            assert "cannot connect to PostgreSQL" in scrape(503)
            from_file = f'sql = "{postgres_reader.url(None)}"\nsql_password_file = {json.dumps(str(sql_password))}\n'
            reload(served, settings, from_file + common + exporters, log="reloaded", times=2)
            scrape(200)
            assert served.stop() == 0
    for expected in ["push failed", "reload refused", "refresh failed", "problem(s) reading data"]:
        assert expected in served.stderr  # the error paths ran
    for where, text in [("stdout", served.stdout), ("stderr", served.stderr), ("textfile", textfile.read_text())]:
        secrets().assert_clean(f"serve {where}", text)
    for number, text in enumerate(scraped):
        secrets().assert_clean(f"scrape {number}", text)
    secrets().assert_clean("graphite", carbon.received)
    assert_pushes_clean("influxdb", influx.requests, "writer", INFLUX_PASSWORD)
    assert_pushes_clean("pushgateway", gateway.requests, "pusher", PUSH_PASSWORD)


# --------------------------------------------------------------------------- HTTP exposure


@pytest.fixture
def hostile_daemon() -> Iterator[Daemon]:
    """serve's HTTP server on the hostile data, in this process."""
    plan = plan_sources(SourceOptions(data_dir=case_data("hostile")), environ={})
    daemon = Daemon(plan, windows=DEFAULT_WINDOWS, options=ServeOptions(port=0, as_of=NOW))
    daemon.start()
    yield daemon
    daemon.stop()


Reply = tuple[int, dict[str, str], bytes]  # status, headers, body


def raw_request(daemon: Daemon, method: str, path: str, headers: Mapping[str, str] | None = None) -> Reply:
    """Sends `path` exactly as given."""
    host, port = daemon.server.url.split("//")[1].split("/")[0].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request(method, path, headers=dict(headers or {}))
        reply = connection.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        connection.close()


NOT_SERVED = [
    "/../etc/passwd", "/%2e%2e/etc/passwd", "/metrics/../", "/metrics/", "/METRICS", "/metrics.txt", "/healthz/x",
    "/static/", "/favicon.ico", "/index.html", "/.git/config", "/data/", "/example%2ecom/lastlog2/", "/robots.txt",
    "http://example.com/etc/passwd", *NODEINFO_PATHS,
]  # fmt: skip  # NodeInfo only for hosts opted in


def test_only_metrics_healthz_and_the_landing_page_are_served(hostile_daemon: Daemon) -> None:
    metrics = raw_request(hostile_daemon, "GET", "/metrics")
    assert metrics[0] == 200 and b"prosody_active_users" in metrics[2]
    for path in ["/metrics?x", "/metrics?name[]=prosody_active_users", "/healthz?x=1"]:
        assert raw_request(hostile_daemon, "GET", path)[0] == 200, path
    status, headers, body = raw_request(hostile_daemon, "GET", "/")  # the landing page (DESIGN.md, convention 10)
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert re.findall(r'href="([^"]*)"', body.decode()) == ["/metrics", "/healthz"]
    for path in NOT_SERVED:
        status, headers, body = raw_request(hostile_daemon, "GET", path)
        assert (status, body) == (404, b"not found: try /metrics\n"), path  # no listing, the path not echoed
    # The standard library turns a leading `//` into `/` (CPython gh-87389) before the handler sees it.
    status, _, body = raw_request(hostile_daemon, "GET", "//metrics")
    assert status == 404 or (status == 200 and b"prosody_active_users" in body)
    for method in ["HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"]:
        status, _, body = raw_request(hostile_daemon, method, "/metrics")
        assert status == 501, method  # BaseHTTPRequestHandler: "Unsupported method"
        assert b"prosody_" not in body and b"lastlog2" not in body


def test_unknown_paths_need_credentials_too(sample_tree: Path) -> None:
    options = ServeOptions(port=0, as_of=NOW, credentials={"prometheus": SCRAPE_PASSWORD})
    plan = plan_sources(SourceOptions(data_dir=sample_tree), environ={})
    daemon = Daemon(plan, windows=DEFAULT_WINDOWS, options=options)
    daemon.start()
    try:
        for path in ["/", "/metrics", "/healthz", "/nope", "/../etc/passwd"]:
            status, headers, body = raw_request(daemon, "GET", path)
            assert (status, headers["WWW-Authenticate"], body) == (401, 'Basic realm="prosody-lastlog"', b""), path
        good = {"Authorization": _basic("prometheus", SCRAPE_PASSWORD)}
        assert raw_request(daemon, "GET", "/nope", good)[0] == 404
    finally:
        daemon.stop()


def test_nodeinfo_is_public_for_the_hosts_opted_in_and_nothing_else_is(sample_tree: Path) -> None:
    """With basic auth on, the NodeInfo paths of an opted-in host answer without credentials (crawlers have none);
    every other path, and NodeInfo for any other host, still asks for them."""
    options = ServeOptions(
        port=0, as_of=NOW, credentials={"prometheus": SCRAPE_PASSWORD}, nodeinfo_hosts=("example.com",)
    )
    plan = plan_sources(SourceOptions(data_dir=sample_tree), environ={})
    daemon = Daemon(plan, windows=DEFAULT_WINDOWS, options=options)
    daemon.start()
    try:
        for path in NODEINFO_PATHS:
            assert raw_request(daemon, "GET", path, {"Host": "example.com"})[0] == 200, path
            assert raw_request(daemon, "GET", path, {"Host": "xmpp.example-org.net"})[0] == 404, path
            assert raw_request(daemon, "GET", path + "?x=1", {"Host": "example.com"})[0] == 200, path
        for path in ["/", "/metrics", "/healthz", "/nodeinfo/1.0", "/.well-known/nodeinfo/"]:
            assert raw_request(daemon, "GET", path, {"Host": "example.com"})[0] == 401, path
    finally:
        daemon.stop()


def test_the_server_header_names_the_tool(hostile_daemon: Daemon) -> None:
    server = raw_request(hostile_daemon, "GET", "/metrics")[1]["Server"]
    assert server.startswith("prosody-lastlog/")


def test_the_server_header_does_not_tell_the_python_version(hostile_daemon: Daemon) -> None:
    for method, path in [("GET", "/metrics"), ("GET", "/nope"), ("POST", "/metrics")]:
        server = raw_request(hostile_daemon, method, path)[1]["Server"]
        assert "Python" not in server and sys.version.split()[0] not in server, server


def listening_sockets(pid: int) -> list[tuple[str, str]]:
    """The (file, local address) of each listening TCP socket of a process, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with_target = os.readlink(fd) if fd.is_symlink() else ""
        if with_target.startswith("socket:["):
            inodes.add(with_target[len("socket:[") : -1])
    listening = []
    for table in ["tcp", "tcp6"]:
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # TCP_LISTEN
                listening.append((table, fields[1]))
    return listening


def test_serve_listens_on_loopback_only_by_default(tmp_path: Path) -> None:
    with serving(["--data-dir", str(case_data("sample")), "--as-of", str(NOW)], tmp_path) as served:
        assert f"serving http://127.0.0.1:{DEFAULT_PORT}/metrics" in served.stdout
        assert listening_sockets(served.process.pid) == [("tcp", f"0100007F:{DEFAULT_PORT:04X}")]
        assert http_get(f"http://127.0.0.1:{DEFAULT_PORT}/healthz")[::2] == (200, "ok\n")
        assert served.stop() == 0


def test_https_and_basic_auth_through_the_command_line(tmp_path: Path) -> None:
    """Adds to test_http_security.py: the CLI options, WWW-Authenticate, the TLS version, nothing in the logs."""
    cert, key = self_signed(tmp_path)
    users = tmp_path / "users"
    users.write_text(f"prometheus:{SCRAPE_PASSWORD}\n")
    port = free_port()
    args = ["--data-dir", str(case_data("hostile")), "--listen", f"127.0.0.1:{port}", "--as-of", str(NOW),
            "--tls-cert", str(cert), "--tls-key", str(key), "--basic-auth-file", str(users)]  # fmt: skip
    context = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{port}"
    with serving(args, tmp_path) as served:
        assert f"serving {url}/metrics" in served.stdout
        for auth in [None, _basic("prometheus", "wrong"), _basic("nobody", SCRAPE_PASSWORD), "Bearer x"]:
            status, headers, body = http_get(url + "/metrics", {"Authorization": auth} if auth else {}, context)
            assert (status, headers.get("WWW-Authenticate"), body) == (401, 'Basic realm="prosody-lastlog"', "")
        good = {"Authorization": _basic("prometheus", SCRAPE_PASSWORD)}
        status, _, body = http_get(url + "/metrics", good, context)
        assert status == 200 and "prosody_active_users" in body
        assert http_get(url + "/healthz", good, context)[::2] == (200, "ok\n")
        assert http_get(url + "/nope", good, context)[0] == 404
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
        connection.connect()
        assert isinstance(connection.sock, ssl.SSLSocket) and connection.sock.version() in ("TLSv1.2", "TLSv1.3")
        connection.close()
        with pytest.raises((OSError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert served.stop() == 0
    secrets().assert_clean("serve with TLS", served.stdout + served.stderr)

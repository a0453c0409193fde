"""Prosody 13 (Debian 13 "trixie" packages) beside this machine's Prosody 0.12: the tree tools/prosody13-tree.sh
builds, a live Prosody 13 run from it on loopback, and the fixture generator on Prosody 13 with file, PostgreSQL and
MariaDB storage. Never skipped: a missing tree fails, naming `make test`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import psycopg
import pymysql
import pytest

from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.sources.kinds import count_all
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from tests.conftest import CASES, FIXTURES, load_generator
from tests.integration.live_prosody import running_prosody
from tests.integration.xmpp_client import XmppClient, XmppError
from tests.prosody13_cases import VARIANTS, module_dir, write_config
from tests.sql_servers import SqlServer, fresh_mysql_database, fresh_postgres_database
from tests.test_lifecycle_reference import assert_counts_as_prosody_reads, assert_lists_as_list_inactive

sys.path.insert(0, str(FIXTURES))

from prosody_runtime import account_activity_variant, prosody_012, prosody_13

pytestmark = pytest.mark.integration

HOST = "thirteen.example"
PASSWORD = "correct horse"
SCENARIO = FIXTURES / "scenarios" / "prosody13.json"
COMMITTED = CASES / "prosody13"
# Accounts of the prosody13 scenario that end up disabled: created so, or disabled through `prosodyctl shell` (kate
# was enabled again).
DISABLED = {
    ("example.net", "frank"),
    ("example.net", "heidi"),
    ("example.net", "grace"),
    ("münchen.example", "zoë"),
    ("all.example", "xena"),
    ("plain.example", "rita"),
}
RANDOM_FIELDS = {"salt", "stored_key", "server_key"}  # an account's password hash differs between runs


def mounts() -> list[str]:
    """This mount namespace's mount table."""
    return Path("/proc/mounts").read_text().splitlines()


def fields(path: Path) -> dict[tuple[str, ...], str]:
    """The scalar fields of a data file Prosody wrote (`return { ... };`), by key path, as written."""
    found: dict[tuple[str, ...], str] = {}
    keys: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines()[1:-1]:
        if opened := re.fullmatch(r'\s*\["(.+)"\] = \{', line):
            keys.append(opened[1])
        elif re.fullmatch(r"\s*\};", line):
            keys.pop()
        elif scalar := re.fullmatch(r'\s*\["(.+)"\] = (.+);', line):
            found[(*keys, scalar[1])] = scalar[2]
        else:
            raise AssertionError(f"unexpected line in {path}: {line!r}")
    return found


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.02)


def test_the_tree_holds_prosody_13_with_trixies_modules() -> None:
    runtime = prosody_13()
    version = runtime.installed_version()
    assert re.fullmatch(r"13\.0\.\d+", version), version
    assert runtime.package_version("prosody").startswith(version + "-")
    assert runtime.package_version("prosody-modules").startswith("0.0~hg2025")  # trixie's; bookworm has hg2023
    assert prosody_012().installed_version().startswith("0.12.")  # this machine's own Prosody is untouched
    assert runtime.host_path("/etc/prosody/prosody.cfg.lua").is_file()
    # trixie's mod_measure_active_users reads lastlog2, and skips disabled accounts; the variant reads account_activity
    packaged = runtime.measure_active_users_source()
    assert 'module:open_store("lastlog2")' in packaged and "user_is_enabled" in packaged
    variant = account_activity_variant(packaged)
    assert '"lastlog2"' not in variant
    assert 'module:open_store("account_activity")' in variant and 'module:depends("account_activity")' in variant
    for changed in (packaged.replace('module:depends("lastlog2")', "nil"), packaged + 'module:open_store("lastlog2")'):
        with pytest.raises(ValueError, match="exactly once"):
            account_activity_variant(changed)
    # The venv in the tree runs with our runtime dependencies, for tests that run the tool inside the tree.
    check = ["/opt/prosody-lastlog/bin/python", "-c", "import lupa, prometheus_client, watchdog; print('ok')"]
    done = subprocess.run(runtime.command(check), capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


def test_a_live_prosody_13_on_loopback(tmp_path: Path) -> None:
    runtime = prosody_13()
    assert runtime.root is not None
    root = tmp_path / "prosody"
    started = int(time.time())
    with running_prosody(root, [HOST], runtime=runtime) as live:
        pid = live.process.pid
        # The process we started is Prosody itself, chrooted into the tree; its pidfile, at our path, says so.
        assert int(live.pidfile.read_text()) == pid
        assert os.readlink(f"/proc/{pid}/root") == str(runtime.root)
        assert live.shell(">return prosody.version") == f"Result: {runtime.installed_version()}"
        # Its bind mount exists in its own mount namespace only.
        assert any(f" {root} " in line for line in Path(f"/proc/{pid}/mounts").read_text().splitlines())
        assert not [line for line in mounts() if str(runtime.root) in line]

        live.create_user(f"alice@{HOST}", PASSWORD)  # through its admin socket, from outside
        with XmppClient(live.c2s_port, HOST) as client:
            assert client.login("alice", PASSWORD).startswith(f"alice@{HOST}/")
            assert live.c2s_sessions() == 1
        host_dir = live.data / "thirteen%2eexample"
        lastlog2 = host_dir / "lastlog2" / "alice.dat"
        wait_until(lambda: lastlog2.exists() and ("logout", "timestamp") in fields(lastlog2), 5, "logout recorded")
        activity = fields(host_dir / "account_activity" / "alice.dat")
        assert list(activity) == [("timestamp",)]
        stamps = [int(activity["timestamp",]), *(int(v) for k, v in fields(lastlog2).items() if k[-1] == "timestamp")]
        assert len(stamps) == 3 and all(started <= stamp <= time.time() + 1 for stamp in stamps), stamps
        account = fields(host_dir / "accounts" / "alice.dat")
        assert started <= int(account["created",]) <= time.time() + 1  # Prosody 13 records the creation time

        # Prosody 13's own prosodyctl, through the runtime, against the running server: the account is disabled.
        assert "User disabled" in live.prosodyctl("shell", "user", "disable", f"alice@{HOST}")
        assert fields(host_dir / "accounts" / "alice.dat")["disabled",] == "true"
        with XmppClient(live.c2s_port, HOST) as client, pytest.raises(XmppError, match="authentication failed"):
            client.login("alice", PASSWORD)
    assert live.process.returncode == 0  # SIGTERM by PID: a clean stop
    assert not live.admin_socket.exists() and not live.pidfile.exists()
    assert not [line for line in mounts() if str(runtime.root) in line or str(root) in line]


def no_database() -> AbstractContextManager[None]:
    return nullcontext()


STORAGES: dict[str, Callable[[], AbstractContextManager[SqlServer | None]]] = {
    "file": no_database,
    "postgresql": fresh_postgres_database,
    "mysql": fresh_mysql_database,
}


@pytest.fixture(params=list(STORAGES))
def database(request: pytest.FixtureRequest) -> Iterator[SqlServer | None]:
    with STORAGES[request.param]() as server:
        yield server


def sql_rows(server: SqlServer) -> list[tuple[Any, ...]]:
    """Every (host, user, store, key, type, value) row Prosody wrote, read with the database's own client."""
    if server.driver == "PostgreSQL":
        with psycopg.connect(
            host=server.host,
            port=server.port,
            user=server.username,
            password=server.password or None,
            dbname=server.database,
        ) as conn:
            return conn.execute('SELECT "host", "user", "store", "key", "type", "value" FROM "prosody"').fetchall()
    conn = pymysql.connect(
        host=server.host,
        port=server.port,
        user=server.username,
        password=server.password,
        database=server.database,
        charset="utf8mb4",
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT `host`, `user`, `store`, `key`, `type`, `value` FROM `prosody`")
            return list(cursor.fetchall())
    finally:
        conn.close()


def file_records(data: Path) -> dict[str, dict[tuple[str, ...], str]]:
    """Every data file of a case, by path, without the random password fields."""
    return {
        str(path.relative_to(data)): {k: v for k, v in fields(path).items() if k[-1] not in RANDOM_FIELDS}
        for path in sorted(data.rglob("*.dat"))
    }


def host_user(path: str) -> tuple[str, str]:
    """(host, user) of a data file path `<host>/<store>/<user>.dat`, names decoded as Prosody encodes them."""
    host, _store, name = path.split("/")
    return unquote(host), unquote(name.removesuffix(".dat"))


def test_the_prosody13_scenario_counts_the_same_in_every_storage(database: SqlServer | None, tmp_path: Path) -> None:
    """A live generation of the committed prosody13 case, in files or in a fresh PostgreSQL or MariaDB database:
    Prosody 13 reports the same counts, disabled the same accounts and reads back the same lifecycle reference as in
    the committed file-store case; and our counts and `inactive` list agree with that reference in every storage."""
    committed = json.loads((COMMITTED / "expected.json").read_text(encoding="utf-8"))
    sql = None if database is None else database.prosody_sql()
    expected = load_generator().generate_case(SCENARIO, tmp_path, sql=sql)
    for key in (
        "now",
        "prosody_version",
        "prosody_modules_version",
        "active_users",
        "active_users_account_activity",
        "lifecycle",  # what Prosody's usermanager, storage API and user:list_inactive read back
    ):
        assert expected[key] == committed[key], key
    assert expected["notes"] == committed["notes"]
    assert expected["active_users"] != expected["active_users_account_activity"]  # the stores disagree somewhere
    data = tmp_path / "prosody13" / "data"
    for variant, key in VARIANTS.items():  # and we count what Prosody 13 reported, read through its config
        config_dir = tmp_path / f"config-{variant}"
        config_dir.mkdir()
        config = write_config(config_dir, data_path=data, plugin_dir=module_dir(config_dir, variant), sql=sql)
        plan = plan_sources(SourceOptions(config=config), environ={})
        totals, _ = count_all(plan.sources, now=expected["now"], windows=DEFAULT_WINDOWS, known_hosts=plan.known_hosts)
        assert {host: dict(counts.active) for host, counts in totals.counts.items()} == expected[key], variant
        if variant == "account_activity":  # the store user:list_inactive reads: the lifecycle as Prosody reads it
            assert assert_counts_as_prosody_reads(SourceOptions(config=config), expected) >= 4
            assert assert_lists_as_list_inactive(SourceOptions(config=config), expected) >= 12
    if database is None:
        assert "storage" not in expected
        assert file_records(tmp_path / "prosody13" / "data") == file_records(COMMITTED / "data")
        live = file_records(tmp_path / "prosody13" / "data")
        assert live == file_records(COMMITTED / "data")
        assert {host_user(path) for path, record in live.items() if record.get(("disabled",)) == "true"} == DISABLED
        return
    assert expected["storage"] == {"driver": database.driver}
    rows = sql_rows(database)
    assert {row[2] for row in rows} >= {"accounts", "account_activity", "lastlog2", "cron"}
    disabled = {(row[0], row[1]) for row in rows if row[2:4] == ("accounts", "disabled") and row[5] == "true"}
    assert disabled == DISABLED

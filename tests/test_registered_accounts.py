"""Registered accounts per host: as many as Prosody's own code lists from the accounts store (usermanager's users(),
which mod_auth_internal_hashed and _plain answer with the `accounts` store's users), none where Prosody keeps no
account list, and kept fresh by the daemon as accounts are made and deleted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from prosody_lastlog.core.counting import ALL_HOSTS, count_hosts, totals_only
from prosody_lastlog.core.model import Store
from prosody_lastlog.core.rules import HASHED, HostConfig, Policy, keeps_accounts
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.prosody.sql_settings import SqlSettings
from prosody_lastlog.sources.files import FileStoreReader
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from prosody_lastlog.sources.sql import SqlReader
from tests.conftest import CASES, FIXTURES
from tests.test_daemon import prosody_writes, wait_for

sys.path.insert(0, str(FIXTURES))

from prosody_runtime import prosody_012, prosody_13

# Prosody's util.datamanager, as mod_storage_internal's users() calls it for the accounts store. Prosody 13's
# modules are named prosody.util.* from /usr/lib, 0.12's util.* from /usr/lib/prosody.
_LIST_ACCOUNTS = """
local thirteen = arg[1] == "13"
local root = thirteen and "/usr/lib" or "/usr/lib/prosody"
package.path = root .. "/?.lua;" .. package.path
package.cpath = root .. "/?.so;" .. package.cpath
local datamanager = require(thirteen and "prosody.util.datamanager" or "util.datamanager")
table.remove(arg, 1)
datamanager.set_data_path(arg[1])
for i = 2, #arg do
  local n = 0
  for _ in datamanager.users(arg[i], "accounts") do n = n + 1 end
  print(arg[i] .. " " .. n)
end
"""
PROSODY13_DATA = CASES / "prosody13" / "data"
NOW13 = json.loads((CASES / "prosody13" / "expected.json").read_text(encoding="utf-8"))["now"]
ACCOUNT_HOSTS = ["example.net", "split.example", "activity13.example", "all.example", "münchen.example"]


def prosody_lists(data_dir: Path, hosts: list[str], tmp_path: Path, *, thirteen: bool) -> dict[str, int]:
    """How many accounts Prosody's own datamanager lists per host (Prosody 13's from Debian 13's tree)."""
    script = tmp_path / "list_accounts.lua"
    script.write_text(_LIST_ACCOUNTS, encoding="utf-8")
    runtime = prosody_13() if thirteen else prosody_012()
    argv = runtime.command(["lua5.4", str(script), runtime.version, str(data_dir), *hosts], binds=[tmp_path])
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return {host: int(count) for host, _, count in (line.rpartition(" ") for line in output.splitlines())}


@pytest.mark.parametrize("thirteen", [False, True], ids=["prosody-0.12", "prosody-13"])
def test_registered_accounts_equal_what_prosody_lists(tmp_path: Path, thirteen: bool) -> None:
    data = tmp_path / "data"
    shutil.copytree(PROSODY13_DATA, data)
    expected = prosody_lists(data, [*ACCOUNT_HOSTS, "plain.example"], tmp_path, thirteen=thirteen)
    assert expected["example.net"] == 13  # the scenario's 15 users, less one never created and one deleted
    read = FileStoreReader(data).read()
    assert {host: read.hosts[host].registered_accounts for host in expected} == expected


def test_a_host_whose_provider_keeps_no_account_list_has_none() -> None:
    """anonymous.example authenticates anonymously and a MUC component has no accounts: no number, not zero."""
    read = FileStoreReader(PROSODY13_DATA).read()
    assert read.hosts["anon.example"].registered_accounts is None
    assert read.hosts["conference.example.net"].registered_accounts is None


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (HostConfig(auth_provider=HASHED), True),
        (HostConfig(auth_provider="internal_plain"), True),
        (HostConfig(), True),  # in the config, no `authentication`: Prosody's default, internal_hashed
        (HostConfig(auth_provider="ldap"), False),
        (HostConfig(auth_provider="anonymous"), False),
        (HostConfig(is_component=True, auth_provider=None), False),
        (HostConfig(auth_provider=HASHED, accounts_storage="sql"), False),  # kept elsewhere: not read
        (None, None),  # no config: the data directory alone says, by having an accounts directory or not
    ],
)
def test_which_hosts_keep_their_accounts_in_the_accounts_store(config: HostConfig | None, expected: bool) -> None:
    assert keeps_accounts(config) is expected


def test_with_a_config_a_host_without_an_accounts_directory_has_none_registered(tmp_path: Path) -> None:
    """The config says the accounts are the accounts store, which does not exist yet: zero, as Prosody lists."""
    (tmp_path / "example%2ecom" / "lastlog2").mkdir(parents=True)
    (tmp_path / "example%2ecom" / "lastlog2" / "alice.dat").write_text('return {["login"] = {["timestamp"] = 1};}')
    configured = Policy(hosts={"example.com": HostConfig(auth_provider=HASHED)})
    assert FileStoreReader(tmp_path, policy=configured).read().hosts["example.com"].registered_accounts == 0
    assert FileStoreReader(tmp_path).read().hosts["example.com"].registered_accounts is None


def test_every_regular_dat_file_is_an_account_as_prosody_lists_them(tmp_path: Path) -> None:
    """Prosody's users() takes every name ending in `.dat`, without checking its encoding: so does the count. Only
    regular files are (a directory or link so named is a problem, as in the activity stores)."""
    host = tmp_path / "example%2ecom"
    (host / "lastlog2").mkdir(parents=True)
    (host / "accounts").mkdir()
    for name in ("alice.dat", "bob.dat", "carol.dat~", "notes.txt", "%zz.dat"):
        (host / "accounts" / name).write_text("return {};")
    (host / "accounts" / "dave.dat").mkdir()
    read = FileStoreReader(tmp_path, policy=Policy(forced_store=Store.LASTLOG2)).read()
    assert read.hosts["example.com"].registered_accounts == 3  # alice, bob, %zz
    # dave.dat is no file; %zz.dat is counted but, as an account without activity data, named a problem: its name
    # is not one Prosody writes, so no user can be told from it.
    assert [(p.kind, p.where) for p in read.problems] == [
        ("not_a_file", "example%2ecom/accounts/dave.dat"),
        ("unexpected", "example%2ecom/accounts/%zz.dat"),
    ]
    assert sorted(u.user for u in read.hosts["example.com"].users) == ["alice", "bob"]
    assert all(u.account_only and u.last_active is None for u in read.hosts["example.com"].users)


@pytest.fixture
def prosody13_daemon(tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    data = tmp_path / "data"
    shutil.copytree(PROSODY13_DATA, data)
    plan = plan_sources(SourceOptions(data_dir=data), environ={})
    running = Daemon(plan, windows=DEFAULT_WINDOWS, options=ServeOptions(port=0, as_of=NOW13))
    running.start()
    yield running, data
    running.stop()


def registered(daemon: Daemon, host: str) -> int | None:
    return daemon.live.counts(now=NOW13)[host].registered_accounts


def test_the_daemon_counts_accounts_made_and_deleted_as_they_come(prosody13_daemon: tuple[Daemon, Path]) -> None:
    """An account made (Prosody writes `<user>.dat~`, then renames it) or deleted (its file removed) changes the
    count within the watcher's debounce, with no resync; the one-shot count agrees with the daemon's."""
    daemon, data = prosody13_daemon
    assert registered(daemon, "example.net") == 13
    prosody_writes(data, "newbie", "example.net", '{["created"] = 1763899000}', store="accounts")
    wait_for(lambda: registered(daemon, "example.net") == 14)
    (data / "example%2enet" / "accounts" / "alice.dat").unlink()
    (data / "example%2enet" / "accounts" / "bob.dat").unlink()
    wait_for(lambda: registered(daemon, "example.net") == 12)
    assert FileStoreReader(data).read().hosts["example.net"].registered_accounts == 12


@pytest.mark.parametrize("method", ["pushdown", "stream"])
def test_sql_counts_the_accounts_prosody_13_wrote_as_the_file_store_does(method: str) -> None:
    """The same scenario written by Prosody 13's mod_storage_sql: its accounts store holds as many accounts per host
    as the file store's (whose counts equal Prosody's own listing, above), however the activity is counted."""
    database = CASES / "prosody13-sqlite" / "prosody.sqlite"
    counted = SqlReader(SqlSettings("SQLite3", str(database)), method=method).count(now=NOW13, windows=DEFAULT_WINDOWS)
    from_files = FileStoreReader(PROSODY13_DATA).read()
    assert {host: c.registered_accounts for host, c in counted.counts.items()} == {
        host: data.registered_accounts for host, data in from_files.hosts.items()
    }
    assert counted.counts["example.net"].registered_accounts == 13


def test_sql_without_account_rows_says_zero_only_where_the_config_says_the_accounts_are_there() -> None:
    database = CASES / "sample-sqlite" / "prosody.sqlite"  # Prosody 0.12's events only: no account rows
    settings = SqlSettings("SQLite3", str(database))
    configured = Policy(hosts={"example.com": HostConfig(auth_provider=HASHED)})
    assert (
        SqlReader(settings).count(now=NOW13, windows=DEFAULT_WINDOWS).counts["example.com"].registered_accounts is None
    )
    with_config = SqlReader(settings, policy=configured).count(now=NOW13, windows=DEFAULT_WINDOWS)
    assert with_config.counts["example.com"].registered_accounts == 0


def test_the_total_over_hosts_has_registered_accounts_only_if_every_host_has() -> None:
    """--totals-only: a sum missing some hosts' accounts would be a wrong number."""
    counted = FileStoreReader(PROSODY13_DATA).read()
    counts = count_hosts(counted.hosts.values(), now=NOW13, windows=DEFAULT_WINDOWS)
    assert totals_only(counts, DEFAULT_WINDOWS)[ALL_HOSTS].registered_accounts is None  # anon.example has none
    known = {host: c for host, c in counts.items() if c.registered_accounts is not None}
    assert totals_only(known, DEFAULT_WINDOWS)[ALL_HOSTS].registered_accounts == 4 + 2 + 13 + 3 + 2 + 5

"""Which accounts count: on Prosody 13 (mod_auth_internal_hashed) an account record must exist and not be disabled;
on Prosody 0.12 everyone counts. And registration times, from Prosody 13's `created` first."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from prosody_lastlog.core.counting import HostCounts, count_hosts
from prosody_lastlog.core.model import AccountRule, Store
from prosody_lastlog.core.rules import Policy
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.sources.files import FileStoreReader
from tests.conftest import CASES, case_data

STORE_SCRIPT = Path(__file__).with_name("datamanager_store.lua")
NOW: int = json.loads((CASES / "prosody13" / "expected.json").read_text())["now"]
DAY = 86400


def prosody_store(data: Path, user: str, host: str, store: str, record: str) -> None:
    """Writes a record with Prosody's own util.datamanager ("nil" removes it, as Prosody deletes an emptied one)."""
    subprocess.run(["lua5.4", str(STORE_SCRIPT), str(data), user, host, store, record], check=True)


def counts(data: Path, policy: Policy | None = None) -> dict[str, HostCounts]:
    return count_hosts(FileStoreReader(data, policy=policy).read().hosts.values(), now=NOW, windows=DEFAULT_WINDOWS)


def thirteen_tree(tmp_path: Path) -> Path:
    """A writable copy of the Prosody 13 file-store fixture."""
    data = tmp_path / "data"
    shutil.copytree(case_data("prosody13"), data)
    return data


def test_a_disabled_or_deleted_account_is_left_out_and_a_created_one_counts(tmp_path: Path) -> None:
    data = thirteen_tree(tmp_path)
    before = counts(data)["example.net"]
    assert before.counting.accounts is AccountRule.ENABLED
    # alice is active today with an enabled account; what Prosody 13 writes when `user disable` runs:
    prosody_store(data, "alice", "example.net", "accounts", '{ disabled = true; created = 1; salt = "s" }')
    disabled = counts(data)["example.net"]
    assert disabled.active["1d"] == before.active["1d"] - 1 and disabled.disabled == before.disabled + 1
    os.remove(data / "example%2enet" / "accounts" / "alice.dat")  # the account deleted, its activity left behind
    deleted = counts(data)["example.net"]
    assert deleted.active == disabled.active and deleted.no_account == before.no_account + 1
    # ghost has activity and no account (imported data): created now, it counts.
    ghost = next(u for u in FileStoreReader(data).read().hosts["example.net"].users if u.user == "ghost")
    assert ghost.no_account and ghost.last_active is not None
    prosody_store(data, "ghost", "example.net", "accounts", f"{{ created = {NOW}; salt = 's' }}")
    created = counts(data)["example.net"]
    assert created.no_account == deleted.no_account - 1
    assert sum(created.active.values()) > sum(deleted.active.values())


def test_count_disabled_counts_every_account(tmp_path: Path) -> None:
    data = thirteen_tree(tmp_path)
    everyone = counts(data, Policy(count_disabled=True))["example.net"]
    checked = counts(data)["example.net"]
    assert everyone.counting.accounts is AccountRule.EVERYONE and everyone.disabled == 0
    assert everyone.active["30d"] > checked.active["30d"] and checked.disabled > 0


def test_on_prosody_0_12_a_disabled_record_changes_nothing(tmp_path: Path) -> None:
    """0.12 has no user_is_enabled: its mod_measure_active_users counts every account, whatever its record says."""
    data = tmp_path / "data"
    shutil.copytree(case_data("sample"), data)
    before = counts(data)
    user = next(u for u in FileStoreReader(data).read().hosts["example.com"].users if u.last_active)
    prosody_store(data, user.user, "example.com", "accounts", '{ disabled = true; disabled_meta = { reason = "x" } }')
    after = counts(data)
    assert after["example.com"].counting.accounts is AccountRule.EVERYONE
    assert after["example.com"].registered_accounts == 1  # the record made an accounts store: one account listed
    assert after == {**before, "example.com": replace(before["example.com"], registered_accounts=1)}


def test_registration_times_come_from_created_then_lastlog2_then_account_details(tmp_path: Path) -> None:
    data = thirteen_tree(tmp_path)
    host = "example.net"
    prosody_store(data, "carol", host, "lastlog2", f"{{ registered = {{ timestamp = {NOW - 20 * DAY} }} }}")
    prosody_store(data, "carol", host, "accounts", f"{{ created = {NOW - 3 * DAY} }}")  # wins
    prosody_store(data, "dave", host, "lastlog2", f"{{ registered = {{ timestamp = {NOW - 5 * DAY} }} }}")
    prosody_store(data, "dave", host, "accounts", '{ salt = "s" }')  # an account from before 13: no `created`
    prosody_store(data, "dave", host, "account_details", f"{{ registered = {NOW - 9 * DAY}; email = 'x@y' }}")
    prosody_store(data, "erin", host, "accounts", '{ salt = "s" }')
    prosody_store(data, "erin", host, "account_details", f"{{ registered = {NOW - 2 * DAY}; name = 'Erin' }}")
    reader = FileStoreReader(data, policy=Policy(forced_store=Store.LASTLOG2))
    users = {u.user: u for u in reader.read().hosts[host].users}
    assert users["carol"].registered == NOW - 3 * DAY
    assert users["dave"].registered == NOW - 5 * DAY
    assert users["erin"].registered == NOW - 2 * DAY


def test_account_files_are_evaluated_only_if_they_name_a_field_counting_reads(tmp_path: Path) -> None:
    """Account files hold password hashes: one that mentions neither `created` nor `disabled` is never evaluated."""
    data = thirteen_tree(tmp_path)
    accounts = data / "example%2enet" / "accounts"
    (accounts / "alice.dat").write_bytes(b"while true do end")
    (accounts / "bob.dat").write_bytes(b"while true do end -- disabled")
    problems = FileStoreReader(data).read().problems
    assert [(p.where, p.kind) for p in problems] == [("example%2enet/accounts/bob.dat", "limit")]


def test_odd_entries_in_an_accounts_directory_are_reported(tmp_path: Path) -> None:
    data = thirteen_tree(tmp_path)
    accounts = data / "example%2enet" / "accounts"
    (accounts / "alice.dat").unlink()
    os.mkfifo(accounts / "alice.dat")
    (accounts / "bob.dat").unlink()
    (accounts / "bob.dat").symlink_to("/etc/passwd")
    result = FileStoreReader(data).read()
    assert sorted((p.where, p.kind) for p in result.problems) == [
        ("example%2enet/accounts/alice.dat", "not_a_file"),
        ("example%2enet/accounts/bob.dat", "not_a_file"),
    ]
    users = {u.user: u for u in result.hosts["example.net"].users}
    assert users["alice"].no_account and users["bob"].no_account  # no account Prosody could read either

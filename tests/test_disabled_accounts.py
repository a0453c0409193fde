"""Prosody 13 disabled accounts (`disabled = true` in the accounts store) are not counted active by default."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from prosody_lastlog.counting import count_hosts
from prosody_lastlog.readers.files import FileStoreReader
from prosody_lastlog.records import Store
from prosody_lastlog.windows import DEFAULT_WINDOWS
from tests.conftest import case_data

STORE_SCRIPT = Path(__file__).with_name("datamanager_store.lua")


def prosody_store(data: Path, user: str, host: str, store: str, record: str) -> None:
    subprocess.run(["lua5.4", str(STORE_SCRIPT), str(data), user, host, store, record], check=True)


def test_disabled_accounts_are_left_out_unless_asked(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(case_data("account_activity"), data)
    now = json.loads((case_data("account_activity").parent / "expected.json").read_text())["now"]
    before = FileStoreReader(data).read()
    host, host_data = next((h, d) for h, d in before.hosts.items() if d.store is Store.ACCOUNT_ACTIVITY)
    active_user = next(u for u in host_data.users if u.last_active is not None and now - u.last_active < 86400)
    # What Prosody 13's mod_auth_internal_hashed writes on disable, next to an enabled account's record.
    prosody_store(data, active_user.user, host, "accounts", '{ disabled = true; created = 1; salt = "s" }')
    prosody_store(data, "someone-else", host, "accounts", '{ created = 1; salt = "disabled-looking salt" }')

    counts = count_hosts(FileStoreReader(data).read().hosts.values(), now=now, windows=DEFAULT_WINDOWS)
    baseline = count_hosts(before.hosts.values(), now=now, windows=DEFAULT_WINDOWS)
    assert counts[host].disabled == 1
    assert counts[host].active["1d"] == baseline[host].active["1d"] - 1
    kept = FileStoreReader(data, count_disabled=True).read()
    assert count_hosts(kept.hosts.values(), now=now, windows=DEFAULT_WINDOWS)[host].active == baseline[host].active


def test_disabled_accounts_are_left_out_on_lastlog2_hosts_too(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(case_data("sample"), data)
    now = json.loads((case_data("sample").parent / "expected.json").read_text())["now"]
    before = count_hosts(FileStoreReader(data).read().hosts.values(), now=now, windows=DEFAULT_WINDOWS)
    user = next(u for u in FileStoreReader(data).read().hosts["example.com"].users if u.last_active)
    prosody_store(data, user.user, "example.com", "accounts", '{ disabled = true; disabled_meta = { reason = "x" } }')
    after = count_hosts(FileStoreReader(data).read().hosts.values(), now=now, windows=DEFAULT_WINDOWS)
    assert after["example.com"].disabled == 1
    assert sum(after["example.com"].active.values()) < sum(before["example.com"].active.values())


def test_account_files_are_evaluated_only_if_they_mention_disabled(sample_tree: Path) -> None:
    accounts = sample_tree / "example%2ecom" / "accounts"
    accounts.mkdir()
    (accounts / "quiet.dat").write_bytes(b"while true do end")
    (accounts / "loud.dat").write_bytes(b"while true do end -- disabled")
    problems = FileStoreReader(sample_tree).read().problems
    assert [(p.where, p.kind) for p in problems] == [("example%2ecom/accounts/loud.dat", "limit")]


def test_odd_entries_in_an_accounts_directory_are_reported(sample_tree: Path) -> None:
    accounts = sample_tree / "example%2ecom" / "accounts"
    accounts.mkdir(exist_ok=True)
    os.mkfifo(accounts / "fifo.dat")
    (accounts / "link.dat").symlink_to("/etc/passwd")
    problems = FileStoreReader(sample_tree).read().problems
    assert sorted((p.where, p.kind) for p in problems) == [
        ("example%2ecom/accounts/fifo.dat", "not_a_file"),
        ("example%2ecom/accounts/link.dat", "not_a_file"),
    ]

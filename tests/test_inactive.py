"""`prosody-lastlog inactive`: which accounts are listed (the counts' rule), the three formats, and that the names it
prints go to its stdout only."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from exporters.account_list import DELETE_012, DELETE_13, ListRequest, render_names, render_prosodyctl
from prosody_lastlog.cli import main
from prosody_lastlog.core.connected import ConnectedMode, ConnectedUsers
from prosody_lastlog.core.inactive import InactiveAccount, InactiveList, list_inactive
from prosody_lastlog.core.model import AccountRule, CountingChoice, HostData, Store, UserActivity
from prosody_lastlog.core.windows import Window, parse_window
from tests.conftest import CASES

NOW = 1_763_900_000
DAY = 86400
YEAR = parse_window("1y")


def host(*users: UserActivity, accounts: AccountRule = AccountRule.EVERYONE) -> HostData:
    return HostData("example.com", Store.LASTLOG2, list(users), CountingChoice(Store.LASTLOG2, accounts=accounts))


def names(listed: InactiveList) -> list[str]:
    return [account.user for account in listed.accounts]


def test_inactive_by_last_activity_else_registration_at_least_the_age_ago() -> None:
    users = [
        UserActivity("gone", NOW - 2 * 365 * DAY, registered=NOW - 3 * 365 * DAY),
        UserActivity("exactly", NOW - 365 * DAY),  # at least the age: listed (the complement of "active in 1y")
        UserActivity("recent", NOW - 365 * DAY + 1),
        UserActivity("signup-old", None, registered=NOW - 400 * DAY),
        UserActivity("signup-yesterday", None, registered=NOW - DAY),  # never listed as inactive
        UserActivity("unknown", None),  # never active, registration not known: cannot be told
    ]
    listed = list_inactive(host(*users), now=NOW, older_than=YEAR)
    assert names(listed) == ["exactly", "gone", "signup-old"]
    assert listed.unknown == 1
    assert listed.accounts[-1] == InactiveAccount("signup-old", None, NOW - 400 * DAY)


def test_never_used_accounts_are_judged_by_their_own_age() -> None:
    users = [
        UserActivity("idle-signup", None, registered=NOW - 20 * DAY),
        UserActivity("new-signup", None, registered=NOW - 3 * DAY),
        UserActivity("active-a-month-ago", NOW - 30 * DAY),
    ]
    listed = list_inactive(host(*users), now=NOW, older_than=YEAR, never_used_for=Window(14 * DAY, "14d"))
    assert names(listed) == ["idle-signup"]


def test_left_out_and_connected_accounts_are_not_listed() -> None:
    users = [
        UserActivity("off", NOW - 800 * DAY, disabled=True),
        UserActivity("deleted", NOW - 800 * DAY, no_account=True),
        UserActivity("online", NOW - 800 * DAY, session_open=NOW - 800 * DAY),
        UserActivity("old", NOW - 800 * DAY),
    ]
    connected = ConnectedUsers(ConnectedMode.ADMIN_SOCKET, {"example.com": frozenset({"online"})})
    listed = list_inactive(host(*users, accounts=AccountRule.ENABLED), now=NOW, older_than=YEAR, connected=connected)
    assert (names(listed), listed.left_out) == (["old"], 2)
    everyone = list_inactive(host(*users), now=NOW, older_than=YEAR, connected=connected)  # --count-disabled
    assert names(everyone) == ["deleted", "off", "old"]


HOSTILE = "x$(touch pwned);'`"  # nodeprep allows $, (, ), ; and `


def test_prosodyctl_lines_quote_every_name_and_use_each_prosodys_syntax(tmp_path: Path) -> None:
    lists = [
        InactiveList("old.example", [InactiveAccount(HOSTILE, NOW - 800 * DAY, None)]),
        InactiveList("new.example", [InactiveAccount("bob", None, NOW - 800 * DAY)]),
        InactiveList("empty.example", [], unknown=3),
    ]
    text = render_prosodyctl(lists, ListRequest(NOW, YEAR), {"new.example"})
    commands = [line for line in text.splitlines() if not line.startswith("#")]
    assert [shlex.split(line) for line in commands] == [
        [*DELETE_012.split(), f"{HOSTILE}@old.example"],
        [*DELETE_13.split(), "bob@new.example"],
    ]
    assert "empty.example" not in text
    # Run through a shell with a stand-in prosodyctl: each line deletes exactly its one account, runs nothing else.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "prosodyctl").write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> calls\n')
    (bin_dir / "prosodyctl").chmod(0o755)
    subprocess.run(["sh"], input=text, text=True, cwd=tmp_path, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=True)
    assert (tmp_path / "calls").read_text().splitlines() == [
        f"deluser {HOSTILE}@old.example",
        "shell user delete bob@new.example",
    ]
    assert not (tmp_path / "pwned").exists()


def test_names_with_control_characters_are_left_out_of_line_formats() -> None:
    lists = [
        InactiveList("example.com", [InactiveAccount("a\nb@evil.example", 1, None), InactiveAccount("c", 1, None)])
    ]
    assert render_names(lists) == "c@example.com\n"
    assert "evil" not in render_prosodyctl(lists, ListRequest(NOW, YEAR), ())


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["inactive", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def expected_now(case: str) -> int:
    return int(json.loads((CASES / case / "expected.json").read_text())["now"])


@pytest.mark.parametrize("case", ["prosody13", "prosody13-sqlite"])
def test_the_list_is_what_the_counts_count_on_prosody_13_data(capsys: pytest.CaptureFixture[str], case: str) -> None:
    source = (
        ["--data-dir", str(CASES / case / "data")]
        if case == "prosody13"
        else ["--sql", f"sqlite:///{CASES / case / 'prosody.sqlite'}"]
    )
    now = str(expected_now(case))
    assert main(["count", *source, "--now", now, "--inactive-window", "30d", "--format", "json"]) == 0
    counts = json.loads(capsys.readouterr().out)["hosts"]
    code, out, err = run(capsys, *source, "--now", now, "--older-than", "30d", "--format", "json")
    assert code == 0
    document = json.loads(out)
    for name, host in counts.items():
        listed = document["hosts"].get(name, {"listed": 0, "never_active": 0})
        assert (listed["listed"], listed["never_active"]) == (host["inactive"]["30d"], host["never_used"]["30d"])
    assert sorted(a["jid"] for a in document["accounts"]) == [
        "dave@example.net",
        "paul@split.example",
        "vera@activity13.example",
    ]
    assert "@" not in err  # names on stdout only


def test_names_go_to_stdout_only_even_with_problems(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store = tmp_path / "example%2ecom" / "lastlog2"  # as Prosody encodes the host name
    store.mkdir(parents=True)
    (store / "olduser.dat").write_text("return { login = { timestamp = 1000 } };\n")
    (store / "secretname.dat").write_text("return { login = ")
    code, out, err = run(capsys, "--data-dir", str(tmp_path), "--now", str(NOW), "--older-than", "1y")
    assert (code, out) == (0, "olduser@example.com\n")
    assert "secretname" not in err and "olduser" not in err
    assert "1 problem(s)" in err


def test_older_than_is_required_and_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["inactive", "--data-dir", "/nonexistent"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["inactive", "--data-dir", "/nonexistent", "--older-than", "2 years"])
    assert "--older-than: invalid window" in capsys.readouterr().err

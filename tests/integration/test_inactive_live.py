"""`inactive --format prosodyctl` against a real Prosody 0.12 and 13: the lines it prints, run as printed through
each version's own prosodyctl (0.12: `prosodyctl deluser`, offline; 13: `prosodyctl shell user delete`, through the
running server's admin socket), delete exactly the accounts listed and no other."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from prosody_lastlog.cli import main
from tests.integration.live_prosody import running_prosody
from tests.integration.xmpp_client import XmppClient
from tests.prosody13_cases import prosody_13

pytestmark = pytest.mark.integration

HOST = "inactive.example"
PASSWORD = "inactive test password"
DAY = 86400


def wrapper(directory: Path, argv: list[str]) -> None:
    """A `prosodyctl` on PATH that runs `argv` (this Prosody's prosodyctl, with its config) with the arguments given;
    the program by its full path, so that the wrapper does not find itself."""
    program = shutil.which(argv[0])
    assert program is not None, f"{argv[0]} is missing: run `make test`, which installs Debian's prosody"
    argv = [program, *argv[1:]]
    directory.mkdir()
    script = directory / "prosodyctl"
    script.write_text(f'#!/bin/sh\nexec {" ".join(shlex.quote(part) for part in argv)} "$@"\n', encoding="utf-8")
    script.chmod(0o755)


@pytest.mark.parametrize("version", ["0.12", "13"])
def test_the_printed_delete_commands_delete_exactly_the_listed_accounts(
    version: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime = prosody_13() if version == "13" else None
    root = tmp_path / "prosody"
    with running_prosody(root, [HOST], runtime=runtime) as live:
        for user in ("alice", "bob", "dave"):
            live.create_user(f"{user}@{HOST}", PASSWORD)
        for user in ("alice", "bob"):  # dave never logs in
            with XmppClient(live.c2s_port, HOST) as client:
                client.login(user, PASSWORD)
        accounts = live.data / "inactive%2eexample" / "accounts"
        activity = live.data / "inactive%2eexample" / "lastlog2"
        deadline = time.monotonic() + 5
        while not ((activity / "alice.dat").exists() and (activity / "bob.dat").exists()):
            assert time.monotonic() < deadline, "logins not recorded"
            time.sleep(0.05)
        # Two days on: alice and bob were last active more than a day ago; dave, registered then (Prosody 13 records
        # when) but never active, is kept by --never-used-for 3d (on 0.12 his registration time is not known at all).
        later = str(int(time.time()) + 2 * DAY)
        args = ["inactive", "--data-dir", str(live.data), "--now", later, "--older-than", "1d"]
        assert main([*args, "--never-used-for", "3d", "--format", "prosodyctl"]) == 0
        script = capsys.readouterr().out
        command = "prosodyctl shell user delete" if version == "13" else "prosodyctl deluser"
        assert [line for line in script.splitlines() if not line.startswith("#")] == [
            f"{command} alice@{HOST}",
            f"{command} bob@{HOST}",
        ]
        bin_dir = tmp_path / "bin"
        wrapper(bin_dir, live.runtime.command(["prosodyctl", "--config", str(live.config)], binds=[root]))
        done = subprocess.run(
            ["sh"], input=script, text=True, capture_output=True, cwd=root, timeout=120, check=False,
            env={"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"},
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert sorted(path.name for path in accounts.glob("*.dat")) == ["dave.dat"]
        assert main([*args, "--never-used-for", "3d"]) == 0
        assert capsys.readouterr().out == ""  # nothing left to clean up

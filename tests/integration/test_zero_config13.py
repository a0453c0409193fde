"""`prosody-lastlog count` with no option on Debian 13: inside the trixie tree, Prosody 13 runs with the stock
/etc/prosody/prosody.cfg.lua (a conf.d file adds a host with mod_measure_active_users, loopback ports and the
metrics endpoint; with and without "lastlog2" in its modules), takes real logins, a disabled account and a connected
user; then the tool, installed in the same tree as an admin installs it, counts with no flag at all. Its counts
equal Prosody 13's own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.live_prosody import lua_string, prosodys_own_counts
from tests.integration.servers import free_port, stop_process
from tests.integration.xmpp_client import XmppClient, XmppError, admin_shell
from tests.prosody13_cases import prosody_13

pytestmark = pytest.mark.integration

HOST = "zero.example"
PASSWORD = "correct horse"
CHECKOUT = Path(__file__).resolve().parents[2]
TOOL = "/opt/prosody-lastlog/bin/python"  # the venv tools/prosody13-tree.sh made in the tree, with our dependencies
# What an admin adds for the test, beside the stock config: a host counted by mod_measure_active_users, and what a
# test on a shared machine needs (loopback, free ports, the metrics endpoint, no TLS for the test's own client).
CONF_D = """\
-- Written by tests/integration/test_zero_config13.py.
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
http_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
s2s_ports = {{ {s2s} }}
http_ports = {{ {http} }}
https_ports = {{}}
c2s_direct_tls_ports = {{}}
s2s_direct_tls_ports = {{}}
run_as_root = true
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
statistics = "internal"
statistics_interval = "manual"
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "/var/log/prosody/prosody.log" }} }}
modules_enabled:append {{ "http_openmetrics" }}

VirtualHost "{host}"
    modules_enabled = {{ {modules} }}
"""


@contextmanager
def stock_prosody_13(root: Path, modules: list[str]) -> Iterator[tuple[Mapping[str, Path], int, int]]:
    """Prosody 13 in the tree with its stock config plus CONF_D; yields the replaced paths, c2s and http ports."""
    runtime = prosody_13()
    over = {path: root / path.strip("/").replace("/", "-") for path in ("/etc/prosody", "/var/lib/prosody")}
    over |= {path: root / path.strip("/").replace("/", "-") for path in ("/var/log/prosody", "/run/prosody")}
    shutil.copytree(runtime.host_path("/etc/prosody"), over["/etc/prosody"], symlinks=True)
    for path in list(over.values())[1:]:
        path.mkdir()
    c2s, http = free_port(), free_port()
    conf = CONF_D.format(c2s=c2s, s2s=free_port(), http=http, host=HOST, modules=", ".join(map(lua_string, modules)))
    (over["/etc/prosody"] / "conf.d" / "test.cfg.lua").write_text(conf, encoding="utf-8")
    with (root / "console.txt").open("wb") as console:
        process = subprocess.Popen(
            runtime.command(["prosody", "-F"], over=over), stdout=console, stderr=subprocess.STDOUT
        )
    try:
        wait_for_start(over["/var/lib/prosody"] / "prosody.sock", process, root)
        yield over, c2s, http
    finally:
        stop_process(process)


def wait_for_start(socket: Path, process: subprocess.Popen[bytes], root: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Prosody 13 exited: {(root / 'console.txt').read_text(errors='replace')}")
        try:
            if admin_shell(socket, f">return prosody.hosts[{lua_string(HOST)}] ~= nil") == "Result: true":
                return
        except (OSError, XmppError):
            pass
        time.sleep(0.05)
    raise RuntimeError("Prosody 13 did not start within 20 s")


def in_tree(argv: list[str], over: Mapping[str, Path]) -> subprocess.CompletedProcess[str]:
    """`argv` run inside the tree, with this checkout importable there (as if pip had installed it)."""
    command = prosody_13().command(argv, binds=[CHECKOUT], over=over)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(CHECKOUT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env=env)


@pytest.mark.parametrize("modules", [["lastlog2", "measure_active_users"], ["measure_active_users"]])
def test_count_with_no_option_equals_prosody_13(modules: list[str], tmp_path: Path) -> None:
    with stock_prosody_13(tmp_path, modules) as (over, c2s, http):
        socket = over["/var/lib/prosody"] / "prosody.sock"
        for user in ("alice", "bob", "carol", "dave"):
            assert admin_shell(socket, f"user:create({lua_string(f'{user}@{HOST}')}, {lua_string(PASSWORD)})")
        for user in ("bob", "carol"):
            with XmppClient(c2s, HOST) as client:
                client.login(user, PASSWORD)
        done = in_tree(["prosodyctl", "shell", "user", "disable", f"carol@{HOST}"], over)
        assert done.returncode == 0, done.stderr
        with XmppClient(c2s, HOST) as alice:  # connected while both count
            alice.login("alice", PASSWORD)
            expected = prosodys_own_counts(socket, http, HOST)
            counted = in_tree([TOOL, "-m", "prosody_lastlog", "count", "--format", "json"], over)
    assert counted.returncode == 0, counted.stderr
    document = json.loads(counted.stdout)
    host = document["hosts"][HOST]
    assert expected == {"1d": 2, "7d": 2, "30d": 2}  # alice (connected) and bob; carol is disabled, dave never on
    assert host["active"] == expected
    assert (host["store"], host["store_basis"], host["accounts_rule"]) == ("lastlog2", "module", "enabled")
    assert host["connected"] == 1 and document["connected_detection"] == "admin_socket"
    [prosody] = document["prosody"].values()
    assert prosody["version"] == "13" and prosody["module"].startswith("/usr/lib/prosody/modules/")
    # The stock config's own host records account_activity only, and does not run the module: counted from there.
    assert document["hosts"]["localhost"]["store"] == "account_activity"
    assert os.path.exists(over["/etc/prosody"] / "prosody.cfg.lua")

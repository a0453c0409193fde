"""A real Prosody 13 (Debian 13's packages) takes real logins and account changes while the daemon serves /metrics:
each shows within 2 s, connected users count as Prosody 13's own mod_measure_active_users counts them, and its
figures equal ours; once Prosody stops (13 removes its socket), the daemon says Prosody is not running."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from prosody_lastlog.prosody.running import ConnectedProbe
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from tests.integration.live_prosody import prosodys_own_counts, running_prosody
from tests.integration.servers import free_port
from tests.integration.test_prosody_login import (
    CLOCK,
    DAY,
    FRESH,
    PASSWORD,
    active,
    connected,
    serving,
    set_clock,
    wait_until,
)
from tests.integration.xmpp_client import XmppClient
from tests.prosody13_cases import prosody_13

pytestmark = pytest.mark.integration

HOST = "thirteen.example"


def ours(daemon: object) -> dict[str, int]:
    return {window: int(active(daemon, HOST, window) or 0) for window in ("1d", "7d", "30d")}  # type: ignore[arg-type]


def test_prosody_13_live_logins_accounts_and_connected_users(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    http_port = free_port()
    preamble = CLOCK + (
        f'statistics = "internal"\nstatistics_interval = "manual"\nhttp_ports = {{ {http_port} }}\n'
        'http_interfaces = { "127.0.0.1" }\nhttps_ports = {}\n'
    )
    modules = ("measure_active_users", "http_openmetrics")
    with running_prosody(tmp_path / "prosody", [HOST], preamble=preamble, runtime=prosody_13(), modules=modules) as p13:
        for user in ("alice", "bob", "carol", "dora"):
            p13.create_user(f"{user}@{HOST}", PASSWORD)
        plan = plan_sources(SourceOptions(config=p13.config), environ={})
        with serving(plan) as daemon:
            # A login shows within 2 s.
            started = time.monotonic()
            with XmppClient(p13.c2s_port, HOST) as client:
                client.login("alice", PASSWORD)
                wait_until(lambda: active(daemon, HOST) == 1, FRESH, "alice's login", since=started)
            # bob logs in ten days back and stays connected: active today only through the admin socket.
            set_clock(p13, int(time.time()) - 10 * DAY)
            bob = XmppClient(p13.c2s_port, HOST)
            try:
                bob.login("bob", PASSWORD)
                set_clock(p13, None)
                wait_until(lambda: connected(daemon, HOST) == 1 and active(daemon, HOST) == 2, FRESH, "bob online")
                # carol and dora log in; then carol is disabled and dora deleted through Prosody 13's shell.
                for user in ("carol", "dora"):
                    with XmppClient(p13.c2s_port, HOST) as client:
                        client.login(user, PASSWORD)
                wait_until(lambda: active(daemon, HOST) == 4, FRESH, "carol's and dora's logins")
                started = time.monotonic()
                p13.prosodyctl("shell", "user", "disable", f"carol@{HOST}")
                wait_until(lambda: active(daemon, HOST) == 3, FRESH, "carol disabled", since=started)
                p13.prosodyctl("shell", "user", "delete", f"dora@{HOST}")
                wait_until(lambda: active(daemon, HOST) == 2, FRESH, "dora deleted")
                # Prosody 13's own count, connected bob included, is ours.
                assert (
                    prosodys_own_counts(p13.admin_socket, http_port, HOST)
                    == ours(daemon)
                    == {"1d": 2, "7d": 2, "30d": 2}
                )
                p13.prosodyctl("shell", "user", "enable", f"carol@{HOST}")
                wait_until(lambda: active(daemon, HOST) == 3, FRESH, "carol enabled again")
                assert prosodys_own_counts(p13.admin_socket, http_port, HOST) == ours(daemon)
            finally:
                bob.close()
        socket = p13.admin_socket
    # Prosody 13 removes its socket and pidfile as it stops: the probe says so in those words.
    assert not socket.exists()
    caplog.set_level(logging.INFO, "prosody_lastlog")
    ConnectedProbe(plan.server).probe()
    assert any(f"Prosody is not running (no Prosody answers at {socket})" in r.getMessage() for r in caplog.records)

"""A real Prosody takes real XMPP logins while the daemon serves /metrics: freshness, connected users, deletion.

Prosody (Debian's 0.12 + prosody-modules) runs in the foreground with a throwaway config in a tmp dir:
mod_lastlog2 records logins, mod_admin_socket answers the daemon, mod_posix writes the pidfile. As in
fixtures/make_fixtures.py, the config replaces os.time() before any module loads, so the test can make
mod_lastlog2 stamp chosen times; it sets that clock through the admin socket. A missing Prosody fails.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from prosody_lastlog.core.connected import ConnectedSetting
from prosody_lastlog.core.model import Store, UserActivity
from prosody_lastlog.core.rules import Policy
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.prosody.running import ProsodyServer
from prosody_lastlog.sources.files import FileStoreReader
from prosody_lastlog.sources.plan import Plan, SourceOptions, plan_sources
from tests.integration.live_prosody import LiveProsody, running_prosody
from tests.integration.xmpp_client import XmppClient

pytestmark = pytest.mark.integration

HOST = "login.example"
NEW_HOST = "second.example"  # has no data at all until its first account is created
PASSWORD = "correct horse"
DAY = 86400
FRESH = 2.0  # seconds within which a change in Prosody must show in /metrics

# Before any module loads, os.time() is replaced, as in fixtures/make_fixtures.py, so the test can make mod_lastlog2
# stamp chosen times (set_clock).
# Prosody 13 reaches Lua's globals through `Lua` (0.12 has none).
CLOCK = """\
local lua = Lua or _G
local real_time = lua.os.time
local clock = {}
lua.package.loaded["test_clock"] = clock
lua.os.time = function(t)
	if t == nil and clock.now ~= nil then return clock.now end
	return real_time(t)
end
"""


def set_clock(prosody: LiveProsody, when: int | None) -> None:
    """Makes os.time() in Prosody (and so mod_lastlog2's stamps) read `when`; None restores the real clock."""
    prosody.shell(f">package.loaded.test_clock.now = {'nil' if when is None else int(when)}")


def read_log_entries(prosody: LiveProsody, host: str) -> dict[str, UserActivity]:
    """What mod_lastlog2 has on disk for `host`, read back as users."""
    result = FileStoreReader(prosody.data, policy=Policy(forced_store=Store.LASTLOG2)).read()
    data = result.hosts.get(host)
    return {} if data is None else {u.user: u for u in data.users}


def wait_until(condition: Callable[[], bool], seconds: float, what: str, *, since: float | None = None) -> float:
    """Polls `condition` until it holds; returns the seconds since `since` (default: now), or fails."""
    started = time.monotonic() if since is None else since
    deadline = time.monotonic() + seconds
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.02)


@pytest.fixture
def prosody(tmp_path: Path) -> Iterator[LiveProsody]:
    with running_prosody(tmp_path / "prosody", [HOST, NEW_HOST], preamble=CLOCK) as live:
        yield live


@contextmanager
def serving(plan: Plan, detection: ConnectedSetting = ConnectedSetting.AUTO) -> Iterator[Daemon]:
    """The daemon in-process on a free port, probing for connected users every 0.2 s; always stopped."""
    options = ServeOptions(port=0, connected=detection, connected_interval_seconds=0.2)
    daemon = Daemon(plan, windows=DEFAULT_WINDOWS, options=options)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def file_plan(prosody: LiveProsody) -> Plan:
    """What `prosody-lastlog serve --data-dir <data_path>` reads (the admin socket defaults to data_path)."""
    return plan_sources(SourceOptions(data_dir=prosody.data), environ={})


def scrape(daemon: Daemon) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, by (name, labels)."""
    with urllib.request.urlopen(daemon.server.url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(daemon: Daemon, name: str, **labels: str) -> float | None:
    """One sample of /metrics, or None when it is not exported."""
    return scrape(daemon).get((name, frozenset(labels.items())))


def detection_modes(daemon: Daemon) -> set[str]:
    """The modes prosody_lastlog_connected_detection_info reports as 1."""
    return {
        dict(labels)["mode"]
        for (name, labels), value in scrape(daemon).items()
        if name == "prosody_lastlog_connected_detection_info" and value == 1
    }


def active(daemon: Daemon, host: str, window: str = "1d") -> float | None:
    return sample(daemon, "prosody_active_users", host=host, window=window)


def connected(daemon: Daemon, host: str) -> float | None:
    return sample(daemon, "prosody_connected_users", host=host)


def test_a_real_login_shows_in_metrics_within_two_seconds(prosody: LiveProsody) -> None:
    prosody.prosodyctl("register", "alice", HOST, PASSWORD)
    with serving(file_plan(prosody)) as daemon:
        assert not active(daemon, HOST)
        started = time.monotonic()
        with XmppClient(prosody.c2s_port, HOST) as client:
            client.login("alice", PASSWORD)
            latency = wait_until(lambda: active(daemon, HOST) == 1, FRESH, "the login counted", since=started)
        print(f"login -> /metrics: {latency:.3f} s")
        assert latency < FRESH
        alice = read_log_entries(prosody, HOST)["alice"]
        assert alice.last_active is not None and abs(alice.last_active - time.time()) < 60
        # The stream close was logged as a logout: no open session is left in the record.
        wait_until(lambda: read_log_entries(prosody, HOST)["alice"].session_open is None, FRESH, "logout logged")
        assert active(daemon, HOST) == 1


def test_admin_socket_counts_a_connected_user_whose_login_is_old(prosody: LiveProsody) -> None:
    prosody.prosodyctl("register", "bob", HOST, PASSWORD)
    ten_days_ago = int(time.time()) - 10 * DAY
    with serving(file_plan(prosody)) as daemon:
        wait_until(lambda: detection_modes(daemon) == {"admin_socket"}, FRESH, "admin socket mode")
        set_clock(prosody, ten_days_ago)  # mod_lastlog2 stamps this login 10 days back
        try:
            client = XmppClient(prosody.c2s_port, HOST)
            try:
                client.login("bob", PASSWORD)
                wait_until(lambda: connected(daemon, HOST) == 1, FRESH, "bob connected")
                assert read_log_entries(prosody, HOST)["bob"].session_open == ten_days_ago
                # Active in 1d only because the admin socket lists his session, as mod_measure_active_users counts.
                assert active(daemon, HOST, "1d") == 1 and active(daemon, HOST, "7d") == 1
                assert detection_modes(daemon) == {"admin_socket"}
                set_clock(prosody, ten_days_ago + 60)  # the logout, a minute later, is just as old
            finally:
                client.close()
        finally:
            set_clock(prosody, None)
        started = time.monotonic()
        wait_until(lambda: connected(daemon, HOST) == 0 and active(daemon, HOST, "1d") == 0, FRESH, "logged out")
        print(f"logout -> /metrics: {time.monotonic() - started:.3f} s")
        assert active(daemon, HOST, "7d") == 0 and active(daemon, HOST, "30d") == 1
        bob = read_log_entries(prosody, HOST)["bob"]
        assert bob.last_active == ten_days_ago + 60 and bob.session_open is None


def test_heuristic_counts_a_login_since_prosody_started(prosody: LiveProsody) -> None:
    prosody.prosodyctl("register", "carol", HOST, PASSWORD)
    prosody.prosodyctl("register", "dave", HOST, PASSWORD)
    prosody.prosodyctl("register", "ivy", HOST, PASSWORD)
    plan = file_plan(prosody)
    server = ProsodyServer(admin_socket=None, pidfiles=(prosody.pidfile,))
    plan = Plan(plan.sources, known_hosts=plan.known_hosts, server=server)
    with serving(plan, ConnectedSetting.HEURISTIC) as daemon:
        assert detection_modes(daemon) == {"heuristic"}
        client = XmppClient(prosody.c2s_port, HOST)
        try:
            client.login("carol", PASSWORD)
            wait_until(lambda: connected(daemon, HOST) == 1, FRESH, "carol connected")
            assert active(daemon, HOST) == 1
        finally:
            client.drop()  # no stream close: Prosody still logs the logout when it sees the connection go
        wait_until(lambda: connected(daemon, HOST) == 0, FRESH, "carol's logout")
        assert active(daemon, HOST) == 1  # her login is recent
        # A login stamped before Prosody started looks like a leftover of an earlier run: not connected.
        old = int(time.time()) - 10 * DAY
        set_clock(prosody, old)
        try:
            with XmppClient(prosody.c2s_port, HOST) as client:
                client.login("dave", PASSWORD)
                wait_until(lambda: active(daemon, HOST, "30d") == 2, FRESH, "dave's login read")
                assert read_log_entries(prosody, HOST)["dave"].session_open == old
                assert connected(daemon, HOST) == 0 and active(daemon, HOST, "1d") == 1
                set_clock(prosody, old + 60)
        finally:
            set_clock(prosody, None)
        # Its known limit: Prosody fires resource-unbind (so mod_lastlog2 logs a logout) only for a session that
        # bound a resource. A connection that authenticates and goes away before binding leaves an open login,
        # which the heuristic counts as connected until Prosody restarts; the admin socket would count 0.
        client = XmppClient(prosody.c2s_port, HOST)
        try:
            client.authenticate("ivy", PASSWORD)
            wait_until(lambda: connected(daemon, HOST) == 1, FRESH, "ivy's login read")
            assert prosody.c2s_sessions() == 1
        finally:
            client.drop()
        wait_until(lambda: prosody.c2s_sessions() == 0, FRESH, "Prosody saw the connection go")
        assert read_log_entries(prosody, HOST)["ivy"].session_open is not None
        assert connected(daemon, HOST) == 1
        assert detection_modes(daemon) == {"heuristic"}


def test_a_new_host_appears_and_a_deleted_account_disappears(prosody: LiveProsody) -> None:
    with serving(file_plan(prosody)) as daemon:
        assert (
            sample(daemon, "prosody_activity_records", host=NEW_HOST) is None
            and not (prosody.data / "second%2eexample").exists()
        )
        prosody.prosodyctl("register", "frank", NEW_HOST, PASSWORD)
        with XmppClient(prosody.c2s_port, NEW_HOST) as client:
            client.login("frank", PASSWORD)
            wait_until(lambda: sample(daemon, "prosody_activity_records", host=NEW_HOST) == 1, FRESH, "the new host")
            assert active(daemon, NEW_HOST) == 1
        started = time.monotonic()
        prosody.prosodyctl("deluser", f"frank@{NEW_HOST}")
        assert not (prosody.data / "second%2eexample" / "lastlog2" / "frank.dat").exists()
        # The host stays exported, with zeros: its lastlog2 directory is still there.
        wait_until(lambda: sample(daemon, "prosody_activity_records", host=NEW_HOST) == 0, FRESH, "the account deleted")
        print(f"deluser -> /metrics: {time.monotonic() - started:.3f} s")
        assert active(daemon, NEW_HOST, "30d") == 0


def test_deleting_a_connected_account(prosody: LiveProsody) -> None:
    for user in ("gina", "hank"):
        prosody.prosodyctl("register", user, HOST, PASSWORD)
    records = prosody.data / "login%2eexample" / "lastlog2"
    with serving(file_plan(prosody)) as daemon:
        # Through the running server: it ends the session (logging the logout), then purges the user's files.
        client = XmppClient(prosody.c2s_port, HOST)
        try:
            client.login("gina", PASSWORD)
            wait_until(lambda: connected(daemon, HOST) == 1, FRESH, "gina connected")
            assert prosody.shell(f'user:delete("gina@{HOST}")') == "OK: User deleted"
            assert client.closed_by_server() == ["not-authorized"]
        finally:
            client.close()
        wait_until(lambda: sample(daemon, "prosody_activity_records", host=HOST) == 0, FRESH, "gina's account gone")
        assert connected(daemon, HOST) == 0 and not (records / "gina.dat").exists()
        # With prosodyctl (which edits the files; the server is not told) the session lives on, and its logout
        # makes mod_lastlog2 write the deleted user's record again: the account is back in every count.
        with XmppClient(prosody.c2s_port, HOST) as client:
            client.login("hank", PASSWORD)
            wait_until(lambda: connected(daemon, HOST) == 1, FRESH, "hank connected")
            prosody.prosodyctl("deluser", f"hank@{HOST}")
            wait_until(lambda: sample(daemon, "prosody_activity_records", host=HOST) == 0, FRESH, "hank's record gone")
            assert connected(daemon, HOST) == 0  # still in Prosody's sessions, but without a record, as Prosody counts
        wait_until(
            lambda: sample(daemon, "prosody_activity_records", host=HOST) == 1, FRESH, "hank's record written again"
        )
        assert active(daemon, HOST, "1d") == 1 and (records / "hank.dat").exists()
        hank = read_log_entries(prosody, HOST)["hank"]
        assert hank.last_active is not None and hank.session_open is None and hank.registered is None

"""A real Prosody 0.12 writing to PostgreSQL and to MariaDB: `serve --sql` reads it in full once, then only the
accounts that change. A login shows in /metrics at the next look (well within the default 60 s interval) with no
full read; /metrics says how changes are found and when the source was last read in full. With --sql-binlog, a
real Prosody 0.12 or 13 on a MariaDB with a binary log: a login shows within 2 s."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from tests.integration.live_prosody import running_prosody
from tests.integration.private_sql import private_mariadb
from tests.integration.test_prosody_login import active, sample, scrape, wait_until
from tests.integration.test_prosody_sql_live import SERVERS
from tests.integration.xmpp_client import XmppClient
from tests.prosody13_cases import prosody_13
from tests.sql_servers import SqlServer

pytestmark = pytest.mark.integration

HOST = "follow.example"
PASSWORD = "follow test password"
LOOK_SECONDS = 1.0  # --sql-interval here; the default is 60 s


def sql_preamble(server: SqlServer) -> str:
    """Prosody's storage settings for the database."""
    fields = ", ".join(f"{key} = {value!r}".replace("'", '"') for key, value in server.prosody_sql().items() if value)
    return f'storage = "sql"\nsql = {{ {fields} }}'


@pytest.mark.parametrize("engine", sorted(SERVERS))
def test_logins_written_by_prosody_show_at_the_next_look(engine: str, tmp_path: Path) -> None:
    with (
        SERVERS[engine]() as server,
        running_prosody(tmp_path / "prosody", [HOST], preamble=sql_preamble(server)) as live,
    ):
        live.create_user(f"alice@{HOST}", PASSWORD)
        with XmppClient(live.c2s_port, HOST) as client:
            client.login("alice", PASSWORD)
        plan = plan_sources(SourceOptions(sql_url=server.url()), environ={})
        options = ServeOptions(port=0, sql_interval_seconds=LOOK_SECONDS, resync_seconds=3600)
        daemon = Daemon(plan, windows=DEFAULT_WINDOWS, options=options)
        daemon.start()
        try:
            [source] = [s.name for s in daemon.refresher.sources]
            assert active(daemon, HOST) == 1
            full_read = sample(daemon, "prosody_lastlog_last_full_read_timestamp_seconds", source=source)
            assert full_read is not None
            how = "by_version" if engine == "postgresql" else "by_time"
            assert sample(daemon, "prosody_lastlog_sql_changes_info", source=source, found=how) == 1
            # An account Prosody 0.12 makes with no time in its rows: PostgreSQL finds it by version; on MariaDB its
            # count, looked at each time, no longer matches, and the source is read in full again.
            live.create_user(f"bob@{HOST}", PASSWORD)
            wait_until(lambda: sample(daemon, "prosody_accounts_registered", host=HOST) == 2, 30, "bob's account")
            after_account = sample(daemon, "prosody_lastlog_last_full_read_timestamp_seconds", source=source)
            assert (after_account == full_read) is (engine == "postgresql")
            written = time.monotonic()
            with XmppClient(live.c2s_port, HOST) as client:
                client.login("bob", PASSWORD)
            took = wait_until(lambda: active(daemon, HOST) == 2, 30, "bob's login in /metrics", since=written)
            assert took < 60  # the default interval; here the next look, a second away
            assert sample(daemon, "prosody_lastlog_last_full_read_timestamp_seconds", source=source) == after_account
            assert (sample(daemon, "prosody_lastlog_accounts_reread_total", source=source) or 0) >= 2
            assert sample(daemon, "prosody_lastlog_source_up", source=source) == 1
            assert ("prosody_lastlog_sql_changes_info", frozenset({("source", source), ("found", how)})) in scrape(
                daemon
            )
        finally:
            daemon.stop()


@pytest.mark.parametrize("version", ["0.12", "13"])
def test_with_the_binary_log_a_login_shows_within_two_seconds(version: str, tmp_path: Path) -> None:
    """`serve --sql-binlog` on a MariaDB with a row-based binary log that a real Prosody writes to: a new account,
    a login and a deleted account show in /metrics within 2 s of being committed, with no look (the interval is an
    hour) and no full read: all by the log."""
    with private_mariadb(binlog=True) as server:
        server.create_database("prosody")
        preamble = (
            'storage = "sql"\nsql = { driver = "MySQL", database = "prosody", host = "127.0.0.1", '
            f'port = {server.port}, username = "root", password = "" }}'
        )
        runtime = prosody_13() if version == "13" else None
        with running_prosody(tmp_path / "prosody", [HOST], preamble=preamble, runtime=runtime) as live:
            live.create_user(f"alice@{HOST}", PASSWORD)
            with XmppClient(live.c2s_port, HOST) as client:
                client.login("alice", PASSWORD)
            plan = plan_sources(SourceOptions(sql_url=server.url("prosody")), environ={})
            options = ServeOptions(port=0, sql_interval_seconds=3600, resync_seconds=7200, sql_binlog=True)
            daemon = Daemon(plan, windows=DEFAULT_WINDOWS, options=options)
            daemon.start()
            try:
                [source] = [s.name for s in daemon.refresher.sources]
                assert (active(daemon, HOST), sample(daemon, "prosody_accounts_registered", host=HOST)) == (1, 1)
                wait_until(lambda: sample(daemon, "prosody_lastlog_sql_changes_info", source=source, found="binlog")
                           == 1, 10, "following the log")  # fmt: skip
                full_read = sample(daemon, "prosody_lastlog_last_full_read_timestamp_seconds", source=source)
                live.create_user(f"bob@{HOST}", PASSWORD)  # 0.12: an account with no time in its rows
                created = time.monotonic()  # prosodyctl has returned: the rows are committed
                took = wait_until(lambda: sample(daemon, "prosody_accounts_registered", host=HOST) == 2, 10, "bob's",
                                  since=created)  # fmt: skip
                assert took < 2.0
                written = time.monotonic()
                with XmppClient(live.c2s_port, HOST) as client:
                    client.login("bob", PASSWORD)
                assert wait_until(lambda: active(daemon, HOST) == 2, 10, "bob's login", since=written) < 2.0
                live.prosodyctl("deluser", f"alice@{HOST}")
                deleted = time.monotonic()
                took = wait_until(lambda: active(daemon, HOST) == 1, 10, "alice's account deleted", since=deleted)
                assert took < 2.0
                assert sample(daemon, "prosody_accounts_registered", host=HOST) == 1
                # All of it by the log: no full read since the first, no look.
                assert sample(daemon, "prosody_lastlog_last_full_read_timestamp_seconds", source=source) == full_read
                assert sample(daemon, "prosody_lastlog_source_up", source=source) == 1
            finally:
                daemon.stop()

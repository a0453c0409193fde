"""A PostgreSQL that checks passwords (the shared one trusts 127.0.0.1): a wrong or missing password is refused,
and neither it nor the right one appears in what `count` and `serve` print or serve."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from psycopg import sql

from tests import prosody_table
from tests.integration.private_sql import (
    PrivatePostgres,
    PrivateServer,
    _running,
    postgres_bindir,
    unprivileged_user,
)
from tests.integration.servers import free_port
from tests.test_privacy import (
    NOW,
    SQL_PASSWORD,
    WRONG_SQL_PASSWORD,
    assert_runs,
    fixture_sql_rows,
    http_get,
    run_all,
    secrets,
    serving,
)

pytestmark = pytest.mark.integration

ROLE = "prosody_reader"
DATABASE = "prosody"


class PasswordPostgres(PrivatePostgres):
    """PrivatePostgres where every role but the superuser logs in over TCP with scram-sha-256."""

    def initialize(self) -> None:
        """initdb, then a pg_hba.conf that asks for passwords (written over initdb's, keeping its owner)."""
        super().initialize()
        (self.data_dir / "pg_hba.conf").write_text(
            "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )


@contextmanager
def password_postgres() -> Iterator[PrivateServer]:
    """A new cluster on a free port with the fixture rows in `prosody`, readable by ROLE with SQL_PASSWORD."""
    base = Path(tempfile.mkdtemp(prefix="prosody-lastlog-postgres-"))
    server = PasswordPostgres(base, free_port(), unprivileged_user("postgres"), postgres_bindir())
    with _running(server) as running:
        running.create_database(DATABASE)
        with running.connect(DATABASE, autocommit=True) as connection:
            prosody_table.create(connection, "PostgreSQL")
            prosody_table.replace_rows(connection, "PostgreSQL", fixture_sql_rows())
            connection.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), SQL_PASSWORD))
            connection.execute(sql.SQL("GRANT SELECT ON prosody TO {}").format(sql.Identifier(ROLE)))
        yield running


def url(server: PrivateServer, password: str | None) -> str:
    """The --sql URL as ROLE, with `password` in it unless None."""
    userinfo = ROLE + (f":{password}" if password is not None else "")
    return f"postgresql://{userinfo}@127.0.0.1:{server.port}/{DATABASE}"


def test_a_refused_password_is_not_printed(tmp_path: Path) -> None:
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text(SQL_PASSWORD + "\n")
    wrong.write_text(WRONG_SQL_PASSWORD + "\n")
    now = ["--now", str(NOW), "--format", "json"]
    with password_postgres() as server:
        commands = {
            "right, URL": ["count", "--sql", url(server, SQL_PASSWORD), *now],
            "right, file": ["count", "--sql", url(server, None), "--sql-password-file", str(right), *now],
            "wrong, URL": ["count", "--sql", url(server, WRONG_SQL_PASSWORD), *now],
            "wrong, file": ["count", "--sql", url(server, None), "--sql-password-file", str(wrong), *now],
            "wrong file beats right URL": ["count", "--sql", url(server, SQL_PASSWORD), "--sql-password-file",
                                           str(wrong), *now],
            "none": ["count", "--sql", url(server, None), *now],
        }  # fmt: skip
        runs = run_all(commands)
        assert_runs(runs, lambda label: 0 if label.startswith("right") else 1)
        for label in ["wrong, URL", "wrong, file", "wrong file beats right URL"]:
            assert "password authentication failed" in runs[label].stderr, runs[label].stderr
        assert '"problems": 3' in runs["right, file"].stdout
        port = free_port()
        args = ["--sql", url(server, WRONG_SQL_PASSWORD), "--listen", f"127.0.0.1:{port}", "--as-of", str(NOW)]
        with serving(args, tmp_path) as served:
            status, _, health = http_get(f"http://127.0.0.1:{port}/healthz")
            assert status == 503 and "password authentication failed" in health
            metrics = http_get(f"http://127.0.0.1:{port}/metrics")[2]
            assert served.stop() == 0
    for where, text in [
        ("healthz", health),
        ("metrics", metrics),
        ("stdout", served.stdout),
        ("stderr", served.stderr),
    ]:
        secrets().assert_clean(f"serve {where}", text)

"""Real Prosody writes into fresh PostgreSQL and MariaDB databases; our counts equal what it reports.

The servers run on 127.0.0.1 (CI provides them); a missing server fails the test.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from prosody_lastlog.cli import main
from prosody_lastlog.core.model import Store
from prosody_lastlog.core.rules import Policy
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.prosody.sql_settings import parse_sql_url
from prosody_lastlog.sources.sql_source import SqlSource
from tests.conftest import FIXTURES, load_generator
from tests.sql_servers import SqlServer, fresh_mysql_database, fresh_postgres_database

pytestmark = pytest.mark.integration

SERVERS: dict[str, Callable[[], AbstractContextManager[SqlServer]]] = {
    "postgresql": fresh_postgres_database,
    "mysql": fresh_mysql_database,
}


@pytest.fixture(params=sorted(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[SqlServer]:
    with SERVERS[request.param]() as fresh:
        yield fresh


@pytest.mark.parametrize("case", ["boundaries", "sample"])
def test_prosody_sql_counts_equal_ours(server: SqlServer, case: str, tmp_path: Path) -> None:
    generator = load_generator()
    expected = generator.generate_case(FIXTURES / "scenarios" / f"{case}.json", tmp_path, sql=server.prosody_sql())
    for method in ("pushdown", "stream"):
        source = SqlSource(parse_sql_url(server.url()), policy=Policy(forced_store=Store.LASTLOG2), method=method)
        result = source.count(now=expected["now"], windows=DEFAULT_WINDOWS)
        assert not result.problems
        assert set(result.methods.values()) == {method}
        for host, by_window in expected["active_users"].items():
            assert dict(result.counts[host].active) == by_window, (method, host)


def test_count_with_a_prosody_config_naming_the_database(
    server: SqlServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generator = load_generator()
    expected = generator.generate_case(FIXTURES / "scenarios" / "sample.json", tmp_path, sql=server.prosody_sql())
    sql = ", ".join(f"{key} = {json.dumps(value)}" for key, value in server.prosody_sql().items() if value != "")
    virtual_hosts = [host for host in expected["active_users"] if not host.startswith("conference.")]
    declared = "".join(f'VirtualHost "{host}"\n' for host in virtual_hosts)
    config = tmp_path / "prosody.cfg.lua"
    config.write_text(f'modules_enabled = {{ "lastlog2" }}\nstorage = "sql"\nsql = {{ {sql} }}\n{declared}')
    assert main(["count", "--config", str(config), "--now", str(expected["now"]), "--format", "json"]) == 0
    counted = json.loads(capsys.readouterr().out)["hosts"]
    assert virtual_hosts
    for host in virtual_hosts:
        assert counted[host]["active"] == expected["active_users"][host], host

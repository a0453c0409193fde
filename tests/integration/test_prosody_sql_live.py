"""Real Prosody writes into fresh PostgreSQL and MariaDB databases; our counts equal what it reports.

The servers run on 127.0.0.1 (CI provides them); a missing server fails the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from prosody_lastlog.database import parse_sql_url
from prosody_lastlog.records import Store
from prosody_lastlog.sources import SqlSource
from prosody_lastlog.windows import DEFAULT_WINDOWS
from tests.conftest import FIXTURES
from tests.integration.test_prosody_live import load_generator
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
        source = SqlSource(parse_sql_url(server.url()), store=Store.LASTLOG2, method=method)
        result = source.count(now=expected["now"], windows=DEFAULT_WINDOWS)
        assert not result.problems
        assert set(result.methods.values()) == {method}
        for host, by_window in expected["active_users"].items():
            assert dict(result.counts[host].active) == by_window, (method, host)

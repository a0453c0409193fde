"""On every fixture written by real Prosody, our counts equal what mod_measure_active_users reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prosody_lastlog.database import SqlSettings
from prosody_lastlog.readers import SourceCount
from prosody_lastlog.records import Store
from prosody_lastlog.sources import FileSource, SqlSource
from prosody_lastlog.windows import DEFAULT_WINDOWS
from tests.conftest import CASES

EXPECTED = sorted(CASES.glob("*/expected.json"))


def test_there_are_fixtures() -> None:
    cases = {"sample", "boundaries", "lastlog_legacy", "account_activity", "large", "hostile"}
    cases |= {f"{case}-sqlite" for case in ("sample", "boundaries", "lastlog_legacy", "account_activity")}
    assert {p.parent.name for p in EXPECTED} >= cases


def count_case(case_dir: Path, now: int) -> SourceCount:
    # Prosody 0.12's mod_measure_active_users reads lastlog2, so compare on that store.
    if (case_dir / "prosody.sqlite").exists():
        source = SqlSource(SqlSettings("SQLite3", str(case_dir / "prosody.sqlite")), store=Store.LASTLOG2)
        return source.count(now=now, windows=DEFAULT_WINDOWS)
    return FileSource(case_dir / "data", store=Store.LASTLOG2).count(now=now, windows=DEFAULT_WINDOWS)


@pytest.mark.parametrize("expected_path", EXPECTED, ids=lambda p: p.parent.name)
def test_counts_equal_prosodys(expected_path: Path) -> None:
    expected = json.loads(expected_path.read_text())
    result = count_case(expected_path.parent, expected["now"])
    # Only the `hostile` case has bad files: each must be reported by name, with its kind.
    assert {p.where: p.kind for p in result.problems} == expected.get("problems", {})
    assert expected["active_users"], "the oracle reported no hosts"
    for host, by_window in expected["active_users"].items():
        assert dict(result.counts[host].active) == by_window, host


def test_sqlite_fixtures_equal_their_file_twins() -> None:
    for sqlite_case in sorted(CASES.glob("*-sqlite")):
        twin = CASES / sqlite_case.name.removesuffix("-sqlite")
        now = json.loads((twin / "expected.json").read_text())["now"]
        from_sql = SqlSource(SqlSettings("SQLite3", str(sqlite_case / "prosody.sqlite"))).count(
            now=now, windows=DEFAULT_WINDOWS
        )
        from_files = FileSource(twin / "data").count(now=now, windows=DEFAULT_WINDOWS)
        assert from_sql.counts == from_files.counts, sqlite_case.name
        assert set(from_sql.methods.values()) == {"pushdown"}


def test_account_activity_store_counts() -> None:
    """Prosody 0.12 cannot count account_activity, so: on thirteen.example the same events went to lastlog2
    too, and Prosody's lastlog2 counts are the oracle; on only13.example the counts follow from the scenario
    (gus -100 s, hal -600000 s, jan -2591999 s, kai -2592000 s; ida only registered, which writes nothing)."""
    case = CASES / "account_activity"
    expected = json.loads((case / "expected.json").read_text())
    result = FileSource(case / "data").count(now=expected["now"], windows=DEFAULT_WINDOWS)
    assert {host: c.store for host, c in result.counts.items()} == {
        "only13.example": Store.ACCOUNT_ACTIVITY,
        "thirteen.example": Store.ACCOUNT_ACTIVITY,
    }
    assert dict(result.counts["thirteen.example"].active) == expected["active_users"]["thirteen.example"]
    assert dict(result.counts["only13.example"].active) == {"1d": 1, "7d": 2, "30d": 3}
    assert result.counts["only13.example"].accounts == 4

"""On every fixture written by real Prosody 0.12, our counts equal what mod_measure_active_users reported, read with
no option, as on the Debian 12 server that wrote them (this machine's Prosody and module). Prosody 13's cases:
tests/test_oracle13.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prosody_lastlog.core.model import Store, StoreBasis
from prosody_lastlog.core.rules import ModuleStore, Policy
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.prosody.install import find_installed
from prosody_lastlog.prosody.sql_settings import SqlSettings
from prosody_lastlog.sources.kinds import FileSource, count_all
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from prosody_lastlog.sources.results import SourceCount
from prosody_lastlog.sources.sql_source import SqlSource
from tests.conftest import CASES

# The account_activity cases are Prosody 0.12 imitating Prosody 13's store (see test_account_activity_store_counts).
EXPECTED = sorted(
    path for path in CASES.glob("*/expected.json") if not path.parent.name.startswith(("prosody13", "account_activity"))
)


def test_there_are_fixtures() -> None:
    cases = {"sample", "boundaries", "lastlog_legacy", "large", "hostile"}
    cases |= {f"{case}-sqlite" for case in ("sample", "boundaries", "lastlog_legacy")}
    assert {p.parent.name for p in EXPECTED} >= cases
    assert {"account_activity", "prosody13", "prosody13-sqlite"} <= {p.name for p in CASES.iterdir()}


def count_case(case_dir: Path, now: int) -> SourceCount:
    """The counts `prosody-lastlog count --data-dir` (or `--sql`) gives, on this machine."""
    if (case_dir / "prosody.sqlite").exists():
        options = SourceOptions(sql_url=f"sqlite://{case_dir / 'prosody.sqlite'}")
    else:
        options = SourceOptions(data_dir=case_dir / "data")
    totals, _ = count_all(plan_sources(options, environ={}).sources, now=now, windows=DEFAULT_WINDOWS)
    return totals


def test_this_machine_runs_prosody_0_12_and_its_module_reads_lastlog2() -> None:
    """What makes the zero-config reads below Prosody 0.12's: the installed package and its module."""
    installed = find_installed()
    assert installed.version is not None and installed.version.startswith("0.12"), "run `make test`"
    assert installed.module is not None and installed.module.store is ModuleStore.LASTLOG2
    assert not installed.module.checks_accounts  # Debian 12's revision: no user_is_enabled


@pytest.mark.parametrize("expected_path", EXPECTED, ids=lambda p: p.parent.name)
def test_counts_equal_prosodys(expected_path: Path) -> None:
    expected = json.loads(expected_path.read_text())
    result = count_case(expected_path.parent, expected["now"])
    # Only the `hostile` case has bad files: each must be reported by name, with its kind.
    assert {p.where: p.kind for p in result.problems} == expected.get("problems", {})
    assert expected["active_users"], "the oracle reported no hosts"
    for host, by_window in expected["active_users"].items():
        assert dict(result.counts[host].active) == by_window, host
        assert result.counts[host].counting.basis is StoreBasis.MODULE, host


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
    """Prosody 0.12 imitating Prosody 13's store (it cannot count it): on thirteen.example the same events went to
    lastlog2 too, and Prosody's lastlog2 counts are the oracle; on only13.example the counts follow from the scenario
    (gus -100 s, hal -600000 s, jan -2591999 s, kai -2592000 s; ida only registered, which writes nothing). The data
    is taken to be Prosody 13's, whose module counts only existing accounts: 0.12 wrote none, so every account is
    made to count, as Prosody 0.12 counts them."""
    case = CASES / "account_activity"
    expected = json.loads((case / "expected.json").read_text())
    result = FileSource(case / "data", policy=Policy(count_disabled=True)).count(
        now=expected["now"], windows=DEFAULT_WINDOWS
    )
    assert {host: c.store for host, c in result.counts.items()} == {
        "only13.example": Store.ACCOUNT_ACTIVITY,
        "thirteen.example": Store.ACCOUNT_ACTIVITY,
    }
    assert dict(result.counts["thirteen.example"].active) == expected["active_users"]["thirteen.example"]
    assert dict(result.counts["only13.example"].active) == {"1d": 1, "7d": 2, "30d": 3}
    assert result.counts["only13.example"].activity_records == 4
    as_13 = FileSource(case / "data").count(now=expected["now"], windows=DEFAULT_WINDOWS)
    assert as_13.counts["only13.example"].no_account == as_13.counts["only13.example"].disabled == 4

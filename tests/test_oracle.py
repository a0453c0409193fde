"""On every fixture written by real Prosody, our counts equal what mod_measure_active_users reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prosody_lastlog.counting import count_hosts
from prosody_lastlog.readers.files import FileStoreReader
from prosody_lastlog.records import Store
from prosody_lastlog.windows import DEFAULT_WINDOWS
from tests.conftest import CASES

EXPECTED = sorted(CASES.glob("*/expected.json"))


def test_there_are_fixtures() -> None:
    cases = {"sample", "boundaries", "lastlog_legacy", "account_activity", "large", "hostile"}
    assert {p.parent.name for p in EXPECTED} >= cases


@pytest.mark.parametrize("expected_path", EXPECTED, ids=lambda p: p.parent.name)
def test_counts_equal_prosodys(expected_path: Path) -> None:
    expected = json.loads(expected_path.read_text())
    # Prosody 0.12's mod_measure_active_users reads lastlog2, so compare on that store.
    result = FileStoreReader(expected_path.parent / "data", store=Store.LASTLOG2).read()
    counts = count_hosts(result.hosts.values(), now=expected["now"], windows=DEFAULT_WINDOWS)
    # Only the `hostile` case has bad files: each must be reported by name, with its kind.
    assert {p.where: p.kind for p in result.problems} == expected.get("problems", {})
    assert expected["active_users"], "the oracle reported no hosts"
    for host, by_window in expected["active_users"].items():
        assert dict(counts[host].active) == by_window, host

"""Runs the real Prosody (Debian's prosody + prosody-modules) on loopback to write data and count it.

A missing Prosody is a failure, not a skip: `make test` installs it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from prosody_lastlog.core.counting import count_hosts
from prosody_lastlog.core.model import Store
from prosody_lastlog.core.rules import Policy
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.sources.files import FileStoreReader
from tests.conftest import CASES, FIXTURES, load_generator

pytestmark = pytest.mark.integration


def test_prosody_is_installed() -> None:
    assert shutil.which("prosody"), "Debian's prosody package is missing: run `make test`"
    assert Path("/usr/lib/prosody/modules/mod_lastlog2/mod_lastlog2.lua").exists(), "prosody-modules is missing"


@pytest.mark.parametrize("case", ["boundaries", "lastlog_legacy"])
def test_live_prosody_counts_equal_ours(case: str, tmp_path: Path) -> None:
    generator = load_generator()
    expected = generator.generate_case(FIXTURES / "scenarios" / f"{case}.json", tmp_path)
    result = FileStoreReader(tmp_path / case / "data", policy=Policy(forced_store=Store.LASTLOG2)).read()
    ours = count_hosts(result.hosts.values(), now=expected["now"], windows=DEFAULT_WINDOWS)
    assert not result.problems
    assert expected["active_users"]
    for host, by_window in expected["active_users"].items():
        assert dict(ours[host].active) == by_window, host
    # The committed fixture of this case holds the same records as the live run just wrote.
    committed = FileStoreReader(CASES / case / "data").read()
    live = FileStoreReader(tmp_path / case / "data").read()
    assert {h: sorted(d.users, key=str) for h, d in live.hosts.items()} == {
        h: sorted(d.users, key=str) for h, d in committed.hosts.items()
    }

"""`count --format prom`: the Prometheus text format node_exporter's textfile collector accepts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from prosody_lastlog.cli import main
from tests.conftest import case_data

SAMPLE_NOW = json.loads((case_data("sample").parent / "expected.json").read_text())["now"]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["count", "--data-dir", str(case_data("sample")), "--now", str(SAMPLE_NOW), *args]) == 0
    return capsys.readouterr().out


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_prom_values_equal_the_json_counts(capsys: pytest.CaptureFixture[str]) -> None:
    hosts = json.loads(run(capsys, "--format", "json"))["hosts"]
    exposed = samples(run(capsys, "--format", "prom"))
    for host, counts in hosts.items():
        for window, value in counts["active"].items():
            assert exposed[("prosody_active_users", (("host", host), ("window", window)))] == value
            assert (
                exposed[("prosody_registrations", (("host", host), ("window", window)))] == counts["registered"][window]
            )
        assert exposed[("prosody_activity_records", (("host", host),))] == counts["activity_records"]
        assert exposed[("prosody_accounts_never_active", (("host", host),))] == counts["never_active"]
    assert exposed[("prosody_lastlog_source_up", (("source", f"files {case_data('sample')}"),))] == 1


def test_no_timestamps_no_user_labels_and_one_help_per_family(capsys: pytest.CaptureFixture[str]) -> None:
    text = run(capsys, "--format", "prom")
    families = list(text_string_to_metric_families(text))
    assert all(sample.timestamp is None for family in families for sample in family.samples)
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    assert len(names) == len(set(names))
    labels = {key for (_, pairs) in samples(text) for key, _ in pairs}
    assert labels <= {"host", "window", "source", "reason", "version", "mode", "store", "basis", "accounts"}
    assert "192.0.2" not in text and "alice" not in text


def test_compatibility_names_and_totals(capsys: pytest.CaptureFixture[str]) -> None:
    compat = samples(run(capsys, "--format", "prom", "--compat-metrics"))
    assert compat[("prosody_mod_measure_active_users__active_users_30d", (("host", "example.com"),))] == 13
    totals = samples(run(capsys, "--format", "prom", "--totals-only"))
    hosts = {dict(pairs).get("host") for (name, pairs) in totals if name == "prosody_active_users"}
    assert hosts == {"all"}
    assert totals[("prosody_active_users", (("host", "all"), ("window", "30d")))] == 13 + 7 + 7


def test_output_file_is_replaced_atomically(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "prosody.prom"
    target.write_text("old\n")
    assert main(["count", "--data-dir", str(case_data("sample")), "--format", "prom", "--output", str(target)]) == 0
    assert "prosody_active_users" in target.read_text()
    assert sorted(os.listdir(tmp_path)) == ["prosody.prom"]  # no temp file left behind
    assert capsys.readouterr().out == ""


def test_unwritable_output_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "prosody.prom"
    assert main(["count", "--data-dir", str(case_data("sample")), "--format", "prom", "--output", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write" in err

"""The command line as an admin or a script uses it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

from prosody_lastlog.cli import _setup_logging, main
from prosody_lastlog.prosody.pathnames import encode_name
from tests.conftest import case_data
from tests.test_daemon import prosody_writes

SAMPLE_NOW = json.loads((case_data("sample").parent / "expected.json").read_text())["now"]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_the_documented_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "count", "--data-dir", str(case_data("sample")), "--now", str(SAMPLE_NOW), "--format", "json"
    )
    assert code == 0
    document = json.loads(out)
    assert document["now"] == SAMPLE_NOW
    assert document["windows"] == {"1d": 86400, "7d": 604800, "30d": 2592000}
    assert document["problems"] == 0
    assert document["hosts"]
    for host, counts in document["hosts"].items():
        assert "%" not in host
        assert set(counts) >= {"active", "activity_records", "never_active", "registered"}
        assert set(counts["active"]) == set(counts["registered"]) == {"1d", "7d", "30d"}
        assert all(isinstance(n, int) for n in counts["active"].values())
        assert counts["active"]["1d"] <= counts["active"]["7d"] <= counts["active"]["30d"] <= counts["activity_records"]


def test_windows_and_host_filter(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "count", "--data-dir", str(case_data("sample")), "--now", str(SAMPLE_NOW),
        "--format", "json", "--window", "1h", "--window", "90d", "--host", "example.com",
    )  # fmt: skip
    document = json.loads(out)
    assert code == 0
    assert document["windows"] == {"1h": 3600, "90d": 7776000}
    assert list(document["hosts"]) == ["example.com"]
    assert set(document["hosts"]["example.com"]["active"]) == {"1h", "90d"}


def test_table_lists_every_host(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "count", "--data-dir", str(case_data("sample")), "--now", str(SAMPLE_NOW))
    assert code == 0
    table, _, notes = out.partition("\n\n")
    lines = table.splitlines()
    assert lines[0].split()[:6] == ["host", "store", "registered", "records", "never", "left"]
    hosts = {line.split()[0]: line.split()[1:3] for line in lines[1:]}
    assert "example.com" in hosts and "münchen.example" in hosts
    # Under the table, how each host is counted, once per distinct way: here, every host alike.
    assert {tuple(cells) for cells in hosts.values()} == {("lastlog2", "[1]")}
    assert notes.startswith("[1] lastlog2 (") and "accounts: Prosody 0.12 has no user_is_enabled" in notes


def test_missing_data_dir_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "count", "--data-dir", str(tmp_path / "missing"))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "missing" in err and "No such file" in err


def test_bad_window_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["count", "--window", "yesterday"])
    assert exit_info.value.code == 2
    assert "invalid window" in capsys.readouterr().err


def test_problems_summary_names_no_user_and_verbose_names_files(
    capsys: pytest.CaptureFixture[str], sample_tree: Path
) -> None:
    (sample_tree / encode_name("example.com") / "lastlog2" / "secret%2euser.dat").write_bytes(b"return {")
    code, out, err = run(capsys, "count", "--data-dir", str(sample_tree), "--format", "json")
    assert code == 0 and json.loads(out)["problems"] == 1
    assert "1 problem(s)" in err and "invalid: 1" in err
    assert "secret" not in err and "192.0.2" not in err and "192.0.2" not in out
    _, _, verbose_err = run(capsys, "count", "--data-dir", str(sample_tree), "-v")
    assert "example%2ecom/lastlog2/secret%2euser.dat: invalid:" in verbose_err


def test_clock_skew_is_reported_once_per_host(capsys: pytest.CaptureFixture[str]) -> None:
    boundaries = case_data("boundaries")
    now = json.loads((boundaries.parent / "expected.json").read_text())["now"]
    _, _, err = run(capsys, "count", "--data-dir", str(boundaries), "--now", str(now))
    assert err.count("in the future") == 1


def test_python_dash_m_runs() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "prosody_lastlog", "count", "--data-dir", str(case_data("sample")), "--format", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(completed.stdout)["hosts"]


def test_sql_source_gives_the_same_counts_as_the_file_twin(capsys: pytest.CaptureFixture[str]) -> None:
    sqlite = case_data("sample").parent.parent / "sample-sqlite" / "prosody.sqlite"
    common = ["--now", str(SAMPLE_NOW), "--format", "json"]
    _, from_files, _ = run(capsys, "count", "--data-dir", str(case_data("sample")), *common)
    for method in ("auto", "stream"):
        code, from_sql, _ = run(capsys, "count", "--sql", f"sqlite:///{sqlite}", "--sql-method", method, *common)
        assert code == 0
        assert json.loads(from_sql)["hosts"] == json.loads(from_files)["hosts"]


def test_sql_password_never_shows(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("hunter2-from-file\n")
    code, out, err = run(
        capsys, "count", "--sql", "postgresql://prosody:hunter2-in-url@127.0.0.1:1/prosody",
        "--sql-password-file", str(password_file), "-v",
    )  # fmt: skip
    assert code == 1
    assert "127.0.0.1:1/prosody" in err
    assert "hunter2" not in out + err


def test_help_shows_no_secret_and_documents_sources(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["count", "--help"])
    help_text = capsys.readouterr().out
    assert "--config" in help_text and "--sql" in help_text and "--data-dir" in help_text


def test_usage_errors_mask_url_passwords(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--sql", "postgresql://u:TopSecret@h/db", "count"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "TopSecret" not in err and "u:***@h" in err


@pytest.mark.parametrize(
    "args",
    [
        ["--sql", "sqlite:///x", "--data-dir", "/tmp"],
        ["--config", "/x", "--data-dir", "/y"],
        ["--sql-password-file", "/p"],
    ],
)
def test_conflicting_source_options_are_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["count", *args])
    assert exit_info.value.code == 2


def test_count_counts_users_connected_since_prosody_started(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data, now = tmp_path / "data", int(time.time())
    two_days_ago = now - 2 * 86400
    # alice: a session opened 2 days ago and never closed; bob logged out a minute after logging in.
    prosody_writes(data, "alice", "example.com", f"{{ login = {{ timestamp = {two_days_ago} }} }}")
    bob = f"{{ login = {{ timestamp = {two_days_ago} }}, logout = {{ timestamp = {two_days_ago + 60} }} }}"
    prosody_writes(data, "bob", "example.com", bob)
    pidfile = tmp_path / "prosody.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # a running process, said to have started 3 days ago
    args = ["count", "--data-dir", str(data), "--format", "json", "--pidfile", str(pidfile)]
    with mock.patch("prosody_lastlog.prosody.running._process_start", return_value=now - 3 * 86400):
        document = json.loads(run(capsys, *args, "--connected", "heuristic")[1])
        assert document["connected_detection"] == "heuristic"
        assert document["hosts"]["example.com"]["connected"] == 1
        assert document["hosts"]["example.com"]["active"]["1d"] == 1  # alice: connected, so active today
        document = json.loads(run(capsys, *args, "--connected", "off")[1])
        assert document["connected_detection"] == "none"
        assert document["hosts"]["example.com"]["active"]["1d"] == 0
        document = json.loads(run(capsys, *args, "--now", str(now))[1])  # a replayed moment: nobody is connected
        assert document["connected_detection"] == "none"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--listen", "localhost", "--listen wants address:port"),
        ("--resync-interval", "soon", "--resync-interval: invalid window"),
        ("--sql-interval", "1x", "--sql-interval: invalid window"),
        ("--connected-interval", "5 minutes", "--connected-interval: invalid window"),
    ],
)
def test_bad_serve_options_are_usage_errors(
    option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--data-dir", str(case_data("sample")), option, value])
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_push_exporters_log_like_the_rest(capsys: pytest.CaptureFixture[str]) -> None:
    exporters_log = logging.getLogger("exporters")
    saved = (exporters_log.handlers[:], exporters_log.level, exporters_log.propagate)
    try:
        _setup_logging(verbose=False, daemon=True)
        logging.getLogger("exporters.runner").info("influxdb: push failed")
        assert capsys.readouterr().err == "prosody-lastlog: INFO: influxdb: push failed\n"
    finally:
        exporters_log.handlers[:], exporters_log.level, exporters_log.propagate = saved

"""--config-file: a TOML file of the same options; every problem reported at once; SIGHUP reloads it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from prosody_lastlog.cli import main, parse_settings
from prosody_lastlog.daemon.lifecycle import Daemon
from prosody_lastlog.serve import _reload, _start_daemon
from prosody_lastlog.settings import SettingsError, node_names, read_settings_file
from tests.conftest import case_data
from tests.integration.servers import free_port

SAMPLE_NOW = json.loads((case_data("sample").parent / "expected.json").read_text())["now"]


def test_settings_map_to_options(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(
        'data_dir = "/srv/prosody"\nwindows = ["1d", "90d"]\ntotals_only = true\n'
        'sql_interval = "2m"\nscan_workers = 2\n'
    )
    assert read_settings_file(path) == {
        "scan_workers": 2,
        "data_dir": Path("/srv/prosody"),
        "window": ["1d", "90d"],
        "totals_only": True,
        "sql_interval": "2m",
    }


def test_every_problem_is_reported_at_once_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('windows = ["1x"]\npolling = "yes"\nstore = "roster"\ncolour = "blue"\nscan_workers = 0\n')
    with pytest.raises(SettingsError) as raised:
        read_settings_file(path)
    lines = str(raised.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == ["windows", "polling", "store", "colour", "scan_workers"]


def test_flags_win_over_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(f'data_dir = "{case_data("sample")}"\nwindows = ["1d"]\n')
    assert main(["count", "--config-file", str(path), "--now", str(SAMPLE_NOW), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["windows"] == {"1d": 86400}
    args = ["count", "--config-file", str(path), "--now", str(SAMPLE_NOW), "--format", "json", "--window", "7d"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["windows"] == {"7d": 604800}


def test_a_bad_file_is_exit_2_with_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('windows = "1d"\nlisten = 5\n')
    assert main(["serve", "--config-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "windows: expected a list of strings" in err and "listen: expected a non-empty string" in err


def metrics(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def metrics_or_nothing(url: str) -> str:
    try:
        return metrics(url)
    except OSError:
        return ""


def test_sighup_reloads_and_a_bad_reload_keeps_running(sample_tree: Path, tmp_path: Path) -> None:
    port = free_port()
    settings = tmp_path / "settings.toml"
    common = f'data_dir = "{sample_tree}"\nlisten = "127.0.0.1:{port}"\n'
    settings.write_text(common + 'windows = ["1d"]\n')
    command = [
        sys.executable,
        "-m",
        "prosody_lastlog",
        "serve",
        "--config-file",
        str(settings),
        "--as-of",
        str(SAMPLE_NOW),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None and process.stderr is not None
            while "serving" not in (line := process.stdout.readline()):
                assert line, process.stderr.read()
            url = f"http://127.0.0.1:{port}/metrics"
            assert 'window="7d"' not in metrics(url)
            settings.write_text(common + 'windows = ["1d", "7d"]\n')
            process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while 'window="7d"' not in metrics_or_nothing(url):  # the port is briefly closed while restarting
                assert time.monotonic() < deadline, "SIGHUP did not reload"
                time.sleep(0.1)
            settings.write_text(common + "windows = 7\n")
            process.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            assert 'window="7d"' in metrics(url)  # the old configuration keeps running
            process.send_signal(signal.SIGTERM)
            assert process.wait(10) == 0
            assert "reload refused" in process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()


def test_a_flag_given_its_default_value_still_wins(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(
        f'data_dir = "{case_data("sample")}"\nsql_method = "stream"\nwindows = ["1d"]\n'
        '[exporters.graphite]\nhost = "graphite.example"\n'
    )
    argv = ["serve", "--config-file", str(path), "--sql-method", "auto"]  # auto: the default
    merged = parse_settings(argv)
    assert merged.sql_method == "auto" and merged.data_dir == case_data("sample") and merged.window == ["1d"]
    assert merged.exporters == {"graphite": {"host": "graphite.example"}}


def test_where_the_data_is_on_the_command_line_replaces_the_files(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text('config = "/etc/prosody/prosody.cfg.lua"\nsql_password_file = "/etc/pw"\nwindows = ["1d"]\n')
    argv = ["count", "--config-file", str(path), "--data-dir", str(case_data("sample"))]
    merged = parse_settings(argv)
    assert merged.data_dir == case_data("sample") and merged.config is None and merged.sql_password_file is None
    assert merged.window == ["1d"]
    argv = ["count", "--config-file", str(path), "--sql", "postgresql://prosody@db/prosody"]
    merged = parse_settings(argv)
    assert merged.config is None and merged.sql_password_file == Path("/etc/pw")


def test_a_reload_counts_while_the_old_configuration_serves_and_keeps_push_queues(
    sample_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = free_port()  # nobody listens: points stay queued
    path = tmp_path / "settings.toml"
    path.write_text(
        f'data_dir = "{sample_tree}"\nlisten = "127.0.0.1:{free_port()}"\n'
        f"[exporters.graphite]\nport = {closed}\ninterval = 1\n"
    )
    argv = ["serve", "--config-file", str(path), "--as-of", str(SAMPLE_NOW)]
    args = parse_settings(argv)
    running = _start_daemon(args)
    reloaded = running
    try:
        (exporter,) = running.exporters
        deadline = time.monotonic() + 10
        while exporter.status().queue_length == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        queued = exporter.status().queue_length
        assert queued > 0
        answered: list[int] = []
        count = Daemon.count

        def count_while_the_old_one_serves(daemon: Daemon) -> None:
            with urllib.request.urlopen(running.server.url, timeout=5) as response:
                answered.append(response.status)
            count(daemon)

        monkeypatch.setattr(Daemon, "count", count_while_the_old_one_serves)
        reloaded = _reload(running, args, lambda: parse_settings(argv))
        assert reloaded is not running and answered == [200]
        assert reloaded.exporters == [exporter] and exporter.status().queue_length >= queued
        with urllib.request.urlopen(reloaded.server.url, timeout=5) as response:
            assert response.status == 200
    finally:
        reloaded.stop()


def test_nodeinfo_settings_map_to_options(tmp_path: Path) -> None:
    """The node names are a table in the file and HOST=NAME options on the command line: one rule reads both."""
    path = tmp_path / "settings.toml"
    path.write_text(
        'nodeinfo_hosts = ["example.org", "münchen.example"]\nprosody_version = "13.0.1"\n'
        '[nodeinfo_node_names]\n"example.org" = "Example chat = fun"\n"MÜNCHEN.example" = "Bei uns"\n'
    )
    args = parse_settings(["serve", "--config-file", str(path)])
    assert args.nodeinfo_host == ["example.org", "münchen.example"]
    assert args.prosody_version == "13.0.1"
    assert node_names(args) == {"example.org": "Example chat = fun", "münchen.example": "Bei uns"}
    given = parse_settings(["serve", "--config-file", str(path), "--nodeinfo-node-name", "example.org=Other"])
    assert node_names(given) == {"example.org": "Other"}  # the command line's list replaces the file's table
    path.write_text('nodeinfo_hosts = "example.org"\n[nodeinfo_node_names]\n"example.org" = 1\n')
    with pytest.raises(SettingsError) as raised:
        read_settings_file(path)
    assert [line.split(": ")[1] for line in str(raised.value).splitlines()] == ["nodeinfo_hosts", "nodeinfo_node_names"]

"""`count --config`: a Debian-style config tree decides, per host, which store to read and where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prosody_lastlog.cli import main
from prosody_lastlog.core.connected import ConnectedMode
from prosody_lastlog.core.rules import InstalledProsody
from prosody_lastlog.daemon.lifecycle import ServeOptions
from prosody_lastlog.prosody.running import ProsodyServer
from prosody_lastlog.prosody.sql_settings import SqlSettings
from prosody_lastlog.sources.kinds import FileSource
from prosody_lastlog.sources.plan import Plan, SourceOptions, plan_sources
from prosody_lastlog.sources.policy import Cadence
from prosody_lastlog.sources.sql_source import SqlSource
from tests.conftest import CASES, case_data

NOW = json.loads((CASES / "sample" / "expected.json").read_text())["now"]
SAMPLE_HOSTS = ["example.com", "münchen.example", "xmpp.example-org.net"]


def write_tree(root: Path, storage_lines: str) -> Path:
    """prosody.cfg.lua with global options and an Include of conf.d/*.cfg.lua, as Debian lays it out."""
    (root / "conf.d").mkdir(parents=True)
    config = root / "prosody.cfg.lua"
    config.write_text(
        f'data_path = "{case_data("sample")}"\n'
        'modules_enabled = { "roster", "saslauth", "lastlog2", "measure_active_users" }\n'
        f"{storage_lines}\n"
        'Include "conf.d/*.cfg.lua"\n'
    )
    hosts = "".join(f'VirtualHost "{host}"\n' for host in SAMPLE_HOSTS)
    (root / "conf.d" / "hosts.cfg.lua").write_text(
        hosts
        + 'VirtualHost "empty.example"\n'
        + 'VirtualHost "quiet.example"\n    modules_disabled = { "lastlog2", "measure_active_users" }\n'
        + 'Component "conference.example.com" "muc"\n    modules_enabled = { "lastlog2", "measure_active_users" }\n'
    )
    return config


def count_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, dict[str, object]]:
    assert main(["count", "--now", str(NOW), "--format", "json", *args]) == 0
    hosts: dict[str, dict[str, object]] = json.loads(capsys.readouterr().out)["hosts"]
    return hosts


SQLITE = CASES / "sample-sqlite" / "prosody.sqlite"


@pytest.mark.parametrize(
    "storage_lines",
    [
        "",  # internal storage, the default
        f'storage = "sql"\nsql = {{ driver = "SQLite3", database = "{SQLITE}" }}',
        f'storage = {{ lastlog2 = "sql" }}\nsql = {{ driver = "SQLite3", database = "{SQLITE}" }}',
        f'default_storage = "sql"\nsql = {{ driver = "SQLite3", database = "{SQLITE}" }}',
    ],
    ids=["internal", "sql", "per-store-map", "default_storage"],
)
def test_config_tree_counts_equal_a_direct_read(
    storage_lines: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_tree(tmp_path, storage_lines)
    from_config = count_json(capsys, "--config", str(config))
    direct = count_json(capsys, "--data-dir", str(case_data("sample")))
    for host in [*SAMPLE_HOSTS, "conference.example.com"]:  # the counts, and how they were counted, and why
        # but the registered accounts, which only a config tells: the accounts store, empty here (Prosody 0.12's
        # events made none), on a VirtualHost with internal_hashed; none on a component, or where the accounts are
        # in another storage than the activity (the per-store map), which is not read
        apart = host.startswith("conference.") or "lastlog2 = " in storage_lines
        assert from_config[host].pop("registered_accounts") == (None if apart else 0), host
        assert direct[host].pop("registered_accounts") is None
        assert from_config[host] == direct[host], host
    assert from_config["empty.example"]["active"] == {"1d": 0, "7d": 0, "30d": 0}
    assert "quiet.example" not in from_config


def test_prosody_config_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROSODY_CONFIG", str(write_tree(tmp_path, "")))
    assert "example.com" in count_json(capsys)


def test_skipped_hosts_are_explained_with_verbose(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_tree(tmp_path, "")
    assert main(["count", "--config", str(config), "-v"]) == 0
    err = capsys.readouterr().err
    assert "quiet.example" in err and "skipping" in err


def test_a_broken_config_is_one_line_naming_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "prosody.cfg.lua"
    config.write_text('VirtualHost "example.com"\nmodules_enabled = {\n')
    assert main(["count", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{config}:" in err


def test_plan_groups_hosts_by_backend(tmp_path: Path) -> None:
    storage = f'sql = {{ driver = "SQLite3", database = "{SQLITE}" }}'
    config = write_tree(tmp_path, storage)
    (tmp_path / "conf.d" / "zz.cfg.lua").write_text('VirtualHost "sqlhost.example"\n    storage = "sql"\n')
    plan = plan_sources(SourceOptions(config=config), environ={}, find_install=lambda dirs: InstalledProsody())
    kinds = sorted((type(s).__name__, sorted(s.hosts)) for s in plan.sources)
    assert kinds == [
        ("FileSource", sorted([*SAMPLE_HOSTS, "conference.example.com", "empty.example"])),
        ("SqlSource", ["sqlhost.example"]),
    ]
    # No store is forced: each host is counted from the store the rules choose among those it has data in.
    assert all(isinstance(s, FileSource | SqlSource) and s.policy.forced_store is None for s in plan.sources)


def test_where_the_running_prosody_is_asked(tmp_path: Path) -> None:
    config = write_tree(tmp_path, 'pidfile = "/run/prosody/prosody.pid"\nadmin_socket = "admin.sock"')
    server = plan_sources(SourceOptions(config=config), environ={}).server
    assert server.admin_socket == case_data("sample") / "admin.sock"  # relative to data_path, as Prosody does
    assert server.pidfiles == (Path("/run/prosody/prosody.pid"),)
    data_dir = plan_sources(SourceOptions(data_dir=tmp_path), environ={}).server
    assert data_dir.admin_socket == tmp_path / "prosody.sock" and Path("/run/prosody/prosody.pid") in data_dir.pidfiles
    given = SourceOptions(data_dir=tmp_path, admin_socket=tmp_path / "x.sock", pidfile=tmp_path / "p.pid")
    assert plan_sources(given, environ={}).server == ProsodyServer(tmp_path / "x.sock", (tmp_path / "p.pid",))


def test_scan_workers_reach_every_file_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_tree(tmp_path, "")
    for options in (SourceOptions(config=config, scan_workers=3), SourceOptions(data_dir=tmp_path, scan_workers=3)):
        sources = plan_sources(options, environ={}).sources
        assert sources and all(isinstance(s, FileSource) and s.workers == 3 for s in sources)
    with pytest.raises(SystemExit) as exited:
        main(["count", "--data-dir", str(tmp_path), "--scan-workers", "0"])
    assert exited.value.code == 2
    assert "--scan-workers: expected a whole number of at least 1, not '0'" in capsys.readouterr().err


def test_each_kind_of_source_says_how_it_is_kept_fresh(tmp_path: Path) -> None:
    """The file store: watched, connected users counted, an hourly resync; SQL: counted every --sql-interval."""
    files, sql = FileSource(tmp_path), SqlSource(SqlSettings("SQLite3", str(tmp_path / "prosody.sqlite")))
    assert (files.watch_dir, sql.watch_dir) == (tmp_path, None)
    assert files.cadence(ServeOptions()) == Cadence(3600.0, 300.0, max_age=7800.0, logged=True)
    assert files.cadence(ServeOptions(resync_seconds=60)).jitter == 5.0  # a short interval stays short
    assert sql.cadence(ServeOptions(sql_interval_seconds=30)) == Cadence(30.0, 0.0, max_age=125.0, logged=False)
    plan = Plan([files, sql])
    assert plan.has_file_source and not Plan([sql]).has_file_source
    assert plan.connected_detection(ConnectedMode.ADMIN_SOCKET) == {
        files.name: ConnectedMode.ADMIN_SOCKET,
        sql.name: ConnectedMode.NONE,
    }

"""The contrib files: the sample settings file and the systemd unit agree with the code and each other; the Prometheus
config and alert rules pass promtool's checks and unit tests and use only metrics and labels the daemon exports."""

from __future__ import annotations

import importlib
import inspect
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporters import BUILTIN, DEFAULT_PORT, validate_exporters
from exporters.prometheus import ActiveUsersCollector
from exporters.runner import ExportStatus
from prosody_lastlog.cli import build_parser
from prosody_lastlog.core.model import CountingChoice, Store, UserActivity
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon.state import LiveCounts
from prosody_lastlog.settings import KEYS, read_settings_file
from tests.test_systemd_unit import UNIT, read_unit

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
SAMPLE = CONTRIB / "prosody-lastlog.toml"
PROMETHEUS = CONTRIB / "prometheus"
RULES = PROMETHEUS / "prosody-lastlog.rules.yml"
JOB = "prosody-lastlog"
TARGET_LABELS = {"job", "instance"}  # added by Prometheus' scrape, not by the exporter
# A setting shown commented out is `#key = ...` or `#[exporters.<name>]`; prose comments are `# ...`.
_DISABLED = re.compile(r"^#(?=[a-z\[])", re.MULTILINE)


def sample_in_full() -> str:
    """The sample with every setting and table it shows commented out enabled."""
    return _DISABLED.sub("", SAMPLE.read_text(encoding="utf-8"))


def installed_path() -> str:
    """Where the sample says it is installed (its first line)."""
    match = re.match(r"# (/\S+\.toml):", SAMPLE.read_text(encoding="utf-8"))
    assert match, "the sample's first line names its installed path"
    return match.group(1)


# --- The sample settings file ----------------------------------------------------------------------------------------


def test_the_sample_as_shipped_changes_nothing() -> None:
    assert read_settings_file(SAMPLE) == {}


def test_the_sample_shows_every_setting_and_each_is_valid(tmp_path: Path) -> None:
    full = tmp_path / "full.toml"
    full.write_text(sample_in_full(), encoding="utf-8")
    read_settings_file(full)  # raises SettingsError naming every bad or unknown key
    assert set(tomllib.loads(full.read_text(encoding="utf-8"))) == set(KEYS)


def test_the_sample_shows_the_real_defaults() -> None:
    shown = tomllib.loads(sample_in_full())
    defaults = vars(build_parser().parse_args(["serve"]))
    assert shown["windows"] == [window.label for window in DEFAULT_WINDOWS]
    for key, (destination, _) in KEYS.items():
        default = defaults[destination]
        if key != "windows" and default not in (None, [], {}):  # otherwise the sample shows an example
            assert shown[key] == default, key


def test_the_exporter_tables_show_every_setting_with_its_default() -> None:
    tables = tomllib.loads(sample_in_full())["exporters"]
    assert set(tables) == set(BUILTIN)
    for name, location in BUILTIN.items():
        module, _, attribute = location.partition(":")
        parameters = inspect.signature(getattr(importlib.import_module(module), attribute)).parameters
        assert set(tables[name]) == set(parameters), name
        for parameter in parameters.values():
            if parameter.default is not None:  # None: computed (pushgateway's grouping), the sample shows an example
                assert tables[name][parameter.name] == parameter.default, f"{name}.{parameter.name}"
    validate_exporters(tables)


def test_the_unit_and_the_sample_agree() -> None:
    unit_text = UNIT.read_text(encoding="utf-8")
    assert installed_path() in unit_text, "the unit says where the settings file goes"
    args = build_parser().parse_args(shlex.split(read_unit()["Service"]["ExecStart"])[1:])
    if args.config_file is not None:
        assert str(args.config_file) == installed_path()
    shown = tomllib.loads(sample_in_full())
    assert args.listen == shown["listen"]
    if args.config is not None:
        assert str(args.config) == shown["config"]
    read_only = read_unit()["Service"]["ReadOnlyPaths"].split()
    assert str(Path(shown["config"]).parent) in read_only and shown["data_dir"] in read_only
    writable = f"ReadWritePaths={Path(shown['textfile']).parent}"
    assert writable in unit_text and writable in SAMPLE.read_text(encoding="utf-8")


# --- Prometheus: scrape config and alert rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", RULES.name],
        ["test", "rules", "prosody-lastlog.rules.test.yml"],
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts(args: list[str]) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: `make test` installs Debian's prometheus package, which has it"
    done = subprocess.run([promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_scrape_job_targets_the_default_listen_address() -> None:
    config = (PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8")
    assert build_parser().parse_args(["serve"]).listen == f"127.0.0.1:{DEFAULT_PORT}"
    assert f'targets: ["127.0.0.1:{DEFAULT_PORT}"]' in config
    assert f"job_name: {JOB}\n" in config
    assert f'up{{job="{JOB}"}}' in RULES.read_text(encoding="utf-8")


def exported_labels() -> dict[str, set[str]]:
    """Every sample name the daemon exposes, with its label names: one source, one host, one push exporter."""
    now = 1_763_900_000
    live = LiveCounts(windows=DEFAULT_WINDOWS, source_names=["files"])
    live.index.replace_host("example.com", CountingChoice(Store.LASTLOG2), [UserActivity("alice", now - 60)])
    live.succeeded("files", at=now, duration=0.1, problems={})
    registry = CollectorRegistry(auto_describe=False)
    exports = {"graphite": ExportStatus(0, 0, 0)}
    registry.register(ActiveUsersCollector(live, windows=DEFAULT_WINDOWS, clock=lambda: now, exports=lambda: exports))
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def alert_rules() -> dict[str, str]:
    """Each alert's text in the rules file, comments left out, by alert name."""
    lines = RULES.read_text(encoding="utf-8").splitlines()
    code = "\n".join(line for line in lines if not line.strip().startswith("#"))
    chunks = re.split(r"^\s*- alert: ", code, flags=re.MULTILINE)[1:]
    return {chunk.split("\n", 1)[0].strip(): chunk for chunk in chunks}


def test_the_rules_use_only_exported_metrics_and_labels() -> None:
    exported = exported_labels()
    rules = alert_rules()
    assert len(rules) == 6
    for name, text in rules.items():
        metrics = set(re.findall(r"\bprosody_\w+", text))
        assert metrics <= set(exported), f"{name}: {metrics - set(exported)}"
        available = TARGET_LABELS.union(*(exported[metric] for metric in metrics))
        used = set(re.findall(r"\$labels\.(\w+)", text))
        for matchers in re.findall(r"\{([^{}]*)\}", text):
            used |= set(re.findall(r"(\w+)\s*=", matchers))
        assert used <= available, f"{name}: {used - available}"

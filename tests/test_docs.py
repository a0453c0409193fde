"""The reference docs stay complete: every option, settings key, metric family and read-problem kind is documented,
and every relative link in README.md and docs/*.md leads to an existing file and heading."""

from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from exporters import BUILTIN, _factory
from prosody_lastlog.cli import build_parser, main
from prosody_lastlog.core.model import PROBLEM_KINDS
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.settings import KEYS
from prosody_lastlog.sources.plan import SourceOptions, plan_sources

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SAMPLE_NOW = 1763900000  # fixtures/cases/sample/expected.json's "now"
_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`+[^`]*`+")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The text from the heading line `heading` to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading + "\n")
    following = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(text, start + len(heading) + 1)
    return text[start : following.start() if following else len(text)]


# --- options and settings ------------------------------------------------------------------------------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("build_parser has no subcommands")


def options(parser: argparse.ArgumentParser) -> list[str]:
    return [option for action in parser._actions for option in action.option_strings if option not in ("-h", "--help")]


def test_every_subcommand_and_option_is_in_cli_md() -> None:
    text = doc("cli.md")
    missing = [option for option in options(build_parser()) if f"`{option}`" not in text]
    for name, parser in subcommands().items():
        if f"## `{name}`" not in text:
            missing.append(f"section ## `{name}`")
        missing += [f"{name} {option}" for option in options(parser) if f"`{option}`" not in text]
    assert not missing, f"docs/cli.md lacks: {', '.join(missing)}"


def test_every_option_has_a_help_text() -> None:
    bare = [
        f"{name} {action.option_strings[0]}"
        for name, parser in subcommands().items()
        for action in parser._actions
        if action.option_strings and not action.help
    ]
    assert not bare, f"options without help: {bare}"


def test_every_settings_key_is_in_configuration_md_and_cli_md() -> None:
    reference, cli = doc("configuration.md"), doc("cli.md")
    table = section(reference, "## Keys")
    assert not [key for key in KEYS if f"| `{key}` |" not in table], "docs/configuration.md's key table is incomplete"
    # cli.md names the TOML key of every option (exporters have no option)
    assert not [key for key in KEYS if key != "exporters" and f"`{key}`" not in cli]


@pytest.mark.parametrize("exporter", sorted(BUILTIN))
def test_every_builtin_exporter_setting_is_in_configuration_md(exporter: str) -> None:
    table = section(doc("configuration.md"), f"### `[exporters.{exporter}]`")
    settings = inspect.signature(_factory(BUILTIN[exporter])).parameters
    missing = [name for name in settings if f"| `{name}` |" not in table]
    assert not missing, f"[exporters.{exporter}] settings missing from docs/configuration.md: {missing}"


# --- metrics -------------------------------------------------------------------------------------------------------


def families(exposition: str) -> set[str]:
    return {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE ")}


@pytest.fixture
def served_families(sample_tree: Path, tmp_path: Path) -> Iterator[set[str]]:
    """What the daemon's /metrics holds with every option that adds families: compat names, a push exporter."""
    plan = plan_sources(SourceOptions(data_dir=sample_tree), environ={})
    exporters: dict[str, dict[str, object]] = {"influxdb": {"file": str(tmp_path / "points.lp")}}
    daemon = Daemon(
        plan,
        windows=DEFAULT_WINDOWS,
        options=ServeOptions(port=0, compat=True, as_of=SAMPLE_NOW, exporters=exporters),
    )
    daemon.start()
    try:
        yield families(generate_latest(daemon.registry).decode("utf-8"))
    finally:
        daemon.stop()


def count_output(sample_tree: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    assert main(["count", "--data-dir", str(sample_tree), "--now", str(SAMPLE_NOW), *extra]) == 0
    return capsys.readouterr().out


def test_every_metric_family_is_in_metrics_md(
    served_families: set[str], sample_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    counted = families(count_output(sample_tree, capsys, "--format", "prom", "--compat-metrics"))
    emitted = served_families | counted
    assert "prosody_lastlog_export_errors_total" in emitted and "prosody_active_users" in emitted
    text = doc("metrics.md")
    missing = sorted(name for name in emitted if f"| `{name}` |" not in text)
    assert not missing, f"docs/metrics.md has no table row for: {missing}"


def test_influx_measurements_and_graphite_paths_are_in_metrics_md(
    sample_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = doc("metrics.md")
    influx = section(text, "## InfluxDB")
    lines = count_output(sample_tree, capsys, "--format", "influx").splitlines()
    measurements = {line.split(",", 1)[0] for line in lines}
    assert measurements and not [m for m in measurements if f"| `{m}` |" not in influx]
    graphite = section(text, "## Graphite")
    paths = [line.split()[0] for line in count_output(sample_tree, capsys, "--format", "graphite").splitlines()]
    names = {path.split(".")[2] for path in paths if path.startswith("prosody.example_com.")}
    assert names and not [n for n in names if f"`prosody.example_com.{n}" not in graphite]


# --- read problems -------------------------------------------------------------------------------------------------


def test_every_read_problem_kind_has_a_troubleshooting_section() -> None:
    problems = section(doc("troubleshooting.md"), "## Read problems")
    missing = [kind for kind in PROBLEM_KINDS if f"\n### `{kind}`\n" not in problems]
    assert not missing, f"docs/troubleshooting.md has no section for: {missing}"
    assert not [kind for kind in PROBLEM_KINDS if f"`{kind}`" not in doc("metrics.md")]


# --- links ---------------------------------------------------------------------------------------------------------


def prose(markdown: str) -> str:
    """The text outside fenced code blocks."""
    return _FENCE.sub("", markdown)


def anchors(markdown: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation but `-` and `_` dropped, spaces as `-`, repeats numbered."""
    seen: dict[str, int] = {}
    ids = set()
    for heading in _HEADING.findall(prose(markdown)):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        ids.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return ids


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def test_the_reference_docs_exist() -> None:
    assert {path.name for path in documents()} >= {"cli.md", "configuration.md", "metrics.md", "troubleshooting.md"}


@pytest.mark.parametrize("document", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_lead_to_existing_files_and_headings(document: Path) -> None:
    broken = []
    for target in _LINK.findall(_INLINE_CODE.sub("", prose(document.read_text(encoding="utf-8")))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text(encoding="utf-8")):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{document.name}: {broken}"


def test_anchors_follow_github() -> None:
    text = "# A `b_c` (d)\n## Über ünits\n```sh\n# not a heading\n```\n## A `b_c` (d)\n"
    assert anchors(text) == {"a-b_c-d", "über-ünits", "a-b_c-d-1"}

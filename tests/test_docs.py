"""The docs stay complete and whole: every option, settings key, exporter setting and metric family has exactly one
reference row across README.md and docs/**, every read-problem kind a section; every relative link leads to an
existing file and heading; the README stays a README (short, the two set-up commands first)."""

from __future__ import annotations

import argparse
import inspect
import re
from collections import Counter
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
README = ROOT / "README.md"
README_MAX_LINES = 300
_WRITTEN_BY_TOOLS = {"benchmarks/results/"}  # directories a command creates, named in the docs before they exist
SAMPLE_NOW = 1763900000  # fixtures/cases/sample/expected.json's "now"
_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`+[^`]*`+")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def reference() -> list[Path]:
    """Where an option, key, setting or metric may be documented: the README and every page under docs/."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def table_rows(markdown: str, header: str) -> list[list[str]]:
    """The rows (as cells) of every table whose first header cell is `header`, outside fenced code."""
    rows: list[list[str]] = []
    for block in re.split(r"\n(?!\|)", prose(markdown)):
        lines = [line for line in block.splitlines() if line.startswith("|")]
        if len(lines) < 2 or _cells(lines[0])[:1] != [header]:
            continue
        rows += [_cells(line) for line in lines[2:]]
    return rows


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def documented(header: str, paths: list[Path] | None = None) -> Counter[str]:
    """How often each name is the subject of a reference row: the code spans of the first cell of the rows of
    `header` tables (`| `-v`, `--verbose` | ...` documents both)."""
    names: Counter[str] = Counter()
    for path in reference() if paths is None else paths:
        for row in table_rows(path.read_text(encoding="utf-8"), header):
            names.update(re.findall(r"`([^`]+)`", row[0]))
    return names


def not_once(names: set[str], counts: Counter[str]) -> dict[str, int]:
    return {name: counts[name] for name in sorted(names) if counts[name] != 1}


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


def test_every_option_has_exactly_one_reference_row_in_cli_md() -> None:
    every = set(options(build_parser())).union(*(options(parser) for parser in subcommands().values()))
    rows = documented("option")
    assert not not_once(every, rows), f"options without exactly one `| option |` row: {not_once(every, rows)}"
    assert not set(rows) - every, f"rows for options that do not exist: {sorted(set(rows) - every)}"
    assert documented("option", [DOCS / "cli.md"]) == rows, "option rows belong in docs/cli.md"


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
    rows = documented("key")
    assert not not_once(set(KEYS), rows), f"keys without exactly one `| key |` row: {not_once(set(KEYS), rows)}"
    assert not set(rows) - set(KEYS), f"rows for keys that do not exist: {sorted(set(rows) - set(KEYS))}"
    # cli.md names the TOML key of every option (exporters have no option)
    assert not [key for key in KEYS if key != "exporters" and f"`{key}`" not in cli]


@pytest.mark.parametrize("exporter", sorted(BUILTIN))
def test_every_builtin_exporter_setting_is_in_configuration_md(exporter: str) -> None:
    table = section(doc("configuration.md"), f"### `[exporters.{exporter}]`")
    settings = set(inspect.signature(_factory(BUILTIN[exporter])).parameters)
    rows: Counter[str] = Counter(re.findall(r"`([^`]+)`", row[0])[0] for row in table_rows(table, "setting"))
    assert not not_once(settings, rows), f"[exporters.{exporter}] not documented once: {not_once(settings, rows)}"
    assert not set(rows) - settings, f"[exporters.{exporter}] rows for unknown settings: {set(rows) - settings}"


def test_exporter_settings_are_documented_only_in_configuration_md() -> None:
    tables = {path: len(table_rows(path.read_text(encoding="utf-8"), "setting")) for path in reference()}
    assert {path for path, rows in tables.items() if rows} == {DOCS / "configuration.md"}


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
    rows = documented("metric")
    assert not not_once(emitted, rows), f"families without exactly one `| metric |` row: {not_once(emitted, rows)}"
    assert not set(rows) - emitted, f"rows for families never emitted: {sorted(set(rows) - emitted)}"
    assert documented("metric", [DOCS / "metrics.md"]) == rows, "metric rows belong in docs/metrics.md"


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
    """Every page whose links are checked."""
    readmes = [ROOT / folder / "README.md" for folder in ("benchmarks", "soak", "fuzz")]
    return [README, ROOT / "CONTRIBUTING.md", *sorted(DOCS.rglob("*.md")), *readmes]


def test_the_reference_docs_exist() -> None:
    names = {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")}
    assert names >= {"cli.md", "configuration.md", "metrics.md", "troubleshooting.md", "sql.md", "security.md"}
    assert names >= {f"exporters/{name}.md" for name in ("prometheus", "textfile", "json", *BUILTIN, "plugins")}


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
        elif anchor and linked.suffix != ".md":
            broken.append(f"{target}: an anchor into a file that is not markdown")
    assert not broken, f"{document.relative_to(ROOT)}: {broken}"


@pytest.mark.parametrize("document", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_paths_named_in_the_text_exist(document: Path) -> None:
    """A `dir/file` code span whose first part is a directory of the project names a file that exists: module
    paths stay true when the layout changes."""
    gone = [
        span
        for span in re.findall(r"`([\w.-]+(?:/[\w.-]+)+/?)`", prose(document.read_text(encoding="utf-8")))
        if (ROOT / span.split("/")[0]).is_dir() and span not in _WRITTEN_BY_TOOLS and not (ROOT / span).exists()
    ]
    assert not gone, f"{document.relative_to(ROOT)} names paths that do not exist: {gone}"


def test_anchors_follow_github() -> None:
    text = "# A `b_c` (d)\n## Über ünits\n```sh\n# not a heading\n```\n## A `b_c` (d)\n"
    assert anchors(text) == {"a-b_c-d", "über-ünits", "a-b_c-d-1"}


# --- the README and the pages that show code -----------------------------------------------------------------------


def test_the_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move guides to docs/"


def test_the_readme_starts_with_the_two_set_up_commands_ci_runs() -> None:
    """The first fenced block holds `make run` and `make test`, and .ci/run runs that very test command."""
    first = re.search(r"^```(\w*)\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    assert first and first.group(1) == "sh"
    commands = [line.split("#", 1)[0].strip() for line in first.group(2).splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ci[-1] == commands[1], ".ci/run must end with the README's test command"
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^run:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)


def test_the_plugin_guide_shows_the_example_plugin_as_shipped() -> None:
    guide = (DOCS / "exporters" / "plugins.md").read_text(encoding="utf-8")
    shown = re.findall(r"^```python\n(.*?)^```", guide, re.MULTILINE | re.DOTALL)
    shipped = (ROOT / "contrib" / "example-exporter-plugin" / "prosody_lastlog_csv.py").read_text(encoding="utf-8")
    assert shown == [shipped]

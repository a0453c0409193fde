"""The distributions, built by `python -m build` from a clean copy of the tree: the wheel installed in a fresh venv
counts the sample as Prosody did; the sdist holds the whole project, the wheel only the two packages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from prosody_lastlog import __version__

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "fixtures" / "cases" / "sample"
SDIST_FILES = ("README.md", "pyproject.toml", "Makefile", "CHANGELOG.md", "CONTRIBUTING.md")
SDIST_TREES = ("contrib", "dashboards", "fixtures", "fuzz", "soak", "tests", "benchmarks", "tools")  # those present
WHEEL_TOP = {"prosody_lastlog", "exporters", f"prosody_lastlog-{__version__}.dist-info"}
# Not in the copy when git is unavailable; git's own ignore rules decide otherwise.
UNTRACKED = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", ".hypothesis", "results"
)


@dataclass(frozen=True)
class Built:
    source: Path  # the clean copy the distributions were built from
    sdist: Path
    wheel: Path
    venv: Path  # a fresh venv with the wheel installed


def run(*command: str | Path, cwd: Path) -> str:
    """Runs a command, failing the test with its output if it fails; returns stdout."""
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def clean_copy(target: Path) -> None:
    """The tree as a fresh clone plus new files would have it: no venv, caches or build output."""
    if shutil.which("git") and (ROOT / ".git").exists():
        listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
        for name in filter(None, listed.split("\0")):
            if (ROOT / name).is_file():  # a tracked file deleted in the working tree is not copied
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, target / name)
    else:
        shutil.copytree(ROOT, target, ignore=UNTRACKED)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("dist")
    source, out, venv = work / "source", work / "out", work / "venv"
    clean_copy(source)
    run(sys.executable, "-m", "build", "--outdir", out, source, cwd=work)
    run(sys.executable, "-m", "venv", venv, cwd=work)
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel, cwd=work)
    return Built(source, sdist, wheel, venv)


def test_the_version_has_one_source() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "prosody_lastlog.__version__"}


def test_the_installed_wheel_runs_from_the_venv(built: Built, tmp_path: Path) -> None:
    assert built.wheel.name == f"prosody_lastlog-{__version__}-py3-none-any.whl"
    assert built.sdist.name == f"prosody_lastlog-{__version__}.tar.gz"
    command = built.venv / "bin" / "prosody-lastlog"
    assert run(command, "--version", cwd=tmp_path).strip() == f"prosody-lastlog {__version__}"
    where = "import exporters, prosody_lastlog; print(exporters.__file__); print(prosody_lastlog.__file__)"
    for module_file in run(built.venv / "bin" / "python", "-c", where, cwd=tmp_path).split():
        assert Path(module_file).is_relative_to(built.venv), module_file


def test_the_installed_wheel_counts_the_sample_as_prosody_did(built: Built, tmp_path: Path) -> None:
    expected = json.loads((SAMPLE / "expected.json").read_text(encoding="utf-8"))
    out = run(
        built.venv / "bin" / "prosody-lastlog", "count", "--data-dir", SAMPLE / "data",
        "--now", str(expected["now"]), "--format", "json", cwd=tmp_path,
    )  # fmt: skip
    document = json.loads(out)
    assert document["now"] == expected["now"] and document["problems"] == 0
    assert {host: counts["active"] for host, counts in document["hosts"].items()} == expected["active_users"]


def test_the_sdist_holds_the_whole_project(built: Built) -> None:
    with tarfile.open(built.sdist) as archive:
        names = {member.name.split("/", 1)[1] for member in archive.getmembers() if member.isfile()}
    wanted = {name for name in SDIST_FILES if (built.source / name).is_file()}
    wanted |= {path.name for path in built.source.glob("LICEN[CS]E*")}
    assert wanted >= {"README.md", "pyproject.toml"}
    for tree in SDIST_TREES:
        wanted |= {str(path.relative_to(built.source)) for path in (built.source / tree).rglob("*") if path.is_file()}
    missing = sorted(wanted - names)
    assert not missing, f"{len(missing)} file(s) not in the sdist (see MANIFEST.in), e.g. {missing[:5]}"
    assert {"fixtures/cases/sample/expected.json", "tests/conftest.py", "contrib/prosody-lastlog.service"} <= names
    assert not [name for name in names if "__pycache__" in name.split("/")]


def test_the_wheel_holds_only_the_packages(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as archive:
        names = set(archive.namelist())
    assert {name.split("/", 1)[0] for name in names} == WHEEL_TOP
    assert {"prosody_lastlog/py.typed", "exporters/py.typed", "prosody_lastlog/prosody/config.lua"} <= names

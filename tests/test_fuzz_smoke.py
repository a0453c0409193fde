"""A short run of the fuzz runner `make fuzz` calls (fuzz/run.py), and proof that it reports what it finds."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fuzz.run import TARGETS, Target
from fuzz.run import main as run_fuzz

ROOT = Path(__file__).resolve().parent.parent
SMOKE_RUNS = 2000


def test_atheris_is_installed() -> None:
    assert importlib.util.find_spec("atheris") is not None, "atheris missing: pip install -e '.[test]' (or make fuzz)"


def test_every_target_runs_its_inputs_without_a_crash(tmp_path: Path) -> None:
    command = [sys.executable, "fuzz/run.py", f"--runs={SMOKE_RUNS}", "--seed=1", "--max-total-time=60"]
    run = subprocess.run(
        [*command, f"--artifacts={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for target in TARGETS:
        found = re.search(rf"^{target.name}: (\d+) inputs, (\d+) crashes, [\d.]+ s$", run.stdout, re.MULTILINE)
        assert found, run.stdout
        assert int(found[1]) >= SMOKE_RUNS and found[2] == "0", run.stdout
    assert re.search(r"^fuzz: \d+ inputs, 0 crashes, [\d.]+ s$", run.stdout, re.MULTILINE), run.stdout
    assert not list(tmp_path.rglob("*-*")), "a crash was written"


@pytest.mark.parametrize(
    ("body", "artifact"),
    [
        ("if data: raise ValueError('planted')", "crash-"),
        ("if data: time.sleep(5)", "timeout-"),
    ],
)
def test_a_crash_or_a_hang_fails_the_run_and_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], body: str, artifact: str
) -> None:
    (tmp_path / "planted.py").write_text(
        textwrap.dedent(
            f"""
            import sys, time
            import atheris

            def check(data):
                {body}

            atheris.Setup(sys.argv, check)
            atheris.Fuzz()
            """
        )
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    planted = Target("planted", (), timeout=1, max_len=64, module="planted")
    artifacts = tmp_path / "artifacts"
    assert run_fuzz([f"--artifacts={artifacts}", "--runs=5000", "--max-total-time=30"], targets=[planted]) == 1
    out = capsys.readouterr().out
    kept = list((artifacts / "planted").iterdir())
    assert [path.name[: len(artifact)] for path in kept] == [artifact], out
    assert "planted: " in out and ", 1 crashes, " in out
    assert re.search(r"^fuzz: \d+ inputs, 1 crashes, ", out, re.MULTILINE), out

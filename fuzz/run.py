"""Runs every fuzz target (`make fuzz`): replays the crash corpus, then fuzzes from the fixtures as seeds.

    python fuzz/run.py [--runs 100000] [--max-total-time 900] [--target datafile] [--seed N]

Prints per target the inputs tried, the crashes and the time, then a total line; exits 1 on any crash (a new
input that fails is written to fuzz/crashes/<target>/, or --artifacts), 2 if atheris is missing. Seeds are read
from fixtures/ at run time into a scratch directory, which also holds the working corpus unless --corpus is given.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
SEEDS_PER_DIRECTORY = 40  # fixtures/cases/large has 2,000 files of three shapes: a few of each are enough


@dataclass(frozen=True)
class Target:
    """One libFuzzer target: its name, seeds (globs under the repository), limits, and module (`python -m`)."""

    name: str
    seeds: tuple[str, ...]
    timeout: int  # seconds one input may take: well above the sandbox's own CPU limit, so only a hang trips it
    max_len: int
    module: str = ""  # default fuzz.<name>; its dictionary is fuzz/<name>.dict if there is one

    @property
    def command(self) -> list[str]:
        """The command that runs it, before libFuzzer's options."""
        return [sys.executable, "-m", self.module or f"fuzz.{self.name}", f"-timeout={self.timeout}"]


TARGETS = (
    # The sandbox caps a chunk at 0.25 s of CPU; an input runs it at most four times.
    Target("datafile", ("fixtures/cases/*/data/**/*.dat",), timeout=10, max_len=16384),
    # The config sandbox caps an evaluation at 2 s of CPU.
    Target("config", ("fixtures/configs/**/*.lua",), timeout=30, max_len=16384),
)


@dataclass(frozen=True)
class Result:
    """What one target's run gave."""

    target: str
    inputs: int
    crashes: list[str]  # the failing inputs (files) and why
    seconds: float


def main(argv: Sequence[str] | None = None, targets: Sequence[Target] = TARGETS) -> int:
    """Runs the chosen `targets`, at most `--jobs` at once; 0 if none crashed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="inputs per target (libFuzzer -runs)")
    parser.add_argument("--max-total-time", type=int, default=900, help="seconds per target at most")
    parser.add_argument("--target", action="append", choices=[t.name for t in targets], help="default: all")
    parser.add_argument("--seed", type=int, default=0, help="libFuzzer's random seed (0: a new one each run)")
    parser.add_argument("--jobs", type=int, default=2, help="targets fuzzed at once")
    parser.add_argument("--artifacts", type=Path, help="where new crashes go (default fuzz/crashes/<target>/)")
    parser.add_argument("--corpus", type=Path, help="keep the working corpus in DIR/<target>/ (default: scratch)")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("atheris") is None:
        print("fuzz: atheris is not installed: pip install atheris (make fuzz does)", file=sys.stderr)
        return 2
    chosen = [t for t in targets if args.target is None or t.name in args.target]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda target: _run(target, args), chosen))
    for result in results:
        print(f"{result.target}: {result.inputs} inputs, {len(result.crashes)} crashes, {result.seconds:.1f} s")
        for crash in result.crashes:
            print(f"  crash: {crash}")
    inputs, crashes = sum(r.inputs for r in results), sum(len(r.crashes) for r in results)
    print(f"fuzz: {inputs} inputs, {crashes} crashes, {time.monotonic() - started:.1f} s")
    return 1 if crashes else 0


def _run(target: Target, args: argparse.Namespace) -> Result:
    started = time.monotonic()
    crash_dir = FUZZ / "crashes" / target.name
    artifacts = (args.artifacts / target.name) if args.artifacts else crash_dir
    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target.name}-") as scratch:
        work = Path(scratch)
        environment = {**os.environ, "PROSODY_LASTLOG_FUZZ_SCRATCH": str(work / "scratch")}
        command = [*target.command, "-rss_limit_mb=2048"]
        crashes = _replay(target, crash_dir, command, environment, work)
        corpus = (args.corpus / target.name) if args.corpus else work / "corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        seeds = _seeds(target, work / "seeds")
        before = set(artifacts.iterdir())
        options = [
            f"-runs={args.runs}",
            f"-max_total_time={args.max_total_time}",
            f"-max_len={target.max_len}",
            f"-artifact_prefix={artifacts}{os.sep}",
            f"-seed={args.seed}",
            "-print_final_stats=1",
        ]
        dictionary = FUZZ / f"{target.name}.dict"
        if dictionary.is_file():
            options.append(f"-dict={dictionary}")
        log = work / "fuzz.log"
        with log.open("wb") as output:
            run = subprocess.run(
                [*command, *options, str(corpus), str(seeds)],
                cwd=ROOT,
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
                check=False,
            )
        text = log.read_text("utf-8", "replace")
        new = sorted(set(artifacts.iterdir()) - before)
        crashes += [f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}" for path in new]
        if run.returncode != 0 and not new:
            crashes.append(f"libFuzzer exited {run.returncode}")
        if run.returncode != 0:
            sys.stderr.write(f"--- {target.name}: the end of libFuzzer's output\n{_tail(text)}\n")
        return Result(target.name, _executed(text), crashes, time.monotonic() - started)


def _replay(target: Target, crash_dir: Path, command: list[str], environment: dict[str, str], work: Path) -> list[str]:
    """The inputs of the crash corpus that still fail: each is run once, as libFuzzer runs files given by name."""
    failing = []
    for path in sorted(crash_dir.glob("*")) if crash_dir.is_dir() else []:
        if not path.is_file() or path.name.startswith(".") or path.suffix == ".md":
            continue
        run = subprocess.run(
            [*command, f"-artifact_prefix={work}{os.sep}", str(path)],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            check=False,
        )
        if run.returncode != 0:
            failing.append(f"{path.relative_to(ROOT)} (in the crash corpus)")
            sys.stderr.write(f"--- {target.name}: {path.name}\n{_tail(run.stdout.decode('utf-8', 'replace'))}\n")
    return failing


def _seeds(target: Target, directory: Path) -> Path:
    """A directory holding the target's seed files, read from the repository now (at most a few per directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    taken: dict[Path, int] = {}
    for pattern in target.seeds:
        for path in sorted(ROOT.glob(pattern)):
            if path.is_file() and taken.get(path.parent, 0) < SEEDS_PER_DIRECTORY:
                taken[path.parent] = taken.get(path.parent, 0) + 1
                shutil.copyfile(path, directory / f"{len(taken)}-{taken[path.parent]}-{path.name}")
    return directory


_EXECUTED = re.compile(r"^stat::number_of_executed_units:\s*(\d+)", re.MULTILINE)
_DONE = re.compile(r"^Done (\d+) runs in", re.MULTILINE)


def _executed(text: str) -> int:
    """The inputs libFuzzer ran, from its final statistics (or its last status line, after a crash)."""
    for pattern in (_EXECUTED, _DONE):
        found = pattern.findall(text)
        if found:
            return int(found[-1])
    status = re.findall(r"^#(\d+)\s", text, re.MULTILINE)
    return int(status[-1]) if status else 0


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


if __name__ == "__main__":
    sys.exit(main())

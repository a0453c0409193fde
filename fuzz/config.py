"""libFuzzer target: a prosody.cfg.lua's bytes through the sandboxed config evaluator and the per-host derivation
(`python -m fuzz.config [libFuzzer options] [corpus dirs]`).

A finding is any exception but ConfigError, a config that breaks ProsodyConfig's invariants (fuzz/oracles.py), or
an input slower than libFuzzer's -timeout. Scratch files go to $PROSODY_LASTLOG_FUZZ_SCRATCH (set by fuzz/run.py).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from fuzz._atheris import fuzz, instrumented_imports

with instrumented_imports("prosody_lastlog", "fuzz.oracles"):
    from fuzz.oracles import ConfigOracle


def main() -> None:
    """Fuzzes until libFuzzer's -runs or -max_total_time is reached, or a finding."""
    scratch = os.environ.get("PROSODY_LASTLOG_FUZZ_SCRATCH") or tempfile.mkdtemp(prefix="fuzz-config-")
    directory = Path(scratch) / "config"
    directory.mkdir(parents=True, exist_ok=True)
    environ = {"ENV_FUZZ_DOMAIN": "fuzz.example", "CREDENTIALS_DIRECTORY": str(directory)}
    fuzz(sys.argv, ConfigOracle(directory, environ).check)


if __name__ == "__main__":
    main()

"""libFuzzer target: a data file's bytes through the Lua sandbox, the canonical fast paths, interpret (each store)
and the file reader's per-file path (`python -m fuzz.datafile [libFuzzer options] [corpus dirs]`).

A finding is any exception, a disagreement between the readers (fuzz/oracles.py), or an input slower than
libFuzzer's -timeout. Scratch files go to $PROSODY_LASTLOG_FUZZ_SCRATCH (fuzz/run.py sets and removes it).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from fuzz._atheris import fuzz, instrumented_imports

with instrumented_imports("prosody_lastlog", "fuzz.oracles"):
    from fuzz.oracles import DataFileOracle


def main() -> None:
    """Fuzzes until libFuzzer's -runs or -max_total_time is reached, or a finding."""
    scratch = os.environ.get("PROSODY_LASTLOG_FUZZ_SCRATCH") or tempfile.mkdtemp(prefix="fuzz-datafile-")
    directory = Path(scratch) / "datafile"
    directory.mkdir(parents=True, exist_ok=True)
    fuzz(sys.argv, DataFileOracle(directory).check)


if __name__ == "__main__":
    main()

"""atheris, which ships no type information, behind two typed functions."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, NoReturn


def _atheris() -> Any:
    return importlib.import_module("atheris")


def instrumented_imports(*packages: str) -> AbstractContextManager[object]:
    """A block whose imports of `packages` (and their submodules) are instrumented for coverage."""
    manager: AbstractContextManager[object] = _atheris().instrument_imports(include=list(packages))
    return manager


def fuzz(argv: Sequence[str], target: Callable[[bytes], object]) -> NoReturn:
    """Runs libFuzzer on `target`, with libFuzzer's options and corpus directories from `argv`; exits the process."""
    atheris = _atheris()
    atheris.Setup(list(argv), target)
    atheris.Fuzz()
    raise SystemExit(0)  # not reached: libFuzzer exits

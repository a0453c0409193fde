"""Child processes for reading: how to start them, and the one setup every child runs first.

multiprocessing and ctypes are imported when first needed: a count of a small tree starts no process."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from multiprocessing.context import ForkContext, ForkServerContext

_PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when the one that forked it ends

ProcessContext: TypeAlias = "ForkContext | ForkServerContext"


def process_context(preload: str) -> ProcessContext:
    """How to start processes: `fork` is cheapest but only safe with no other thread; else a clean server process
    (which imports the module `preload` once) forks them."""
    import multiprocessing  # noqa: PLC0415

    if threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([preload])
    return context


def forker_of(context: ProcessContext) -> int | None:
    """This process, if a child started in `context` is forked from it (not from a fork server)."""
    return os.getpid() if context.get_start_method() == "fork" else None


def set_up_child(forker: int | None, *, nice: int = 0) -> None:
    """Run first in every child: it ends with the process that forked it; a signal just ends it (not the parent's
    handlers); no cyclic garbage collection (millions of objects, none in a cycle, and it ends soon); `nice` lowers
    its priority, and that of the processes it starts."""
    _end_with_forker(forker)
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)
    gc.disable()
    if nice:
        os.nice(nice)


def release_free_memory() -> None:
    """Gives memory freed since (an index swapped out) back to the system: glibc's malloc keeps much of it, as its
    threshold for mapping large blocks apart rises once one is freed. Elsewhere, nothing happens."""
    import ctypes  # noqa: PLC0415

    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).malloc_trim(0)


def _end_with_forker(forker: int | None) -> None:
    """Ties this child to the process that forked it (Linux), so it is killed when that one ends, even by SIGKILL;
    its pipes would otherwise keep it waiting forever. A child that a fork server started is left alone."""
    if forker is None:
        return
    import ctypes  # noqa: PLC0415

    with contextlib.suppress(OSError, AttributeError):  # not Linux's C library
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != forker:  # it ended before the tie was made
        os._exit(1)

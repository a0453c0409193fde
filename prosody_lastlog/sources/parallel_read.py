"""Reads a large tree's listings in several processes at once, each a contiguous share of them, merged back in
the order one process reads them."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prosody_lastlog.prosody.sandbox import BATCH_SIZE
from prosody_lastlog.sources.file_records import (
    Progress,
    ReadPart,
    RecordLoader,
    RecordsPart,
    UserFiles,
    as_records,
    no_progress,
)
from prosody_lastlog.sources.processes import ProcessContext, forker_of, process_context, set_up_child

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

PARENT_SHARE = 0.9  # this process also makes the others' records into UserActivity, so it reads fewer files
CHUNK = 32 * BATCH_SIZE  # files a child reads between two sends of what it found (a multiple of BATCH_SIZE)


def read_in_processes(
    loader: RecordLoader, listed: list[UserFiles], workers: int, progress: Progress | None
) -> list[RecordsPart]:
    """What `listed` holds, read by `workers` processes, this one included."""
    return _Parallel(loader, shares_of(listed, workers), progress).run()


def read_serially(loader: RecordLoader, listed: list[UserFiles], progress: Progress) -> list[ReadPart]:
    results = []
    done = 0
    for files in listed:
        results.append(loader.read(files, progress, done))
        done += len(files.names)
    return results


def shares_of(listed: list[UserFiles], workers: int) -> list[list[UserFiles]]:
    """The listings cut into `workers` contiguous shares, the last (read by this process) PARENT_SHARE as large
    as the others; each directory's listing is cut at multiples of BATCH_SIZE."""
    total = sum(len(files.names) for files in listed)
    size = total / (workers - 1 + PARENT_SHARE)
    ends = [round(size * index) for index in range(1, workers)]  # of the shares but the last, in all listings
    shares: list[list[UserFiles]] = [[] for _ in range(workers)]
    offset = 0  # of `files`, in all listings
    for files in listed:
        cuts = [min(max(end - offset, 0) // BATCH_SIZE * BATCH_SIZE, len(files.names)) for end in ends]
        for share, start, stop in zip(shares, [0, *cuts], [*cuts, len(files.names)], strict=True):
            if start < stop:
                share.append(files.part(start, stop))
        offset += len(files.names)
    return shares


@dataclass
class _Child:
    """A process reading a share, and what it sent so far."""

    share: list[UserFiles]
    process: BaseProcess | None = None
    receiver: Connection | None = None
    done: int = 0  # files read
    received: list[RecordsPart] = field(default_factory=list)
    finished: bool = False
    failed: bool = False  # then its share is read here in the end


class _Parallel:
    """Reads every share but the last in a child process each, and the last here.

    A child sends what it found every CHUNK files, so the pipe never fills, and its records are made into
    UserActivity here as they come, not all at the end; they are kept apart until the child is done, as a failed
    child's share is read here again.
    """

    def __init__(self, loader: RecordLoader, shares: list[list[UserFiles]], progress: Progress | None) -> None:
        self._loader = loader
        self._own = shares[-1]
        self._own_done = 0
        self._children = [_Child(share) for share in shares[:-1]]
        self._progress = progress

    def run(self) -> list[RecordsPart]:
        context = process_context(__name__)
        try:
            for child in self._children:
                self._start(child, context)
            own = [as_records(part) for part in read_serially(self._loader, self._own, self._step)]
            results: list[RecordsPart] = []
            for child in self._children:
                self._receive(child, wait=True)
                if child.failed:
                    again = read_serially(self._loader, child.share, no_progress)
                    child.received = [as_records(part) for part in again]
                results.extend(child.received)
            return results + own
        finally:
            for child in self._children:
                if child.receiver is not None:
                    child.receiver.close()
                if child.process is not None:
                    child.process.kill()  # done already, unless this process is leaving on an error
                    child.process.join()

    def _start(self, child: _Child, context: ProcessContext) -> None:
        receiver, sender = context.Pipe(duplex=False)
        try:
            process = context.Process(target=_child, args=(child.share, sender, forker_of(context)), daemon=True)
            process.start()
        except OSError:  # no process to be had (a limit, a sandbox): the share is read here
            receiver.close()
            child.finished = child.failed = True
            return
        finally:
            sender.close()
        child.process, child.receiver = process, receiver

    def _step(self, done: int) -> None:
        """Progress here: also takes in what the children sent meanwhile."""
        self._own_done = done
        for child in self._children:
            self._receive(child, wait=False)
        self._report()

    def _receive(self, child: _Child, *, wait: bool) -> None:
        while not child.finished and child.receiver is not None and (wait or child.receiver.poll()):
            try:
                message = child.receiver.recv()
            except (EOFError, OSError):  # the child failed
                child.finished = child.failed = True
                child.done = 0
                return
            if message is None:
                child.finished = True
            else:
                count, read = message
                child.done += count
                child.received.append(as_records(read))
                if wait:
                    self._report()

    def _report(self) -> None:
        if self._progress is not None:
            self._progress(self._own_done + sum(child.done for child in self._children))


def _child(share: list[UserFiles], sender: Connection, forker: int | None) -> None:
    """Runs in a child process: reads a share, sending (files read, records) every CHUNK files, then None."""
    set_up_child(forker)
    loader = RecordLoader()
    try:
        for files in share:
            for start in range(0, len(files.names), CHUNK):
                chunk = files.part(start, start + CHUNK)
                sender.send((len(chunk.names), loader.read(chunk, no_progress, 0)))
        sender.send(None)
    except BrokenPipeError:
        pass  # the parent stopped waiting
    finally:
        sender.close()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused, process-wide. A scan makes millions of objects, none in a cycle,
    and every full collection meanwhile would walk them all: a fifth of the time of a scan of 1M users."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

"""A full read, a scan of the file store or an SQL source's snapshot, made into HostIndexes in a child process.

The daemon's scrapes and file events run on threads of one interpreter: Python work of a full read there (reading
files or rows, making a million records, indexing them) would hold the GIL for seconds, and a scrape would wait for
it. So the read runs in a child process, which sends each host's built index; this process only takes them in and
swaps. The records' memory is the child's, given back when it ends.

Taking an index in must not hold the GIL for long either: unpickled whole, a host of a million users (~25 MB of
arrays) held it for several milliseconds at once. So an index travels as a small pickle whose arrays are left out
of band, each array following in pieces of at most PIECE_BYTES, appended here one piece at a time.
"""

from __future__ import annotations

import io
import logging
import pickle
import signal
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from prosody_lastlog.core.compact import NameHash, NameTable
from prosody_lastlog.core.connected import ConnectedUsers
from prosody_lastlog.core.index import HostIndex
from prosody_lastlog.core.model import ReadProblem
from prosody_lastlog.core.rules import ServerFacts
from prosody_lastlog.sources.files import Progress
from prosody_lastlog.sources.processes import forker_of, process_context, set_up_child
from prosody_lastlog.sources.results import ReadResult

if TYPE_CHECKING:
    from prosody_lastlog.sources.sql_changes import ChangeMark

log = logging.getLogger(__name__)

STOP_SECONDS = 2.0  # how long a child stopped by SIGTERM may take to cancel its database query
PIECE_BYTES = 1 << 20  # of an array sent apart: appending one holds the GIL for well under a millisecond
Buffer: TypeAlias = "array[Any] | bytearray"  # the kinds of array an index is made of


@dataclass
class ScannedIndexes:
    """Every host's index from one full scan, the problems met, and what could not be read (ReadResult's)."""

    hosts: dict[str, HostIndex] = field(default_factory=dict)
    problems: list[ReadProblem] = field(default_factory=list)
    server: ServerFacts | None = None  # what the rules took the server to be
    unreadable_hosts: set[str] = field(default_factory=set)
    unreadable_users: dict[str, set[str]] = field(default_factory=dict)
    change_mark: ChangeMark | None = None  # an SQL read's (ReadResult's)


class FullRead(Protocol):
    """What a child process runs: a reader of a whole source (it is pickled to the child)."""

    def read(self, progress: Progress | None = None) -> ReadResult:
        """Every record of the source."""
        ...


class ScanProcessError(OSError):
    """The scan's process ended without sending its result."""


class ScanProcesses:
    """The scan processes running, so that stopping the daemon ends them at once instead of waiting a resync out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[BaseProcess] = set()
        self.stopped = False

    def add(self, process: BaseProcess) -> None:
        """A process just started (ended at once if stop_all came first)."""
        with self._lock:
            self._running.add(process)
            if self.stopped:
                process.kill()

    def discard(self, process: BaseProcess) -> None:
        """A process done with."""
        with self._lock:
            self._running.discard(process)

    def stop_all(self) -> None:
        """Ends every running scan process (_end), and any started later."""
        with self._lock:
            self.stopped = True
            running = list(self._running)
        _end(running)


def _end(processes: list[BaseProcess]) -> None:
    """SIGTERM first, for a child reading a database to cancel its query on the server (a server does not notice
    a client gone while its query waits on a lock); then SIGKILL for those still there STOP_SECONDS later."""
    running = {process.sentinel: process for process in processes if process.is_alive()}
    for process in running.values():
        process.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    while running and (left := deadline - time.monotonic()) > 0:
        for ended in wait(list(running), left):
            if isinstance(ended, int):  # a sentinel is a file descriptor
                running.pop(ended)
    for process in running.values():
        process.kill()


def scan_indexes(
    reader: FullRead,
    connected: ConnectedUsers,
    *,
    progress: Progress | None = None,
    nice: int = 0,
    processes: ScanProcesses | None = None,
) -> ScannedIndexes:
    """Reads every file or row and indexes each host, in a child process run at `nice` (added to this one's niceness),
    registered in `processes` while it runs.

    The indexes count `connected` as connected (an index tells it apart from a newer answer by identity). Where no
    process can be started, it is all done here. Raises what the reader raises (DataDirError, DatabaseError).
    """
    name_hash = NameHash()  # a fresh key: this process must hash names as the child did
    context = process_context(__name__)
    receiver, sender = context.Pipe(duplex=False)
    try:
        job = _Job(reader, connected, name_hash, progress is not None, nice, forker_of(context))
        process = context.Process(target=_child, args=(job, sender), name="prosody-lastlog-scan")
        process.start()
        if processes is not None:
            processes.add(process)
    except OSError as exc:  # no process to be had (a limit, a sandbox)
        log.debug("scanning in this process: %s", exc)
        receiver.close()
        return _scan(reader, connected, name_hash, progress)
    finally:
        sender.close()
    try:
        return _receive(receiver, connected, progress)
    finally:
        receiver.close()
        _end([process])  # done already, unless this process is leaving on an error
        process.join()
        if processes is not None:
            processes.discard(process)


def _receive(receiver: Connection, connected: ConnectedUsers, progress: Progress | None) -> ScannedIndexes:
    scanned = ScannedIndexes()
    while True:
        try:
            kind, value = receiver.recv()
        except EOFError:
            raise ScanProcessError("the scan process ended without a result") from None
        if kind == "progress" and progress is not None:
            progress(value)
        elif kind == "host":
            index = _receive_index(receiver, *value)
            index.connected = connected  # the child's equal copy of it
            scanned.hosts[index.host] = index
        elif kind == "failed":
            raise value
        elif kind == "done":
            scanned.problems, scanned.server, scanned.unreadable_hosts, scanned.unreadable_users = value[:4]
            scanned.change_mark = value[4]
            return scanned


def _scan(
    reader: FullRead, connected: ConnectedUsers, name_hash: NameHash, progress: Progress | None
) -> ScannedIndexes:
    read = reader.read(progress)
    hosts = {index.host: index for index in host_indexes(read, connected, name_hash)}
    return ScannedIndexes(
        hosts, read.problems, read.server, read.unreadable_hosts, read.unreadable_users, read.change_mark
    )


def host_indexes(
    read: ReadResult, connected: ConnectedUsers, name_hash: Callable[[bytes], int] = hash
) -> Iterator[HostIndex]:
    """Each host's index, its records let go once indexed (`name_hash`: a NameHash for an index built in another
    process)."""
    while read.hosts:
        host, data = read.hosts.popitem()
        yield HostIndex(
            host,
            data.store,
            connected,
            data.users,
            choice=data.choice,
            hash_name=name_hash,
            registered_accounts=data.registered_accounts,
        )


@dataclass(frozen=True)
class _Job:
    """What the child is to do."""

    reader: FullRead
    connected: ConnectedUsers
    name_hash: NameHash
    with_progress: bool
    nice: int
    forker: int | None  # this process, if it forks the child


def _child(job: _Job, sender: Connection) -> None:
    """Runs in the child: scans, sends ("progress", files read) if asked, ("host", index) per host, then ("done",
    (problems, server facts, unreadable hosts, unreadable users, change mark)); or ("failed", the exception)."""
    set_up_child(job.forker, nice=job.nice)
    for number in (signal.SIGTERM, signal.SIGINT):  # raised where the read is: a query is cancelled on the way out
        signal.signal(number, _leave)
    try:
        try:
            read = job.reader.read((lambda files: sender.send(("progress", files))) if job.with_progress else None)
            for index in host_indexes(read, job.connected, job.name_hash):
                _send_index(sender, index)
            done = (read.problems, read.server, read.unreadable_hosts, read.unreadable_users, read.change_mark)
            sender.send(("done", done))
        except Exception as exc:  # the parent raises it
            sender.send(("failed", exc))
    except BrokenPipeError:
        pass  # the parent stopped waiting
    finally:
        sender.close()


def _leave(number: int, _: object) -> None:
    """The first stop signal ends the read; later ones (systemd signals the whole group, then the daemon its child)
    must not cut the cancelling of its query short: SIGKILL comes STOP_SECONDS later if it hangs."""
    for ignored in (signal.SIGTERM, signal.SIGINT):
        signal.signal(ignored, signal.SIG_IGN)
    raise SystemExit(128 + number)


class _ArraysApart(pickle.Pickler):
    """Pickles an index with its arrays and bytearrays out of band (protocol 5): the pickle holds where they go, not
    their bytes. (A bytearray is pickled in band whatever reducer_override says, so those of the index and of its
    name table are wrapped.)"""

    def reducer_override(self, obj: object) -> Any:
        if isinstance(obj, array):
            return _as_received, (pickle.PickleBuffer(obj),)
        if type(obj) in _HOLDING_BYTEARRAYS:
            state = {
                name: pickle.PickleBuffer(value) if isinstance(value, bytearray) else value
                for name, value in vars(obj).items()
            }
            return _with_state, (type(obj), state)
        return NotImplemented


_HOLDING_BYTEARRAYS = (HostIndex, NameTable)


def _as_received(buffer: Buffer) -> Buffer:
    """Unpickling: the array received apart, as it is."""
    return buffer


def _with_state(kind: type[HostIndex | NameTable], state: dict[str, object]) -> HostIndex | NameTable:
    """Unpickling: an index or name table with its state, bytearrays as received apart."""
    made = kind.__new__(kind)
    vars(made).update(state)
    return made


def _send_index(sender: Connection, index: HostIndex) -> None:
    """("host", (pickle, [(typecode or "", bytes)...])), then each array in pieces (child side)."""
    arrays: list[pickle.PickleBuffer] = []
    pickled = io.BytesIO()
    _ArraysApart(pickled, protocol=5, buffer_callback=arrays.append).dump(index)
    layout = []
    for buffer in arrays:
        owner = buffer.raw().obj
        layout.append((owner.typecode if isinstance(owner, array) else "", buffer.raw().nbytes))
    sender.send(("host", (pickled.getvalue(), layout)))
    for buffer in arrays:
        data = buffer.raw()
        for start in range(0, data.nbytes, PIECE_BYTES):
            sender.send_bytes(data[start : start + PIECE_BYTES])


def _receive_index(receiver: Connection, pickled: bytes, layout: list[tuple[str, int]]) -> HostIndex:
    """The index _send_index sent, its arrays rebuilt piece by piece."""
    arrays = [_receive_array(receiver.recv_bytes, typecode, size) for typecode, size in layout]
    index = pickle.loads(pickled, buffers=arrays)
    if not isinstance(index, HostIndex):
        raise ScanProcessError(f"the scan process sent a {type(index).__name__} for an index")
    return index


def _receive_array(receive: Callable[[], bytes], typecode: str, size: int) -> Buffer:
    buffer: Buffer = array(typecode) if typecode else bytearray()
    received = 0
    while received < size:
        piece = receive()
        if isinstance(buffer, array):
            buffer.frombytes(piece)
        else:
            buffer.extend(piece)
        received += len(piece)
    return buffer

"""What reading a source gives: per-host activity records or counts, and read problems; or, when the source cannot
be read at all, one of the two errors here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prosody_lastlog.core.counting import HostCounts
from prosody_lastlog.core.model import HostData, ReadProblem
from prosody_lastlog.core.rules import ServerFacts

if TYPE_CHECKING:
    from prosody_lastlog.sources.sql_changes import ChangeMark

SQL_METHODS = ("auto", "pushdown", "stream")  # how an SQL source may be counted; "auto" takes one of the others


class DataDirError(Exception):
    """The data directory itself is missing or unreadable (one file's trouble is a ReadProblem)."""


class DatabaseError(Exception):
    """A database could not be reached or read; the message names it (never its password)."""


@dataclass(slots=True)
class ReadResult:
    """What a reader found: activity per host, plus every problem it met on the way."""

    hosts: dict[str, HostData] = field(default_factory=dict)
    problems: list[ReadProblem] = field(default_factory=list)
    server: ServerFacts | None = None  # what the rules took the server to be (None: nothing was read)
    # What could not be read for a reason other than "no such file": not known to be gone. A daemon keeps what it
    # knew of them. Hosts whose directories could not be listed, and per host the users whose files could not be read.
    unreadable_hosts: set[str] = field(default_factory=set)
    unreadable_users: dict[str, set[str]] = field(default_factory=dict)
    change_mark: ChangeMark | None = None  # an SQL full read's: where to look for changes from


@dataclass(slots=True)
class SourceCount:
    """Counts per host, how each was obtained ("files", "pushdown" or "stream"), and the problems met."""

    counts: dict[str, HostCounts] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)
    problems: list[ReadProblem] = field(default_factory=list)
    server: ServerFacts | None = None

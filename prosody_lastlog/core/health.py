"""How the last refresh of one source went: a value the daemon keeps and the outputs report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from prosody_lastlog.core.rules import ServerFacts


@dataclass
class SourceHealth:
    """How the last refresh of one source went."""

    name: str
    up: bool = False
    last_success: float | None = None
    duration_seconds: float | None = None
    problems: Mapping[str, int] = field(default_factory=dict)  # read problems so far, by kind
    error: str | None = None
    server: ServerFacts | None = None  # what the last successful refresh took the Prosody that wrote it to be
    has_watcher: bool = False  # a file source in `serve`, whose watcher reports here
    unwatched: str | None = None  # what of its data directory is not watched as it should be, and why
    # An SQL source in `serve`: how it finds changed accounts between full reads ("by version": PostgreSQL's xmin;
    # "by time": the time Prosody writes into a row), when it was last read in full, accounts read again since.
    changes_found: str | None = None
    last_full_read: float | None = None
    accounts_reread: int = 0

"""--sql-binlog without a server: how the log's events make batches (a commit ends one only once BATCH_SECONDS have
passed, a heartbeat always), and how the follower reads each batch's accounts twice, the second time at least
RECHECK_SECONDS after the first, keeping its place before every batch not read twice yet."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from pymysqlreplication.event import HeartbeatLogEvent, XidEvent
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from prosody_lastlog.daemon import binlog_follow
from prosody_lastlog.daemon.binlog_follow import BinlogFollow
from prosody_lastlog.prosody.sql_settings import SqlSettings
from prosody_lastlog.sources.sql_binlog import Batch, BinlogFollower, BinlogPosition
from prosody_lastlog.sources.sql_source import SqlSource

SETTINGS = SqlSettings("MySQL", "prosody", host="127.0.0.1", port=3306, username="reader")


class Clock:
    """time.monotonic, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def event(kind: type, **fields: Any) -> Any:
    made: Any = object.__new__(kind)  # the library builds them from packets; only their class and rows matter here
    if "rows" in fields:
        made._RowsEvent__rows = fields.pop("rows")  # what its `rows` property returns once the packet is parsed
    made.__dict__.update(fields)
    return made


def row(user: str, store: str = "lastlog2", *, host: str = "a.example") -> dict[str, Any]:
    return {"UNKNOWN_COL0": host, "UNKNOWN_COL1": user, "UNKNOWN_COL2": store, "UNKNOWN_COL3": "login"}


class Reader:
    """The stream reader: its events, each moving the clock on by `step` and the position by 100."""

    def __init__(self, events: list[Any], clock: Clock, step: float) -> None:
        self._events, self._clock, self._step = events, clock, step
        self.log_file, self.log_pos = "binlog.000001", 4

    def __iter__(self) -> Iterator[Any]:
        for item in self._events:
            self._clock.now += self._step
            self.log_pos += 100
            yield item


def batches_of(events: list[Any], step: float) -> list[Batch]:
    clock = Clock()
    follower = BinlogFollower(SETTINGS, monotonic=clock)
    return list(follower._batches(Reader(events, clock, step), BinlogPosition("binlog.000001", 4)))


def test_commits_end_a_batch_only_after_batch_seconds_a_heartbeat_always() -> None:
    busy = []
    for user in ("alice", "bob", "carol", "dave"):
        busy += [event(WriteRowsEvent, rows=[{"values": row(user)}]), event(XidEvent)]
    busy.append(event(HeartbeatLogEvent))
    found = batches_of(busy, 0.05)  # a commit every 0.1 s: the first batch ends at the third
    assert [{user for _, user, _ in batch.rows} for batch in found] == [{"alice", "bob", "carol"}, {"dave"}]
    assert found[0].start == BinlogPosition("binlog.000001", 4)
    assert found[0].end == found[1].start == BinlogPosition("binlog.000001", 604)
    assert found[1].end == BinlogPosition("binlog.000001", 904)


def test_updates_and_deletes_name_their_accounts_and_other_stores_are_left_out() -> None:
    events = [
        event(UpdateRowsEvent, rows=[{"before_values": row("alice"), "after_values": row("alice")}]),
        event(DeleteRowsEvent, rows=[{"values": row("bob", "accounts")}, {"values": row("carol", "roster")}]),
        event(WriteRowsEvent, rows=[{"values": {**row("dave"), "UNKNOWN_COL1": b"\xff"}}]),  # not text
        event(HeartbeatLogEvent),
    ]
    [batch] = batches_of(events, 0.01)
    assert batch.rows == {("a.example", "alice", "lastlog2"), ("a.example", "bob", "accounts")}


class Refresher:
    """Records what the follower applies; refuses while `busy` (a full read runs)."""

    def __init__(self) -> None:
        self.applied: list[tuple[float, set[str]]] = []
        self.busy = False
        self.clock = Clock()
        self.full_reads = 0

    def set_binlog_followed(self, *_: Any) -> None:
        pass

    def need_full_read(self, _: Any) -> None:
        self.full_reads += 1

    def apply_binlog(self, _: Any, rows: set[tuple[str, str, str]]) -> bool:
        if self.busy:
            return False
        self.applied.append((self.clock.now, {user for _, user, _ in rows}))
        return True


def test_each_batch_is_read_twice_and_the_place_waits_for_the_second() -> None:
    refresher = Refresher()
    place = [BinlogPosition("binlog.000001", 100 * n) for n in range(10)]
    # (seconds later, the batch's accounts, busy): a batch, a heartbeat soon after (too soon for the second read),
    # one 0.5 s on, a batch while a full read runs, then heartbeats after it.
    script = [(0.0, {"alice"}, False), (0.125, set(), False), (0.5, set(), False), (0.125, {"bob"}, True),
              (0.125, set(), False), (0.625, set(), False)]  # fmt: skip
    follow = BinlogFollow.__new__(BinlogFollow)
    follow._refresher = refresher  # type: ignore[assignment]
    follow._position = None
    follow._monotonic = refresher.clock
    places = []

    def batches(start: BinlogPosition) -> Iterator[Batch]:
        for number, (later, users, busy) in enumerate(script):
            refresher.clock.now += later
            refresher.busy = busy
            yield Batch(place[number], place[number + 1], {("a.example", user, "lastlog2") for user in users})
            places.append(follow._position)

    follow._follower = type("Follower", (), {"batches": staticmethod(batches)})()
    follow._source = SqlSource(SETTINGS)
    follow._follow_from(place[0])
    assert refresher.applied == [(1000, {"alice"}), (1000.625, {"alice"}), (1000.875, {"bob"}), (1001.5, {"bob"})]
    # alice's batch is passed once read twice; bob's, refused during the full read, waits for its second read
    assert places == [place[0], place[0], place[3], place[3], place[3], place[6]]


def test_a_table_that_cannot_be_read_for_long_makes_a_full_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows kept to read again are bounded: past MOST_WAITING, the source is read in full and they are let go."""
    monkeypatch.setattr(binlog_follow, "MOST_WAITING", 2)
    refresher = Refresher()
    refresher.busy = True  # every read refused
    place = [BinlogPosition("binlog.000001", 100 * n) for n in range(5)]
    follow = BinlogFollow.__new__(BinlogFollow)
    follow._refresher = refresher  # type: ignore[assignment]
    follow._position = None
    follow._monotonic = refresher.clock

    def batches(start: BinlogPosition) -> Iterator[Batch]:
        for number, user in enumerate(["alice", "bob", "carol"]):
            yield Batch(place[number], place[number + 1], {("a.example", user, "lastlog2")})

    follow._follower = type("Follower", (), {"batches": staticmethod(batches)})()
    follow._source = SqlSource(SETTINGS)
    follow._follow_from(place[0])
    assert refresher.full_reads == 1 and follow._position == place[3]


def test_log_positions_order_by_the_files_number() -> None:
    assert BinlogPosition("binlog.000009", 900) < BinlogPosition("binlog.000010", 4)
    assert BinlogPosition("binlog.999999", 900) < BinlogPosition("binlog.1000000", 4)
    assert BinlogPosition("binlog.000002", 4) <= BinlogPosition("binlog.000002", 4)
    assert not BinlogPosition("binlog.000002", 4) < BinlogPosition("binlog.000001", 900)


def test_an_sql_full_read_goes_to_a_child_without_its_cancellation() -> None:
    """The source's cancellation (a lock) stays here, where a read without a child process uses it."""
    source = SqlSource(SqlSettings("SQLite3", "/var/lib/prosody/prosody.sqlite"))
    job = source.full_read(now=1_796_670_000, binlog=False)
    assert job.cancellation is source.cancellation
    travelled = pickle.loads(pickle.dumps(job))
    assert travelled == job and travelled.cancellation is None

"""The watcher's path rules, one synthetic event at a time (as watchdog tests its own): which user is read again,
when the data directory is scanned again, and what is ignored. No thread runs, no file is touched."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from pathlib import Path

import pytest
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
)

from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon import watcher
from prosody_lastlog.daemon.refresh import Refresher
from prosody_lastlog.daemon.state import LiveCounts
from prosody_lastlog.daemon.watcher import Change, DataDirWatcher, Rescan, UserChange, changes_of

ROOT = "/var/lib/prosody"
HOST = f"{ROOT}/example%2ecom"
LASTLOG2 = f"{HOST}/lastlog2"


def changes(event: FileSystemEvent, *, links: Collection[str] = ()) -> set[Change]:
    return changes_of(event, ROOT, is_link=lambda path: path in links)


def test_prosody_saving_a_record_reads_that_user_once_it_is_renamed_into_place() -> None:
    """datamanager writes `<user>.dat~`, then renames it over `<user>.dat`: only the rename means a change."""
    scratch, record = f"{LASTLOG2}/alice.dat~", f"{LASTLOG2}/alice.dat"
    for event in (FileCreatedEvent(scratch), FileModifiedEvent(scratch), FileClosedEvent(scratch)):
        assert changes(event) == set()
    assert changes(FileMovedEvent(scratch, record)) == {UserChange("example.com", "lastlog2", "alice")}


def test_a_record_written_in_place_or_deleted_reads_that_user() -> None:
    record = f"{LASTLOG2}/alice.dat"
    expected = {UserChange("example.com", "lastlog2", "alice")}
    for event in (FileCreatedEvent(record), FileModifiedEvent(record), FileClosedEvent(record)):
        assert changes(event) == expected
    assert changes(FileDeletedEvent(record)) == expected  # a record that emptied: Prosody removes the file


def test_a_rename_between_two_records_reads_both_users() -> None:
    moved = FileMovedEvent(f"{LASTLOG2}/alice.dat", f"{LASTLOG2}/bob.dat")
    assert changes(moved) == {UserChange("example.com", "lastlog2", user) for user in ("alice", "bob")}


def test_a_path_given_as_bytes_is_decoded() -> None:
    event = FileMovedEvent(f"{LASTLOG2}/alice.dat~".encode(), f"{LASTLOG2}/alice.dat".encode())
    assert changes(event) == {UserChange("example.com", "lastlog2", "alice")}


@pytest.mark.parametrize(
    ("host_dir", "file", "host", "user"),
    [
        ("example%2ecom", "alice", "example.com", "alice"),
        ("example%2ecom", "user%2ename", "example.com", "user.name"),
        ("example%2ecom", "%c3%a9lodie", "example.com", "élodie"),
        ("EXAMPLE%2Ecom", "Alice", "EXAMPLE.com", "Alice"),  # case kept: upper-case hex decodes too
        ("xn%2d%2dbcher%2dkva%2eexample", "bob", "xn--bcher-kva.example", "bob"),
    ],
)
def test_percent_encoded_names_are_decoded(host_dir: str, file: str, host: str, user: str) -> None:
    event = FileMovedEvent(f"{ROOT}/{host_dir}/lastlog2/{file}.dat~", f"{ROOT}/{host_dir}/lastlog2/{file}.dat")
    assert changes(event) == {UserChange(host, "lastlog2", user)}


@pytest.mark.parametrize("file", ["user.name", "user name", "%zz", "%ff", "%e9"])
def test_a_name_prosody_could_not_have_written_is_ignored(file: str) -> None:
    """Prosody escapes every character but letters and digits, and its names are UTF-8."""
    assert changes(FileModifiedEvent(f"{LASTLOG2}/{file}.dat")) == set()
    assert changes(FileModifiedEvent(f"{ROOT}/{file}/lastlog2/alice.dat")) == set()


@pytest.mark.parametrize("store", ["lastlog2", "lastlog", "account_activity", "accounts", "account_details"])
def test_activity_and_account_stores_are_followed(store: str) -> None:
    """The activity stores, and the account stores, whose records complete a user's activity."""
    assert changes(FileModifiedEvent(f"{HOST}/{store}/alice.dat")) == {UserChange("example.com", store, "alice")}


@pytest.mark.parametrize(
    "path",
    [
        f"{HOST}/roster/alice.dat",  # another store
        f"{HOST}/offline/alice.list",
        f"{LASTLOG2}/alice.list",  # not a map store's file
        f"{LASTLOG2}/alice.dat.bak",
        f"{LASTLOG2}/old/alice.dat",  # below a store directory
        f"{HOST}/alice.dat",  # a file in a host directory
        f"{ROOT}/prosody.sock",  # Prosody's own files beside the hosts
        f"{ROOT}/prosody.pid",
        f"{ROOT}2/example%2ecom/lastlog2/alice.dat",  # beside the data directory, not in it
        "/tmp/example%2ecom/lastlog2/alice.dat",
    ],
)
def test_events_outside_the_stores_are_ignored(path: str) -> None:
    for event in (FileCreatedEvent(path), FileModifiedEvent(path), FileDeletedEvent(path)):
        assert changes(event) == set()


def test_a_directory_below_a_store_is_ignored() -> None:
    assert changes(DirCreatedEvent(f"{LASTLOG2}/old")) == set()


@pytest.mark.parametrize(
    "event",
    [
        DirCreatedEvent(f"{ROOT}/example%2eorg"),  # a new host: its first record
        DirCreatedEvent(f"{HOST}/account_activity"),  # a host's first record in a new store
        DirDeletedEvent(LASTLOG2),  # a store removed
        DirDeletedEvent(HOST),  # a host removed
        DirMovedEvent("/srv/restored/example%2eorg", f"{ROOT}/example%2eorg"),  # moved in from elsewhere
        DirMovedEvent(HOST, "/srv/archive/example%2ecom"),  # moved out
        DirMovedEvent(HOST, f"{ROOT}/example%2enet"),  # renamed
    ],
)
def test_a_host_or_store_directory_that_comes_or_goes_rescans(event: FileSystemEvent) -> None:
    assert changes(event) == {Rescan()}


def test_a_link_to_a_host_or_store_directory_that_comes_or_goes_rescans() -> None:
    """A link is a file to inotify: is_link tells it apart, including a link already removed."""
    assert changes(FileCreatedEvent(LASTLOG2), links={LASTLOG2}) == {Rescan()}
    assert changes(FileDeletedEvent(HOST), links={HOST}) == {Rescan()}
    assert changes(FileDeletedEvent(LASTLOG2)) == set()  # a file of that name, no link: nothing of Prosody's


def test_lost_events_rescan() -> None:
    """The kernel's queue overflowed: some change is unknown."""
    assert changes(EventsLostEvent(ROOT, is_directory=True)) == {Rescan()}


@pytest.fixture
def unstarted() -> DataDirWatcher:
    live = LiveCounts(windows=DEFAULT_WINDOWS, source_names=[])
    return DataDirWatcher(Path(ROOT), [], Refresher(live, []))


def test_building_a_watcher_starts_no_thread(tmp_path: Path) -> None:
    """Build first, start after: a watcher built and stopped unstarted ran nothing, and stops at once."""
    before = threading.active_count()
    built = DataDirWatcher(tmp_path, [], Refresher(LiveCounts(windows=DEFAULT_WINDOWS, source_names=[]), []))
    assert threading.active_count() == before
    built.stop()


def test_events_of_a_linked_directory_are_read_as_under_the_data_directory(unstarted: DataDirWatcher) -> None:
    """A store directory that is a link is watched at its target; its events count as the link's."""
    target = "/srv/disk2/lastlog2"
    handler = watcher._Handler(unstarted, target, LASTLOG2)
    handler.dispatch(FileMovedEvent(f"{target}/alice.dat~", f"{target}/alice.dat"))
    handler.dispatch(FileModifiedEvent(f"{target}/bob.dat~"))
    assert unstarted._pending == {UserChange("example.com", "lastlog2", "alice")}


def test_a_burst_of_events_queues_each_change_once(unstarted: DataDirWatcher, caplog: pytest.LogCaptureFixture) -> None:
    """Every watch of an overflowed inotify instance reports the loss, and Prosody saves a user twice at a login:
    one rescan, one read of the user."""
    handler = watcher._Handler(unstarted, ROOT, ROOT)
    for _ in range(2):
        handler.dispatch(EventsLostEvent(ROOT, is_directory=True))
        handler.dispatch(FileMovedEvent(f"{LASTLOG2}/alice.dat~", f"{LASTLOG2}/alice.dat"))
    assert unstarted._pending == {Rescan(), UserChange("example.com", "lastlog2", "alice")}
    lost = [r for r in caplog.records if r.levelno == logging.WARNING and "events were lost" in r.getMessage()]
    assert len(lost) == 2 and ROOT in lost[0].getMessage()

"""Per-host last-activity times kept sorted, so counts as of any moment cost O(log N) and updates O(log N).

The daemon keeps one of these per host: a full scan fills it, each changed file updates one user, and a
scrape asks for counts "as of now", so users age out of a window while nobody logs in. Pure: no I/O, no clock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sortedcontainers import SortedList

from prosody_lastlog.counting import HostCounts
from prosody_lastlog.records import Store, UserActivity
from prosody_lastlog.windows import Window


@dataclass(frozen=True, slots=True)
class _Entry:
    last_active: float | None
    registered: float | None
    disabled: bool


class HostIndex:
    """One host's users: the sorted last-activity times of the enabled ones, and registration times."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._users: dict[str, _Entry] = {}
        self._active = SortedList()  # last_active of enabled users that have one
        self._registered = SortedList()
        self._never_active = 0
        self._disabled = 0

    def __len__(self) -> int:
        return len(self._users)

    def set(self, activity: UserActivity) -> None:
        """Adds or replaces one user's facts."""
        self.remove(activity.user)
        entry = _Entry(activity.last_active, activity.registered, activity.disabled)
        self._users[activity.user] = entry
        self._count(entry, +1)

    def remove(self, user: str) -> None:
        """Forgets a user (account deleted, record emptied); unknown users are ignored."""
        entry = self._users.pop(user, None)
        if entry is not None:
            self._count(entry, -1)

    def counts(self, *, now: float, windows: Sequence[Window]) -> HostCounts:
        """The same numbers `counting.count_host` gives for these users at `now`."""
        active = {w.label: self._newer_than(self._active, now - w.seconds) for w in windows}
        registered = {w.label: self._newer_than(self._registered, now - w.seconds) for w in windows}
        future = self._newer_than(self._active, now)
        return HostCounts(self.store, len(self._users), self._never_active, self._disabled, future, active, registered)

    def _count(self, entry: _Entry, sign: int) -> None:
        if entry.disabled:
            self._disabled += sign
        elif entry.last_active is None:
            self._never_active += sign
        else:
            _apply(self._active, entry.last_active, sign)
        if entry.registered is not None:
            _apply(self._registered, entry.registered, sign)

    @staticmethod
    def _newer_than(times: SortedList, threshold: float) -> int:
        # Active in W iff now - t < W, i.e. t > now - W (strict, as mod_measure_active_users).
        return len(times) - int(times.bisect_right(threshold))


def _apply(times: SortedList, value: float, sign: int) -> None:
    if sign > 0:
        times.add(value)
    else:
        times.remove(value)


class ActivityIndex:
    """Every host's HostIndex behind one lock: a refresh writes while scrapes read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hosts: dict[str, HostIndex] = {}

    def replace_host(self, host: str, store: Store, users: Iterable[UserActivity]) -> None:
        """Swaps in a freshly scanned host (built outside the lock, swapped inside)."""
        index = HostIndex(store)
        for activity in users:
            index.set(activity)
        with self._lock:
            self._hosts[host] = index

    def remove_hosts(self, hosts: Iterable[str]) -> None:
        """Forgets hosts (a vhost removed from the config or the disk)."""
        with self._lock:
            for host in hosts:
                self._hosts.pop(host, None)

    def store_of(self, host: str) -> Store | None:
        """The store a host's data comes from, if the host is known."""
        with self._lock:
            index = self._hosts.get(host)
            return index.store if index else None

    def update(self, host: str, store: Store, user: str, activity: UserActivity | None) -> None:
        """Applies one changed file: the user's new facts, or None when the record is gone."""
        with self._lock:
            index = self._hosts.setdefault(host, HostIndex(store))
            if activity is None:
                index.remove(user)
            else:
                index.set(activity)

    def counts(self, *, now: float, windows: Sequence[Window]) -> dict[str, HostCounts]:
        """Counts of every host as of `now`, sorted by host."""
        with self._lock:
            return {host: self._hosts[host].counts(now=now, windows=windows) for host in sorted(self._hosts)}

    def tracked_users(self) -> Mapping[str, int]:
        """How many users each host holds."""
        with self._lock:
            return {host: len(index) for host, index in sorted(self._hosts.items())}

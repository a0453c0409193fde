"""Per-host last-activity times kept sorted, so counts as of any moment cost O(log N) and updates O(log N).

The daemon keeps one of these per host: a full scan fills it, each changed file updates one user, and a
scrape asks for counts "as of now", so users age out of a window while nobody logs in. Pure: no I/O, no clock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sortedcontainers import SortedList

from prosody_lastlog.connected import NOBODY, ConnectedUsers
from prosody_lastlog.counting import HostCounts
from prosody_lastlog.records import Store, UserActivity
from prosody_lastlog.windows import Window


@dataclass(frozen=True, slots=True)
class _Entry:
    last_active: float | None
    registered: float | None
    disabled: bool
    session_open: float | None


class HostIndex:
    """One host's users: sorted last-activity times of the enabled ones, registration times, connected users.

    Connected users count active in every window, whatever their last activity, so they are kept apart.
    """

    def __init__(self, host: str, store: Store, connected: ConnectedUsers = NOBODY) -> None:
        self.host = host
        self.store = store
        self.connected = connected
        self._users: dict[str, _Entry] = {}
        self._active = SortedList()  # last_active of enabled, unconnected users that have one
        self._registered = SortedList()
        self._never_active = 0
        self._disabled = 0
        self._open_sessions: set[str] = set()  # users whose log shows a login with no later logout
        self._connected: set[str] = set()  # enabled users connected now

    def __len__(self) -> int:
        return len(self._users)

    def set(self, activity: UserActivity) -> None:
        """Adds or replaces one user's facts."""
        self.remove(activity.user)
        entry = _Entry(activity.last_active, activity.registered, activity.disabled, activity.session_open)
        self._users[activity.user] = entry
        if entry.session_open is not None:
            self._open_sessions.add(activity.user)
        self._count(activity.user, entry, +1)

    def remove(self, user: str) -> None:
        """Forgets a user (account deleted, record emptied); unknown users are ignored."""
        entry = self._users.pop(user, None)
        if entry is not None:
            self._count(user, entry, -1)
            self._open_sessions.discard(user)

    def set_connected(self, connected: ConnectedUsers) -> None:
        """Applies a new answer to "who is connected", re-checking only the users it can change."""
        before, self.connected = self.connected, connected
        old, new = before.candidates(self.host), connected.candidates(self.host)
        users: set[str] | frozenset[str]
        if old is not None and new is not None:
            users = old ^ new  # two exact lists: only the difference changes
        else:
            users = self._connected | (self._open_sessions if new is None else new)
        for user in users:
            entry = self._users.get(user)
            if entry is not None:
                self._count(user, entry, -1, with_connected=before)
                self._count(user, entry, +1)

    def counts(self, *, now: float, windows: Sequence[Window]) -> HostCounts:
        """The same numbers `counting.count_host` gives for these users at `now`."""
        active = {w.label: _newer_than(self._active, now - w.seconds) + len(self._connected) for w in windows}
        registered = {w.label: _newer_than(self._registered, now - w.seconds) for w in windows}
        future = _newer_than(self._active, now)
        return HostCounts(
            self.store,
            len(self._users),
            self._never_active,
            self._disabled,
            future,
            active,
            registered,
            len(self._connected),
        )

    def _count(self, user: str, entry: _Entry, sign: int, *, with_connected: ConnectedUsers | None = None) -> None:
        connected = with_connected or self.connected
        if entry.disabled:
            self._disabled += sign
        elif connected.includes(self.host, user, entry.session_open):
            if sign > 0:
                self._connected.add(user)
            else:
                self._connected.remove(user)
        elif entry.last_active is None:
            self._never_active += sign
        else:
            _apply(self._active, entry.last_active, sign)
        if entry.registered is not None:
            _apply(self._registered, entry.registered, sign)


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
        self._connected = NOBODY

    def replace_host(self, host: str, store: Store, users: Iterable[UserActivity]) -> None:
        """Swaps in a freshly scanned host (built outside the lock, swapped inside)."""
        index = HostIndex(host, store, self._connected)
        for activity in users:
            index.set(activity)
        with self._lock:
            if index.connected is not self._connected:  # the answer changed while it was being built
                index.set_connected(self._connected)
            self._hosts[host] = index

    def set_connected(self, connected: ConnectedUsers) -> None:
        """Applies a new answer to "who is connected" to every host."""
        with self._lock:
            self._connected = connected
            for index in self._hosts.values():
                index.set_connected(connected)

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
            index = self._hosts.get(host)
            if index is None:
                index = self._hosts[host] = HostIndex(host, store, self._connected)
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

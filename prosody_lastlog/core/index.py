"""Per-host last-activity times kept sorted, so counts as of any moment and updates cost O(log N) (plus a pass over
a block of at most 4096 times, and a sum over the N / 2048 block lengths).

The daemon keeps one of these per host: a full scan fills it, each changed file updates one user, and a
scrape asks for counts "as of now", so users age out of a window while nobody logs in. Pure: no I/O, no clock.

Kept compact for millions of users (about 80 bytes each instead of about 340 as Python objects): a user is a slot
in parallel arrays, times as float64, the name as UTF-8 in one shared buffer, found through an open-addressing
table of slot numbers. float64 loses nothing the counting core would see: the daemon's clock is a float, and
`now - t` converts an integer `t` to float64 exactly as the arrays do; the other comparisons (`t > now`, a session
since Prosody started) are against real Unix times, below 2**53, where float64 and the integer agree.
"""

from __future__ import annotations

import math
import secrets
import threading
from array import array
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from hashlib import blake2b
from itertools import islice

from prosody_lastlog.core.connected import NOBODY, ConnectedUsers
from prosody_lastlog.core.counting import HostCounts
from prosody_lastlog.core.model import CountingChoice, Store, UserActivity
from prosody_lastlog.core.windows import Window

_NO_TIME = math.nan  # a missing time; the readers never give NaN (non-finite timestamps are dropped)
# Per-slot flags. A slot without _PRESENT is a removed user, reused if the name comes back.
_PRESENT, _DISABLED, _NO_ACCOUNT = 1, 2, 4
_NAME_END = b"\xff"  # ends each stored name: never a byte of UTF-8
_HASH_MASK = 0xFFFFFFFF  # the table keys on 32 bits of the name's hash; names are compared in full
_MAX_LOAD = 0.75  # the table grows past this many slots per position
_BLOCK = 2048  # times per block of a SortedTimes once built; a block splits at twice this


class SortedTimes:
    """A sorted multiset of float64 times, in blocks: add and remove in O(log N + block), counts in
    O(log N + N / block), 8 bytes per time."""

    def __init__(self, times: Iterable[float] = (), *, block: int = _BLOCK) -> None:
        ordered = array("d", sorted(times))
        self._block = block
        self._blocks = [ordered[start : start + block] for start in range(0, len(ordered), block)]
        self._maxes = array("d", (times[-1] for times in self._blocks))
        self._len = len(ordered)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[float]:
        return (time for block in self._blocks for time in block)

    def add(self, time: float) -> None:
        """Adds one time."""
        self._len += 1
        if not self._blocks:
            self._blocks.append(array("d", [time]))
            self._maxes.append(time)
            return
        at = min(bisect_left(self._maxes, time), len(self._blocks) - 1)
        block = self._blocks[at]
        insort(block, time)
        self._maxes[at] = block[-1]
        if len(block) > 2 * self._block:
            half = len(block) // 2
            self._blocks[at : at + 1] = [block[:half], block[half:]]
            self._maxes[at : at + 1] = array("d", [block[half - 1], block[-1]])

    def remove(self, time: float) -> None:
        """Removes one time equal to `time`, which must be there."""
        at = bisect_left(self._maxes, time)
        block = self._blocks[at]
        del block[bisect_left(block, time)]
        self._len -= 1
        if block:
            self._maxes[at] = block[-1]
        else:
            del self._blocks[at], self._maxes[at]

    def count_where(self, holds: Callable[[float], bool]) -> int:
        """How many times `holds` is true of, for a test that, once true of a time, is true of every later one."""
        at = bisect_left(self._maxes, True, key=holds)
        if at == len(self._blocks):
            return 0
        block = self._blocks[at]
        return len(block) - bisect_left(block, True, key=holds) + sum(map(len, islice(self._blocks, at + 1, None)))


class HostIndex:
    """One host's users: sorted last-activity times of the enabled ones, registration times, connected users.

    Connected users count active in every window, whatever their last activity, so they are kept apart.
    `hash_name` hashes a stored name (its UTF-8 and _NAME_END) and must be keyed, so names cannot be chosen to
    collide: Python's own hash, keyed per process, or a NameHash for an index built in another process.
    """

    def __init__(
        self,
        host: str,
        store: Store,
        connected: ConnectedUsers = NOBODY,
        users: Iterable[UserActivity] = (),
        *,
        choice: CountingChoice | None = None,
        hash_name: Callable[[bytes], int] = hash,
    ) -> None:
        self.host = host
        self.store = store
        self.choice = choice or CountingChoice(store)  # how the host is counted: its account rule says who counts
        rule = self.choice.accounts
        # Per flags value, whether the rule leaves the user out, and for want of an account: the loops are hot.
        self._left_out = tuple(
            rule.leaves_out(disabled=bool(f & _DISABLED), no_account=bool(f & _NO_ACCOUNT)) for f in range(8)
        )
        self._no_account_left_out = tuple(rule.for_want_of_account(no_account=bool(f & _NO_ACCOUNT)) for f in range(8))
        self.connected = connected
        self._hash_name = hash_name
        self._table = array("i")  # per position: slot + 1, or 0 if free (linear probing)
        self._hashes = array("I")  # per slot: the low 32 bits of the name's hash
        self._name_at = array("q")  # per slot: where its name starts in _names
        self._names = bytearray()  # every slot's name in UTF-8, each followed by _NAME_END
        self._flags = bytearray()
        self._last_active = array("d")  # per slot; _NO_TIME for None
        self._registered_at = array("d")
        self._session_open = array("d")
        self._size = 0  # present users
        self._never_active = 0
        self._disabled = 0  # left out by the account rule
        self._no_account = 0  # of those, without an account record
        self._connected = 0  # users connected now
        self._rehash(len(users) if isinstance(users, Sized) else 0)
        self._load(users)

    def __len__(self) -> int:
        return self._size

    def set(self, activity: UserActivity) -> None:
        """Adds or replaces one user's facts."""
        slot = self._slot(activity.user)
        if self._flags[slot]:
            if self._holds(slot, activity):
                return
            self._count(slot, -1, self.connected, activity.user)
        else:
            self._size += 1
        self._store(slot, activity)
        self._count(slot, +1, self.connected, activity.user)

    def get(self, user: str) -> UserActivity | None:
        """What is known of a user, if present."""
        slot = self._find(user)
        if slot < 0 or not self._flags[slot]:
            return None
        flags = self._flags[slot]
        return UserActivity(
            user,
            _time_or_none(self._last_active[slot]),
            _time_or_none(self._registered_at[slot]),
            disabled=bool(flags & _DISABLED),
            session_open=_time_or_none(self._session_open[slot]),
            no_account=bool(flags & _NO_ACCOUNT),
        )

    def remove(self, user: str) -> None:
        """Forgets a user (account deleted, record emptied); unknown users are ignored."""
        slot = self._find(user)
        if slot >= 0 and self._flags[slot]:
            self._remove(slot, user)

    def set_connected(self, connected: ConnectedUsers) -> None:
        """Applies a new answer to "who is connected", re-checking only the users it can change."""
        before, self.connected = self.connected, connected
        old, new = before.candidates(self.host), connected.candidates(self.host)
        # Two exact lists: only their difference changes; else the named users and any open session may.
        names = old ^ new if old is not None and new is not None else (old or frozenset()) | (new or frozenset())
        users: dict[int, str | None] = {}  # slot -> name, if known
        for name in names:
            slot = self._find(name)
            if slot >= 0 and self._flags[slot]:
                users[slot] = name
        if old is None or new is None:
            for slot in self._open_sessions():
                users.setdefault(slot, None)
        for slot, known in users.items():
            name = self._name(slot) if known is None else known
            session_open = _time_or_none(self._session_open[slot])
            if before.includes(self.host, name, session_open) != connected.includes(self.host, name, session_open):
                self._count_activity(slot, -1, before, name)  # registration times do not depend on it
                self._count_activity(slot, +1, connected, name)

    def counts(self, *, now: float, windows: Sequence[Window]) -> HostCounts:
        """The same numbers `counting.count_host` gives for these users at `now`."""
        active = {w.label: self._active.count_where(_within(now, w)) + self._connected for w in windows}
        registered = {w.label: self._registered.count_where(_within(now, w)) for w in windows}
        future = self._active.count_where(lambda t: t > now)
        return HostCounts(
            self.store,
            self._size,
            self._never_active,
            self._disabled,
            future,
            active,
            registered,
            self._connected,
            self._no_account,
            self.choice,
        )

    def _load(self, users: Iterable[UserActivity]) -> None:
        """Fills a new index in one pass, then sorts the times once."""
        for activity in users:
            slot = self._slot(activity.user)
            self._size += not self._flags[slot]
            self._store(slot, activity)
        named = self.connected.candidates(self.host)
        maybe_connected = (
            set(self._open_sessions()) if named is None else {slot for slot in map(self._find, named) if slot >= 0}
        )
        # Lists, not arrays: growing arrays leave holes in the C heap after the sort (measured: ~8 bytes a user).
        active: list[float] = []
        registered: list[float] = []
        left_out, no_account = self._left_out, self._no_account_left_out
        for slot, flags in enumerate(self._flags):
            if not flags:
                continue
            last_active, registered_at = self._last_active[slot], self._registered_at[slot]
            if slot in maybe_connected and self._includes(self.connected, slot, self._name(slot)):
                self._connected += 1
            elif left_out[flags]:
                self._disabled += 1
                self._no_account += no_account[flags]
            elif math.isnan(last_active):
                self._never_active += 1
            else:
                active.append(last_active)
            if not math.isnan(registered_at):
                registered.append(registered_at)
        self._active = SortedTimes(active)  # last_active of counted, unconnected users that have one
        self._registered = SortedTimes(registered)

    def _count(self, slot: int, sign: int, connected: ConnectedUsers, name: str) -> None:
        self._count_activity(slot, sign, connected, name)
        registered_at = self._registered_at[slot]
        if not math.isnan(registered_at):
            _apply(self._registered, registered_at, sign)

    def _count_activity(self, slot: int, sign: int, connected: ConnectedUsers, name: str) -> None:
        last_active, flags = self._last_active[slot], self._flags[slot]
        if self._includes(connected, slot, name):
            self._connected += sign
        elif self._left_out[flags]:
            self._disabled += sign
            self._no_account += sign if self._no_account_left_out[flags] else 0
        elif math.isnan(last_active):
            self._never_active += sign
        else:
            _apply(self._active, last_active, sign)

    def _remove(self, slot: int, name: str) -> None:
        self._count(slot, -1, self.connected, name)
        self._flags[slot] = 0
        self._size -= 1

    def _holds(self, slot: int, activity: UserActivity) -> bool:
        """Whether the slot already holds these facts."""
        return (
            self._flags[slot] == _flags(activity)
            and _same(self._last_active[slot], activity.last_active)
            and _same(self._registered_at[slot], activity.registered)
            and _same(self._session_open[slot], activity.session_open)
        )

    def _includes(self, connected: ConnectedUsers, slot: int, name: str) -> bool:
        return connected.includes(self.host, name, _time_or_none(self._session_open[slot]))

    def _store(self, slot: int, activity: UserActivity) -> None:
        self._flags[slot] = _flags(activity)
        self._last_active[slot] = _time(activity.last_active)
        self._registered_at[slot] = _time(activity.registered)
        self._session_open[slot] = _time(activity.session_open)

    def _open_sessions(self) -> list[int]:
        """The present users whose log shows a login with no later logout (an O(N) scan: Prosody restarts)."""
        sessions = zip(self._session_open, self._flags, strict=True)
        return [slot for slot, (time, flags) in enumerate(sessions) if flags and not math.isnan(time)]

    def _find(self, name: str) -> int:
        """The slot of `name`, or -1."""
        key = _key(name)
        return self._probe(key, self._hash_name(key) & _HASH_MASK)[1]

    def _slot(self, name: str) -> int:
        """The slot of `name`, made (not present yet) if it has none."""
        key = _key(name)
        hashed = self._hash_name(key) & _HASH_MASK
        position, slot = self._probe(key, hashed)
        if slot >= 0:
            return slot
        slot = len(self._flags)
        self._table[position] = slot + 1
        self._hashes.append(hashed)
        self._name_at.append(len(self._names))
        self._names += key
        self._flags.append(0)
        for times in (self._last_active, self._registered_at, self._session_open):
            times.append(_NO_TIME)
        if slot + 1 > _MAX_LOAD * len(self._table):
            self._rehash(2 * (slot + 1))
        return slot

    def _probe(self, key: bytes, hashed: int) -> tuple[int, int]:
        """Where `key` is in the table and its slot, or the free position it would take and -1."""
        table, size = self._table, len(self._table)
        position = hashed % size
        while entry := table[position]:
            slot = entry - 1
            if self._hashes[slot] == hashed and self._names.startswith(key, self._name_at[slot]):
                return position, slot
            position = position + 1 if position + 1 < size else 0
        return position, -1

    def _rehash(self, users: int) -> None:
        """Makes the table room for `users` at about 60% load."""
        size = max(8, users * 5 // 3)
        table = array("i", [0]) * size
        for slot, hashed in enumerate(self._hashes):
            position = hashed % size
            while table[position]:
                position = position + 1 if position + 1 < size else 0
            table[position] = slot + 1
        self._table = table

    def _name(self, slot: int) -> str:
        start = self._name_at[slot]
        return self._names[start : self._names.index(_NAME_END, start)].decode("utf-8", "surrogatepass")


def _flags(activity: UserActivity) -> int:
    return _PRESENT | (_DISABLED if activity.disabled else 0) | (_NO_ACCOUNT if activity.no_account else 0)


def _within(now: float, window: Window) -> Callable[[float], bool]:
    # `now - t < W` computed as the core does (not `t > now - W`: floats round): true from some t on.
    return lambda t: now - t < window.seconds


def _key(name: str) -> bytes:
    return name.encode("utf-8", "surrogatepass") + _NAME_END


def _time(value: float | None) -> float:
    return _NO_TIME if value is None else value


def _same(stored: float, value: float | None) -> bool:
    return math.isnan(stored) if value is None else stored == value


def _time_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def _apply(times: SortedTimes, value: float, sign: int) -> None:
    if sign > 0:
        times.add(value)
    else:
        times.remove(value)


class NameHash:
    """A keyed hash of stored names that every process given the same key computes alike (Python's own hash is
    keyed per process), so an index built in a child process can be used here. The key is random by default."""

    def __init__(self, key: bytes | None = None) -> None:
        self.key = secrets.token_bytes(16) if key is None else key
        self._keyed = blake2b(digest_size=4, key=self.key)

    def __call__(self, name: bytes) -> int:
        hasher = self._keyed.copy()  # cheaper than keying anew
        hasher.update(name)
        return int.from_bytes(hasher.digest())

    def __reduce__(self) -> tuple[type[NameHash], tuple[bytes]]:
        return NameHash, (self.key,)


class ActivityIndex:
    """Every host's HostIndex behind one lock: a refresh writes while scrapes read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hosts: dict[str, HostIndex] = {}
        self._connected = NOBODY

    @property
    def connected(self) -> ConnectedUsers:
        """The current answer to "who is connected"."""
        with self._lock:
            return self._connected

    def replace_host(self, host: str, choice: CountingChoice, users: Iterable[UserActivity]) -> None:
        """Brings a host to a fresh scan of it: a new index, built outside the lock, then swapped in."""
        self.swap_in([HostIndex(host, choice.store, self.connected, users, choice=choice)])

    def swap_in(self, indexes: Iterable[HostIndex]) -> None:
        """Puts built indexes in place of their hosts' (the old ones are dropped)."""
        with self._lock:
            for index in indexes:
                if index.connected is not self._connected:  # the answer changed while it was being built
                    index.set_connected(self._connected)
                self._hosts[index.host] = index

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

    def choice_of(self, host: str) -> CountingChoice | None:
        """How a host is counted (its store and account rule), if the host is known."""
        with self._lock:
            index = self._hosts.get(host)
            return index.choice if index else None

    def update(self, host: str, choice: CountingChoice, user: str, activity: UserActivity | None) -> None:
        """Applies one changed file: the user's new facts, or None when the record is gone."""
        with self._lock:
            index = self._hosts.get(host)
            if index is None:
                index = self._hosts[host] = HostIndex(host, choice.store, self._connected, choice=choice)
            if activity is None:
                index.remove(user)
            else:
                index.set(activity)

    def activity_of(self, host: str, user: str) -> UserActivity | None:
        """What is known of one user, if anything."""
        with self._lock:
            index = self._hosts.get(host)
            return index.get(user) if index else None

    def counts(self, *, now: float, windows: Sequence[Window]) -> dict[str, HostCounts]:
        """Counts of every host as of `now`, sorted by host."""
        with self._lock:
            return {host: self._hosts[host].counts(now=now, windows=windows) for host in sorted(self._hosts)}

    def tracked_users(self) -> Mapping[str, int]:
        """How many users each host holds."""
        with self._lock:
            return {host: len(index) for host, index in sorted(self._hosts.items())}

"""Per-host last-activity times kept sorted, so counts as of any moment and updates cost O(log N) (plus a pass over
a block of at most 4096 times, and a sum over the N / 2048 block lengths).

The daemon keeps one of these per host: a full scan fills it, each changed file updates one user, and a
scrape asks for counts "as of now", so users age out of a window while nobody logs in. Pure: no I/O, no clock.

Kept compact for millions of users (about 80 bytes each instead of about 340 as Python objects): a user is a slot
in parallel arrays, times as float64 (SortedTimes), names in a NameTable (both in compact.py). float64 loses
nothing the counting core would see: the daemon's clock is a float, and `now - t` converts an integer `t` to
float64 exactly as the arrays do; the other comparisons (`t > now`, a session since Prosody started) are against
real Unix times, below 2**53, where float64 and the integer agree.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence, Sized

from prosody_lastlog.core.compact import NameTable, SortedTimes
from prosody_lastlog.core.connected import NOBODY, ConnectedUsers
from prosody_lastlog.core.counting import HostCounts
from prosody_lastlog.core.model import CountingChoice, Store, UserActivity
from prosody_lastlog.core.windows import DEFAULT_AGES, Window

_NO_TIME = math.nan  # a missing time; the readers never give NaN (non-finite timestamps are dropped)
# Per-slot flags. A slot without _PRESENT is a removed user, reused if the name comes back.
_PRESENT, _DISABLED, _NO_ACCOUNT, _ACCOUNT_ONLY = 1, 2, 4, 8


class HostIndex:
    """One host's users: sorted last-activity times of the enabled ones, registration times, connected users.

    Connected users count active in every window, whatever their last activity, so they are kept apart. For the
    lifecycle counts (counting.Lifecycle) two more sorted lists: of the users counted, the registration times of
    those never active, and for those active (now, if connected) who have a registration time, the earlier of the
    two: such a user is active in W and registered within W iff now - that < W.
    `hash_name` hashes names as NameTable's does: a NameHash for an index built in another process.
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
        registered_accounts: int | None = None,
    ) -> None:
        self.host = host
        self.store = store
        self.registered_accounts = registered_accounts  # as the last listing of the accounts store found them
        self.choice = choice or CountingChoice(store)  # how the host is counted: its account rule says who counts
        rule = self.choice.accounts
        # Per flags value, whether the rule leaves the user out, and for want of an account: the loops are hot.
        self._left_out = tuple(
            rule.leaves_out(disabled=bool(f & _DISABLED), no_account=bool(f & _NO_ACCOUNT)) for f in range(16)
        )
        self._no_account_left_out = tuple(rule.for_want_of_account(no_account=bool(f & _NO_ACCOUNT)) for f in range(16))
        self.connected = connected
        self._names = NameTable(hash_name, capacity=len(users) if isinstance(users, Sized) else 0)  # slot -> user
        self._flags = bytearray()
        self._last_active = array("d")  # per slot; _NO_TIME for None
        self._registered_at = array("d")
        self._session_open = array("d")
        self._size = 0  # present users
        self._account_only = 0  # of those, registered accounts with no activity record
        self._never_active = 0
        self._disabled = 0  # left out by the account rule
        self._no_account = 0  # of those, without an account record
        self._connected = 0  # users connected now
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
        self._account_only -= bool(self._flags[slot] & _ACCOUNT_ONLY)
        self._store(slot, activity)
        self._account_only += activity.account_only
        self._count(slot, +1, self.connected, activity.user)

    def get(self, user: str) -> UserActivity | None:
        """What is known of a user, if present."""
        slot = self._names.find(user)
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
            account_only=bool(flags & _ACCOUNT_ONLY),
        )

    def remove(self, user: str) -> None:
        """Forgets a user (account deleted, record emptied); unknown users are ignored."""
        slot = self._names.find(user)
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
            slot = self._names.find(name)
            if slot >= 0 and self._flags[slot]:
                users[slot] = name
        if old is None or new is None:
            for slot in self._open_sessions():
                users.setdefault(slot, None)
        for slot, known in users.items():
            name = self._names.name(slot) if known is None else known
            if self._includes(before, slot, name) != self._includes(connected, slot, name):
                self._count_activity(slot, -1, before, name)  # registration times do not depend on it
                self._count_activity(slot, +1, connected, name)

    def counts(self, *, now: float, windows: Sequence[Window], ages: Sequence[Window] = DEFAULT_AGES) -> HostCounts:
        """The same numbers `counting.count_host` gives for these users at `now`."""
        active = {w.label: self._active.count_where(_within(now, w)) + self._connected for w in windows}
        registered = {w.label: self._registered.count_where(_within(now, w)) for w in windows}
        returning = {w.label: active[w.label] - self._fresh.count_where(_within(now, w)) for w in windows}
        never_used = {a.label: len(self._idle) - self._idle.count_where(_within(now, a)) for a in ages}
        inactive = {
            a.label: len(self._active) - self._active.count_where(_within(now, a)) + never_used[a.label] for a in ages
        }
        future = self._active.count_where(lambda t: t > now)
        return HostCounts(
            self.store,
            self._size - self._account_only,
            self._never_active,
            self._disabled,
            future,
            active,
            registered,
            self._connected,
            self._no_account,
            self.choice,
            self.registered_accounts,
            returning,
            inactive,
            never_used,
        )

    def _load(self, users: Iterable[UserActivity]) -> None:
        """Fills a new index in one pass, then sorts the times once."""
        for activity in users:
            slot = self._slot(activity.user)
            self._size += not self._flags[slot]
            self._account_only -= bool(self._flags[slot] & _ACCOUNT_ONLY)
            self._store(slot, activity)
            self._account_only += activity.account_only
        named = self.connected.candidates(self.host)
        maybe_connected = (
            set(self._open_sessions())
            if named is None
            else {slot for slot in map(self._names.find, named) if slot >= 0}
        )
        # Lists, not arrays: growing arrays leave holes in the C heap after the sort (measured: ~8 bytes a user).
        active: list[float] = []
        registered: list[float] = []
        fresh: list[float] = []
        idle: list[float] = []
        left_out, no_account = self._left_out, self._no_account_left_out
        for slot, flags in enumerate(self._flags):
            if not flags:
                continue
            last_active, registered_at = self._last_active[slot], self._registered_at[slot]
            known = not math.isnan(registered_at)
            if slot in maybe_connected and self._includes(self.connected, slot, self._names.name(slot)):
                self._connected += 1
                if known:
                    fresh.append(registered_at)
            elif left_out[flags]:
                self._disabled += 1
                self._no_account += no_account[flags]
            elif math.isnan(last_active):
                self._never_active += 1
                if known:
                    idle.append(registered_at)
            else:
                active.append(last_active)
                if known:
                    fresh.append(min(last_active, registered_at))
            if known:
                registered.append(registered_at)
        self._active = SortedTimes(active)  # last_active of counted, unconnected users that have one
        self._registered = SortedTimes(registered)
        self._fresh = SortedTimes(fresh)  # counted active users with a registration: min(last_active, registered)
        self._idle = SortedTimes(idle)  # counted never-active users: their registration times

    def _count(self, slot: int, sign: int, connected: ConnectedUsers, name: str) -> None:
        self._count_activity(slot, sign, connected, name)
        registered_at = self._registered_at[slot]
        if not math.isnan(registered_at):
            _apply(self._registered, registered_at, sign)

    def _count_activity(self, slot: int, sign: int, connected: ConnectedUsers, name: str) -> None:
        last_active, flags, registered_at = self._last_active[slot], self._flags[slot], self._registered_at[slot]
        known = not math.isnan(registered_at)
        if self._includes(connected, slot, name):
            self._connected += sign
            if known:
                _apply(self._fresh, registered_at, sign)
        elif self._left_out[flags]:
            self._disabled += sign
            self._no_account += sign if self._no_account_left_out[flags] else 0
        elif math.isnan(last_active):
            self._never_active += sign
            if known:
                _apply(self._idle, registered_at, sign)
        else:
            _apply(self._active, last_active, sign)
            if known:
                _apply(self._fresh, min(last_active, registered_at), sign)

    def _remove(self, slot: int, name: str) -> None:
        self._count(slot, -1, self.connected, name)
        self._account_only -= bool(self._flags[slot] & _ACCOUNT_ONLY)
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
        """connected.is_connected, for a slot."""
        if self._flags[slot] & _ACCOUNT_ONLY:
            return False
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

    def _slot(self, name: str) -> int:
        """The slot of `name`, made (not present yet) if it has none."""
        slot = self._names.add(name)
        if slot == len(self._flags):  # a new one
            self._flags.append(0)
            for times in (self._last_active, self._registered_at, self._session_open):
                times.append(_NO_TIME)
        return slot


def _flags(activity: UserActivity) -> int:
    return (
        _PRESENT
        | (_DISABLED if activity.disabled else 0)
        | (_NO_ACCOUNT if activity.no_account else 0)
        | (_ACCOUNT_ONLY if activity.account_only else 0)
    )


def _within(now: float, window: Window) -> Callable[[float], bool]:
    # `now - t < W` computed as the core does (not `t > now - W`: floats round): true from some t on.
    return lambda t: now - t < window.seconds


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


class ActivityIndex:
    """Every host's HostIndex behind one lock: a refresh writes while scrapes read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hosts: dict[str, HostIndex] = {}
        self._connected = NOBODY
        self._stored_only: set[str] = set()  # hosts counted from stored activity only (SQL): no connected users

    @property
    def connected(self) -> ConnectedUsers:
        """The current answer to "who is connected"."""
        with self._lock:
            return self._connected

    def replace_host(self, host: str, choice: CountingChoice, users: Iterable[UserActivity]) -> None:
        """Brings a host to a fresh scan of it: a new index, built outside the lock, then swapped in."""
        self.swap_in([HostIndex(host, choice.store, self.connected, users, choice=choice)])

    def swap_in(self, indexes: Iterable[HostIndex], *, stored_only: bool = False) -> None:
        """Puts built indexes in place of their hosts' (the old ones are dropped); `stored_only`: hosts whose counts
        never include connected users (an SQL source's: it counts stored activity only)."""
        with self._lock:
            for index in indexes:
                connected = NOBODY if stored_only else self._connected
                if index.connected is not connected:  # the answer changed while it was being built
                    index.set_connected(connected)
                self._hosts[index.host] = index
                if stored_only:
                    self._stored_only.add(index.host)
                else:
                    self._stored_only.discard(index.host)

    def set_connected(self, connected: ConnectedUsers) -> None:
        """Applies a new answer to "who is connected" to every host but the stored-only ones."""
        with self._lock:
            self._connected = connected
            for host, index in self._hosts.items():
                if host not in self._stored_only:
                    index.set_connected(connected)

    def remove_hosts(self, hosts: Iterable[str]) -> None:
        """Forgets hosts (a vhost removed from the config or the disk)."""
        with self._lock:
            for host in hosts:
                self._hosts.pop(host, None)
                self._stored_only.discard(host)

    def held(self, hosts: Iterable[str]) -> list[HostIndex]:
        """The indexes of those of `hosts` held (to keep them across a reload)."""
        with self._lock:
            return [self._hosts[host] for host in hosts if host in self._hosts]

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
                connected = NOBODY if host in self._stored_only else self._connected
                index = self._hosts[host] = HostIndex(host, choice.store, connected, choice=choice)
            if activity is None:
                index.remove(user)
            else:
                index.set(activity)

    def set_registered_accounts(self, host: str, registered: int | None) -> None:
        """The host's registered accounts, counted again after a change in its accounts store."""
        with self._lock:
            index = self._hosts.get(host)
            if index is not None:
                index.registered_accounts = registered

    def registered_of(self, host: str) -> int | None:
        """The host's registered accounts as last counted (None: not known, or no such host)."""
        with self._lock:
            index = self._hosts.get(host)
            return index.registered_accounts if index else None

    def activity_of(self, host: str, user: str) -> UserActivity | None:
        """What is known of one user, if anything."""
        with self._lock:
            index = self._hosts.get(host)
            return index.get(user) if index else None

    def counts(
        self,
        *,
        now: float,
        windows: Sequence[Window],
        ages: Sequence[Window] = DEFAULT_AGES,
        hosts: Collection[str] | None = None,
    ) -> dict[str, HostCounts]:
        """Counts of every host (of `hosts`, if given) as of `now`, sorted by host."""
        with self._lock:
            held = sorted(self._hosts if hosts is None else self._hosts.keys() & set(hosts))
            return {host: self._hosts[host].counts(now=now, windows=windows, ages=ages) for host in held}

    def tracked_users(self) -> Mapping[str, int]:
        """How many users each host holds."""
        with self._lock:
            return {host: len(index) for host, index in sorted(self._hosts.items())}

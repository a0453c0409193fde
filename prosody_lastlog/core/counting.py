"""The counting core: activity records and a given `now` in, counts per host and window out. No I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from prosody_lastlog.core.connected import NOBODY, ConnectedUsers
from prosody_lastlog.core.model import AccountRule, CountingChoice, HostData, Store
from prosody_lastlog.core.windows import Window

ALL_HOSTS = "all"  # the one host --totals-only shows


@dataclass(frozen=True, slots=True)
class HostCounts:
    """Counts for one host; `active` and `registered` are keyed by window label."""

    store: Store
    accounts: int
    never_active: int
    disabled: int  # left out: not enabled, as Prosody's user_is_enabled answers (see records.AccountRule)
    future: int
    active: Mapping[str, int]
    registered: Mapping[str, int]
    connected: int = 0  # accounts connected now, hence active in every window
    no_account: int = 0  # of `disabled`: those without an account record
    choice: CountingChoice | None = None  # how the host is counted; None: from `store`, every account counting
    registered_accounts: int | None = None  # accounts in the auth store, with activity data or not; None: not known

    def __post_init__(self) -> None:
        if self.choice is None:  # so that equal counts compare equal however the choice was given
            object.__setattr__(self, "choice", CountingChoice(self.store))

    @property
    def counting(self) -> CountingChoice:
        """How this host is counted."""
        return self.choice or CountingChoice(self.store)

    def stickiness(self, shortest: Window, longest: Window) -> float | None:
        """Active in the shortest window over active in the longest (DAU/MAU by default); None if undefined."""
        denominator = self.active[longest.label]
        return self.active[shortest.label] / denominator if denominator else None


@dataclass(frozen=True)
class Snapshot:
    """The counts of every host as of `taken` (Unix seconds), for the windows counted."""

    taken: float
    counts: Mapping[str, HostCounts]
    windows: Sequence[Window]


def count_host(
    data: HostData, *, now: float, windows: Sequence[Window], connected: ConnectedUsers = NOBODY
) -> HostCounts:
    """Counts one host as mod_measure_active_users does: a connected user is active in every window; else a user
    the host's AccountRule leaves out (not enabled) is not counted; else active in W iff now - last_active < W
    (strict).

    A last activity in the future (clock skew) makes the user active in every window, as in the seed
    module. `registered` alone is not activity.
    """
    active = dict.fromkeys((w.label for w in windows), 0)
    registered = dict.fromkeys((w.label for w in windows), 0)
    never_active = left_out = no_account = future = online = 0
    rule = data.counting.accounts
    asks = rule is not AccountRule.EVERYONE  # else no account fact matters (and the loop is hot)
    for user in data.users:
        if user.registered is not None:
            _add_within(registered, windows, now - user.registered)
        if connected.includes(data.host, user.user, user.session_open):
            online += 1
            for window in windows:
                active[window.label] += 1
        elif asks and rule.leaves_out(disabled=user.disabled, no_account=user.no_account):
            left_out += 1
            no_account += rule.for_want_of_account(no_account=user.no_account)
        elif user.last_active is None:
            never_active += 1
        else:
            if user.last_active > now:
                future += 1
            _add_within(active, windows, now - user.last_active)
    return HostCounts(
        data.store,
        len(data.users),
        never_active,
        left_out,
        future,
        active,
        registered,
        online,
        no_account,
        data.choice,
        data.registered_accounts,
    )


def count_hosts(
    hosts: Iterable[HostData], *, now: float, windows: Sequence[Window], connected: ConnectedUsers = NOBODY
) -> dict[str, HostCounts]:
    """Counts every host, keyed and sorted by host name."""
    return {
        data.host: count_host(data, now=now, windows=windows, connected=connected)
        for data in sorted(hosts, key=_host_name)
    }


def total_counts(counts: Mapping[str, HostCounts], windows: Sequence[Window]) -> HostCounts:
    """All hosts added up (for --totals-only); the store and choice shown are the first host's. `counts` must not be
    empty."""
    values = list(counts.values())
    return HostCounts(
        values[0].store,
        sum(c.accounts for c in values),
        sum(c.never_active for c in values),
        sum(c.disabled for c in values),
        sum(c.future for c in values),
        {w.label: sum(c.active[w.label] for c in values) for w in windows},
        {w.label: sum(c.registered[w.label] for c in values) for w in windows},
        sum(c.connected for c in values),
        sum(c.no_account for c in values),
        values[0].choice,
        _sum_known([c.registered_accounts for c in values]),
    )


def totals_only(counts: Mapping[str, HostCounts], windows: Sequence[Window]) -> dict[str, HostCounts]:
    """`--totals-only`: all hosts added up as one host named ALL_HOSTS; nothing counted yet stays nothing."""
    return {ALL_HOSTS: total_counts(counts, windows)} if counts else {}


def _sum_known(values: Sequence[int | None]) -> int | None:
    """The sum, or None if any is not known: a total missing some hosts' accounts would be a wrong number."""
    return None if None in values else sum(v for v in values if v is not None)


def _add_within(counts: dict[str, int], windows: Sequence[Window], age: float) -> None:
    for window in windows:
        if age < window.seconds:
            counts[window.label] += 1


def _host_name(data: HostData) -> str:
    return data.host


def zero_counts(choice: CountingChoice, windows: Sequence[Window]) -> HostCounts:
    """The counts of a host that exists but has no data yet."""
    zeros = dict.fromkeys((w.label for w in windows), 0)
    return HostCounts(choice.store, 0, 0, 0, 0, zeros, dict(zeros), choice=choice)

"""The counting core: activity records and a given `now` in, counts per host and window out. No I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prosody_lastlog.core.cohorts import Cohort, add_cohorts
from prosody_lastlog.core.connected import NOBODY, ConnectedUsers, is_connected
from prosody_lastlog.core.model import AccountRule, CountingChoice, HostData, Store
from prosody_lastlog.core.windows import DEFAULT_AGES, Window

ALL_HOSTS = "all"  # the one host --totals-only shows


@dataclass(frozen=True, slots=True)
class HostCounts:
    """Counts for one host; `active`, `registered` and `returning` are keyed by window label, `inactive` and
    `never_used` by age label."""

    store: Store
    activity_records: int  # users with a last-activity record in the store counted
    never_active: int
    disabled: int  # left out: not enabled, as Prosody's user_is_enabled answers (see records.AccountRule)
    future: int
    active: Mapping[str, int]
    registered: Mapping[str, int]
    connected: int = 0  # accounts connected now, hence active in every window
    no_account: int = 0  # of `disabled`: those without an account record
    choice: CountingChoice | None = None  # how the host is counted; None: from `store`, every account counting
    registered_accounts: int | None = None  # accounts in the auth store, with activity data or not; None: not known
    returning: Mapping[str, int] = field(default_factory=dict)  # active in the window, registered before it began
    inactive: Mapping[str, int] = field(default_factory=dict)  # last activity (else registration) >= age ago
    never_used: Mapping[str, int] = field(default_factory=dict)  # of those, never active
    cohorts: tuple[Cohort, ...] = ()  # sign-up cohorts, oldest first; only where asked for (count --cohorts)

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
    data: HostData,
    *,
    now: float,
    windows: Sequence[Window],
    connected: ConnectedUsers = NOBODY,
    ages: Sequence[Window] = DEFAULT_AGES,
) -> HostCounts:
    """Counts one host as mod_measure_active_users does: a connected user is active in every window; else a user
    the host's AccountRule leaves out (not enabled) is not counted; else active in W iff now - last_active < W
    (strict).

    A last activity in the future (clock skew) makes the user active in every window, as in the seed
    module. `registered` alone is not activity. The lifecycle counts (see `Lifecycle`) are over the same users.
    """
    active = dict.fromkeys((w.label for w in windows), 0)
    registered = dict.fromkeys((w.label for w in windows), 0)
    lifecycle = Lifecycle(now, windows, ages)
    never_active = left_out = no_account = future = online = records = 0
    rule = data.counting.accounts
    asks = rule is not AccountRule.EVERYONE  # else no account fact matters (and the loop is hot)
    for user in data.users:
        records += not user.account_only
        if user.registered is not None:
            _add_within(registered, windows, now - user.registered)
        if is_connected(connected, data.host, user):
            online += 1
            for window in windows:
                active[window.label] += 1
            lifecycle.add_active(now, user.registered)
        elif asks and rule.leaves_out(disabled=user.disabled, no_account=user.no_account):
            left_out += 1
            no_account += rule.for_want_of_account(no_account=user.no_account)
        elif user.last_active is None:
            never_active += 1
            lifecycle.add_never_active(user.registered)
        else:
            if user.last_active > now:
                future += 1
            _add_within(active, windows, now - user.last_active)
            lifecycle.add_active(user.last_active, user.registered)
    return HostCounts(
        data.store,
        records,
        never_active,
        left_out,
        future,
        active,
        registered,
        online,
        no_account,
        data.choice,
        data.registered_accounts,
        lifecycle.returning,
        lifecycle.inactive,
        lifecycle.never_used,
    )


class Lifecycle:
    """The lifecycle counts of the users counted (not left out), one user at a time:

    - returning[W]: active in W and not registered within W (registered before W began, or when is not known);
    - inactive[A]: the last activity, else the registration, is at least A ago (now - t >= A: the complement of
      "within"); a user connected now, or never active with no registration time, is never inactive;
    - never_used[A]: of inactive[A], those never active.
    """

    def __init__(self, now: float, windows: Sequence[Window], ages: Sequence[Window]) -> None:
        self._now, self._windows, self._ages = now, windows, ages
        self.returning = dict.fromkeys((w.label for w in windows), 0)
        self.inactive = dict.fromkeys((a.label for a in ages), 0)
        self.never_used = dict.fromkeys((a.label for a in ages), 0)

    def add_active(self, last_active: float, registered: float | None) -> None:
        """A user active at `last_active` (`now` if connected)."""
        now = self._now
        for window in self._windows:
            if now - last_active < window.seconds and (registered is None or now - registered >= window.seconds):
                self.returning[window.label] += 1
        for age in self._ages:
            if idle_for(now, last_active, age):
                self.inactive[age.label] += 1

    def add_never_active(self, registered: float | None) -> None:
        """A user never active, registered at `registered` if known."""
        if registered is None:
            return
        for age in self._ages:
            if idle_for(self._now, registered, age):
                self.inactive[age.label] += 1
                self.never_used[age.label] += 1


def idle_for(now: float, since: float, age: Window) -> bool:
    """Whether an account last active (or, never active, registered) at `since` is inactive for `age` as of `now`:
    at least `age` ago, the complement of "active in a window of that length"."""
    return now - since >= age.seconds


def count_hosts(
    hosts: Iterable[HostData],
    *,
    now: float,
    windows: Sequence[Window],
    connected: ConnectedUsers = NOBODY,
    ages: Sequence[Window] = DEFAULT_AGES,
) -> dict[str, HostCounts]:
    """Counts every host, keyed and sorted by host name."""
    return {
        data.host: count_host(data, now=now, windows=windows, connected=connected, ages=ages)
        for data in sorted(hosts, key=_host_name)
    }


def total_counts(counts: Mapping[str, HostCounts], windows: Sequence[Window]) -> HostCounts:
    """All hosts added up (for --totals-only); the store and choice shown are the first host's. `counts` must not be
    empty."""
    values = list(counts.values())
    return HostCounts(
        values[0].store,
        sum(c.activity_records for c in values),
        sum(c.never_active for c in values),
        sum(c.disabled for c in values),
        sum(c.future for c in values),
        {w.label: sum(c.active[w.label] for c in values) for w in windows},
        {w.label: sum(c.registered[w.label] for c in values) for w in windows},
        sum(c.connected for c in values),
        sum(c.no_account for c in values),
        values[0].choice,
        _sum_known([c.registered_accounts for c in values]),
        _sum_each([c.returning for c in values]),
        _sum_each([c.inactive for c in values]),
        _sum_each([c.never_used for c in values]),
        add_cohorts([c.cohorts for c in values]),
    )


def totals_only(counts: Mapping[str, HostCounts], windows: Sequence[Window]) -> dict[str, HostCounts]:
    """`--totals-only`: all hosts added up as one host named ALL_HOSTS; nothing counted yet stays nothing."""
    return {ALL_HOSTS: total_counts(counts, windows)} if counts else {}


def _sum_known(values: Sequence[int | None]) -> int | None:
    """The sum, or None if any is not known: a total missing some hosts' accounts would be a wrong number."""
    return None if None in values else sum(v for v in values if v is not None)


def _sum_each(mappings: Sequence[Mapping[str, int]]) -> dict[str, int]:
    """The mappings added up, key by key (every host has the same keys)."""
    return {key: sum(m.get(key, 0) for m in mappings) for key in mappings[0]}


def _add_within(counts: dict[str, int], windows: Sequence[Window], age: float) -> None:
    for window in windows:
        if age < window.seconds:
            counts[window.label] += 1


def _host_name(data: HostData) -> str:
    return data.host


def zero_counts(choice: CountingChoice, windows: Sequence[Window], ages: Sequence[Window] = DEFAULT_AGES) -> HostCounts:
    """The counts of a host that exists but has no data yet."""
    zeros = dict.fromkeys((w.label for w in windows), 0)
    aged = dict.fromkeys((a.label for a in ages), 0)
    return HostCounts(
        choice.store,
        0,
        0,
        0,
        0,
        zeros,
        dict(zeros),
        choice=choice,
        returning=dict(zeros),
        inactive=aged,
        never_used=dict(aged),
    )

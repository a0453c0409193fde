"""Sign-up cohorts, as Mastodon's admin dashboard shows them: per calendar month (UTC) of registration, how many
accounts registered, and how many of them have their last activity in or after each month since. No I/O, no clock.

Last-activity data keeps one time per account, so an account that came back in March and left again counts as
retained in every month up to March, exactly like one that stayed: retention here means "last seen in or after".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prosody_lastlog.core.connected import NOBODY, ConnectedUsers, is_connected
from prosody_lastlog.core.model import HostData

MAX_MONTHS = 12  # cohorts shown and exported at most: one series per cohort month and host


@dataclass(frozen=True, slots=True)
class Cohort:
    """The accounts registered in `month` ("YYYY-MM"); `retained[k]`: of them, those last active in or after the
    k-th month from it (k = 0: the sign-up month itself), up to the current month."""

    month: str
    registered: int
    retained: tuple[int, ...]

    @property
    def active_this_month(self) -> int:
        """Of the cohort, those last active in the current month (the last of `retained`)."""
        return self.retained[-1]


def sign_up_cohorts(
    data: HostData, *, now: float, months: int = MAX_MONTHS, connected: ConnectedUsers = NOBODY
) -> list[Cohort]:
    """The cohorts of the last `months` calendar months up to `now`'s, oldest first, over the accounts the counts
    count (not left out by the host's account rule) whose registration time is known and not after `now`. A user
    connected now, or last active in the future (clock skew), is last active now."""
    current = month_number(now)
    first = current - min(max(months, 1), MAX_MONTHS) + 1
    start = month_start(first)
    registered = [0] * (current - first + 1)
    # last_seen[c][m]: accounts of cohort c whose last activity falls in month first + m
    last_seen = [[0] * (current - first + 1) for _ in registered]
    rule = data.counting.accounts
    for user in data.users:
        if user.registered is None or not start <= user.registered <= now:
            continue
        online = is_connected(connected, data.host, user)
        if not online and rule.leaves_out(disabled=user.disabled, no_account=user.no_account):
            continue
        cohort = month_number(user.registered) - first
        registered[cohort] += 1
        last = now if online or (user.last_active is not None and user.last_active > now) else user.last_active
        if last is not None:  # last seen before signing up (odd data): in the sign-up month
            last_seen[cohort][month_number(last) - first if last >= user.registered else cohort] += 1
    cohorts = []
    for cohort, size in enumerate(registered):
        later = last_seen[cohort][cohort:]
        retained = tuple(sum(later[k:]) for k in range(len(later)))
        cohorts.append(Cohort(month_label(first + cohort), size, retained))
    return cohorts


def add_cohorts(per_host: Sequence[Sequence[Cohort]]) -> tuple[Cohort, ...]:
    """Cohorts of several hosts added up, month by month (hosts without cohorts add nothing)."""
    by_month: dict[str, tuple[int, list[int]]] = {}
    for cohorts in per_host:
        for cohort in cohorts:
            registered, retained = by_month.setdefault(cohort.month, (0, [0] * len(cohort.retained)))
            by_month[cohort.month] = (
                registered + cohort.registered,
                [a + b for a, b in zip(retained, cohort.retained, strict=True)],
            )
    return tuple(
        Cohort(month, registered, tuple(retained)) for month, (registered, retained) in sorted(by_month.items())
    )


def month_number(epoch: float) -> int:
    """The calendar month (UTC) of a Unix time, as year * 12 + month - 1."""
    from datetime import UTC, datetime  # noqa: PLC0415  # only when cohorts are counted: every count imports this

    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.year * 12 + moment.month - 1


def month_start(number: int) -> float:
    """The Unix time a month_number begins (UTC)."""
    from datetime import UTC, datetime  # noqa: PLC0415  # as in month_number

    return datetime(number // 12, number % 12 + 1, 1, tzinfo=UTC).timestamp()


def month_label(number: int) -> str:
    """ "YYYY-MM" of a month_number."""
    return f"{number // 12:04d}-{number % 12 + 1:02d}"

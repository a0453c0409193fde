"""The one table of count families (name, labels, help): /metrics, the textfile and every push format use it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prosody_lastlog.core.counting import HostCounts

CACHE_NOTE = (
    "From a cache: the daemon refreshes it by file watcher and periodic resync, counting as of the scrape or push."
)


@dataclass(frozen=True, slots=True)
class CountFamily:
    """One family of counts. `name` has no prefix: /metrics and the Pushgateway show `prosody_<name>`, InfluxDB
    `<prefix>_<name>`, Graphite a path node; `read` takes its values from one host's counts (per window or one)."""

    name: str
    labels: tuple[str, ...]
    help: str
    read: Callable[[HostCounts], Mapping[str, int] | int | None]  # None: not known for this host, so no sample
    opt_in: bool = False  # samples only when asked for (count --cohorts), so not on the shipped dashboards

    def samples(self, counts: HostCounts) -> list[tuple[str | None, int]]:
        """The family's values for one host: (label value, value) for each window (or cohort) counted, in the order
        counted, else one (None, value); none where the value is not known."""
        value = self.read(counts)
        if value is None:
            return []
        if isinstance(value, int):
            return [(None, value)]
        return list(value.items())


COUNT_FAMILIES = (  # in the order every output lists them
    CountFamily(
        "active_users",
        ("host", "window"),
        "Accounts active within the window (now - last login/logout < window), as mod_measure_active_users counts "
        f"them. Do not sum over window. {CACHE_NOTE}",
        lambda counts: counts.active,
    ),
    CountFamily(
        "registrations",
        ("host", "window"),
        f"Accounts registered within the window. {CACHE_NOTE}",
        lambda counts: counts.registered,
    ),
    CountFamily(
        "returning_users",
        ("host", "window"),
        "Accounts active within the window and registered before it began (or when is not known): active users less "
        f"the new ones. {CACHE_NOTE}",
        lambda counts: counts.returning,
    ),
    CountFamily(
        "activity_records",
        ("host",),
        "Accounts with a last-activity record in the store counted (registered or not; see "
        f"prosody_accounts_registered). {CACHE_NOTE}",
        lambda counts: counts.activity_records,
    ),
    CountFamily(
        "accounts_registered",
        ("host",),
        "Registered accounts: those in the host's accounts store (mod_auth_internal_hashed or _plain), with "
        "last-activity data or not. No sample where Prosody keeps no account list (another auth provider, accounts in "
        f"another storage) or it is not known (an SQL source). {CACHE_NOTE}",
        lambda counts: counts.registered_accounts,
    ),
    CountFamily(
        "accounts_never_active",
        ("host",),
        "Accounts counted that never logged in or out: a record with no login or logout, or a registered account with "
        f"no record. {CACHE_NOTE}",
        lambda counts: counts.never_active,
    ),
    CountFamily(
        "accounts_inactive",
        ("host", "window"),
        "Accounts counted whose last activity, else registration, is at least the window ago (--inactive-window); "
        f"one connected now, or never active with no registration time, is not. {CACHE_NOTE}",
        lambda counts: counts.inactive,
    ),
    CountFamily(
        "accounts_never_used",
        ("host", "window"),
        f"Of prosody_accounts_inactive, those never active: registered at least the window ago. {CACHE_NOTE}",
        lambda counts: counts.never_used,
    ),
    CountFamily(
        "cohort_accounts",
        ("host", "cohort"),
        "Accounts counted that registered in the cohort month (UTC, YYYY-MM), for the last 12 months; only with "
        "count --cohorts.",
        lambda counts: {c.month: c.registered for c in counts.cohorts},
        opt_in=True,
    ),
    CountFamily(
        "cohort_retained",
        ("host", "cohort"),
        "Of prosody_cohort_accounts, those last active in the current month (UTC). Last-activity data cannot tell "
        "an account that came back and left from one that stayed. Only with count --cohorts.",
        lambda counts: {c.month: c.active_this_month for c in counts.cohorts},
        opt_in=True,
    ),
    CountFamily(
        "connected_users",
        ("host",),
        "Accounts connected now, counted active in every window as mod_measure_active_users does; 0 where connected "
        f"users are not detected (see prosody_lastlog_connected_detection_info). {CACHE_NOTE}",
        lambda counts: counts.connected,
    ),
)

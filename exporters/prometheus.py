"""The one prometheus_client Collector: counts as of the scrape, plus the exporter's own health.

Sample exposition:

    # HELP prosody_active_users Accounts active within the window (now - last login/logout < window), ...
    # TYPE prosody_active_users gauge
    prosody_active_users{host="example.com",window="1d"} 4.0
    prosody_active_users{host="example.com",window="30d"} 13.0
    # HELP prosody_lastlog_source_up Whether the last refresh of this source succeeded (1) or failed (0).
    # TYPE prosody_lastlog_source_up gauge
    prosody_lastlog_source_up{source="files /var/lib/prosody"} 1.0
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from exporters.families import COUNT_FAMILIES
from exporters.runner import ExportStatus
from prosody_lastlog import __version__
from prosody_lastlog.core.connected import ConnectedMode
from prosody_lastlog.core.counting import ALL_HOSTS, HostCounts, totals_only
from prosody_lastlog.core.health import SourceHealth
from prosody_lastlog.core.model import PROBLEM_KINDS
from prosody_lastlog.core.windows import Window

COMPAT_WINDOWS = ("1d", "7d", "30d")  # the gauges mod_measure_active_users defines


class CountsView(Protocol):
    """What the collector reads: counts as of a moment, and the sources' health."""

    def counts(self, *, now: float) -> dict[str, HostCounts]:
        """Counts per host as of `now`; hosts of sources never counted yet are absent."""

    def health(self) -> Sequence[SourceHealth]:
        """One entry per configured source."""

    def tracked_users(self) -> Mapping[str, int]:
        """Users held in memory per host."""

    def connected_detection(self) -> Mapping[str, ConnectedMode]:
        """How each source finds connected users."""


class ActiveUsersCollector(Collector):
    """Builds fresh metric families on every scrape from a CountsView; never touches disk or database."""

    def __init__(
        self,
        view: CountsView,
        *,
        windows: Sequence[Window],
        per_host: bool = True,
        compat: bool = False,
        clock: Callable[[], float] = time.time,
        exports: Callable[[], Mapping[str, ExportStatus]] = dict,
    ) -> None:
        self._view = view
        self._exports = exports
        self._windows = windows
        self._per_host = per_host
        self._compat = compat
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | InfoMetricFamily]:
        """Yields the count families (per host or totals), compatibility gauges if enabled, and health."""
        counts = self._view.counts(now=self._clock())
        if self._per_host:
            yield self._counting_family(counts)
        else:
            counts = totals_only(counts, self._windows)
        yield from self._count_families(counts)
        if self._compat:
            yield from self._compat_families(counts)
        yield from self._health_families()
        yield from self._export_families()

    def _export_families(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        statuses = self._exports()
        if not statuses:
            return
        errors = CounterMetricFamily(
            "prosody_lastlog_export_errors", "Failed pushes to this exporter's target since start.", labels=["exporter"]
        )
        queued = GaugeMetricFamily(
            "prosody_lastlog_export_queue_length", "Points waiting to be pushed (sent once the target answers).",
            labels=["exporter"],
        )  # fmt: skip
        dropped = CounterMetricFamily(
            "prosody_lastlog_export_dropped_points",
            "Points dropped: the oldest when the exporter's queue was full, or a batch the target refused.",
            labels=["exporter"],
        )
        for name, status in statuses.items():
            errors.add_metric([name], status.errors_total)
            queued.add_metric([name], status.queue_length)
            dropped.add_metric([name], status.dropped_total)
        yield from (errors, queued, dropped)

    def _count_families(self, counts: Mapping[str, HostCounts]) -> Iterator[GaugeMetricFamily]:
        for family in COUNT_FAMILIES:
            metric = GaugeMetricFamily(f"prosody_{family.name}", family.help, labels=list(family.labels))
            for host, host_counts in counts.items():
                for window, value in family.samples(host_counts):
                    metric.add_metric([host] if window is None else [host, window], value)
            yield metric

    @staticmethod
    def _counting_family(counts: Mapping[str, HostCounts]) -> InfoMetricFamily:
        family = InfoMetricFamily(
            "prosody_lastlog_host_counting",
            "How each host is counted: the store read, why (option: --store; module: the one Prosody's "
            "mod_measure_active_users opens; fallback: that one has no data here; default: no module found), and "
            "which accounts count (everyone; enabled: existing and not disabled; nobody: only connected users, as "
            "Prosody 13 counts with an auth provider it cannot ask).",
            labels=["host"],
        )
        for host, host_counts in counts.items():
            choice = host_counts.counting
            labels = {"store": choice.store.value, "basis": choice.basis.value, "accounts": choice.accounts.value}
            family.add_metric([host], labels)
        return family

    def _compat_families(self, counts: Mapping[str, HostCounts]) -> Iterator[GaugeMetricFamily]:
        labels = {w.label for w in self._windows}
        for label in COMPAT_WINDOWS:
            if label not in labels:
                continue
            name = f"prosody_mod_measure_active_users__active_users_{label}"
            family = GaugeMetricFamily(name, f"mod_measure_active_users/active_users_{label} amount", labels=["host"])
            for host, host_counts in counts.items():
                family.add_metric([host], host_counts.active[label])
            yield family

    def _health_families(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | InfoMetricFamily]:
        up = GaugeMetricFamily(
            "prosody_lastlog_source_up", "Whether the last refresh of this source succeeded (1) or failed (0).",
            labels=["source"],
        )  # fmt: skip
        last = GaugeMetricFamily(
            "prosody_lastlog_last_refresh_timestamp_seconds",
            "Unix time of the last successful full refresh of this source.",
            labels=["source"],
        )
        duration = GaugeMetricFamily(
            "prosody_lastlog_refresh_duration_seconds", "Seconds the last full refresh of this source took.",
            labels=["source"],
        )  # fmt: skip
        problems = CounterMetricFamily(
            "prosody_lastlog_read_problems",
            "Files or rows that could not be used, by reason, since start.",
            labels=["source", "reason"],
        )
        watched = GaugeMetricFamily(
            "prosody_lastlog_source_watched",
            "Whether every directory of this file source's data directory is watched as it should be (1) or some "
            "are polled for want of inotify watches, or it is missing (0); /healthz says which.",
            labels=["source"],
        )
        changes = InfoMetricFamily(
            "prosody_lastlog_sql_changes",
            "How an SQL source finds the accounts changed between full reads: by_version (PostgreSQL's row versions, "
            "exact) or by_time (the time Prosody writes into a changed row: MariaDB, SQLite).",
            labels=["source"],
        )
        full_read = GaugeMetricFamily(
            "prosody_lastlog_last_full_read_timestamp_seconds",
            "Unix time of the last full read (the reconcile, every --resync-interval) of an SQL source; between them "
            "it reads only the accounts changed.",
            labels=["source"],
        )
        reread = CounterMetricFamily(
            "prosody_lastlog_accounts_reread",
            "Accounts an SQL source read again because they changed, since start.",
            labels=["source"],
        )
        for source in self._view.health():
            up.add_metric([source.name], 1 if source.up else 0)
            if source.changes_found is not None:
                changes.add_metric([source.name], {"found": source.changes_found.replace(" ", "_")})
                reread.add_metric([source.name], source.accounts_reread)
            if source.last_full_read is not None:
                full_read.add_metric([source.name], source.last_full_read)
            if source.has_watcher:
                watched.add_metric([source.name], 1 if source.unwatched is None else 0)
            if source.last_success is not None:
                last.add_metric([source.name], source.last_success)
            if source.duration_seconds is not None:
                duration.add_metric([source.name], source.duration_seconds)
            for reason in sorted(set(PROBLEM_KINDS) | set(source.problems)):  # zeros rather than gaps
                problems.add_metric([source.name, reason], source.problems.get(reason, 0))
        tracked = GaugeMetricFamily(
            "prosody_lastlog_tracked_users", "Users held in memory for counting, per host.", labels=["host"]
        )
        tracked_users = self._view.tracked_users()
        if not self._per_host:
            tracked_users = {ALL_HOSTS: sum(tracked_users.values())} if tracked_users else {}
        for host, users in tracked_users.items():
            tracked.add_metric([host], users)
        detection = InfoMetricFamily(
            "prosody_lastlog_connected_detection",
            "How connected users are found: admin_socket (exact, asked from Prosody), heuristic (a login with no "
            "later logout since Prosody started) or none.",
            labels=["source"],
        )
        for name, mode in self._view.connected_detection().items():
            detection.add_metric([name], {"mode": mode.value})
        info = InfoMetricFamily("prosody_lastlog_build", "prosody-lastlog build information.")
        info.add_metric([], {"version": __version__})
        yield from (up, last, duration, problems, watched, changes, full_read, reread, tracked, detection, info)


class _FixedView:
    """Counts and health of a finished one-shot count, for the collector."""

    def __init__(
        self, counts: Mapping[str, HostCounts], health: Sequence[SourceHealth], detection: Mapping[str, ConnectedMode]
    ) -> None:
        self._counts = dict(counts)
        self._health = health
        self._detection = detection

    def counts(self, *, now: float) -> dict[str, HostCounts]:
        return self._counts

    def health(self) -> Sequence[SourceHealth]:
        return self._health

    def tracked_users(self) -> Mapping[str, int]:
        return {}

    def connected_detection(self) -> Mapping[str, ConnectedMode]:
        return self._detection


def render_prometheus(
    counts: Mapping[str, HostCounts],
    health: Sequence[SourceHealth],
    *,
    now: int,
    windows: Sequence[Window],
    per_host: bool = True,
    compat: bool = False,
    detection: Mapping[str, ConnectedMode] | None = None,
) -> str:
    """Prometheus text exposition (no timestamps: node_exporter's textfile collector rejects them)."""
    registry = CollectorRegistry(auto_describe=False)
    detection = detection or {h.name: ConnectedMode.NONE for h in health}
    collector = ActiveUsersCollector(
        _FixedView(counts, health, detection), windows=windows, per_host=per_host, compat=compat, clock=lambda: now
    )
    registry.register(collector)
    return generate_latest(registry).decode("utf-8")

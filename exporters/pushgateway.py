"""Pushes the counts to a Prometheus Pushgateway, for hosts Prometheus cannot scrape.

Each push replaces the group `job/<job>/<grouping key>` on the gateway with the latest snapshot, as the same
families, HELP texts and labels as the daemon's /metrics. Only the latest snapshot matters (the gateway keeps one
value per series, and it rejects samples with timestamps), so the runner keeps no history for this exporter.

The group is NOT deleted on close: Prometheus would see every series vanish at each restart or reload. The
gateway keeps the last values (with `push_time_seconds` telling their age) until someone deletes the group.
"""

from __future__ import annotations

import functools
import re
import socket
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.client import HTTPException
from urllib.error import HTTPError, URLError

from prometheus_client import generate_latest, push_to_gateway
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import basic_auth_handler, default_handler
from prometheus_client.registry import Collector

from exporters.families import COUNT_FAMILIES
from exporters.points import Point
from exporters.runner import ExportError, PushExporter
from exporters.secrets import secret_setting

NAME = "pushgateway"
ERROR_BODY_CHARS = 300  # of the gateway's explanation of a refusal, kept in the error message
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
RESERVED_LABELS = ("job", "host", "window", "cohort")  # a grouping label overrides a pushed label of the same name


def exposition(points: Sequence[Point], *, prefix: str = "prosody") -> bytes:
    """One snapshot's points in the Prometheus text format (0.0.4) of /metrics, without timestamps."""
    return generate_latest(_PointsCollector(points, prefix))


def create(
    *,
    url: str = "http://127.0.0.1:9091",
    job: str = "prosody_lastlog",
    grouping: Mapping[str, str] | None = None,
    username: str = "",
    password: str = "",
    password_file: str = "",
    interval: float = 60,
    timeout: float = 10.0,
) -> PushExporter:
    """A push target that PUTs the latest snapshot every `interval` seconds; settings as in the README."""
    gateway = _gateway_url(url)
    if not isinstance(job, str) or not job:
        raise ValueError("job: must be a non-empty string")
    key = _grouping_key({"instance": socket.gethostname()} if grouping is None else grouping)
    secret = _password(password, password_file)
    if not isinstance(username, str) or ":" in username:
        raise ValueError("username: must be a string without ':'")
    if bool(username) != bool(secret):
        raise ValueError("username, password: basic auth needs both a username and a password (or password_file)")
    for setting, value in (("interval", interval), ("timeout", timeout)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{setting}: must be a number of seconds greater than 0")
    handler = functools.partial(basic_auth_handler, username=username, password=secret) if username else None
    return PushExporter(
        NAME, Gateway(gateway, job, key, timeout=timeout, handler=handler), interval=interval, latest_only=True
    )


class Gateway:
    """The transport: PUTs one snapshot's points as the group job/<job>/<grouping key> (prometheus_client)."""

    def __init__(
        self,
        url: str,
        job: str,
        grouping: Mapping[str, str],
        *,
        timeout: float,
        handler: Callable[..., Callable[[], None]] | None = None,
    ) -> None:
        self._url = url
        self._job = job
        self._grouping = dict(grouping)
        self._timeout = timeout
        self._handler = handler or default_handler

    def __call__(self, points: Sequence[Point]) -> None:
        """Replaces the group with `points`; raises ExportError naming the gateway (never a credential)."""
        # PUT (push_to_gateway), not POST (pushadd_to_gateway): PUT replaces the whole group, so a host or window
        # that is no longer counted disappears from the gateway too; POST would keep its last values forever.
        try:
            push_to_gateway(
                self._url,
                self._job,
                _PointsCollector(points, "prosody"),
                grouping_key=self._grouping,
                timeout=self._timeout,
                handler=self._handler,
            )
        except HTTPError as exc:
            raise ExportError(f"Pushgateway {self._url}: HTTP {exc.code} {exc.reason}{_explanation(exc)}") from exc
        except URLError as exc:
            raise ExportError(f"Pushgateway {self._url}: {exc.reason}") from exc
        except (OSError, HTTPException) as exc:
            raise ExportError(f"Pushgateway {self._url}: {str(exc) or type(exc).__name__}") from exc


class _PointsCollector(Collector):
    """The count families of /metrics, holding the given points (their timestamps left out)."""

    def __init__(self, points: Sequence[Point], prefix: str) -> None:
        self._points = points
        self._prefix = prefix

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            family.name: GaugeMetricFamily(f"{self._prefix}_{family.name}", family.help, labels=list(family.labels))
            for family in COUNT_FAMILIES
        }
        for point in self._points:
            if point.name not in families:
                raise ValueError(f"no metric family for points named {point.name!r}")
            labels = [point.host] if point.window is None else [point.host, point.window]
            families[point.name].add_metric(labels, point.value)
        yield from families.values()


def _gateway_url(url: str) -> str:
    if not isinstance(url, str):
        raise ValueError("url: must be a string such as http://127.0.0.1:9091")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number)
    except ValueError:
        raise ValueError("url: not a valid URL (expected http[s]://host[:port][/path])") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url: must start with http:// or https:// and name a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("url: must not hold credentials; use the username and password settings")
    if parts.query or parts.fragment:
        raise ValueError("url: must not have a query or fragment")
    return url.rstrip("/")


def _grouping_key(grouping: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(grouping, Mapping):
        raise ValueError('grouping: must be a table of label names to values, e.g. { instance = "xmpp1" }')
    for name, value in grouping.items():
        if not isinstance(name, str) or not LABEL_NAME.match(name) or name.startswith("__"):
            raise ValueError(f"grouping: {name!r} is not a valid Prometheus label name")
        if name in RESERVED_LABELS:
            raise ValueError(f"grouping: {name!r} cannot be a grouping label (it would override the pushed one)")
        if not isinstance(value, str):
            raise ValueError(f"grouping: the value of {name!r} must be a string")
    return dict(grouping)


def _password(password: str, password_file: str) -> str:
    if not isinstance(password, str) or not isinstance(password_file, str):
        raise ValueError("password, password_file: must be strings")
    return secret_setting("password", password, password_file)


def _explanation(error: HTTPError) -> str:
    """The first part of the gateway's reason for a refusal (e.g. "... must not have timestamps"), if any."""
    try:
        body = error.read(ERROR_BODY_CHARS)
    except (OSError, HTTPException, ValueError):
        return ""
    finally:
        error.close()
    text = " ".join(body.decode("utf-8", "replace").split())
    return f": {text}" if text else ""

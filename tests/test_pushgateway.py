"""The Pushgateway exporter: the pushed text is /metrics' count families without timestamps; the transport PUTs it."""

from __future__ import annotations

import base64
import socket
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.exposition import basic_auth_handler
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from exporters.families import COUNT_FAMILIES
from exporters.points import Point, points_of
from exporters.prometheus import ActiveUsersCollector
from exporters.pushgateway import Gateway, create, exposition
from exporters.runner import ExportError
from prosody_lastlog.core.connected import ConnectedMode
from prosody_lastlog.core.counting import HostCounts, Snapshot
from prosody_lastlog.core.health import SourceHealth
from prosody_lastlog.core.model import Store
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from tests.http_recorder import Recorder, recording_server

TAKEN = 1_763_900_010
PASSWORD = "s3cret-push-password"
COUNTS = {
    "b.example": HostCounts(
        Store.LASTLOG2, 20, 3, 1, 0, {"1d": 4, "7d": 9, "30d": 13}, {"1d": 0, "7d": 1, "30d": 2}, 2
    ),
    "a.example": HostCounts(Store.LASTLOG2, 5, 0, 0, 0, {"1d": 1, "7d": 1, "30d": 5}, {"1d": 1, "7d": 1, "30d": 1}),
}
SNAPSHOT = Snapshot(TAKEN, COUNTS, DEFAULT_WINDOWS)
POINTS = points_of(SNAPSHOT, timestamp=TAKEN - 30)


class FixedView:
    """A CountsView holding fixed counts, for rendering them the way /metrics does."""

    def __init__(self, counts: Mapping[str, HostCounts]) -> None:
        self._counts = dict(counts)

    def counts(self, *, now: float) -> dict[str, HostCounts]:
        return self._counts

    def health(self) -> Sequence[SourceHealth]:
        return ()

    def tracked_users(self) -> Mapping[str, int]:
        return {}

    def connected_detection(self) -> Mapping[str, ConnectedMode]:
        return {}


class CountFamiliesOfMetrics(Collector):
    """The count families of the daemon's /metrics collector, without its health families."""

    def __init__(self, counts: Mapping[str, HostCounts]) -> None:
        self._collector = ActiveUsersCollector(FixedView(counts), windows=DEFAULT_WINDOWS)

    def collect(self) -> Iterator[Metric]:
        names = {f"prosody_{family.name}" for family in COUNT_FAMILIES}
        return (family for family in self._collector.collect() if family.name in names)


def test_exposition_is_byte_for_byte_the_count_families_of_metrics() -> None:
    # /metrics lists hosts in the order the view gives them; points_of sorts them
    assert exposition(POINTS) == generate_latest(CountFamiliesOfMetrics(dict(sorted(COUNTS.items()))))


def test_exposition_samples_in_order_without_timestamps() -> None:
    lines = [line for line in exposition(POINTS).decode().splitlines() if not line.startswith("#")]
    assert lines == [
        'prosody_active_users{host="a.example",window="1d"} 1.0',
        'prosody_active_users{host="a.example",window="7d"} 1.0',
        'prosody_active_users{host="a.example",window="30d"} 5.0',
        'prosody_active_users{host="b.example",window="1d"} 4.0',
        'prosody_active_users{host="b.example",window="7d"} 9.0',
        'prosody_active_users{host="b.example",window="30d"} 13.0',
        'prosody_registrations{host="a.example",window="1d"} 1.0',
        'prosody_registrations{host="a.example",window="7d"} 1.0',
        'prosody_registrations{host="a.example",window="30d"} 1.0',
        'prosody_registrations{host="b.example",window="1d"} 0.0',
        'prosody_registrations{host="b.example",window="7d"} 1.0',
        'prosody_registrations{host="b.example",window="30d"} 2.0',
        'prosody_activity_records{host="a.example"} 5.0',
        'prosody_activity_records{host="b.example"} 20.0',
        'prosody_accounts_never_active{host="a.example"} 0.0',
        'prosody_accounts_never_active{host="b.example"} 3.0',
        'prosody_connected_users{host="a.example"} 0.0',
        'prosody_connected_users{host="b.example"} 2.0',
    ]


def test_exposition_parses_to_exactly_the_points() -> None:
    families = list(text_string_to_metric_families(exposition(POINTS).decode()))
    assert [(f.name, f.type) for f in families] == [(f"prosody_{family.name}", "gauge") for family in COUNT_FAMILIES]
    samples = [sample for family in families for sample in family.samples]
    assert all(sample.timestamp is None for sample in samples)
    expected = {
        (f"prosody_{p.name}", p.host, p.window): float(p.value) for p in POINTS
    }  # fmt: skip
    assert {(s.name, s.labels["host"], s.labels.get("window")): s.value for s in samples} == expected
    assert len(samples) == len(expected) == 2 * 9


def test_exposition_of_nothing_declares_the_families_only() -> None:
    text = exposition([]).decode()
    assert [line for line in text.splitlines() if not line.startswith("#")] == []
    assert text.count("# TYPE ") == len(COUNT_FAMILIES)


def test_exposition_prefix() -> None:
    text = exposition(POINTS[:1], prefix="xmpp").decode()
    assert 'xmpp_active_users{host="a.example",window="1d"} 1.0\n' in text
    assert [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")] == [
        f"xmpp_{family.name}" for family in COUNT_FAMILIES
    ]


def test_exposition_rejects_unknown_families() -> None:
    with pytest.raises(ValueError, match="'uptime'"):
        exposition([Point("uptime", "a.example", None, 1, TAKEN)])


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=20),
        st.tuples(st.integers(0, 10**9), st.integers(0, 10**9)),
        max_size=5,
    )
)
def test_any_host_name_and_count_parses_back(hosts: dict[str, tuple[int, int]]) -> None:
    points = [Point("active_users", host, "7d", active, 0) for host, (active, _) in hosts.items()]
    points += [Point("activity_records", host, None, accounts, 0) for host, (_, accounts) in hosts.items()]
    samples = {
        (sample.name, sample.labels["host"]): sample.value
        for family in text_string_to_metric_families(exposition(points).decode())
        for sample in family.samples
    }
    assert samples == {(f"prosody_{p.name}", p.host): float(p.value) for p in points}


# --- the transport -------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_gateway() -> Iterator[Recorder]:
    with recording_server(default_status=200) as gateway:
        yield gateway


def test_create_publish_puts_the_latest_snapshot(fake_gateway: Recorder) -> None:
    exporter = create(url=fake_gateway.url + "/", grouping={"instance": "xmpp1", "dc": "fra"})
    try:
        exporter.start()
        exporter.publish(SNAPSHOT)
        assert exporter.flush(5)
    finally:
        exporter.close()
    [request] = fake_gateway.requests
    assert request.method == "PUT"
    assert request.path == "/metrics/job/prosody_lastlog/dc/fra/instance/xmpp1"
    assert request.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "Authorization" not in request.headers
    assert request.body == exposition(POINTS)


def test_grouping_values_with_slash_or_space_are_base64(fake_gateway: Recorder) -> None:
    Gateway(fake_gateway.url, "prosody lastlog", {"instance": "rack 1/xmpp"}, timeout=5)(POINTS)
    encoded = base64.urlsafe_b64encode(b"rack 1/xmpp").decode()
    job = base64.urlsafe_b64encode(b"prosody lastlog").decode()
    assert [r.path for r in fake_gateway.requests] == [f"/metrics/job@base64/{job}/instance@base64/{encoded}"]


def test_default_grouping_is_the_local_hostname(fake_gateway: Recorder) -> None:
    exporter = create(url=fake_gateway.url, job="xmpp")
    try:
        exporter.start()
        exporter.publish(SNAPSHOT)
        assert exporter.flush(5)
    finally:
        exporter.close()
    [request] = fake_gateway.requests
    assert request.path == "/metrics/job/xmpp/instance/" + urllib.parse.quote_plus(socket.gethostname())


def test_basic_auth_from_a_password_file(fake_gateway: Recorder, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    exporter = create(url=fake_gateway.url, username="pusher", password_file=str(secret))
    try:
        exporter.start()
        exporter.publish(SNAPSHOT)
        assert exporter.flush(5)
    finally:
        exporter.close()
    [request] = fake_gateway.requests
    assert request.headers["Authorization"] == "Basic " + _b64(f"pusher:{PASSWORD}", urlsafe=False)


def test_a_refusal_names_the_url_status_and_reason_but_not_the_password(fake_gateway: Recorder) -> None:
    reply = b"pushed metrics are invalid or inconsistent with existing metrics:\nbad\n"
    fake_gateway.answers.append((400, reply, {}))
    send = Gateway(fake_gateway.url, "j", {}, timeout=5, handler=_auth(PASSWORD))
    with pytest.raises(ExportError) as caught:
        send(POINTS)
    message = str(caught.value)
    assert message == (
        f"Pushgateway {fake_gateway.url}: HTTP 400 Bad Request: "
        "pushed metrics are invalid or inconsistent with existing metrics: bad"
    )


def test_an_unreachable_gateway_names_the_url_but_not_the_password() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    send = Gateway(url, "j", {}, timeout=2, handler=_auth(PASSWORD))
    with pytest.raises(ExportError, match="Connection refused") as caught:
        send(POINTS)
    assert str(caught.value).startswith(f"Pushgateway {url}: ")
    assert PASSWORD not in str(caught.value)
    assert "pusher" not in str(caught.value)


def test_a_silent_gateway_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections (backlog), never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ExportError, match=f"^Pushgateway {url}: .*timed out"):
            Gateway(url, "j", {}, timeout=0.2)(POINTS)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"url": "127.0.0.1:9091"}, "url: must start with http:// or https://"),
        ({"url": "ftp://gw"}, "url: must start with http:// or https://"),
        ({"url": "http://gw:port"}, "url: not a valid URL"),
        ({"url": f"http://u:{PASSWORD}@gw"}, "url: must not hold credentials"),
        ({"url": "http://gw/?x=1"}, "url: must not have a query"),
        ({"job": ""}, "job: must be a non-empty string"),
        ({"grouping": "xmpp1"}, "grouping: must be a table"),
        ({"grouping": {"in-stance": "x"}}, "grouping: 'in-stance' is not a valid"),
        ({"grouping": {"__name": "x"}}, "grouping: '__name' is not a valid"),
        ({"grouping": {"host": "x"}}, "grouping: 'host' cannot be a grouping label"),
        ({"grouping": {"job": "x"}}, "grouping: 'job' cannot be a grouping label"),
        ({"grouping": {"instance": 1}}, "grouping: the value of 'instance' must be a string"),
        ({"username": "u"}, "username, password: basic auth needs both"),
        ({"password": PASSWORD}, "username, password: basic auth needs both"),
        ({"username": "u:v", "password": PASSWORD}, "username: must be a string without ':'"),
        ({"username": "u", "password": "p", "password_file": "/x"}, "password, password_file: set only one"),
        (
            {"username": "u", "password_file": "/nonexistent/pw"},
            "password_file: cannot read the secret file /nonexistent/pw",
        ),
        ({"interval": 0}, "interval: must be a number of seconds greater than 0"),
        ({"timeout": "10"}, "timeout: must be a number of seconds greater than 0"),
        ({"timeout": True}, "timeout: must be a number of seconds greater than 0"),
    ],
)
def test_invalid_settings_name_the_setting(settings: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        create(**settings)  # type: ignore[arg-type]
    assert str(caught.value).startswith(problem)
    assert PASSWORD not in str(caught.value)


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("\n")
    with pytest.raises(ValueError, match=r"^password_file: the secret file .* is empty"):
        create(username="u", password_file=str(tmp_path / "pw"))


def _auth(password: str) -> Callable[..., Callable[[], None]]:
    """A basic-auth handler as create() makes one."""
    return partial(basic_auth_handler, username="pusher", password=password)


def _b64(text: str, *, urlsafe: bool = True) -> str:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(text.encode()).decode()

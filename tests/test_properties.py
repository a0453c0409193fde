"""Properties over arbitrary input: readers, the counting core and the wire formats (issue 8).

Covered elsewhere, not repeated here: canonical.parse against the sandbox on Prosody-serialized and near-canonical
text (test_canonical.py); the counting core against mod_measure_active_users on plain records (test_counting.py)
and the activity index against the core (test_activity_index.py); SQL pushdown against the Python path
(test_sql_reader.py, test_pushdown_equals_streaming_*); line protocol parse round trip of any point
(test_influx.py, test_parse_round_trip); carbon's grammar for any host, name and window (test_graphite.py,
test_every_line_follows_the_carbon_plaintext_grammar); the Pushgateway exposition for any host
(test_pushgateway.py). The data-file oracle is fuzz/oracles.py, which the atheris targets share.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from exporters.http import Exposition
from exporters.prometheus import ActiveUsersCollector, render_prometheus
from fuzz.oracles import ConfigOracle, DataFileOracle, dictionary_tokens, same_activity
from prosody_lastlog.cli import main
from prosody_lastlog.core.connected import NOBODY, ConnectedMode, ConnectedUsers
from prosody_lastlog.core.counting import HostCounts, count_host, count_hosts, total_counts
from prosody_lastlog.core.health import SourceHealth
from prosody_lastlog.core.inactive import list_inactive
from prosody_lastlog.core.model import (
    PROBLEM_KINDS,
    AccountRule,
    CountingChoice,
    HostData,
    ReadProblem,
    Store,
    UserActivity,
)
from prosody_lastlog.core.windows import DEFAULT_AGES, DEFAULT_WINDOWS, Window
from prosody_lastlog.prosody.pathnames import encode_name, encode_store
from prosody_lastlog.sources.files import MAX_FILE_SIZE, FileStoreReader
from tests.conftest import CASES
from tests.line_protocol import parse as parse_line_protocol

NOW = 1_763_900_000
DAY = 86400
FUZZ = Path(__file__).resolve().parent.parent / "fuzz"

# --- readers: any bytes give a value or a ReadProblem of a known kind, the same way on every path ----------------

_TOKENS = dictionary_tokens(FUZZ / "datafile.dict")
_FIXTURE_TEXTS = sorted(path.read_bytes() for path in CASES.glob("*/data/*/*/*.dat") if "large" not in path.parts)


@st.composite
def _edited_fixture(draw: st.DrawFn) -> bytes:
    """A file Prosody wrote, with a few bytes or tokens inserted, deleted or replaced."""
    text = draw(st.sampled_from(_FIXTURE_TEXTS))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(text)))
        piece = draw(st.sampled_from(_TOKENS) | st.binary(min_size=1, max_size=3))
        how = draw(st.sampled_from(["insert", "delete", "replace"]))
        if how == "insert":
            text = text[:at] + piece + text[at:]
        elif how == "delete":
            text = text[:at] + text[at + len(piece) :]
        else:
            text = text[:at] + piece + text[at + len(piece) :]
    return text


DATA_TEXTS = (
    st.binary(max_size=200)
    | st.lists(st.sampled_from(_TOKENS) | st.binary(max_size=2), max_size=30).map(b"".join)
    | _edited_fixture()
)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> DataFileOracle:
    return DataFileOracle(tmp_path_factory.mktemp("oracle"))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(text=DATA_TEXTS)
@example(text=b"")
@example(text=b"return")
@example(text=b"return nil")
@example(text=b'error("")')
@example(text=b"return {" + b" " * MAX_FILE_SIZE + b"}")
@example(text=b"return { login = { timestamp = 1e309 }, logout = { timestamp = -(0/0) } }")
@example(text=b"return { event = 'registered', timestamp = 9223372036854775807 }")
def test_any_bytes_give_a_value_or_a_known_problem_alike_on_every_path(oracle: DataFileOracle, text: bytes) -> None:
    """Sandbox, canonical.parse, activity_reader, interpret and read_user agree; nothing raises."""
    oracle.check(text)


@settings(max_examples=60, deadline=None)
@given(
    files=st.lists(DATA_TEXTS, min_size=1, max_size=12),
    store=st.sampled_from(list(Store)),
)
def test_a_scan_reads_every_file_as_it_is_read_alone(files: list[bytes], store: Store) -> None:
    """The scan's batches (fast path, then the sandbox for the rest) give each file what read_user gives it."""
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch)
        directory = data / encode_name("example.com") / encode_store(store.value)
        directory.mkdir(parents=True)
        for number, text in enumerate(files):
            (directory / f"u{number}.dat").write_bytes(text)
        reader = FileStoreReader(data, workers=1)
        result = reader.read()
        scanned = {user.user: user for user in result.hosts["example.com"].users}
        assert len(scanned) == len(result.hosts["example.com"].users)
        for number in range(len(files)):
            alone: list[ReadProblem] = []
            found = reader.read_user("example.com", result.hosts["example.com"].counting, f"u{number}", alone)
            in_scan = [p for p in result.problems if p.where.endswith(f"/u{number}.dat")]
            assert [(p.kind, p.reason) for p in in_scan] == [(p.kind, p.reason) for p in alone], files[number]
            assert all(p.kind in PROBLEM_KINDS for p in in_scan)
            other = scanned.get(f"u{number}")
            assert (found is None) == (other is None), files[number]
            assert found is None or other is None or same_activity(found, other), (files[number], found, other)
            assert found is not None or alone, "a file gave neither a record nor a problem"


_CONFIG_TOKENS = dictionary_tokens(FUZZ / "config.dict")
_CONFIG_TEXTS = sorted(path.read_bytes() for path in (CASES.parent / "configs").glob("**/*.lua"))


@st.composite
def _config_text(draw: st.DrawFn) -> bytes:
    """A fixture config cut somewhere, with directives, Lua and bytes spliced in."""
    text = draw(st.sampled_from(_CONFIG_TEXTS))
    at = draw(st.integers(0, len(text)))
    pieces = draw(st.lists(st.sampled_from(_CONFIG_TOKENS) | st.binary(max_size=3), max_size=12))
    return text[:at] + b"".join(pieces) + text[at + draw(st.integers(0, 40)) :]


@settings(max_examples=60, deadline=None)
@given(text=_config_text() | st.lists(st.sampled_from(_CONFIG_TOKENS), max_size=40).map(b" ".join))
@example(text=b'VirtualHost "example.com"\nmodules_enabled = { "lastlog2" }\n')
def test_any_config_text_gives_a_config_or_a_config_error(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        outcome = ConfigOracle(Path(scratch)).check(text)
    assert (outcome.config is None) != (outcome.error is None)


# --- the counting core -------------------------------------------------------------------------------------------

_TIMES = st.none() | st.integers(0, NOW + 2 * DAY) | st.floats(NOW - 400 * DAY, NOW + 2 * DAY)
_WINDOWS = st.lists(st.integers(1, 400 * DAY), min_size=1, max_size=4, unique=True).map(
    lambda seconds: tuple(Window(s, f"{s}s") for s in sorted(seconds))
)


@st.composite
def _hosts(draw: st.DrawFn, one_rule: bool = False) -> list[HostData]:
    """Hosts with users of any facts, each host with any account rule (`one_rule`: the same on every host)."""
    hosts = []
    shared = draw(st.sampled_from(list(AccountRule)))
    for name in draw(st.lists(st.sampled_from(["a.example", "b.example", "c.example"]), unique=True, max_size=3)):
        users = [
            UserActivity(
                f"u{number}",
                last_active,
                draw(_TIMES),
                disabled=draw(st.booleans()),
                session_open=last_active if draw(st.booleans()) else None,
                no_account=draw(st.booleans()),
                account_only=last_active is None and draw(st.booleans()),
            )
            for number, last_active in enumerate(draw(st.lists(_TIMES, max_size=15)))
        ]
        store = draw(st.sampled_from(list(Store)))
        rule = shared if one_rule else draw(st.sampled_from(list(AccountRule)))
        hosts.append(HostData(name, store, users, CountingChoice(store, accounts=rule)))
    return hosts


@st.composite
def _connected(draw: st.DrawFn) -> ConnectedUsers:
    mode = draw(st.sampled_from(list(ConnectedMode)))
    if mode is ConnectedMode.ADMIN_SOCKET:
        names = st.frozensets(st.sampled_from([f"u{n}" for n in range(16)]))
        users = draw(st.dictionaries(st.sampled_from(["a.example", "b.example", "c.example"]), names))
        return ConnectedUsers(mode, users)
    if mode is ConnectedMode.HEURISTIC:
        return ConnectedUsers(mode, prosody_started=draw(st.none() | st.integers(NOW - 30 * DAY, NOW)))
    return NOBODY


def _active_alone(user: UserActivity, rule: AccountRule, window: Window) -> bool:
    """Active in `window` by its stored activity alone (mod_measure_active_users: enabled, now - last < window)."""
    enabled = not rule.leaves_out(disabled=user.disabled, no_account=user.no_account)
    return enabled and user.last_active is not None and NOW - user.last_active < window.seconds


@given(hosts=_hosts(), windows=_WINDOWS, connected=_connected())
def test_counts_are_monotone_in_the_window_and_add_up(
    hosts: list[HostData], windows: tuple[Window, ...], connected: ConnectedUsers
) -> None:
    longest = Window(2**62, "forever")  # longer than any age: everyone with any activity
    every = (*windows, longest)
    counts = count_hosts(hosts, now=NOW, windows=every, connected=connected)
    for data in hosts:
        host = counts[data.host]
        for shorter, longer in pairwise(every):
            assert host.active[shorter.label] <= host.active[longer.label]
            assert host.registered[shorter.label] <= host.registered[longer.label]
        # Every account is never active, left out (not enabled), or active at some time (connected or stored).
        assert host.never_active + host.disabled + host.active[longest.label] == len(data.users)
        assert host.activity_records == sum(not u.account_only for u in data.users)
        for window in every:  # returning: active, and not registered within the window
            fresh = [u for u in data.users if u.registered is not None and NOW - u.registered < window.seconds]
            assert host.active[window.label] - len(fresh) <= host.returning[window.label] <= host.active[window.label]
        for younger, older in pairwise(DEFAULT_AGES):
            assert host.inactive[younger.label] >= host.inactive[older.label]
            assert host.never_used[younger.label] >= host.never_used[older.label]
        for age in DEFAULT_AGES:
            assert host.never_used[age.label] <= min(host.never_active, host.inactive[age.label])
            assert host.inactive[age.label] <= host.never_active + host.active[longest.label] - host.connected
        assert host.no_account <= host.disabled
        assert host.registered[longest.label] == sum(u.registered is not None for u in data.users)
        rule = data.counting.accounts
        for window in every:  # connected users are active in every window, whatever the rule, before stored activity
            online = [u for u in data.users if connected.includes(data.host, u.user, u.session_open)]
            online = [u for u in online if not u.account_only]  # no record in the store: Prosody does not look
            stored = [u for u in data.users if _active_alone(u, rule, window) and u not in online]
            assert host.active[window.label] == len(online) + len(stored) >= host.connected == len(online)
    if counts:
        totals = total_counts(counts, every)
        for field in ("activity_records", "never_active", "disabled", "future", "connected", "no_account"):
            assert getattr(totals, field) == sum(getattr(c, field) for c in counts.values())
        for window in every:
            assert totals.active[window.label] == sum(c.active[window.label] for c in counts.values())
            assert totals.registered[window.label] == sum(c.registered[window.label] for c in counts.values())
            assert totals.returning[window.label] == sum(c.returning[window.label] for c in counts.values())
        for age in DEFAULT_AGES:
            assert totals.inactive[age.label] == sum(c.inactive[age.label] for c in counts.values())
            assert totals.never_used[age.label] == sum(c.never_used[age.label] for c in counts.values())


@given(hosts=_hosts(one_rule=True), windows=_WINDOWS, started=st.none() | st.integers(NOW - 30 * DAY, NOW))
def test_one_host_holding_every_user_counts_the_totals(
    hosts: list[HostData], windows: tuple[Window, ...], started: int | None
) -> None:
    """Counting is additive over hosts (with connected users found by the host-blind heuristic)."""
    assume(hosts)
    connected = ConnectedUsers(ConnectedMode.HEURISTIC, prosody_started=started)
    totals = total_counts(count_hosts(hosts, now=NOW, windows=windows, connected=connected), windows)
    first = min(hosts, key=lambda data: data.host)  # total_counts shows the store of the first host
    users = [replace(u, user=f"{d.host}/{u.user}") for d in hosts for u in d.users]
    merged = HostData("all", first.store, users, replace(first.counting, store=first.store))
    assert count_host(merged, now=NOW, windows=windows, connected=connected) == totals


# --- Prometheus text: `count --format prom`, /metrics (text and OpenMetrics) -------------------------------------

# Any text, with the characters the exposition escapes (and some it need not) drawn often.
LABEL_TEXT = st.text(st.sampled_from('"\\\n\r{}=,# \t') | st.characters(codec="utf-8"), max_size=20)
_COUNT = st.integers(0, 10**9)


@st.composite
def _host_counts(draw: st.DrawFn, windows: Sequence[Window]) -> HostCounts:
    return HostCounts(
        Store.LASTLOG2,
        draw(_COUNT),
        draw(_COUNT),
        draw(_COUNT),
        draw(_COUNT),
        {w.label: draw(_COUNT) for w in windows},
        {w.label: draw(_COUNT) for w in windows},
        draw(_COUNT),
    )


_WINDOW_SETS = st.sampled_from(
    [DEFAULT_WINDOWS, (Window(3600, "1h"), Window(DAY, "1d")), (*DEFAULT_WINDOWS, Window(90 * DAY, "90d"))]
)


@st.composite
def _scrapes(draw: st.DrawFn) -> tuple[tuple[Window, ...], dict[str, HostCounts], list[SourceHealth]]:
    windows = draw(_WINDOW_SETS)
    counts = draw(st.dictionaries(LABEL_TEXT, _host_counts(windows), max_size=4))
    health = [
        SourceHealth(name, up=draw(st.booleans()), last_success=NOW, duration_seconds=0.5, problems=problems)
        for name, problems in draw(
            st.dictionaries(LABEL_TEXT, st.dictionaries(st.sampled_from(PROBLEM_KINDS), _COUNT), max_size=3)
        ).items()
    ]
    return windows, counts, health


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _expected(counts: Mapping[str, HostCounts], windows: Sequence[Window], health: Sequence[SourceHealth]) -> Samples:
    expected: Samples = {}
    for host, c in counts.items():
        for w in windows:
            expected[("prosody_active_users", (("host", host), ("window", w.label)))] = c.active[w.label]
            expected[("prosody_registrations", (("host", host), ("window", w.label)))] = c.registered[w.label]
        expected[("prosody_activity_records", (("host", host),))] = c.activity_records
        expected[("prosody_accounts_never_active", (("host", host),))] = c.never_active
        expected[("prosody_connected_users", (("host", host),))] = c.connected
        for label in ("1d", "7d", "30d"):
            if label in c.active:
                expected[(f"prosody_mod_measure_active_users__active_users_{label}", (("host", host),))] = c.active[
                    label
                ]
    for source in health:
        expected[("prosody_lastlog_source_up", (("source", source.name),))] = 1 if source.up else 0
        for kind in PROBLEM_KINDS:
            key = ("prosody_lastlog_read_problems_total", (("reason", kind), ("source", source.name)))
            expected[key] = source.problems.get(kind, 0)
    return expected


def _samples(families: Iterable[Metric]) -> Samples:
    found: Samples = {}
    for family in families:
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, key  # distinct label values stay distinct series
            found[key] = sample.value
    return found


def _assert_carries(found: Samples, expected: Samples) -> None:
    missing = {key: value for key, value in expected.items() if found.get(key) != float(value)}
    assert not missing, missing


@given(scrape=_scrapes())
def test_count_format_prom_parses_back_to_the_counts_for_any_host_name(
    scrape: tuple[tuple[Window, ...], dict[str, HostCounts], list[SourceHealth]],
) -> None:
    windows, counts, health = scrape
    text = render_prometheus(counts, health, now=NOW, windows=windows, compat=True)
    _assert_carries(_samples(parse_prometheus(text)), _expected(counts, windows, health))
    if counts:
        totals = render_prometheus(counts, health, now=NOW, windows=windows, per_host=False)
        expected = _expected({"all": total_counts(counts, windows)}, windows, health)
        _assert_carries(_samples(parse_prometheus(totals)), {k: v for k, v in expected.items() if "mod_" not in k[0]})


def _parse_openmetrics(text: str) -> Iterable[Metric]:
    """prometheus_client's OpenMetrics parser (not annotated)."""
    parse = openmetrics_parser.text_string_to_metric_families
    families: Iterable[Metric] = parse(text)  # type: ignore[no-untyped-call]
    return families


class _View:
    """Fixed counts and health, for the collector."""

    def __init__(self, counts: dict[str, HostCounts], health: list[SourceHealth]) -> None:
        self._counts, self._health = counts, health

    def counts(self, *, now: float) -> dict[str, HostCounts]:
        return self._counts

    def health(self) -> list[SourceHealth]:
        return self._health

    def tracked_users(self) -> dict[str, int]:
        return {host: c.activity_records for host, c in self._counts.items()}

    def connected_detection(self) -> dict[str, ConnectedMode]:
        return {source.name: ConnectedMode.NONE for source in self._health}


@given(scrape=_scrapes())
def test_metrics_in_either_format_parse_back_to_the_counts_for_any_host_name(
    scrape: tuple[tuple[Window, ...], dict[str, HostCounts], list[SourceHealth]],
) -> None:
    windows, counts, health = scrape
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ActiveUsersCollector(_View(counts, health), windows=windows, compat=True, clock=lambda: NOW))
    exposition = Exposition(registry)
    expected = _expected(counts, windows, health)
    content_type, body = exposition.render("")
    assert content_type.startswith("text/plain")
    _assert_carries(_samples(parse_prometheus(body.decode("utf-8"))), expected)
    content_type, body = exposition.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    _assert_carries(_samples(_parse_openmetrics(body.decode("utf-8"))), expected)
    assert exposition.render("application/openmetrics-text; version=1.0.0")[1] == body  # the cached body


# Host names as a data directory holds them: encoded, a path part of at most 255 bytes.
_DIRECTORY_HOSTS = st.text(st.sampled_from('"\\\n{}=, .é') | st.characters(codec="utf-8"), min_size=1, max_size=16)


def _influx_stored(tag: str) -> str:
    """A tag value as line protocol carries it (the exporter writes backslash and line breaks as spaces)."""
    return tag.replace("\\", " ").replace("\n", " ").replace("\r", " ")


@settings(max_examples=30, deadline=None)
@given(hosts=st.dictionaries(_DIRECTORY_HOSTS, st.integers(0, 40 * DAY), min_size=1, max_size=3))
def test_count_from_a_data_directory_exports_any_host_name_exactly(hosts: dict[str, int]) -> None:
    """End to end: directories named for the hosts, then `count --format prom` and `--format influx`."""
    assume(len({_influx_stored(host) for host in hosts}) == len(hosts))
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "data"
        for host, age in hosts.items():
            store = data / encode_name(host) / "lastlog2"
            store.mkdir(parents=True)
            record = b'return {\n\t["login"] = {\n\t\t["timestamp"] = %d;\n\t};\n};\n' % (NOW - age)
            (store / "alice.dat").write_bytes(record)
        output = Path(scratch) / "out"
        for wire in ("prom", "influx"):
            argv = ["count", "--data-dir", str(data), "--now", str(NOW), "--format", wire, "--output", str(output)]
            assert main(argv) == 0
            text = output.read_bytes().decode("utf-8")  # not read_text: it would make a "\r" in a host a newline
            for host, age in hosts.items():
                active = {w.label: int(age < w.seconds) for w in DEFAULT_WINDOWS}
                if wire == "prom":
                    found = _samples(parse_prometheus(text))
                    for label, value in active.items():
                        assert found[("prosody_active_users", (("host", host), ("window", label)))] == value
                    assert found[("prosody_activity_records", (("host", host),))] == 1
                else:
                    lines = parse_line_protocol(text)
                    mine = [line for line in lines if line.tags.get("host") == _influx_stored(host)]
                    assert {
                        line.tags["window"]: line.fields["value"]
                        for line in mine
                        if "window" in line.tags and line.measurement.endswith("active_users")
                    } == active


@given(hosts=_hosts(), ages=_WINDOWS, connected=_connected())
def test_the_inactive_list_is_what_the_inactive_counts_count(
    hosts: list[HostData], ages: tuple[Window, ...], connected: ConnectedUsers
) -> None:
    """`inactive --older-than A` lists exactly the accounts prosody_accounts_inactive{window=A} counts, and its
    never-active ones are prosody_accounts_never_used{window=A}."""
    counts = count_hosts(hosts, now=NOW, windows=DEFAULT_WINDOWS, connected=connected, ages=ages)
    for data in hosts:
        for age in ages:
            listed = list_inactive(data, now=NOW, older_than=age, connected=connected)
            assert len(listed.accounts) == counts[data.host].inactive[age.label]
            assert sum(a.last_active is None for a in listed.accounts) == counts[data.host].never_used[age.label]
            assert listed.left_out == counts[data.host].disabled
            assert listed.unknown <= counts[data.host].never_active
            assert [a.user for a in listed.accounts] == sorted(a.user for a in listed.accounts)

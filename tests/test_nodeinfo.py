"""NodeInfo: the documents validate against the published schemas (tests/schemas), are built from the counts by the
one set of rules, and are served only for the hosts opted in, chosen by the Host header; `serve` over HTTP gives
the figures `count --format json` gives."""

from __future__ import annotations

import http.client
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from http import HTTPStatus
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporters.http_transport import Request
from exporters.nodeinfo import (
    NODEINFO_WINDOWS,
    SCHEMA,
    PublicHost,
    discovery,
    host_name,
    nodeinfo,
    nodeinfo2,
    public_hosts,
)
from exporters.nodeinfo_pages import COUNTS_REUSED_SECONDS, NodeInfoPages
from prosody_lastlog.cli import main
from prosody_lastlog.core.counting import HostCounts
from prosody_lastlog.core.model import Store
from prosody_lastlog.core.windows import DEFAULT_WINDOWS
from prosody_lastlog.daemon.lifecycle import Daemon, ServeOptions
from prosody_lastlog.sources.plan import SourceOptions, plan_sources
from tests.conftest import CASES, case_data
from tests.integration.servers import free_port

SCHEMAS = Path(__file__).resolve().parent / "schemas"
NOW = 1763900000  # the fixtures' `now`
CLI = [sys.executable, "-m", "prosody_lastlog"]
NODEINFO_WINDOW_OPTIONS = ["--window", "30d", "--window", "180d"]
SCHEMA_2_1 = SCHEMA + "2.1"


@cache
def validator(name: str) -> jsonschema.Draft4Validator:
    """A validator of a vendored schema (all are draft 4)."""
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def assert_valid(document: object, schema: str) -> None:
    """Fails with every schema error of the document."""
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator(schema).iter_errors(document)]
    assert not errors, errors


def assert_nodeinfo_2_1(document: object) -> None:
    assert_valid(document, "nodeinfo-2.1.schema.json")


def assert_nodeinfo_2_0(document: object) -> None:
    assert_valid(document, "nodeinfo-2.0.schema.json")


def assert_nodeinfo2(document: object) -> None:
    assert_valid(document, "nodeinfo2-1.0.schema.json")


def counts(active: Mapping[str, int], registered_accounts: int | None) -> HostCounts:
    """Counts of one host with NodeInfo's windows."""
    labels = [w.label for w in NODEINFO_WINDOWS]
    zeros = dict.fromkeys(labels, 0)
    return HostCounts(
        Store.LASTLOG2, 10, 0, 0, 0, {label: active[label] for label in labels}, zeros,
        registered_accounts=registered_accounts, returning=dict(zeros),
    )  # fmt: skip


ACTIVE = {"7d": 3, "30d": 5, "180d": 8}


def test_the_schemas_catch_what_they_should() -> None:
    """The validators are live: a document missing software.version, or with a negative count, fails."""
    good = nodeinfo(PublicHost("example.com", True), counts(ACTIVE, 12), "13.0.1")
    assert_nodeinfo_2_1(good)
    for broken in [
        {**good, "software": {"name": "prosody"}},
        {**good, "usage": {"users": {"activeMonth": -1}}},
        {**good, "protocols": []},
        {**good, "software": {"name": "Prosody", "version": "13.0.1"}},  # names are lower-case
    ]:
        assert list(validator("nodeinfo-2.1.schema.json").iter_errors(broken)), broken
    assert list(validator("nodeinfo2-1.0.schema.json").iter_errors({"version": "1.0", "openRegistrations": True}))


@given(
    week=st.integers(0, 10**7),
    month=st.integers(0, 10**7),
    half_year=st.integers(0, 10**7),
    total=st.none() | st.integers(0, 10**8),
    open_registrations=st.booleans(),
    node_name=st.none() | st.text(min_size=1, max_size=50),
    version=st.text(min_size=1, max_size=30),
)
def test_every_document_validates(  # noqa: PLR0917  # hypothesis passes each drawn value by name
    week: int, month: int, half_year: int, total: int | None, open_registrations: bool, node_name: str | None,
    version: str,
) -> None:  # fmt: skip
    host = PublicHost("münchen.example", open_registrations, node_name)
    host_counts = counts({"7d": week, "30d": month, "180d": half_year}, total)
    document = nodeinfo(host, host_counts, version)
    assert_nodeinfo_2_1(document)
    assert_nodeinfo2(nodeinfo2(host, host_counts, version))
    users = document["usage"]["users"]  # type: ignore[index]
    assert users == {
        **({} if total is None else {"total": total}), "activeHalfyear": half_year, "activeMonth": month
    }  # fmt: skip
    assert document["openRegistrations"] is open_registrations
    assert document["metadata"] == ({"nodeName": node_name} if node_name else {})
    assert document["software"] == {
        "name": "prosody", "version": version, "repository": "https://hg.prosody.im/", "homepage": "https://prosody.im/"
    }  # fmt: skip


def test_the_older_nodeinfo2_document_has_the_week_too() -> None:
    host = PublicHost("münchen.example", False, "München chat")
    document = nodeinfo2(host, counts(ACTIVE, 12), "0.12.3")
    assert document["server"] == {
        "baseUrl": "https://xn--mnchen-3ya.example/", "name": "München chat", "software": "prosody", "version": "0.12.3"
    }  # fmt: skip
    assert document["usage"] == {"users": {"total": 12, "activeHalfyear": 8, "activeMonth": 5, "activeWeek": 3}}
    unnamed = nodeinfo2(PublicHost("example.com", False), counts(ACTIVE, None), "0.12.3")
    assert unnamed["server"]["name"] == "example.com"  # type: ignore[index]  # as mod_nodeinfo2: the host


def test_discovery_links_to_the_2_1_and_2_0_documents_on_the_domain_over_https() -> None:
    assert discovery(PublicHost("münchen.example", False)) == {
        "links": [
            {"rel": SCHEMA + "2.1", "href": "https://xn--mnchen-3ya.example/nodeinfo/2.1"},
            {"rel": SCHEMA + "2.0", "href": "https://xn--mnchen-3ya.example/nodeinfo/2.0"},
        ]
    }


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("example.org", "example.org"), (" Example.ORG. ", "example.org"),
        ("xn--mnchen-3ya.example", "münchen.example"), ("MÜNCHEN.example", "münchen.example"), ("", None),
        (".", None), ("https://example.org/", None),
        ("example.org:443", None), ("user@example.org", None), ("a b.example", None), ("xn--zz.example", None),
        ("example.org\x00", None),
    ],
)  # fmt: skip
def test_host_names_as_prosody_writes_them(text: str, name: str | None) -> None:
    assert host_name(text) == name


def test_public_hosts_take_open_registration_from_the_config_and_say_when_there_is_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hosts = public_hosts(["Example.COM", "b.example"], frozenset({"example.com"}), {"b.example": "B"})
    assert hosts == {
        "b.example": PublicHost("b.example", False, "B"),
        "example.com": PublicHost("example.com", True, None),
    }
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        assert public_hosts(["a.example"], None, {}) == {"a.example": PublicHost("a.example", False)}
    assert "no Prosody config read, so openRegistrations is false" in caplog.text
    assert public_hosts([], None, {}) == {}


# --------------------------------------------------------------------------- the pages, by Host header


def request(path: str, headers: Mapping[str, str]) -> Request:
    return Request("GET", path, {name.lower(): value for name, value in headers.items()}, keep_alive=True)


def pages(
    version: str | None = "13.0.1", counted: Mapping[str, HostCounts] | None = None
) -> tuple[NodeInfoPages, list[float]]:
    """Pages for example.com and münchen.example, and the times counts were asked for."""
    asked: list[float] = []
    hosts = public_hosts(["example.com", "münchen.example"], frozenset({"example.com"}), {})
    default = {"example.com": counts(ACTIVE, 12), "münchen.example": counts(ACTIVE, 2), "x.example": counts(ACTIVE, 1)}

    def counts_at(host: str, now: float) -> HostCounts | None:
        asked.append(now)
        return (default if counted is None else counted).get(host)

    return NodeInfoPages(hosts, counts_at, lambda: version, clock=lambda: 1234.0), asked


@pytest.mark.parametrize(
    "host_header", ["example.com", "EXAMPLE.com", "example.com.", "example.com:443", "example.com:8443"]
)
def test_an_opted_in_host_is_found_by_its_host_header(host_header: str) -> None:
    site, asked = pages()
    status, headers, body = site.answer(request("/nodeinfo/2.1", {"Host": host_header}), "/nodeinfo/2.1")
    assert status == HTTPStatus.OK
    assert dict(headers)["Content-Type"] == f'application/json; profile="{SCHEMA_2_1}#"'
    document = json.loads(body)
    assert_nodeinfo_2_1(document)
    assert document["usage"]["users"] == {"total": 12, "activeHalfyear": 8, "activeMonth": 5}
    assert document["openRegistrations"] is True
    assert asked == [1234.0]  # as of the request


@pytest.mark.parametrize(
    "host_header",
    [
        "xn--mnchen-3ya.example",
        "XN--MNCHEN-3YA.example",
        "münchen.example".encode().decode("latin-1"),
        "münchen.example",
    ],
)
def test_an_internationalized_host_is_found_by_its_a_label_or_its_name(host_header: str) -> None:
    """A client sends the A-label, or the name in UTF-8 (which the transport reads as Latin-1) or in Latin-1."""
    site, _ = pages()
    path = "/.well-known/x-nodeinfo2"
    status, _, body = site.answer(request(path, {"Host": host_header}), path)
    assert status == HTTPStatus.OK
    assert_nodeinfo2(json.loads(body))


@pytest.mark.parametrize(
    "host_header",
    ["", "x.example", "other.com", "example.com.evil", "evil.example.com", "example.com:x", "[::1]:10522", "127.0.0.1",
     "example.com:443:443", "example.com/", "münchen.example.com", "\xff.example"],
)  # fmt: skip
def test_any_other_host_gets_404(host_header: str) -> None:
    site, asked = pages()
    for path in ["/.well-known/nodeinfo", "/nodeinfo/2.1", "/nodeinfo/2.0", "/.well-known/x-nodeinfo2"]:
        headers = {"Host": host_header} if host_header else {}
        assert site.answer(request(path, headers), path) == (
            HTTPStatus.NOT_FOUND, [("Content-Type", "text/plain; charset=utf-8")], b"not found\n"
        )  # fmt: skip
    assert asked == []  # nothing was counted for them


def test_documents_carry_an_etag_and_a_public_cache_lifetime_and_304_when_unchanged() -> None:
    site, _ = pages()
    host = {"Host": "example.com"}
    for path, max_age in [
        ("/.well-known/nodeinfo", 86400),
        ("/nodeinfo/2.1", 1800),
        ("/nodeinfo/2.0", 1800),
        ("/.well-known/x-nodeinfo2", 1800),
    ]:
        status, headers, body = site.answer(request(path, host), path)
        assert status == HTTPStatus.OK
        fields = dict(headers)
        assert fields["Cache-Control"] == f"public, max-age={max_age}"
        assert fields["Access-Control-Allow-Origin"] == "*"
        tag = fields["ETag"]
        for if_none_match in [tag, f"W/{tag}", f'"other", {tag}', "*"]:
            again = site.answer(request(path, {**host, "If-None-Match": if_none_match}), path)
            assert again[0] == HTTPStatus.NOT_MODIFIED and again[2] == b"", if_none_match
            assert dict(again[1])["ETag"] == tag
        changed = site.answer(request(path, {**host, "If-None-Match": '"other"'}), path)
        assert changed[0] == HTTPStatus.OK and changed[2] == body


def test_new_counts_make_a_new_etag() -> None:
    before, _ = pages()
    after, _ = pages(counted={"example.com": counts({**ACTIVE, "30d": 6}, 12)})
    path, host = "/nodeinfo/2.1", {"Host": "example.com"}
    assert (
        dict(before.answer(request(path, host), path)[1])["ETag"]
        != dict(after.answer(request(path, host), path)[1])["ETag"]
    )


def test_a_flood_counts_a_host_once_a_second() -> None:
    """Public requests cost one count of the host a second, however many; each host has its own."""
    clock = [1000.0]
    asked: list[tuple[str, float]] = []

    def counts_at(host: str, now: float) -> HostCounts:
        asked.append((host, now))
        return counts(ACTIVE, 12)

    hosts = public_hosts(["example.com", "b.example"], frozenset(), {})
    site = NodeInfoPages(hosts, counts_at, lambda: "13.0.1", clock=lambda: clock[0])
    for step in range(30):
        clock[0] = 1000.0 + step / 10
        for host in ("example.com", "b.example"):
            for path in ["/nodeinfo/2.1", "/nodeinfo/2.0", "/.well-known/x-nodeinfo2"]:
                assert site.answer(request(path, {"Host": host}), path)[0] == HTTPStatus.OK
    assert COUNTS_REUSED_SECONDS == 1.0
    assert asked == [(host, at) for at in (1000.0, 1001.0, 1002.0) for host in ("example.com", "b.example")]
    clock[0] = 999.0  # the clock went back: counted again
    site.answer(request("/nodeinfo/2.1", {"Host": "example.com"}), "/nodeinfo/2.1")
    assert asked[-1] == ("example.com", 999.0)


@pytest.mark.parametrize(("version", "counted", "why"), [(None, None, b"version"), ("13.0.1", {}, b"not counted yet")])
def test_no_version_or_no_counts_yet_is_503_never_a_guess(
    version: str | None, counted: Mapping[str, HostCounts] | None, why: bytes
) -> None:
    site, _ = pages(version, counted)
    for path in ["/nodeinfo/2.1", "/.well-known/x-nodeinfo2"]:
        status, headers, body = site.answer(request(path, {"Host": "example.com"}), path)
        assert status == HTTPStatus.SERVICE_UNAVAILABLE and why in body
        assert dict(headers)["Retry-After"] == "60" and dict(headers)["Cache-Control"] == "no-store"
    assert site.answer(request("/.well-known/nodeinfo", {"Host": "example.com"}), "/.well-known/nodeinfo")[0] == 200


# --------------------------------------------------------------------------- serve over HTTP, against count


def write_config(path: Path, data: Path) -> Path:
    """A Prosody 13 config over the prosody13 fixture's data: registration open globally, closed on one host."""
    path.write_text(
        f"""
data_path = {json.dumps(str(data))}
authentication = "internal_hashed"
modules_enabled = {{ "roster", "saslauth", "account_activity", "lastlog2", "register" }}
allow_registration = true
VirtualHost "example.net"
VirtualHost "all.example"
    allow_registration = false
VirtualHost "münchen.example"
VirtualHost "split.example"
""",
        encoding="utf-8",
    )
    return path


def http_get(url: str, host: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a GET with this Host header."""
    call = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(call, timeout=10) as reply:
            return int(reply.status), dict(reply.headers.items()), reply.read()
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), dict(error.headers.items()), error.read()


@contextmanager
def serving(args: list[str], directory: Path) -> Iterator[Callable[[], str]]:
    """`serve` with `args` until the block ends (then SIGTERM, by PID); yields what it logged so far."""
    err = directory / "serve.err"
    with (directory / "serve.out").open("wb") as out, err.open("wb") as log_file:
        process = subprocess.Popen([*CLI, "serve", *args], stdin=subprocess.DEVNULL, stdout=out, stderr=log_file)
    try:
        deadline = time.monotonic() + 30
        while "serving " not in (directory / "serve.out").read_text():
            assert process.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
        yield err.read_text
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_serve_answers_nodeinfo_for_opted_in_hosts_with_counts_equal_to_count(tmp_path: Path) -> None:
    config = write_config(tmp_path / "prosody.cfg.lua", case_data("prosody13"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    opted_in = ["example.net", "all.example", "münchen.example"]
    args = ["--config", str(config), "--listen", f"127.0.0.1:{port}", "--as-of", str(NOW)]
    args += [arg for host in opted_in for arg in ("--nodeinfo-host", host)]
    args += ["--nodeinfo-node-name", "example.net=Example chat", "--window", "1d"]  # NodeInfo's windows are counted
    expected = json.loads(
        subprocess.run(
            [*CLI, "count", "--config", str(config), "--now", str(NOW), "--format", "json",
             "--window", "7d", "--window", "30d", "--window", "180d"],
            capture_output=True, check=True, timeout=60,
        ).stdout
    )["hosts"]  # fmt: skip
    installed = Path("/usr/lib/prosody/prosody.version").read_text().strip()  # no Prosody runs: the package's
    with serving(args, tmp_path) as logged:
        for host in opted_in:
            status, headers, body = http_get(f"{base}/.well-known/nodeinfo", host.encode("idna").decode())
            assert status == 200, body
            link = json.loads(body)["links"][0]
            assert link["rel"] == SCHEMA_2_1
            path = link["href"].removeprefix(f"https://{host.encode('idna').decode()}")
            status, headers, body = http_get(base + path, host.encode("idna").decode())
            assert status == 200, body
            assert headers["Content-Type"] == f'application/json; profile="{SCHEMA_2_1}#"'
            document = json.loads(body)
            assert_nodeinfo_2_1(document)
            figures = expected[host]
            assert document["usage"]["users"] == {
                "total": figures["registered_accounts"],
                "activeHalfyear": figures["active"]["180d"],
                "activeMonth": figures["active"]["30d"],
            }, host
            assert document["openRegistrations"] is (host != "all.example")
            assert document["software"]["version"] == installed
            assert document["metadata"] == ({"nodeName": "Example chat"} if host == "example.net" else {})
            status, _, body = http_get(f"{base}/.well-known/x-nodeinfo2", host)
            older = json.loads(body)
            assert_nodeinfo2(older)
            assert older["usage"]["users"]["activeWeek"] == figures["active"]["7d"]
        assert sum(expected[h]["active"]["30d"] for h in opted_in) > 0  # figures, not only zeros
        for host in ["split.example", "plain.example", "localhost", f"127.0.0.1:{port}"]:  # counted, not opted in
            for path in ["/.well-known/nodeinfo", "/nodeinfo/2.1", "/.well-known/x-nodeinfo2"]:
                assert http_get(base + path, host)[0] == 404, (host, path)
        metrics = http_get(f"{base}/metrics", "localhost")[2].decode()
        assert 'active_users{host="example.net",window="1d"}' in metrics  # /metrics keeps to --window
        assert 'active_users{host="example.net",window="30d"}' not in metrics
        assert f"version: Prosody {installed}, from the installed package's" in logged()


def test_count_prints_the_document_of_one_host(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write_config(tmp_path / "prosody.cfg.lua", case_data("prosody13"))
    args = ["count", "--config", str(config), "--now", str(NOW)]
    assert main([*args, "--format", "nodeinfo", "--host", "example.net", "--prosody-version", "ignored"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert_nodeinfo_2_1(document)
    assert main([*args, "--format", "json", "--host", "example.net", "--window", "30d", "--window", "180d"]) == 0
    figures = json.loads(capsys.readouterr().out)["hosts"]["example.net"]
    assert document["usage"]["users"] == {
        "total": figures["registered_accounts"],
        "activeHalfyear": figures["active"]["180d"],
        "activeMonth": figures["active"]["30d"],
    }
    assert document["software"]["version"] != "ignored"  # the installed package's comes before the setting


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "nodeinfo"], "give exactly one --host"),
        (["--format", "nodeinfo", "--host", "a.example", "--host", "b.example"], "give exactly one --host"),
        (["--format", "nodeinfo", "--host", "a", "--nodeinfo-node-name", "a"], "wants HOST=NAME"),
        (["--format", "nodeinfo", "--host", "a", "--nodeinfo-node-name", "a=\x1b[2J"], "printable"),
        (["--format", "nodeinfo", "--host", "https://a.example/"], "a host name"),
        (["--format", "nodeinfo", "--host", "a.example", "--cohorts"], "--cohorts does not go with"),
        (["--format", "nodeinfo", "--host", "a.example", "--totals-only"], "--totals-only does not go with"),
    ],
)
def test_count_nodeinfo_usage_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["count", "--data-dir", str(case_data("sample")), *args])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_count_nodeinfo_of_a_host_not_counted_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["count", "--data-dir", str(case_data("sample")), "--format", "nodeinfo", "--host", "nowhere.example"]
    assert main(args) == 1
    assert "nowhere.example: no such host counted here" in capsys.readouterr().err


def test_an_sql_source_counts_nodeinfos_windows_in_its_aggregate(capsys: pytest.CaptureFixture[str]) -> None:
    """From SQL the daemon keeps counts, not activity: its aggregate counts NodeInfo's windows besides --window."""
    url = f"sqlite://{CASES / 'prosody13-sqlite' / 'prosody.sqlite'}"
    assert (
        main(["count", "--sql", url, "--now", str(NOW), "--format", "json", "--window", "30d", "--window", "180d"]) == 0
    )
    expected = json.loads(capsys.readouterr().out)["hosts"]
    hosts = ("example.net", "all.example")
    plan = plan_sources(SourceOptions(sql_url=url), environ={})
    daemon = Daemon(plan, windows=DEFAULT_WINDOWS[:1], options=ServeOptions(port=0, as_of=NOW, nodeinfo_hosts=hosts))
    daemon.start()
    try:
        base = daemon.server.url.removesuffix("/metrics")
        for host in hosts:
            status, _, body = http_get(f"{base}/nodeinfo/2.1", host)
            assert status == 200, body
            assert json.loads(body)["usage"]["users"] == {
                "total": expected[host]["registered_accounts"],
                "activeHalfyear": expected[host]["active"]["180d"],
                "activeMonth": expected[host]["active"]["30d"],
            }
    finally:
        daemon.stop()


def test_a_304_over_http_has_no_content_and_keeps_the_connection(sample_tree: Path) -> None:
    """A conditional request answered 304 carries no Content-Length (it would be the 200's) and no body; the next
    request on the same connection is answered."""
    plan = plan_sources(SourceOptions(data_dir=sample_tree), environ={})
    daemon = Daemon(
        plan, windows=DEFAULT_WINDOWS, options=ServeOptions(port=0, as_of=NOW, nodeinfo_hosts=("example.com",))
    )
    daemon.start()
    try:
        host, port = daemon.server.url.split("//")[1].split("/")[0].rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        connection.request("GET", "/nodeinfo/2.1", headers={"Host": "example.com"})
        first = connection.getresponse()
        body = first.read()
        tag = first.getheader("ETag")
        assert first.status == 200 and tag and json.loads(body)["version"] == "2.1"
        connection.request("GET", "/nodeinfo/2.1", headers={"Host": "example.com", "If-None-Match": tag})
        again = connection.getresponse()
        assert (again.status, again.getheader("Content-Length"), again.read()) == (304, None, b"")
        connection.request("GET", "/nodeinfo/2.1", headers={"Host": "example.com"})
        third = connection.getresponse()
        assert (third.status, third.read()) == (200, body)
        connection.close()
    finally:
        daemon.stop()


def test_an_opted_in_host_never_counted_here_is_not_served(sample_tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A host no source counts (a typo, a component) is refused at start with an error, and answers 404."""
    plan = plan_sources(SourceOptions(data_dir=sample_tree), environ={})
    options = ServeOptions(port=0, as_of=NOW, nodeinfo_hosts=("example.com", "nowhere.example"))
    daemon = Daemon(plan, windows=DEFAULT_WINDOWS, options=options)
    with caplog.at_level(logging.WARNING):
        daemon.start()
    try:
        assert "nodeinfo: nowhere.example is not a host counted here; its NodeInfo is not served" in caplog.text
        base = daemon.server.url.removesuffix("/metrics")
        assert http_get(f"{base}/.well-known/nodeinfo", "nowhere.example")[0] == 404
        assert http_get(f"{base}/.well-known/nodeinfo", "example.com")[0] == 200
    finally:
        daemon.stop()

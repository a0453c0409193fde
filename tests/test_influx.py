"""The InfluxDB exporter: line protocol byte for byte, escaping, a parse round trip, and its transports.

HTTP is checked against a small in-test server that records each request (the real influxd 1.6.7 of the
integration tests has no /api/v2/write, so the 2.x request format is asserted here, as InfluxDB documents it).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporters import ExporterConfigError, build_exporters
from exporters.families import COUNT_FAMILIES
from exporters.influx import (
    append_to_file,
    create,
    escape_key,
    escape_measurement,
    format_line_protocol,
    post_lines,
)
from exporters.points import Point, aligned, points_of
from exporters.runner import ExportError, PushExporter, RejectedBatchError
from prosody_lastlog.core.counting import HostCounts, Snapshot
from prosody_lastlog.core.model import Store
from prosody_lastlog.core.windows import Window
from tests.http_recorder import recording_server
from tests.integration.servers import free_port
from tests.line_protocol import Line, parse

TAKEN = 1_763_900_017.5
MINUTE = 1_763_899_980  # TAKEN aligned to the default 60 s interval
WINDOWS = (Window(86400, "1d"), Window(7 * 86400, "7d"))
PASSWORD = "s3cret-Pässword"


def counts(active: tuple[int, int], registered: tuple[int, int], accounts: int, never: int, online: int) -> HostCounts:
    return HostCounts(
        Store.LASTLOG2,
        accounts,
        never,
        0,
        0,
        dict(zip(("1d", "7d"), active, strict=True)),
        dict(zip(("1d", "7d"), registered, strict=True)),
        online,
    )


SNAPSHOT = Snapshot(
    TAKEN,
    {"münchen.example": counts((2, 5), (0, 1), 12, 1, 0), "example.com": counts((4, 8), (0, 2), 18, 2, 1)},
    WINDOWS,
)

EXPECTED = b"""\
prosody_active_users,host=example.com,window=1d value=4i 1763899980
prosody_active_users,host=example.com,window=7d value=8i 1763899980
prosody_registrations,host=example.com,window=1d value=0i 1763899980
prosody_registrations,host=example.com,window=7d value=2i 1763899980
prosody_activity_records,host=example.com value=18i 1763899980
prosody_accounts_never_active,host=example.com value=2i 1763899980
prosody_connected_users,host=example.com value=1i 1763899980
prosody_active_users,host=m\xc3\xbcnchen.example,window=1d value=2i 1763899980
prosody_active_users,host=m\xc3\xbcnchen.example,window=7d value=5i 1763899980
prosody_registrations,host=m\xc3\xbcnchen.example,window=1d value=0i 1763899980
prosody_registrations,host=m\xc3\xbcnchen.example,window=7d value=1i 1763899980
prosody_activity_records,host=m\xc3\xbcnchen.example value=12i 1763899980
prosody_accounts_never_active,host=m\xc3\xbcnchen.example value=1i 1763899980
prosody_connected_users,host=m\xc3\xbcnchen.example value=0i 1763899980
"""


def snapshot_points() -> list[Point]:
    return points_of(SNAPSHOT, timestamp=aligned(SNAPSHOT.taken, 60))


# --- the format ----------------------------------------------------------------------------------------------------


def test_snapshot_byte_for_byte() -> None:
    assert format_line_protocol(snapshot_points()) == EXPECTED


def test_nanosecond_precision_and_prefix() -> None:
    point = Point("accounts", "example.com", None, 7, MINUTE)
    assert format_line_protocol([point], precision="ns") == b"prosody_accounts,host=example.com value=7i %d\n" % (
        MINUTE * 10**9
    )
    assert format_line_protocol([point], prefix="xmpp.") == b"xmpp._accounts,host=example.com value=7i 1763899980\n"
    assert format_line_protocol([point], prefix="") == b"accounts,host=example.com value=7i 1763899980\n"
    assert format_line_protocol([]) == b""


@pytest.mark.parametrize("prefix", ["a b", "a,b", "#p", "x\\", "p\n", "ü"])
def test_prefix_outside_the_safe_set_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        format_line_protocol([], prefix=prefix)


@pytest.mark.parametrize(
    ("host", "tag"),
    [
        ("a b", b"a\\ b"),
        ("a,b", b"a\\,b"),
        ("a=b", b"a\\=b"),
        ("trailing ", b"trailing\\ "),
        ('"quoted"', b'"quoted"'),
        ("#hash", b"#hash"),
        ("tab\there", b"tab\there"),
        # Line protocol cannot carry these: replaced by a space (then escaped).
        ("back\\slash", b"back\\ slash"),
        ("ends\\", b"ends\\ "),
        ("new\nline", b"new\\ line"),
        ("cr\r\nlf", b"cr\\ \\ lf"),
    ],
)
def test_tag_value_escaping(host: str, tag: bytes) -> None:
    line = format_line_protocol([Point("active_users", host, "1d", 3, 100)])
    assert line == b"prosody_active_users,host=" + tag + b",window=1d value=3i 100\n"


def test_text_utf8_cannot_carry_becomes_a_question_mark() -> None:
    # A lone surrogate (undecodable bytes read with surrogateescape) has no UTF-8 form.
    line = format_line_protocol([Point("accounts", "bad\udcff.example", None, 1, 100)])
    assert line == b"prosody_accounts,host=bad?.example value=1i 100\n"


def test_empty_tag_values_are_left_out() -> None:
    assert format_line_protocol([Point("active_users", "", "1d", 3, 100)]) == (
        b"prosody_active_users,window=1d value=3i 100\n"
    )
    assert format_line_protocol([Point("accounts", "", None, 3, 100)]) == b"prosody_accounts value=3i 100\n"


def test_the_verified_example_of_the_notes() -> None:
    # influxd 1.6.7 stored `my meas,x` / tag `t a,g=k` = `v a,l=ue` / field `f i,e=ld` from this line.
    verified = r'my\ meas\,x,t\ a\,g\=k=v\ a\,l\=ue f\ i\,e\=ld="str \"q\" \\ back",n=1i'
    head = f"{escape_measurement('my meas,x')},{escape_key('t a,g=k')}={escape_key('v a,l=ue')} "
    assert verified.startswith(head + escape_key("f i,e=ld") + "=")
    # Backslashes and line breaks never reach the output, so each line is one point whatever the names hold.
    assert escape_measurement("a\\b\nc") == r"a\ b\ c"
    # The test parser reads the example as influxd did.
    assert parse(verified) == [
        Line("my meas,x", {"t a,g=k": "v a,l=ue"}, {"f i,e=ld": 'str "q" \\ back', "n": 1}, None)
    ]


def test_parser_rejects_what_influxd_rejects() -> None:
    for bad in ["m,host= value=1i", "m value=", "m,a value=1i", "m value=nan", "m value=1i x", "m"]:
        with pytest.raises(ValueError):
            parse(bad)
    assert parse("# comment\nm,k=v a=t,b=1.5,c=-2i 5\n") == [Line("m", {"k": "v"}, {"a": True, "b": 1.5, "c": -2}, 5)]


# Any text UTF-8 can carry, with the characters line protocol treats specially drawn often.
TAG_TEXT = st.text(st.sampled_from(',= \\\n\r"#i') | st.characters(codec="utf-8"))


@given(
    point=st.builds(
        Point,
        name=st.sampled_from([family.name for family in COUNT_FAMILIES]),
        host=TAG_TEXT,
        window=st.none() | TAG_TEXT,
        value=st.integers(-(2**63), 2**63 - 1),
        timestamp=st.integers(0, 2**34),
    ),
    prefix=st.from_regex(r"[A-Za-z0-9_.-]{0,8}", fullmatch=True),
)
def test_parse_round_trip(point: Point, prefix: str) -> None:
    text = format_line_protocol([point], prefix=prefix).decode()
    assert text.count("\n") == 1 and text.endswith("\n")

    def stored(tag: str) -> str:
        return tag.replace("\\", " ").replace("\n", " ").replace("\r", " ")

    tags = {key: stored(tag) for key, tag in (("host", point.host), ("window", point.window or "")) if tag}
    measurement = f"{prefix}_{point.name}" if prefix else point.name
    assert parse(text) == [Line(measurement, tags, {"value": point.value}, point.timestamp)]


# --- a recording HTTP server ---------------------------------------------------------------------------------------


@contextmanager
def running(exporter: PushExporter) -> Iterator[PushExporter]:
    try:
        exporter.start()
        yield exporter
    finally:
        exporter.close()


# --- HTTP writes ---------------------------------------------------------------------------------------------------


def test_v2_write_request(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("t0ken==\nignored second line\n")
    with recording_server() as server:
        v2 = create(
            url=server.url + "/", api="v2", org="acme", bucket="prosody/autogen", token_file=str(token_file), gzip=True
        )
        with running(v2) as exporter:
            exporter.publish(SNAPSHOT)
            assert exporter.flush(5)
        [request] = server.requests
        assert (request.method, request.path) == ("POST", "/api/v2/write")
        assert request.query == {"org": ["acme"], "bucket": ["prosody/autogen"], "precision": ["s"]}
        assert request.headers["Authorization"] == "Token t0ken=="
        assert request.headers["Content-Encoding"] == "gzip"
        assert request.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert server.lines() == EXPECTED


def test_v1_write_request_with_basic_auth_behind_a_path(tmp_path: Path) -> None:
    with recording_server() as server:
        v1 = create(
            url=server.url + "/influx",
            database="xmpp",
            retention_policy="forever",
            username="writer",
            password=PASSWORD,
        )
        with running(v1) as exporter:
            exporter.publish(SNAPSHOT)
            assert exporter.flush(5)
        [request] = server.requests
        assert request.path == "/influx/write"
        assert request.query == {"db": ["xmpp"], "rp": ["forever"], "precision": ["s"]}
        assert request.headers["Authorization"] == "Basic " + base64.b64encode(f"writer:{PASSWORD}".encode()).decode()
        assert "Content-Encoding" not in request.headers
        assert request.body == EXPECTED


def test_v1_without_credentials_sends_no_authorization() -> None:
    with recording_server() as server:
        post_lines(server.url + "/write?db=prosody", b"m value=1i\n", headers={}, compress=False, timeout=5)
        assert "Authorization" not in server.requests[0].headers


def test_server_errors_are_retried_until_they_pass() -> None:
    with recording_server() as server:
        server.answers.append((503, b'{"error":"busy"}', {}))
        with running(create(url=server.url)) as exporter:
            exporter.publish(SNAPSHOT)
            assert exporter.flush(10)
            assert exporter.status().errors_total == 1
        assert [request.body for request in server.requests] == [EXPECTED, EXPECTED]


def test_a_refused_batch_is_logged_and_dropped_not_resent(caplog: pytest.LogCaptureFixture) -> None:
    partial = b'{"error":"partial write: field type conflict: input field \\"value\\" ... dropped=1"}'
    with recording_server() as server:
        server.answers.append((400, partial, {}))
        with running(create(url=server.url)) as exporter, caplog.at_level(logging.ERROR):
            exporter.publish(SNAPSHOT)
            assert exporter.flush(5)
            time.sleep(0.2)  # no second attempt comes
            assert len(server.requests) == 1
            assert exporter.status().queue_length == 0
            exporter.publish(Snapshot(TAKEN + 60, SNAPSHOT.counts, WINDOWS))
            assert exporter.flush(5)
        assert len(server.requests) == 2
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "refused a batch of 14 point(s), dropped" in record.getMessage()
    assert "partial write: field type conflict" in record.getMessage()


@pytest.mark.parametrize("status", [400, 413, 422])
def test_statuses_that_refuse_the_batch(status: int) -> None:
    with recording_server() as server:
        server.answers.append((status, b"no", {}))
        with pytest.raises(RejectedBatchError, match=f"answered {status}: no"):
            post_lines(server.url + "/write", b"m value=1i\n", headers={}, compress=False, timeout=5)


def test_http_error_names_the_url_and_the_start_of_the_answer_never_the_password() -> None:
    with recording_server() as server:
        server.answers.append((401, b'{"error":"authorization failed"}', {}))
        server.answers.append((500, b"x" * 1000, {}))
        exporter = create(url=server.url, username="writer", password=PASSWORD)
        exporter.close()
        url = f"{server.url}/write?db=prosody&precision=s"
        auth = {"Authorization": "Basic " + base64.b64encode(f"writer:{PASSWORD}".encode()).decode()}
        with pytest.raises(ExportError) as refused:
            post_lines(url, b"m value=1i\n", headers=auth, compress=False, timeout=5)
        assert str(refused.value) == f'{url} answered 401: {{"error":"authorization failed"}}'
        assert not isinstance(refused.value, RejectedBatchError)  # retried: the password may be fixed
        with pytest.raises(ExportError) as failed:
            post_lines(url, b"m value=1i\n", headers=auth, compress=False, timeout=5)
        assert str(failed.value) == f"{url} answered 500: {'x' * 200}"
        for message in (str(refused.value), str(failed.value)):
            assert PASSWORD not in message and auth["Authorization"] not in message


def test_redirects_are_not_followed() -> None:
    with recording_server() as server, recording_server() as elsewhere:
        server.answers.append((307, b"", {"Location": elsewhere.url + "/write"}))
        with pytest.raises(ExportError, match="answered 307"):
            post_lines(
                server.url + "/write", b"m value=1i\n", headers={"Authorization": "Token t"}, compress=False, timeout=5
            )
        assert elsewhere.requests == []


def test_unreachable_and_slow_servers_raise_export_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/write?db=prosody"
    with pytest.raises(ExportError, match=r"^http://127\.0\.0\.1:\d+/write\?db=prosody: .*refused"):
        post_lines(url, b"m value=1i\n", headers={}, compress=False, timeout=5)
    with recording_server() as server:
        server.stall = True
        started = time.monotonic()
        with pytest.raises(ExportError, match="timed out"):
            post_lines(server.url + "/write", b"m value=1i\n", headers={}, compress=False, timeout=0.3)
        assert time.monotonic() - started < 3


# --- file and stdout -----------------------------------------------------------------------------------------------


def test_file_gets_each_batch_appended_with_nanosecond_timestamps(tmp_path: Path) -> None:
    target = tmp_path / "prosody.lp"
    later = Snapshot(TAKEN + 60, SNAPSHOT.counts, WINDOWS)
    with running(create(file=str(target), url="ignored: no HTTP with a file")) as exporter:
        exporter.publish(SNAPSHOT)
        assert exporter.flush(5)
        exporter.publish(later)
        assert exporter.flush(5)
    expected = format_line_protocol(snapshot_points(), precision="ns") + format_line_protocol(
        points_of(later, timestamp=MINUTE + 60), precision="ns"
    )
    assert target.read_bytes() == expected
    assert {line.timestamp for line in parse(expected.decode())} == {MINUTE * 10**9, (MINUTE + 60) * 10**9}


def test_stdout(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    with running(create(file="-")) as exporter:
        exporter.publish(SNAPSHOT)
        assert exporter.flush(5)
    assert capsysbinary.readouterr().out == format_line_protocol(snapshot_points(), precision="ns")


def test_unwritable_file_raises_export_error(tmp_path: Path) -> None:
    target = tmp_path / "prosody.lp"
    target.mkdir()
    with pytest.raises(ExportError, match=r"prosody\.lp: Is a directory"):
        append_to_file(target, b"x\n")


# --- settings ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"api": "v3"}, "api: expected v1 or v2"),
        ({"api": "v3", "file": "-"}, "api: expected v1 or v2"),
        ({"api": "v2", "org": "acme"}, "org, bucket: both are required"),
        ({"api": "v2", "org": "acme", "bucket": "b", "username": "u", "password": "p"}, "username, password"),
        ({"token": "t"}, "token: api v1 authenticates"),
        ({"api": "v2", "org": "o", "bucket": "b", "token": "t\r\nX-Evil: 1"}, "token: contains control characters"),
        ({"username": "u"}, "username, password: set both or neither"),
        ({"password": "p", "password_file": "/nonexistent"}, "password, password_file: set only one"),
        ({"password_file": "/nonexistent/secret", "username": "u"}, "password_file: cannot read"),
        ({"url": "ftp://127.0.0.1:8086"}, "url: expected the server's base URL"),
        ({"url": "http://127.0.0.1:8086/?db=x"}, "url: expected the server's base URL"),
        ({"url": "http://127.0.0.1:99999"}, "url: not a valid URL"),
        ({"database": ""}, "database: required"),
        ({"gzip": "yes"}, "gzip: expected true or false"),
        ({"interval": 0}, "interval: expected a positive number"),
        ({"timeout": -1}, "timeout: expected a positive number"),
        ({"max_points": 0}, "max_points: expected a positive whole number"),
        ({"max_points": 1.5}, "max_points"),
        ({"database": 5}, "database: expected a string"),
        ({"prefix": "prosody lastlog"}, "prefix"),
        ({"file": "/nonexistent/dir/prosody.lp"}, "file: the directory '/nonexistent/dir' does not exist"),
    ],
)
def test_bad_settings_raise_value_error_naming_them(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create(**settings)


def test_credentials_in_the_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="url: credentials do not belong in the URL") as refused:
        create(url=f"http://writer:{PASSWORD}@127.0.0.1:8086")
    assert PASSWORD not in str(refused.value)


def test_empty_secret_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match=r"token_file: the secret file .* is empty"):
        create(api="v2", org="o", bucket="b", token_file=str(tmp_path / "empty"))


def test_settings_file_section_goes_through_the_registry(tmp_path: Path) -> None:
    [exporter] = build_exporters({"influxdb": {"file": str(tmp_path / "prosody.lp"), "interval": 30}})
    with running(cast(PushExporter, exporter)):
        assert (exporter.name, exporter.interval) == ("influxdb", 30)
    with pytest.raises(ExporterConfigError, match=r"exporters\.influxdb: api: expected v1 or v2"):
        build_exporters({"influxdb": {"api": "v3"}})

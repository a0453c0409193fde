"""The Graphite exporter: carbon plaintext byte for byte, its grammar for any host name, and the transports."""

from __future__ import annotations

import re
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporters.graphite import (
    DEFAULT_TEMPLATE,
    MAX_DATAGRAM,
    TcpTransport,
    UdpTransport,
    create,
    datagrams,
    format_plaintext,
)
from exporters.points import Point, aligned, points_of
from exporters.runner import ExportError
from prosody_lastlog.core.counting import HostCounts, Snapshot
from prosody_lastlog.core.model import Store
from prosody_lastlog.core.windows import Window

T = 1_700_000_000
WINDOWS = (Window(86400, "1d"), Window(7 * 86400, "7d"))
SNAPSHOT = Snapshot(
    T,
    {
        "example.com": HostCounts(Store.LASTLOG2, 18, 2, 0, 0, {"1d": 4, "7d": 8}, {"1d": 0, "7d": 2}, 1),
        "münchen.example": HostCounts(Store.LASTLOG2, 12, 1, 0, 0, {"1d": 2, "7d": 5}, {"1d": 0, "7d": 1}, 0),
    },
    WINDOWS,
)
POINTS = points_of(SNAPSHOT, timestamp=T)

PLAIN = b"""\
prosody.example_com.active_users.1d 4 1700000000
prosody.example_com.active_users.7d 8 1700000000
prosody.example_com.registrations.1d 0 1700000000
prosody.example_com.registrations.7d 2 1700000000
prosody.example_com.activity_records 18 1700000000
prosody.example_com.accounts_never_active 2 1700000000
prosody.example_com.connected_users 1 1700000000
prosody.xn--mnchen-3ya_example.active_users.1d 2 1700000000
prosody.xn--mnchen-3ya_example.active_users.7d 5 1700000000
prosody.xn--mnchen-3ya_example.registrations.1d 0 1700000000
prosody.xn--mnchen-3ya_example.registrations.7d 1 1700000000
prosody.xn--mnchen-3ya_example.activity_records 12 1700000000
prosody.xn--mnchen-3ya_example.accounts_never_active 1 1700000000
prosody.xn--mnchen-3ya_example.connected_users 0 1700000000
"""

TAGGED = b"""\
prosody.active_users;host=example.com;window=1d 4 1700000000
prosody.active_users;host=example.com;window=7d 8 1700000000
prosody.registrations;host=example.com;window=1d 0 1700000000
prosody.registrations;host=example.com;window=7d 2 1700000000
prosody.activity_records;host=example.com 18 1700000000
prosody.accounts_never_active;host=example.com 2 1700000000
prosody.connected_users;host=example.com 1 1700000000
prosody.active_users;host=xn--mnchen-3ya.example;window=1d 2 1700000000
prosody.active_users;host=xn--mnchen-3ya.example;window=7d 5 1700000000
prosody.registrations;host=xn--mnchen-3ya.example;window=1d 0 1700000000
prosody.registrations;host=xn--mnchen-3ya.example;window=7d 1 1700000000
prosody.activity_records;host=xn--mnchen-3ya.example 12 1700000000
prosody.accounts_never_active;host=xn--mnchen-3ya.example 1 1700000000
prosody.connected_users;host=xn--mnchen-3ya.example 0 1700000000
"""


def test_plain_paths_byte_for_byte() -> None:
    assert format_plaintext(POINTS) == PLAIN


def test_tagged_series_byte_for_byte() -> None:
    assert format_plaintext(POINTS, tagged=True) == TAGGED


def test_template_and_prefix_byte_for_byte() -> None:
    output = format_plaintext(POINTS[:7], prefix="xmpp.prod", template="{prefix}.{name}.{window}.by_host.{host}")
    assert output == (
        b"xmpp.prod.active_users.1d.by_host.example_com 4 1700000000\n"
        b"xmpp.prod.active_users.7d.by_host.example_com 8 1700000000\n"
        b"xmpp.prod.registrations.1d.by_host.example_com 0 1700000000\n"
        b"xmpp.prod.registrations.7d.by_host.example_com 2 1700000000\n"
        # no window: its node is dropped, not left empty
        b"xmpp.prod.activity_records.by_host.example_com 18 1700000000\n"
        b"xmpp.prod.accounts_never_active.by_host.example_com 2 1700000000\n"
        b"xmpp.prod.connected_users.by_host.example_com 1 1700000000\n"
    )
    assert format_plaintext(POINTS[:1], prefix="", template="{host}_{name}.{window}") == (
        b"example_com_active_users.1d 4 1700000000\n"
    )
    assert format_plaintext(POINTS[4:5], prefix="", tagged=True) == b"activity_records;host=example.com 18 1700000000\n"


@pytest.mark.parametrize(
    ("host", "node", "tag"),
    [
        ("example.com", "example_com", "example.com"),
        ("xmpp.example-org.net", "xmpp_example-org_net", "xmpp.example-org.net"),
        # non-ASCII labels: IDNA's ASCII form (Punycode), the same as Python's IDNA 2003 codec for these names
        ("münchen.example", "xn--mnchen-3ya_example", "xn--mnchen-3ya.example"),
        ("conf.bücher.example", "conf_xn--bcher-kva_example", "conf.xn--bcher-kva.example"),
        ("例え.テスト", "xn--r8jz45g_xn--zckzah", "xn--r8jz45g.xn--zckzah"),
        # everything that could break a line, a tag, a glob or a target expression becomes `_`
        ("a b\tc/d;e=f~g(h)i{j}k[l]m,n*o?p'q\"r", "a_b_c_d_e_f_g_h_i_j_k_l_m_n_o_p_q_r", None),
        ("x\x00y\x7fz\nw|v\\u#t%s", "x_y_z_w_v_u_t_s", "x_y_z_w_v_u_t_s"),
        ("~lead;x=y", "_lead_x_y", "_lead_x_y"),
        ("", "_", "_"),
        ("..", "__", ".."),
    ],
)
def test_host_names_become_one_safe_node(host: str, node: str, tag: str | None) -> None:
    point = Point("accounts", host, None, 3, T)
    assert format_plaintext([point]) == f"prosody.{node}.accounts 3 {T}\n".encode()
    if tag is not None:
        assert format_plaintext([point], tagged=True) == f"prosody.accounts;host={tag} 3 {T}\n".encode()
    if not host.isascii():
        assert node == host.encode("idna").decode().replace(".", "_")


CARBON_LINE = re.compile(rb"(\S+) (\d+) (\d+)\n")
PATH_NODE = re.compile(r"[A-Za-z0-9_-]+")
TAG_VALUE = re.compile(r"[A-Za-z0-9_.-]+")
FAMILIES = ("active_users", "registrations", "accounts", "accounts_never_active", "connected_users")
point_strategy = st.builds(
    Point,
    name=st.sampled_from(FAMILIES) | st.text(max_size=20),
    host=st.text(max_size=40) | st.sampled_from(["example.com", "münchen.example", "a b.c/d", "..", ""]),
    window=st.none() | st.sampled_from(["1d", "7d", "30m"]) | st.text(max_size=8),
    value=st.integers(0, 10**12),
    timestamp=st.integers(0, 2**34),
)


@given(
    points=st.lists(point_strategy, max_size=20),
    prefix=st.sampled_from(["prosody", "", "xmpp.prod-1", "a_b.c"]),
    template=st.sampled_from([DEFAULT_TEMPLATE, "{prefix}.{name}.{window}.{host}", "{host}.{name}_{window}"]),
    tagged=st.booleans(),
)
def test_every_line_follows_the_carbon_plaintext_grammar(
    points: list[Point], prefix: str, template: str, tagged: bool
) -> None:
    output = format_plaintext(points, prefix=prefix, template=template, tagged=tagged)
    output.decode("ascii")
    lines = output.splitlines(keepends=True)
    assert len(lines) == len(points)
    for line, point in zip(lines, points, strict=True):
        match = CARBON_LINE.fullmatch(line)
        assert match, line
        assert len(line.decode().strip().split()) == 3  # carbon's own split, on any (Unicode) whitespace
        assert (int(match[2]), int(match[3])) == (point.value, point.timestamp)
        series = match[1].decode()
        name, *tags = series.split(";")
        assert all(PATH_NODE.fullmatch(node) for node in name.split(".")), series
        if not tagged:
            assert not tags
            continue
        tag_names = [tag.partition("=")[0] for tag in tags]
        assert tag_names == (["host"] if point.window is None else ["host", "window"])
        for tag in tags:
            _, equals, value = tag.partition("=")
            assert equals and TAG_VALUE.fullmatch(value), series  # non-empty, no `;`, no leading `~`


def test_windowless_series_leave_no_empty_node() -> None:
    output = format_plaintext(
        [Point("accounts", "example.com", None, 1, T)], template="{prefix}.{window}.{name}.{host}"
    )
    assert output == b"prosody.accounts.example_com 1 1700000000\n"


@pytest.mark.parametrize(
    "template",
    [
        "{prefix}.{host}.{name}.{windows}",  # unknown field
        "{prefix}.{host}.{name}.{window}.{0}",  # positional
        "{prefix}.{host.upper}.{name}.{window}",  # attribute
        "{prefix}.{host}.{name}.{window!r}",  # conversion
        "{prefix}.{host}.{name}.{window:>5}",  # format spec
        "{prefix}.{host}.{name}",  # windows would share a path
        "{prefix}.{name}.{window}",  # hosts would share a path
        "{prefix}.{host}.{name}.{window",  # does not parse
        "{prefix}/{host}.{name}.{window}",  # unsafe text
        "{prefix}.{{host}}.{name}.{window}",  # literal braces
    ],
)
def test_bad_templates_are_refused_at_create_naming_template(template: str) -> None:
    with pytest.raises(ValueError, match=r"^template: "):
        create(template=template)
    with pytest.raises(ValueError, match=r"^template: "):
        format_plaintext(POINTS, template=template)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("host", ""),
        ("host", "carbon example"),
        ("host", 2003),
        ("port", 0),
        ("port", 65536),
        ("port", "2003"),
        ("port", True),
        ("protocol", "http"),
        ("prefix", "a..b"),
        ("prefix", ".prosody"),
        ("prefix", "pro sody"),
        ("prefix", "münchen"),
        ("prefix", 1),
        ("template", None),
        ("tagged", "yes"),
        ("interval", 0.5),
        ("interval", float("nan")),
        ("interval", "60"),
        ("max_points", 0),
        ("max_points", 1.5),
        ("timeout", 0),
        ("timeout", float("inf")),
        ("resend", -1),
        ("resend", 11),
        ("resend", True),
    ],
)
def test_invalid_settings_raise_value_error_naming_the_setting(setting: str, value: object) -> None:
    settings: dict[str, Any] = {setting: value}
    with pytest.raises(ValueError, match=rf"^{setting}: "):
        create(**settings)


def test_create_defaults() -> None:
    exporter = create()
    try:
        assert exporter.name == "graphite"
        assert exporter.interval == 60
    finally:
        exporter.close()


@given(lines=st.lists(st.binary(min_size=0, max_size=3000).map(lambda b: b.replace(b"\n", b"x") + b"\n")))
def test_datagrams_hold_whole_lines_within_the_bound(lines: list[bytes]) -> None:
    payload = b"".join(lines)
    chunks = list(datagrams(payload))
    assert b"".join(chunks) == payload
    for chunk in chunks:
        assert chunk.endswith(b"\n")
        assert len(chunk) <= MAX_DATAGRAM or chunk.count(b"\n") == 1  # an over-long line travels alone


@pytest.fixture
def udp_receiver() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        yield receiver


def receive(receiver: socket.socket, total: int) -> list[bytes]:
    received: list[bytes] = []
    while sum(map(len, received)) < total:
        received.append(receiver.recv(65535))
    return received


def test_udp_sends_whole_lines_in_datagrams_of_at_most_1400_bytes(udp_receiver: socket.socket) -> None:
    points = [Point("active_users", f"host-{i}.example.com", "30d", i, T) for i in range(500)]
    payload = format_plaintext(points)
    assert len(payload) > 10 * MAX_DATAGRAM
    UdpTransport("127.0.0.1", udp_receiver.getsockname()[1], 5.0).send(payload)
    received = receive(udp_receiver, len(payload))
    assert b"".join(received) == payload
    assert all(len(datagram) <= MAX_DATAGRAM and datagram.endswith(b"\n") for datagram in received)
    assert max(map(len, received)) > MAX_DATAGRAM - 60  # packed, not one line per datagram


def test_create_publish_flush_over_udp(udp_receiver: socket.socket) -> None:
    exporter = create(port=udp_receiver.getsockname()[1], protocol="udp", interval=60)
    try:
        exporter.start()
        exporter.publish(Snapshot(T + 30, SNAPSHOT.counts, WINDOWS))
        assert exporter.flush(5)
    finally:
        exporter.close()
    expected = format_plaintext(points_of(SNAPSHOT, timestamp=aligned(T + 30, 60)))
    assert b"".join(receive(udp_receiver, len(expected))) == expected
    assert expected.endswith(b" 1699999980\n")  # the start of the minute, not the moment of the snapshot


def test_unreachable_tcp_port_raises_export_error_naming_host_and_port() -> None:
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind(("127.0.0.1", 0))
        port = bound_not_listening.getsockname()[1]
        with pytest.raises(ExportError, match=rf"^graphite 127\.0\.0\.1:{port} \(tcp\): Connection refused$"):
            TcpTransport("127.0.0.1", port, 5.0).send(PLAIN)


def test_refused_udp_port_raises_export_error_naming_host_and_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # one datagram only: the refusal (ICMP) of the local kernel is picked up after the last send
    with pytest.raises(ExportError, match=rf"^graphite 127\.0\.0\.1:{port} \(udp\): Connection refused$"):
        UdpTransport("127.0.0.1", port, 5.0).send(PLAIN)


def test_a_target_that_stops_reading_times_out() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # accepted by the kernel, never read: the send buffers fill up
        port = server.getsockname()[1]
        with pytest.raises(ExportError, match=rf"^graphite 127\.0\.0\.1:{port} \(tcp\): timed out$"):
            TcpTransport("127.0.0.1", port, 0.3).send(b"x 1 1\n" * 4_000_000)


def test_a_target_that_resets_instead_of_reading_fails_the_send() -> None:
    """As a carbon stopping while a batch is on its way: the kernel took the bytes, nobody read them."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def reset_once_the_batch_arrived() -> None:
            victim, _ = server.accept()
            victim.recv(1, socket.MSG_PEEK)  # the batch is there, unread
            victim.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            victim.close()  # unread data and linger 0: the kernel answers with a reset

        resetter = threading.Thread(target=reset_once_the_batch_arrived)
        resetter.start()
        try:
            with pytest.raises(ExportError, match=rf"^graphite 127\.0\.0\.1:{port} \(tcp\): "):
                TcpTransport("127.0.0.1", port, 5.0).send(PLAIN)
        finally:
            resetter.join()


def test_ipv6_targets_are_named_with_brackets() -> None:
    with pytest.raises(ExportError, match=r"^graphite \[::1\]:1 \(tcp\): "):
        TcpTransport("::1", 1, 1.0).send(PLAIN)


class LineReceiver:
    """A loopback line receiver that reads each connection to its end, or resets the ones numbered in `resets`."""

    def __init__(self, resets: frozenset[int] = frozenset()) -> None:
        self.batches: list[bytes] = []  # what each connection not reset delivered
        self.resets = resets
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve)
        self._thread.start()
        self.port = self._server.getsockname()[1]

    def _serve(self) -> None:
        number = 0
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            with connection:
                if number in self.resets:
                    connection.recv(1, socket.MSG_PEEK)  # the batch is there, unread: closing resets
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    self.batches.append(b"".join(iter(lambda: connection.recv(65536), b"")))  # noqa: B023
            number += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._server.close()


def snapshot_at(minute: int) -> Snapshot:
    counts = HostCounts(Store.LASTLOG2, 18, 2, 0, 0, {"1d": minute % 1000}, {"1d": 0}, 0)
    return Snapshot(minute, {"example.com": counts}, WINDOWS[:1])


def lines_of(minute: int) -> bytes:
    return format_plaintext(points_of(snapshot_at(minute), timestamp=minute))


MINUTES = [aligned(T, 60) + 60 * i for i in range(4)]


@pytest.mark.parametrize("resend", [0, 1, 2])
def test_each_push_repeats_the_previous_resend_pushes(resend: int) -> None:
    receiver = LineReceiver()
    exporter = create(port=receiver.port, resend=resend)
    try:
        exporter.start()
        for minute in MINUTES:
            exporter.publish(snapshot_at(minute))
            assert exporter.flush(5)
    finally:
        exporter.close()
        receiver.close()
    sent = [lines_of(minute) for minute in MINUTES]
    assert receiver.batches == [b"".join(sent[max(0, i - resend) : i + 1]) for i in range(4)]


def test_only_pushes_that_got_through_are_repeated() -> None:
    """The second push is reset by the receiver: it is retried from the queue, then repeated once delivered."""
    receiver = LineReceiver(resets=frozenset({1}))
    exporter = create(port=receiver.port, resend=1)
    try:
        exporter.start()
        for minute in MINUTES[:3]:
            exporter.publish(snapshot_at(minute))
            assert exporter.flush(10)
        assert exporter.status().errors_total == 1
    finally:
        exporter.close()
        receiver.close()
    first, second, third = (lines_of(minute) for minute in MINUTES[:3])
    assert receiver.batches == [first, first + second, second + third]

"""The canonical fast path reads exactly what the Lua sandbox reads, or refuses.

Texts come from Prosody's own serializer (the Debian package's util.serialization, as util.datamanager calls it),
then are bent into near-canonical text; every fixture file is checked too. Whatever the fast path accepts must
load in the sandbox to the same value (types included), and its activity must be what `interpret` makes of it.
"""

from __future__ import annotations

import math
import os
import random
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from lupa.lua54 import LuaRuntime

from prosody_lastlog.core.model import Store, UserActivity
from prosody_lastlog.prosody.canonical import MAX_BYTES, account_fields, activity_reader, parse
from prosody_lastlog.prosody.decode import interpret
from prosody_lastlog.prosody.pathnames import decode_name
from prosody_lastlog.prosody.sandbox import LuaSandbox
from tests.conftest import CASES

PROSODY_LIB = os.environ.get("PROSODY_LIB", "/usr/lib/prosody")
EVENTS = ("login", "logout", "registered")
ACCOUNT = ("created", "disabled")  # the fields of an account record counting reads

_lua = LuaRuntime(encoding=None)
_lua.execute(b'package.path = ... .. "/?.lua;" .. package.path', PROSODY_LIB.encode())
_serialize = _lua.eval(b'(require "util.serialization").serialize')
_sandbox = LuaSandbox()


def prosody_file(record: dict[Any, Any]) -> bytes:
    """The file util.datamanager writes for `record`: `"return " .. serialize(data) .. ";\\n"`."""
    serialized: bytes = _serialize(_to_lua(record))
    return b"return " + serialized + b";\n"


def _to_lua(value: Any) -> Any:
    if isinstance(value, dict):
        return _lua.table_from({_to_lua(key): _to_lua(item) for key, item in value.items()})
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types throughout (so 1 is not 1.0 nor True, and 0.0 is not -0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if isinstance(a, float):
        return (a == b and math.copysign(1, a) == math.copysign(1, b)) or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def assert_read_as_the_sandbox_does(text: bytes) -> None:
    fast = parse(text)
    if fast is not None:
        loaded = _sandbox.load(text, "x.dat")
        assert loaded.error is None, (text, loaded.error)
        assert same(fast, loaded.value), (text, fast, loaded.value)
    account = account_fields(text)
    assert (account is None) == (fast is None), text  # both read the canonical form, and only that
    if account is not None:
        assert isinstance(fast, dict)
        wanted = {key: {} if isinstance(value, dict) else value for key, value in fast.items() if key in ACCOUNT}
        assert same(account, wanted), (text, account, wanted)
    for store in Store:
        row = activity_reader(store)("alice", text)
        if row is not None:
            loaded = _sandbox.load(text, "x.dat")
            assert loaded.error is None, (text, loaded.error)
            interpreted = interpret(store, "alice", loaded.value)
            assert not interpreted.oddities, (text, interpreted.oddities)
            found = interpreted.activity
            assert found is not None
            fields = (found.user, found.last_active, found.registered, found.disabled, found.session_open, False)
            assert all(same(x, y) for x, y in zip(row, fields, strict=True)), (text, row, found)
            assert UserActivity(*row) == found


def plain(string: object) -> bool:
    """A string the fast path reads as it is: printable ASCII but `"'\\;=[]`."""
    return isinstance(string, str) and all(" " <= char <= "~" and char not in "\"'\\;=[]" for char in string)


# Values of every kind Prosody can serialize; strings include quotes, backslashes, control bytes, non-ASCII,
# invalid UTF-8 (bytes) and the bytes the fast path rewrites.
_INT64 = st.integers(-(2**63), 2**63 - 1)
_TEXT = st.text(max_size=12) | st.sampled_from(["", "a;b", "[x]", "a = b", "'", '"', "\\", "192.0.2.1", "x\ny"])
_KEYS = st.sampled_from([*EVENTS, *ACCOUNT, "timestamp", "ip", "event", "stored_key"]) | _TEXT | st.integers(-2, 4)
_SCALARS = _INT64 | st.floats() | st.booleans() | _TEXT | st.binary(max_size=6)
_VALUES = st.recursive(_SCALARS, lambda inner: st.dictionaries(_KEYS, inner, max_size=4), max_leaves=12)
_RECORDS = st.dictionaries(_KEYS, _VALUES, min_size=1, max_size=5)

# What the fast path must recognize (not only not misread): Prosody's plain records.
_PLAIN_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="\"'\\;=[]"))
_PLAIN_SCALARS = st.integers(-(10**18) + 1, 10**18 - 1) | st.booleans() | _PLAIN_TEXT
_PLAIN_KEYS = st.sampled_from([*EVENTS, *ACCOUNT, "timestamp", "ip"]) | _PLAIN_TEXT
_PLAIN_VALUES = _PLAIN_SCALARS | st.dictionaries(_PLAIN_KEYS, _PLAIN_SCALARS, max_size=4)
_PLAIN_RECORDS = st.dictionaries(_PLAIN_KEYS, _PLAIN_VALUES, min_size=1, max_size=5)

# Bits of Lua that look like, or break, the canonical form.
_TRICKS = [
    " ", "\t", "\n", "\r", ";", ",", "=", "[", "]", "{", "}", '"', "'", "\\", "-", ".", "e", "+", "0", "9",
    "--x\n", "--[[c]]", "[[s]]", "[=[s]=]", "\\z", "\\x41", "\\065", "\\u{41}", "\\\n", "0x10", "0X1p4", "1e309",
    "1e-400", "-0", "-0.0", ".5", "5.", "1E5", "9223372036854775808", "-9223372036854775808", "123456789012345678",
    "1234567890123456789", "(1/0)", "(0/0)", "nil", "true", "false", "{}", '["a"] = 1;', '["login"] = 2;',
    "\n\t", "\n\t\t", "\xff", "\xc3\xbc", "return ", "local x = 1\n",
    *(f'\n\t["{event}"] = {{\n\t\t["timestamp"] = 5;\n\t}};' for event in EVENTS),  # a repeated event
    '\n\t["created"] = 7;', '\n\t["disabled"] = false;', '\n\t\t["disabled"] = true;',
]  # fmt: skip


@given(_RECORDS)
@settings(max_examples=400)
def test_prosody_serialized_records_are_read_as_the_sandbox_reads_them(record: dict[Any, Any]) -> None:
    assert_read_as_the_sandbox_does(prosody_file(record))


@given(_PLAIN_RECORDS)
def test_plain_records_take_the_fast_path(record: dict[Any, Any]) -> None:
    text = prosody_file(record)
    assert len(text) > MAX_BYTES or parse(text) is not None, text
    assert_read_as_the_sandbox_does(text)


@given(_RECORDS, st.data())
@settings(max_examples=600)
def test_near_canonical_text_is_refused_or_read_as_the_sandbox_reads_it(record: dict[Any, Any], data: Any) -> None:
    text = prosody_file(record)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(text)))
        edit = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        trick = data.draw(st.sampled_from(_TRICKS)).encode("latin-1")
        if edit == "insert":
            text = text[:at] + trick + text[at:]
        elif edit == "delete":
            text = text[:at] + text[at + data.draw(st.integers(1, 4)) :]
        else:
            text = text[:at] + trick + text[at + len(trick) :]
    assert_read_as_the_sandbox_does(text)


_TIMESTAMPS = st.integers(-(10**18) + 1, 10**18 - 1) | _INT64 | st.floats() | _TEXT | st.booleans()
_IPS = st.sampled_from(["192.0.2.1", "2001:db8::1", "x" * 101, "a;b", "\\"]) | _TEXT
_EVENT_TABLES = st.fixed_dictionaries({"timestamp": _TIMESTAMPS}, optional={"ip": _IPS, "other": _SCALARS})
_LASTLOG2 = st.dictionaries(st.sampled_from([*EVENTS, "other"]), _EVENT_TABLES | _SCALARS, min_size=1, max_size=4)


@given(_LASTLOG2)
@settings(max_examples=400)
@example({"login": {"timestamp": 1700000000, "ip": "192.0.2.1"}, "logout": {"timestamp": 1700003600}})
@example({"login": {"timestamp": 1700003600}, "logout": {"timestamp": 1700003600}})
@example({"registered": {"timestamp": 1690000000}})
def test_lastlog2_records_give_the_activity_interpret_gives(record: dict[str, Any]) -> None:
    text = prosody_file(record)
    assert_read_as_the_sandbox_does(text)
    as_written = record.keys() <= set(EVENTS) and all(
        isinstance(event, dict)
        and event.keys() <= {"timestamp", "ip"}
        and type(event["timestamp"]) is int
        and abs(event["timestamp"]) < 10**18
        and plain(event.get("ip", ""))
        and len(event.get("ip", "")) <= 100
        for event in record.values()
    )
    if as_written:  # by mod_lastlog2: the fast path must take it
        assert activity_reader(Store.LASTLOG2)("alice", text) is not None, text


@given(_LASTLOG2, st.randoms(use_true_random=False))
@example({"login": {"timestamp": 1700000000}}, random.Random(0))
def test_lastlog2_records_alike_but_for_their_digits_give_what_the_sandbox_gives(
    record: dict[str, Any], rng: random.Random
) -> None:
    """The fast path learns where a record's timestamps are from its shape (all its digits made 0): any text of
    that shape must be read as the sandbox reads it, leading zeros included."""
    text = prosody_file(record)
    first = activity_reader(Store.LASTLOG2)("alice", text)
    for _ in range(5):
        other = bytes(rng.choice(b"0123456789") if 48 <= byte <= 57 else byte for byte in text)
        assert_read_as_the_sandbox_does(other)
        if first is not None:
            assert activity_reader(Store.LASTLOG2)("alice", other) is not None, other


@given(_TIMESTAMPS)
def test_account_activity_records_give_the_activity_interpret_gives(timestamp: Any) -> None:
    text = prosody_file({"timestamp": timestamp})
    assert_read_as_the_sandbox_does(text)
    if type(timestamp) is int and abs(timestamp) < 10**18:
        assert activity_reader(Store.ACCOUNT_ACTIVITY)("alice", text) == ("alice", timestamp, None, False, None, False)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b'return {\n\t["timestamp"] = 1700000000;\n};\n', {"timestamp": 1700000000}),
        (b'return {\n\t["a"] = 123456789012345678;\n};\n', {"a": 123456789012345678}),
        (b'return {\n\t["a"] = 1234567890123456789;\n};\n', None),  # 19 digits: Lua may make it a float
        (b'return {\n\t["a"] = 1700000000.5;\n\t["b"] = 1e+300;\n};\n', {"a": 1700000000.5, "b": 1e300}),
        (b'return {\n\t["a"] = -0;\n};\n', {"a": 0}),
        (b'return {\n\t["a"] = 1;\n\t["a"] = 2;\n};\n', {"a": 2}),  # the last one wins, as in Lua
        (b'return {\n\t["a"] = {};\n\t["b"] = true;\n\t["c"] = false;\n};\n', {"a": {}, "b": True, "c": False}),
        (b'return {\n\t["a"] = 0x10;\n};\n', None),
        (b'return {\n\t["a"] = (1/0);\n};\n', None),
        (b'return {\n\t["a"] = "x\\"y";\n};\n', None),  # an escape: the sandbox reads it
        (b'return {\n\t["a"] = 1; -- note\n};\n', None),
        (b'return {\n\t["a"] = 1;\r\n};\n', None),
        (b'return {\n\t["a"] = 1,\n};\n', None),
        (b"return {\n\ta = 1;\n};\n", None),
        (b"return {\n\t1;\n};\n", None),  # an array item
        (b'return {\n\t["a"] = {\n\t\t["b"] = {\n\t\t\t["c"] = 1;\n\t\t};\n\t};\n};\n', None),  # deeper
        (b'return {\n\t["a"] = 1;\n};\nreturn 2', None),
        (b"return {};\n", None),
        (b"return nil;\n", None),
        (b"", None),
    ],
)
def test_the_canonical_form_and_its_edges(text: bytes, value: dict[str, Any] | None) -> None:
    parsed = parse(text)
    assert parsed is None if value is None else same(parsed, value)
    assert_read_as_the_sandbox_does(text)


@pytest.mark.parametrize(
    ("text", "row"),
    [
        (
            b'return {\n\t["login"] = {\n\t\t["timestamp"] = 5;\n\t};\n'
            b'\t["login"] = {\n\t\t["timestamp"] = 3;\n\t};\n};\n',
            ("alice", 3, None, False, 3, False),
        ),
        (
            b'return {\n\t["login"] = {\n\t\t["timestamp"] = 5;\n\t};\n\t["logout"] = {\n\t\t["timestamp"] = 6;\n'
            b'\t};\n\t["login"] = {\n\t\t["timestamp"] = 7;\n\t};\n};\n',
            ("alice", 7, None, False, 7, False),
        ),
        (
            b'return {\n\t["logout"] = {\n\t\t["timestamp"] = 9;\n\t};\n\t["login"] = {\n\t\t["ip"] = "::1";\n'
            b'\t\t["timestamp"] = 7;\n\t};\n\t["registered"] = {\n\t\t["timestamp"] = 1;\n\t};\n};\n',
            ("alice", 9, 1, False, None, False),
        ),
        (b'return {\n\t["login"] = {\n\t\t["timestamp"] = 5.5;\n\t};\n};\n', None),  # a float: interpret's
        (b'return {\n\t["login"] = {\n\t\t["when"] = 5;\n\t};\n};\n', None),
    ],
)
def test_lastlog2_fast_path_and_its_edges(text: bytes, row: tuple[Any, ...] | None) -> None:
    assert activity_reader(Store.LASTLOG2)("alice", text) == row
    assert_read_as_the_sandbox_does(text)


def test_the_largest_accepted_texts_stay_within_every_sandbox_limit() -> None:
    items = b"".join(b'\n\t["%d"] = 0;' % index for index in range(MAX_BYTES // 12))  # the most values
    text = b"return {" + items[: items[: MAX_BYTES - 12].rfind(b"\n")] + b"\n};\n"
    assert MAX_BYTES - 20 < len(text) <= MAX_BYTES
    assert_read_as_the_sandbox_does(text)
    assert parse(text) is not None
    assert parse(text[:-4] + b'\n\t["z"] = 1;' * 2 + b"\n};\n") is None  # over MAX_BYTES
    ip = b'\n\t\t["ip"] = "' + b"x" * 100 + b'";'
    event = b'\n\t["%s"] = {' + ip + b'\n\t\t["timestamp"] = -999999999999999999;' + ip + b"\n\t};"
    longest = b"return {" + b"".join(event % name.encode() for name in EVENTS) + b"\n};\n"
    assert activity_reader(Store.LASTLOG2)("alice", longest) is not None
    assert len(longest) <= MAX_BYTES


def test_every_fixture_file_is_read_as_the_sandbox_reads_it() -> None:
    """Real Prosody's files, hostile ones included: all but those with escapes take the fast path."""
    slow = []
    for path in sorted(CASES.glob("*/data/*/*/*.dat")):
        text = path.read_bytes()
        assert_read_as_the_sandbox_does(text)
        if parse(text) is None:
            slow.append(path)
    assert slow and all("hostile" in path.parts or b"\\" in path.read_bytes() for path in slow), (
        "a file Prosody wrote misses the fast path"
    )
    user_records = [p for p in CASES.glob("*/data/*/*/*.dat") if "hostile" not in p.parts]
    for path in user_records:
        store = Store(path.parent.name) if path.parent.name in set(Store) else None
        user = decode_name(path.name[:-4])
        if store in (Store.LASTLOG2, Store.ACCOUNT_ACTIVITY) and b'"timestamp"' in path.read_bytes():
            assert user is not None and activity_reader(store)(user, path.read_bytes()) is not None, path

"""The Lua sandbox: Prosody's formats load, hostile chunks fail as reported problems and nothing else."""

from __future__ import annotations

import time

import pytest

from prosody_lastlog.prosody.sandbox import BATCH_BYTES, BATCH_SIZE, LuaSandbox, _batches, restricted_runtime

LASTLOG2_FILE = (
    b'return {\n\t["registered"] = {\n\t\t["timestamp"] = 1690000000;\n\t};\n'
    b'\t["login"] = {\n\t\t["ip"] = "192.0.2.1";\n\t\t["timestamp"] = 1700000000;\n\t};\n'
    b'\t["logout"] = {\n\t\t["timestamp"] = 1700003600;\n\t};\n};\n'
)


@pytest.fixture(scope="module")
def sandbox() -> LuaSandbox:
    return LuaSandbox(max_memory=32 * 1024 * 1024)


def test_loads_a_lastlog2_file_as_plain_values(sandbox: LuaSandbox) -> None:
    loaded = sandbox.load(LASTLOG2_FILE, "alice.dat")
    assert loaded.error is None
    assert loaded.value == {
        "registered": {"timestamp": 1690000000},
        "login": {"ip": "192.0.2.1", "timestamp": 1700000000},
        "logout": {"timestamp": 1700003600},
    }


def test_loads_the_pre_0_11_serializer_and_general_lua_literals(sandbox: LuaSandbox) -> None:
    old = (
        b'return {\n["event"] = "login",\n["timestamp"] = 1.5e9;\n'
        b'[1] = "a\\0b\\27",\n"x", z = "\\xc3\\xbc\\u{263A}"};\n'
    )
    loaded = sandbox.load(old, "old.dat")
    assert loaded.value == {"event": "login", "timestamp": 1.5e9, 1: "x", "z": "ü\u263a"}


def test_decimal_escapes_become_utf8_text(sandbox: LuaSandbox) -> None:
    loaded = sandbox.load(b'return {\n\t["conference.m\\195\\188nchen.example"] = "message";\n};\n', "room.dat")
    assert loaded.value == {"conference.münchen.example": "message"}


def test_numbers_keep_lua_types_and_specials(sandbox: LuaSandbox) -> None:
    loaded = sandbox.load(b"return { a = 1700000000, b = 1700000000.5, c = (1/0), d = (0/0), e = true }", "n.dat")
    assert isinstance(loaded.value, dict)
    assert loaded.value["a"] == 1700000000 and isinstance(loaded.value["a"], int)
    assert loaded.value["b"] == 1700000000.5
    assert loaded.value["c"] == float("inf")
    assert loaded.value["d"] != loaded.value["d"]
    assert loaded.value["e"] is True


@pytest.mark.parametrize(
    ("text", "message_part", "hit_limit"),
    [
        (b'os.execute("touch /tmp/pwned")', "global 'os'", False),
        (b'return require("io")', "global 'require'", False),
        (b"return _G", None, False),  # _G is just an absent global: the value is nil
        (b'return ("x"):rep(1e10)', "attempt to index a string value", False),
        (b'return string.rep("x", 1e10)', "global 'string'", False),
        (b"return setmetatable({}, {__index = function() end})", "global 'setmetatable'", False),
        (b"return load('return 1')()", "global 'load'", False),
        (b"while true do end", "instruction limit exceeded", True),
        (b"local t = {} for i = 1, 1e9 do t[i] = i end return t", "instruction limit exceeded", True),
        (b'local s = "x" .. "y" for i = 1, 40 do s = s .. s end return s', "not enough memory", True),
        (b"local t = {} t.self = t return t", "value nested too deeply", True),
        (b"return {" + b"{" * 40 + b"}" * 40 + b"}", "value nested too deeply", True),
        (b"local t = {} for i = 1, 5000 do t[i] = i end return t", "value too large", True),
        (b"\x1bLua\x54\x00\x19\x93\r\n\x1a\n", "binary chunk", False),
        (b"return {", "unexpected symbol", False),
        (b'return {\n\t["login"] = {\n\t\t["times', "unfinished string", False),
        (b"return function() end", "unsupported", False),
        (b"return { [{}] = 1 }", "unsupported table key", False),
    ],
)
def test_hostile_or_corrupt_chunks_fail_as_reported_problems(
    sandbox: LuaSandbox, text: bytes, message_part: str | None, hit_limit: bool
) -> None:
    started = time.monotonic()
    loaded = sandbox.load(text, "evil.dat")
    assert time.monotonic() - started < 5
    if message_part is None:
        assert loaded.value is None and loaded.error is None
    else:
        assert loaded.value is None
        assert loaded.error is not None and message_part in loaded.error
        assert loaded.hit_limit is hit_limit


def test_one_bad_chunk_never_affects_its_batch_neighbours(sandbox: LuaSandbox) -> None:
    chunks = [(LASTLOG2_FILE, "a.dat"), (b"while true do end", "b.dat"), (LASTLOG2_FILE, "c.dat")]
    results = sandbox.load_many(chunks * 300)
    assert len(results) == 900
    assert [r.error is None for r in results[:3]] == [True, False, True]
    assert results[-1].value == results[0].value


def test_the_runtime_stays_usable_after_memory_exhaustion(sandbox: LuaSandbox) -> None:
    for _ in range(3):
        assert sandbox.load(b'local s = "ab" for i = 1, 40 do s = s .. s end', "m.dat").hit_limit
    assert sandbox.load(LASTLOG2_FILE, "ok.dat").error is None


def test_chunks_share_no_state(sandbox: LuaSandbox) -> None:
    assert sandbox.load(b"leak = 42 return {}", "a.dat").value == {}
    assert sandbox.load(b"return { v = leak }", "b.dat").value == {}


def test_error_messages_name_the_chunk(sandbox: LuaSandbox) -> None:
    loaded = sandbox.load(b"return {", "bob.dat")
    assert loaded.error is not None and loaded.error.startswith("bob.dat:1:")


def test_batches_are_bounded_in_count_and_bytes() -> None:
    small = [(b"return {}", "s.dat")] * (BATCH_SIZE + 1)
    assert [len(b) for b in _batches(small)] == [BATCH_SIZE, 1]
    big = [(b"x" * (BATCH_BYTES // 2 + 1), "b.dat")] * 3
    assert [len(b) for b in _batches(big)] == [1, 1, 1]
    assert _batches([]) == []


def test_a_batch_of_large_files_loads(sandbox: LuaSandbox) -> None:
    large = b"return { pad = '" + b"x" * 200_000 + b"' }"
    results = sandbox.load_many([(large, f"{i}.dat") for i in range(40)])
    assert all(r.error is None for r in results)


def test_cpu_time_is_capped_even_when_few_instructions_run(sandbox: LuaSandbox) -> None:
    # Each concatenation of a long string is one instruction that takes milliseconds.
    slow = b'local s = "x" for i = 1, 22 do s = s .. s end for i = 1, 1e9 do local t = s .. i end return {}'
    started = time.monotonic()
    loaded = sandbox.load(slow, "slow.dat")
    assert time.monotonic() - started < 3
    assert loaded.error is not None and "time limit exceeded" in loaded.error and loaded.hit_limit


def test_repeated_strings_are_capped_in_bytes(sandbox: LuaSandbox) -> None:
    # One 1 MiB string referenced 300 times would be 300 MiB of Python strings.
    fan_out = b'local s = "xy" for i = 1, 19 do s = s .. s end local t = {} for i = 1, 300 do t[i] = s end return t'
    loaded = sandbox.load(fan_out, "fan.dat")
    assert loaded.error == "value too large" and loaded.hit_limit


def test_python_objects_are_not_inspectable_from_lua() -> None:
    lua = restricted_runtime(max_memory=1 << 24)
    peek = lua.eval("function(f) return f.__globals__ end")
    with pytest.raises(AttributeError):
        peek(len)

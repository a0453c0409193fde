"""The only code that runs Lua: Prosody data files evaluated as text chunks in an empty environment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from lupa.lua54 import LuaError, LuaRuntime

PlainValue: TypeAlias = "str | int | float | bool | dict[Any, PlainValue]"

DEFAULT_MAX_MEMORY = 32 * 1024 * 1024
DEFAULT_MAX_INSTRUCTIONS = 200_000
DEFAULT_MAX_SECONDS = 0.25  # of CPU time per chunk; a real data file takes microseconds
DEFAULT_MAX_VALUES = 2_000
DEFAULT_MAX_STRING_BYTES = 256 * 1024
HOOK_EVERY = 100  # instructions between watchdog checks
MAX_DEPTH = 16
BATCH_SIZE = 256
BATCH_BYTES = 4 * 1024 * 1024  # well under max_memory, so a batch of large files still fits
_VALUE, _NO_VALUE, _ERROR = 1, 2, 3
_LIMIT_MESSAGES = (
    "instruction limit exceeded",
    "time limit exceeded",
    "not enough memory",
    "value too large",
    "value nested too deeply",
)

# Runs once in a private runtime. Data chunks get `{}` as their environment, mode "t" refuses bytecode,
# the string metatable is removed so `("x"):rep(1e10)` has no methods to reach, a count hook bounds the
# instructions a chunk may run, and the runtime's max_memory bounds what it may allocate. Each result is
# flattened into a token stream returned as multiple values, which crosses into Python far faster than
# walking Lua tables: per chunk a status (_VALUE then the value, _NO_VALUE, or _ERROR then a message); a
# table is `nil, <pair count>, k1, v1, ...` (nil never occurs inside a Lua table).
_LOADER = b"""
local load, pcall, sethook, error, type, next, unpack, tostring, gsub, match, clock =
  load, pcall, debug.sethook, error, type, next, table.unpack, tostring, string.gsub, string.match, os.clock
debug.setmetatable("", nil)
local max_depth, hook_every, VALUE, NO_VALUE, ERROR = ...

-- Instructions are counted, but one instruction on a long string can take milliseconds: CPU time is capped too.
local steps, max_steps, deadline = 0, 0, 0
local function watchdog()
  steps = steps + 1
  if steps > max_steps then error("instruction limit exceeded", 0) end
  if clock() > deadline then error("time limit exceeded", 0) end
end

-- One string may appear many times in a table; Python would get a copy each time, so bytes are capped.
local string_bytes = 0
local function flatten(value, out, n, depth, budget)
  if n > budget then error("value too large", 0) end
  local kind = type(value)
  if kind ~= "table" then
    if kind == "string" then
      string_bytes = string_bytes - #value
      if string_bytes < 0 then error("value too large", 0) end
    elseif kind ~= "number" and kind ~= "boolean" and kind ~= "nil" then
      error("unsupported value type " .. kind, 0)
    end
    n = n + 1; out[n] = value; return n
  end
  if depth >= max_depth then error("value nested too deeply", 0) end
  local count = 0
  for _ in next, value do count = count + 1 end
  out[n + 1] = nil; out[n + 2] = count
  n = n + 2
  for k, v in next, value do
    if type(k) == "table" then error("unsupported table key", 0) end
    n = flatten(k, out, n, depth + 1, budget)
    n = flatten(v, out, n, depth + 1, budget)
  end
  return n
end

return function(texts, names, max_instructions, max_seconds, max_values, max_string_bytes)
  local out, n = {}, 0
  for i = 1, #texts do
    local chunk, err = load(texts[i], names[i], "t", {})
    local ok, value = false, err
    if chunk then
      steps, max_steps, deadline = 0, max_instructions // hook_every, clock() + max_seconds
      sethook(watchdog, "", hook_every)
      ok, value = pcall(chunk)
      sethook()
    end
    local mark = n + 1
    if ok and value == nil then
      out[mark] = NO_VALUE; n = mark
    else
      if ok then
        string_bytes = max_string_bytes
        ok, value = pcall(flatten, value, out, mark, 0, mark + max_values)
      end
      if ok then
        out[mark] = VALUE; n = value
      else
        -- One line of printable ASCII: a message may quote the file, and goes to a log line. (A parser error
        -- past the C stack limit also carries the runtime's traceback.)
        out[mark] = ERROR; out[mark + 1] = gsub(match(tostring(value), "^[^\\n]*"), "[^ -~]", "?"); n = mark + 1
      end
    end
  end
  return unpack(out, 1, n)
end
"""


def restricted_runtime(*, max_memory: int) -> LuaRuntime:
    """A Lua 5.4 runtime capped at `max_memory` bytes, from which no Python object's attributes are reachable.

    Strings cross as `str` (UTF-8); Python functions handed to it can be called but not inspected.
    """
    return LuaRuntime(
        encoding="utf-8",
        register_eval=False,
        register_builtins=False,
        unpack_returned_tuples=True,
        max_memory=max_memory,
        attribute_filter=_refuse_attribute,
    )


def _refuse_attribute(obj: object, name: object, is_setting: bool) -> str:
    raise AttributeError("Python attributes are not reachable from the sandbox")


@dataclass(frozen=True, slots=True)
class Loaded:
    """What one chunk gave: its value, or the reason it gave none."""

    value: PlainValue | None
    error: str | None = None
    hit_limit: bool = False


class LuaSandbox:
    """Evaluates Prosody's serialized data (`return {...};`) safely and returns plain Python values.

    Strings come back as `str`, Lua tables as dicts, numbers as int or float; a chunk holding a string
    that is not valid UTF-8 fails as a whole ("a string is not valid UTF-8").
    """

    def __init__(
        self,
        *,
        max_memory: int = DEFAULT_MAX_MEMORY,
        max_instructions: int = DEFAULT_MAX_INSTRUCTIONS,
        max_seconds: float = DEFAULT_MAX_SECONDS,
        max_values: int = DEFAULT_MAX_VALUES,
        max_string_bytes: int = DEFAULT_MAX_STRING_BYTES,
    ) -> None:
        self._lua = restricted_runtime(max_memory=max_memory)
        self._run_batch = self._lua.execute(_LOADER, MAX_DEPTH, HOOK_EVERY, _VALUE, _NO_VALUE, _ERROR)
        self._limits = (max_instructions, max_seconds, max_values, max_string_bytes)

    def load(self, text: bytes, name: str) -> Loaded:
        """Evaluates one chunk; `name` appears in Lua's error messages."""
        return self.load_many([(text, name)])[0]

    def load_many(self, chunks: Sequence[tuple[bytes, str]]) -> list[Loaded]:
        """Evaluates many chunks, a batch per Lua call; one bad chunk never affects another."""
        results: list[Loaded] = []
        for batch in _batches(chunks):
            try:
                results.extend(self._call(batch))
            except (LuaError, MemoryError, UnicodeDecodeError):
                # Only a failure outside the per-chunk pcall gets here (e.g. the runtime's memory cap hit
                # while building the batch result); retrying one by one confines it to the chunk at fault.
                results.extend(self._call_alone(chunk) for chunk in batch)
        return results

    def _call_alone(self, chunk: tuple[bytes, str]) -> Loaded:
        try:
            return self._call([chunk])[0]
        except UnicodeDecodeError:
            return Loaded(None, "a string is not valid UTF-8")
        except (LuaError, MemoryError) as exc:
            return Loaded(None, f"Lua runtime error: {exc}", hit_limit=True)

    def _call(self, batch: Sequence[tuple[bytes, str]]) -> list[Loaded]:
        texts = self._lua.table_from([text for text, _ in batch])
        names = self._lua.table_from([("=" + name).encode("utf-8", "replace") for _, name in batch])
        tokens = self._run_batch(texts, names, *self._limits)
        if not isinstance(tokens, tuple):
            tokens = (tokens,)
        return _decode_results(tokens)


def _batches(chunks: Sequence[tuple[bytes, str]]) -> list[Sequence[tuple[bytes, str]]]:
    """Splits chunks into batches of at most BATCH_SIZE chunks and (beyond one chunk) BATCH_BYTES bytes."""
    batches: list[Sequence[tuple[bytes, str]]] = []
    start = size = 0
    for index, (text, _) in enumerate(chunks):
        if index > start and (index - start == BATCH_SIZE or size + len(text) > BATCH_BYTES):
            batches.append(chunks[start:index])
            start, size = index, 0
        size += len(text)
    if start < len(chunks):
        batches.append(chunks[start:])
    return batches


def _decode_results(tokens: tuple[Any, ...]) -> list[Loaded]:
    results: list[Loaded] = []
    position = 0
    while position < len(tokens):
        status = tokens[position]
        if status == _VALUE:
            value, position = _decode_value(tokens, position + 1)
            results.append(Loaded(value))
        elif status == _NO_VALUE:
            results.append(Loaded(None))
            position += 1
        else:
            message = str(tokens[position + 1])
            results.append(Loaded(None, message, hit_limit=message.endswith(_LIMIT_MESSAGES)))
            position += 2
    return results


def _decode_value(tokens: tuple[Any, ...], position: int) -> tuple[PlainValue, int]:
    token = tokens[position]
    if token is None:  # a table: nil, pair count, then the pairs
        table: dict[Any, PlainValue] = {}
        position += 2
        for _ in range(tokens[position - 1]):
            key, position = _decode_value(tokens, position)
            table[key], position = _decode_value(tokens, position)
        return table, position
    return token, position + 1

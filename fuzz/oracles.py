"""What any input must give: the documented outcomes of the data-file readers and of the config evaluator.

Each `check` raises FindingError (an AssertionError) for anything else; any other exception it lets through is a finding
too. The fuzz targets and tests/test_properties.py drive the same checks.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prosody_lastlog.core.model import PROBLEM_KINDS, CountingChoice, ReadProblem, Store, UserActivity
from prosody_lastlog.prosody.canonical import activity_reader, parse
from prosody_lastlog.prosody.config import ConfigError, ProsodyConfig, load_prosody_config
from prosody_lastlog.prosody.decode import interpret
from prosody_lastlog.prosody.pathnames import encode_name, encode_store
from prosody_lastlog.prosody.sandbox import MAX_DEPTH, Loaded, LuaSandbox
from prosody_lastlog.sources.files import MAX_FILE_SIZE, FileStoreReader

HOST = "fuzz.example"
USER = "fuzz"
_INT64 = 2**63


class FindingError(AssertionError):
    """An input gave an outcome that is not one of the documented ones."""


def _require(condition: bool, *what: object) -> None:
    if not condition:
        raise FindingError(*what)


def same(a: object, b: object) -> bool:
    """Equal values of the same types throughout (1 is not 1.0 nor True; 0.0 is not -0.0; NaN is NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if isinstance(a, float):
        assert isinstance(b, float)
        return (a == b and math.copysign(1, a) == math.copysign(1, b)) or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def _check_plain(value: object, depth: int = 0) -> None:
    """A value the sandbox hands out: str, int64, float, bool, or a table of such keys and values, not too deep."""
    if isinstance(value, dict):
        _require(depth < MAX_DEPTH, "table nested deeper than the sandbox allows", depth)
        for key, item in value.items():
            _require(not isinstance(key, dict) and key is not None, "table key", key)
            _check_plain(key, depth + 1)
            _check_plain(item, depth + 1)
    elif isinstance(value, int) and not isinstance(value, bool):
        _require(-_INT64 <= value < _INT64, "integer beyond Lua's 64 bits", value)
    else:
        _require(isinstance(value, str | float | bool), "value of type", type(value))


def _fields(activity: UserActivity) -> tuple[object, ...]:
    fields = (activity.user, activity.last_active, activity.registered, activity.disabled, activity.session_open)
    return (*fields, activity.no_account)


def _check_activity(activity: UserActivity) -> None:
    for when in (activity.last_active, activity.registered, activity.session_open):
        _require(when is None or (type(when) in (int, float) and math.isfinite(when)), "time not a finite number", when)
    # A session is open only at the last activity: a login later than any logout (or lastlog's latest event).
    _require(activity.session_open is None or activity.session_open == activity.last_active, "session", activity)


class DataFileOracle:
    """Checks one data file's bytes through every reader: sandbox, canonical fast paths, interpret, file reader.

    `scratch` is an empty directory it may write to: the file is read back as `<user>.dat` of each store there.
    """

    def __init__(self, scratch: Path) -> None:
        self._sandbox = LuaSandbox()
        self._data_dir = scratch
        self._reader = FileStoreReader(scratch)
        self._paths = {}
        for store in Store:
            directory = scratch / encode_name(HOST) / encode_store(store.value)
            directory.mkdir(parents=True, exist_ok=True)
            self._paths[store] = directory / f"{encode_name(USER)}.dat"

    def check(self, text: bytes) -> None:
        """Raises FindingError unless `text` gives a documented outcome everywhere."""
        loaded = self._sandbox.load(text, f"{USER}.dat")
        self._check_loaded(loaded)
        fast = parse(text)
        if fast is not None:
            _require(loaded.error is None, "canonical text the sandbox refuses", text, loaded.error)
            _require(same(fast, loaded.value), "canonical.parse differs from the sandbox", text, fast, loaded.value)
        for store in Store:
            interpreted = interpret(store, USER, loaded.value)
            _require(interpreted.activity is not None or bool(interpreted.oddities), "no account and no reason")
            if interpreted.activity is not None:
                _check_activity(interpreted.activity)
            row = activity_reader(store)(USER, text)
            if row is not None:
                _require(loaded.error is None and interpreted.activity is not None, "fast path on bad text", text)
                assert interpreted.activity is not None
                _require(not interpreted.oddities, "fast path on odd record", text, interpreted.oddities)
                expected = _fields(interpreted.activity)
                _require(all(map(same, row, expected)), "activity_reader differs from interpret", text, row, expected)
            self._check_file_reader(store, text, loaded, interpreted.activity, interpreted.oddities)

    def _check_loaded(self, loaded: Loaded) -> None:
        if loaded.error is not None:
            _require(loaded.value is None, "a value and an error", loaded)
            _require(isinstance(loaded.error, str), "error not a string", loaded)
        else:
            _require(not loaded.hit_limit, "a limit hit without an error", loaded)
            if loaded.value is not None:  # None: the chunk returned nothing
                _check_plain(loaded.value)

    def _check_file_reader(
        self, store: Store, text: bytes, loaded: Loaded, activity: UserActivity | None, oddities: list[str]
    ) -> None:
        """`read_user` gives what the sandbox and interpret gave, or the problem kinds they imply."""
        path = self._paths[store]
        path.write_bytes(text)
        problems: list[ReadProblem] = []
        found = self._reader.read_user(HOST, CountingChoice(store), USER, problems)
        where = os.path.relpath(path, self._data_dir)
        for problem in problems:
            _require(problem.kind in PROBLEM_KINDS, "unknown problem kind", problem)
            _require(problem.where == where, "problem names another file", problem, where)
        kinds = [problem.kind for problem in problems]
        if not text:
            expected: tuple[UserActivity | None, list[str]] = (None, ["empty"])
        elif len(text) > MAX_FILE_SIZE:
            expected = (None, ["limit"])
        elif loaded.error is not None:
            expected = (None, ["limit" if loaded.hit_limit else "invalid"])
        else:
            expected = (activity, ["unexpected"] * len(oddities))
        _require(kinds == expected[1], "read_user's problems", text, problems, expected[1])
        want = expected[0]
        _require(
            (found is None) == (want is None) and (found is None or want is None or same_activity(found, want)),
            "read_user's record differs from interpret's",
            text,
            found,
            want,
        )


def same_activity(a: UserActivity, b: UserActivity) -> bool:
    """Equal records, times of the same types."""
    return all(map(same, _fields(a), _fields(b)))


@dataclass(frozen=True)
class ConfigOutcome:
    """What one config evaluation gave: the config, or the error's message."""

    config: ProsodyConfig | None
    error: str | None


class ConfigOracle:
    """Checks one prosody.cfg.lua's bytes: load_prosody_config gives a ProsodyConfig or raises ConfigError.

    `scratch` is an empty directory it may write to; the config is `prosody.cfg.lua` there.
    """

    def __init__(self, scratch: Path, environ: Mapping[str, str] | None = None) -> None:
        self._path = scratch / "prosody.cfg.lua"
        self._environ = dict(environ or {})

    def check(self, text: bytes) -> ConfigOutcome:
        """Raises FindingError (or lets another exception through) unless `text` gives a documented outcome."""
        self._path.write_bytes(text)
        try:
            config = load_prosody_config(self._path, environ=self._environ)
        except ConfigError as exc:
            _require(bool(str(exc)), "an empty ConfigError")
            return ConfigOutcome(None, str(exc))
        _require(config.data_path.is_absolute(), "relative data path", config.data_path)
        _require(not config.hosts.keys() & config.skipped.keys(), "a host both read and skipped", config)
        for name, host in config.hosts.items():
            _require(isinstance(name, str) and name == host.name, "host name", name, host)
            _require(bool(host.stores), "a host with no store", host)
            for store, driver in host.stores.items():
                _require(isinstance(store, Store) and isinstance(driver, str), "store and driver", host)
        _require(all(isinstance(reason, str) and reason for reason in config.skipped.values()), "skip reason", config)
        _require(all(isinstance(warning, str) for warning in config.warnings), "warning", config.warnings)
        return ConfigOutcome(config, None)


_DICT_ENTRY = re.compile(rb'^(?:[A-Za-z0-9_]+=)?"((?:[^"\\]|\\.)*)"$')
_ESCAPE = re.compile(rb"\\(x[0-9A-Fa-f]{2}|.)")


def dictionary_tokens(path: Path) -> list[bytes]:
    """The tokens of a libFuzzer dictionary file (`"text"` or `name="text"` lines; `\\\\`, `\\"`, `\\xAB`)."""
    tokens = []
    for line in path.read_bytes().splitlines():
        match = _DICT_ENTRY.match(line.strip())
        if match:
            tokens.append(_ESCAPE.sub(_unescape, match[1]))
    return tokens


def _unescape(match: re.Match[bytes]) -> bytes:
    escaped = match[1]
    return bytes([int(escaped[1:], 16)]) if escaped.startswith(b"x") else escaped

"""Each entry point loads only what it uses: outputs never load Lua or a database driver, and a cron `count` loads
no server, watcher, push transport, database code or process machinery until it needs them. Checked in a fresh
interpreter's sys.modules."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_DRIVERS_AND_LUA = {"lupa", "psycopg", "pymysql"}
_SERVING = {"watchdog", "asyncio", "ssl", "prosody_lastlog.daemon", "exporters.http"}
_PUSHING = {
    "urllib.request",
    "http.client",
    "exporters.runner",
    "exporters.points",
    "exporters.graphite",
    "exporters.influx",
    "exporters.pushgateway",
}
# Loaded when used: an SQL source, more than one reading process, a settings file, a config (and its host names),
# a Prosody to ask, a file to write.
_WHEN_USED = {
    "sqlite3",
    "prosody_lastlog.sources.sql_source",
    "prosody_lastlog.sources.sql",
    "prosody_lastlog.sources.database",
    "multiprocessing",
    "ctypes",
    "tomllib",
    "importlib.resources",
    "encodings.idna",
    "socket",
    "xml",
    "exporters.textfile",
}


def _loaded_after(statement: str) -> set[str]:
    """The top-level packages and our own modules a fresh interpreter holds after `statement`."""
    code = f"import sys; {statement}; import json; print(json.dumps(sorted(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names = set(json.loads(output))
    return names | {name.partition(".")[0] for name in names}


@pytest.mark.parametrize(
    "statement", ["import exporters", "import exporters.prometheus", "import exporters.text", "import exporters.http"]
)
def test_outputs_load_neither_lua_nor_a_database_driver_nor_any_input(statement: str) -> None:
    loaded = _loaded_after(statement)
    assert loaded & _DRIVERS_AND_LUA == set()
    assert not {name for name in loaded if name.startswith(("prosody_lastlog.sources", "prosody_lastlog.prosody"))}


def test_the_count_command_loads_no_server_watcher_or_push_transport() -> None:
    loaded = _loaded_after("import prosody_lastlog.cli, prosody_lastlog.count")
    assert loaded & (_SERVING | _PUSHING | _WHEN_USED | {"prometheus_client", "psycopg", "pymysql"}) == set()


def test_the_command_line_alone_loads_no_job() -> None:
    loaded = _loaded_after("import prosody_lastlog.cli")
    assert not {name for name in loaded if name.startswith(("prosody_lastlog.count", "prosody_lastlog.serve"))}
    assert loaded & (_SERVING | _PUSHING | {"prometheus_client"}) == set()


def test_every_name_of_the_plugin_api_resolves_and_no_other() -> None:
    """`from exporters import X` works for each X in __all__, the push part loaded at first use."""
    import exporters  # noqa: PLC0415  # in this test's interpreter: the others above run fresh ones

    assert all(getattr(exporters, name) is not None for name in exporters.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Pusher'"):
        exporters.Pusher  # noqa: B018

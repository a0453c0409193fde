"""Prosody config discovery: config trees under fixtures/configs/ and what must be discovered from each."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from prosody_lastlog.core.model import Store
from prosody_lastlog.prosody.config import (
    DISABLED,
    NO_STORE_MODULE,
    ConfigError,
    HostSettings,
    ProsodyConfig,
    evaluate_config,
    load_prosody_config,
)
from prosody_lastlog.prosody.pathnames import DEFAULT_DATA_PATH
from prosody_lastlog.prosody.sandbox import PlainValue
from prosody_lastlog.prosody.sql_settings import SqlSettings

from .conftest import FIXTURES

CONFIGS = FIXTURES / "configs"
DEBIAN_CONFIG = Path("/etc/prosody/prosody.cfg.lua")
TIME_LIMIT = 5.0  # seconds any config, however hostile, may take

L2, L1, AA = Store.LASTLOG2, Store.LASTLOG, Store.ACCOUNT_ACTIVITY


def host(
    name: str,
    stores: Mapping[Store, str],
    *,
    component: bool = False,
    sql: SqlSettings | None = None,
    default: str | None = None,
) -> HostSettings:
    """A host whose stores' modules are `stores`; every other store read (and accounts) uses `default`, by default
    the one driver of `stores`."""
    if default is None:
        (default,) = set(stores.values())
    drivers = {name: default for name in (*(store.value for store in Store), "accounts")}
    drivers.update((store.value, driver) for store, driver in stores.items())
    auth = None if component else "internal_hashed"
    return HostSettings(name, component, stores, sql, drivers, auth)


def sqlite(database: str) -> SqlSettings:
    return SqlSettings(driver="SQLite3", database=database)


def copy_tree(name: str, tmp_path: Path) -> Path:
    """A private copy under a long path (Lua shortens long file names in its messages; we must not)."""
    root = tmp_path / "a-rather-long-directory-name-so-lua-would-abbreviate-it" / name
    shutil.copytree(CONFIGS / name, root, symlinks=True)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- the table of config trees ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A config tree, the environment to evaluate it with, and what must come out."""

    tree: str
    expected: Callable[[Path], ProsodyConfig]
    environ: Callable[[Path], dict[str, str]] = lambda root: {}
    options: Mapping[str, Mapping[str, PlainValue]] = field(default_factory=dict)  # raw options that must be set
    unset: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # raw options that must not be


def config(
    root: Path,
    *,
    data_path: Path = DEFAULT_DATA_PATH,
    pidfile: Path | None = None,
    admin_socket: Path | None = None,
    hosts: Mapping[str, HostSettings] | None = None,
    skipped: Mapping[str, str] | None = None,
    warnings: tuple[str, ...] = (),
    plugin_paths: tuple[Path, ...] = (),
) -> ProsodyConfig:
    """The ProsodyConfig expected for the tree at `root`; defaults are what an empty config gives."""
    socket = admin_socket or data_path / "prosody.sock"
    module_dirs = (DEFAULT_DATA_PATH / "custom_plugins", *plugin_paths)  # the installer's path, then plugin_paths
    return ProsodyConfig(
        root / "prosody.cfg.lua", data_path, pidfile, socket, hosts or {}, skipped or {}, warnings, module_dirs
    )


def debian_stock(root: Path) -> ProsodyConfig:
    return config(
        root,
        pidfile=Path("/run/prosody/prosody.pid"),
        plugin_paths=(Path("/usr/local/lib/prosody/modules"),),
        hosts={"example.com": host("example.com", {L2: "internal"})},
        skipped={"conference.example.com": NO_STORE_MODULE, "localhost": NO_STORE_MODULE},
    )


def components(root: Path) -> ProsodyConfig:
    return config(
        root,
        hosts={
            "a.example": host("a.example", {L2: "internal"}),
            "legacy.a.example": host("legacy.a.example", {L1: "internal"}, component=True),
            "rooms.a.example": host("rooms.a.example", {L2: "internal"}, component=True),
        },
        skipped={
            "b.example": NO_STORE_MODULE,
            "c.example": DISABLED,
            "gateway.a.example": NO_STORE_MODULE,
            "muc.a.example": NO_STORE_MODULE,
        },
    )


def sqlite_storage(root: Path) -> ProsodyConfig:
    return config(
        root,
        data_path=Path("/srv/xmpp/data"),
        pidfile=Path("/srv/xmpp/data/prosody.pid"),
        hosts={
            "files.example": host("files.example", {AA: "internal", L2: "internal"}),
            "sqlite.example": host(
                "sqlite.example", {AA: "sql", L2: "sql"}, sql=sqlite("/srv/xmpp/data/prosody.sqlite")
            ),
        },
    )


def relative_data_path(root: Path) -> ProsodyConfig:
    path, data = root / "prosody.cfg.lua", root / "data"
    return config(
        root,
        data_path=data,
        hosts={"relative.example": host("relative.example", {L1: "sql"}, sql=sqlite(f"{data}/prosody.sqlite"))},
        warnings=(
            f"{path}: data_path './data' is relative; Prosody resolves it against its working directory, "
            f"prosody-lastlog against the config's directory ({data})",
        ),
    )


def per_store_map(root: Path) -> ProsodyConfig:
    lastlog_db = sqlite("/var/lib/prosody/lastlog.sqlite")
    return config(
        root,
        hosts={
            "defaults.example": host("defaults.example", {AA: "sql", L2: "sql", L1: "sql"}, sql=lastlog_db),
            "legacy-sql2.example": host(
                "legacy-sql2.example", {AA: "internal", L2: "sql", L1: "internal"}, sql=lastlog_db, default="internal"
            ),
            "map.example": host(
                "map.example", {AA: "internal", L2: "sql", L1: "internal"}, sql=lastlog_db, default="internal"
            ),
            "memory.example": host(
                "memory.example", {AA: "memory", L2: "sql", L1: "memory"}, sql=lastlog_db, default="memory"
            ),
        },
        warnings=("legacy-sql2.example: storage 'sql2' has been renamed 'sql'; reading it as 'sql'",),
    )


PG = SqlSettings("PostgreSQL", "prosody", "db.example", 5432, "prosody", "pg-secret-password")
MY = SqlSettings("MySQL", "prosody", "localhost", 3306, "prosody", "my-secret-password")


def per_host_sql(root: Path) -> ProsodyConfig:
    return config(
        root,
        hosts={
            "lite.example": host("lite.example", {L2: "sql"}, sql=sqlite("/var/lib/prosody/global.sqlite")),
            "my.example": host("my.example", {L2: "sql"}, sql=MY),
            "no-sql.example": host("no-sql.example", {L2: "internal"}),
            "pg.example": host("pg.example", {L2: "sql"}, sql=PG),
        },
        skipped={
            "bad-driver.example": "sql driver 'sqlite3' is not one of SQLite3, PostgreSQL, MySQL",
            "memory-db.example": "its SQLite database is :memory:, which nothing outside Prosody can read",
        },
    )


def prosody13_environ(root: Path) -> dict[str, str]:
    return {
        "PROSODY_STORAGE": "sql",
        "PROSODY_DB_PORT": "5433",
        "CREDENTIALS_DIRECTORY": str(root / "credentials"),
    }


P13_SQL = SqlSettings("PostgreSQL", "prosody", "db.internal.example", 5433, "prosody_reader", "credential-password")


def prosody13(root: Path) -> ProsodyConfig:
    both = {AA: "sql", L2: "sql"}
    return config(
        root,
        hosts={
            "other.p13.example": host("other.p13.example", both, sql=P13_SQL),
            "p13.example": host("p13.example", both, sql=P13_SQL),
        },
        skipped={"upload.p13.example": NO_STORE_MODULE},
    )


def inline_idn(root: Path) -> ProsodyConfig:
    return config(
        root,
        pidfile=Path("/run/prosody/inline.pid"),
        hosts={
            "conference.inline.example": host("conference.inline.example", {L2: "internal"}, component=True),
            "inline.example": host("inline.example", {L2: "internal"}),
            "münchen.example": host("münchen.example", {L1: "internal"}),
            "xn--mnchen-3ya.example": host("xn--mnchen-3ya.example", {L2: "internal"}),
        },
    )


def snikket(root: Path) -> ProsodyConfig:
    return config(
        root,
        data_path=Path("/snikket/prosody"),
        hosts={"chat.snikket.example": host("chat.snikket.example", {L2: "internal"})},
        skipped={"groups.chat.snikket.example": NO_STORE_MODULE, "share.chat.snikket.example": NO_STORE_MODULE},
    )


def runscript(root: Path) -> ProsodyConfig:
    return config(root, hosts={"script.example": host("script.example", {L2: "internal"})})


CASES = {
    "debian_stock": Case(
        "debian_stock",
        debian_stock,
        # conf.d/zz-global-after-host.cfg.lua follows a Component but starts in the global section.
        options={"*": {"default_storage": "internal"}},
        unset={"conference.example.com": ("default_storage",)},
    ),
    "components": Case("components", components),
    "sqlite_storage": Case("sqlite_storage", sqlite_storage),
    "relative_data_path": Case("relative_data_path", relative_data_path),
    "per_store_map": Case("per_store_map", per_store_map),
    "per_host_sql": Case("per_host_sql", per_host_sql),
    "prosody13": Case(
        "prosody13",
        prosody13,
        prosody13_environ,
        options={
            "*": {
                "modules_enabled": {1: "roster", 2: "saslauth", 3: "account_activity"},
                "admins": {1: "alice@p13.example", 2: "bob@p13.example"},
            },
            "p13.example": {"modules_enabled": {1: "roster", 2: "saslauth", 3: "account_activity", 4: "lastlog2"}},
        },
    ),
    "inline_idn": Case(
        "inline_idn",
        inline_idn,
        options={"inline.example": {"storage": "internal", "defined": True}},
        unset={"inline.example": ("pidfile",)},
    ),
    "snikket": Case(
        "snikket",
        snikket,
        lambda root: {"SNIKKET_DOMAIN": "Chat.Snikket.Example", "SNIKKET_RETENTION_DAYS": "30"},
        options={"*": {"archive_expires_after": "30d", "invite_expiry": 604800}},
    ),
    "runscript": Case("runscript", runscript, unset={"*": ("SCRIPT_HOST", "not_an_option")}),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_discovers_hosts_and_storage(case: Case, tmp_path: Path) -> None:
    root = copy_tree(case.tree, tmp_path)
    environ = case.environ(root)
    started = time.monotonic()
    assert load_prosody_config(root / "prosody.cfg.lua", environ=environ) == case.expected(root)
    assert time.monotonic() - started < TIME_LIMIT
    options = evaluate_config(root / "prosody.cfg.lua", environ=environ)
    for name, expected_options in case.options.items():
        assert {key: options[name].get(key) for key in expected_options} == expected_options
    for name, keys in case.unset.items():
        assert not set(keys) & set(options.get(name, {}))


def test_password_is_read_but_never_shown(tmp_path: Path) -> None:
    result = load_prosody_config(copy_tree("per_host_sql", tmp_path) / "prosody.cfg.lua", environ={})
    sql = result.hosts["pg.example"].sql
    assert sql is not None and sql.password == "pg-secret-password"
    assert "password" not in repr(sql)
    for secret in ("pg-secret-password", "my-secret-password"):
        assert secret not in repr(result) and secret not in str(result)


def test_credential_without_credentials_directory_warns(tmp_path: Path) -> None:
    root = copy_tree("prosody13", tmp_path)
    result = load_prosody_config(root / "prosody.cfg.lua", environ={})
    # No PROSODY_STORAGE either, so everything is on files and the sql option does not matter.
    assert result.hosts["p13.example"] == host("p13.example", {AA: "internal", L2: "internal"})
    assert result.warnings == (
        f'{root}/prosody.cfg.lua:13: Credential("db_password") needs $CREDENTIALS_DIRECTORY, which is not set; '
        "using nil",
    )


def test_real_debian_config_finds_localhost() -> None:
    # `make test` installs Debian's prosody package: a missing config is a failure, not a skip.
    assert os.access(DEBIAN_CONFIG, os.R_OK), f"{DEBIAN_CONFIG} is not readable: run `make test`"
    result = load_prosody_config(DEBIAN_CONFIG, environ={})
    assert "localhost" in {**result.hosts, **result.skipped}
    assert "localhost" in evaluate_config(DEBIAN_CONFIG, environ={})


# --- hostile and broken configs ---------------------------------------------------------------------------

HOSTILE = {  # file → (line, text the message must contain); line None: Lua cannot tell where memory ran out
    "os_execute.cfg.lua": (3, "os.execute is not available"),
    "io_write.cfg.lua": (2, '"w") refused: prosody-lastlog reads the config read-only'),
    "busy_loop.cfg.lua": (3, "the config ran too long"),
    "quadratic_concat.cfg.lua": (2, "s of CPU time"),
    "pcall_loop.cfg.lua": (2, "the config ran too long"),
    "require_socket.cfg.lua": (2, "require is not available"),
    "string_rep.cfg.lua": (2, "string.rep: a 10000000000-byte string is more than the config sandbox allows"),
    "pattern_bomb.cfg.lua": (3, "could take too long for the config sandbox"),
    "memory.cfg.lua": (None, "the config needs more memory than the sandbox allows"),
    "include_loop.cfg.lua": (2, "Include nested more than 20 files deep"),
    "dev_zero.cfg.lua": (2, "/dev/zero: not a regular file"),
    "os_exit.cfg.lua": (2, "os.exit is not available"),
    "bytecode.cfg.lua": (2, "attempt to load a binary chunk"),
    "syntax_error.cfg.lua": (5, "'}' expected (to close '{' at line 2)"),
    "missing_include.cfg.lua": (3, "Error loading included "),
}


@pytest.mark.parametrize(("name", "line", "text"), [(name, *rest) for name, rest in HOSTILE.items()])
def test_hostile_config_fails_fast_with_file_and_line(
    name: str, line: int | None, text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = copy_tree("hostile", tmp_path)
    monkeypatch.chdir(root)  # so anything written relative to the working directory would show up below
    before = snapshot(root)
    path = root / name
    started = time.monotonic()
    with pytest.raises(ConfigError) as raised:
        load_prosody_config(path, environ={"HOME": str(root)})
    assert time.monotonic() - started < TIME_LIMIT
    message = str(raised.value)
    assert message.startswith(f"{path}:{line}: " if line else f"{path}: "), message
    assert text in message
    assert snapshot(root) == before


# --- directives and library details, on small configs written here ----------------------------------------


def evaluate(tmp_path: Path, text: str, environ: Mapping[str, str] | None = None) -> dict[str, dict[str, PlainValue]]:
    path = tmp_path / "prosody.cfg.lua"
    path.write_text(text, encoding="utf-8")
    return evaluate_config(path, environ=environ or {})


def test_include_glob_runs_in_sorted_order_relative_to_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "sub" / "more").mkdir(parents=True)
    (tmp_path / "sub" / "b.cfg.lua").write_text('order = (order or "") .. "b"\nInclude "more/*.lua"\n')
    (tmp_path / "sub" / "a.cfg.lua").write_text('order = (order or "") .. "a"\n')
    (tmp_path / "sub" / "more" / "c.lua").write_text('order = order .. "c"\n')
    (tmp_path / "sub" / "ignored.txt").write_text('order = "wrong"\n')
    options = evaluate(tmp_path, 'Include "sub/*.cfg.lua"\n')
    assert options["*"]["order"] == "abc"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("VirtualHost()\n", "prosody.cfg.lua:1: Host must have a name"),
        ('Component "x.example" "muc"\nVirtualHost "x.example"\n', 'prosody.cfg.lua:2: Host "x.example" clashes'),
        ('VirtualHost "x.example"\nComponent "X.example"\n', 'prosody.cfg.lua:2: Component "x.example" clashes'),
        ('VirtualHost "x.example" "muc"\n', "prosody.cfg.lua:1: VirtualHost entries do not accept a module name"),
        ('VirtualHost "bad\\u{E000}name"\n', "prosody.cfg.lua:1: Name of Host"),
        ("Include(42)\n", "prosody.cfg.lua:1: Include expects a file name"),
        ('x = FileContents("missing.txt")\n', "missing.txt: No such file or directory"),
        ('Credential("../etc/passwd")\n', "prosody.cfg.lua:1: Credential expects a credential name"),
        ("io.lines()\n", "prosody.cfg.lua:1: io.lines() without a file name"),
        ('x = ("a"):rep(2000):match("(.-)(.-)(.-)b")\n', "prosody.cfg.lua:1: string.match: pattern"),
    ],
)
def test_directive_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        evaluate(tmp_path, text)


def test_options_read_back_and_appended_per_host(tmp_path: Path) -> None:
    options = evaluate(
        tmp_path,
        'modules_enabled = { "roster" }\n'
        "count = #modules_enabled\n"
        "first = modules_enabled[1]\n"
        'VirtualHost "a.example"\n'
        '\tmodules_enabled:append { "lastlog2" }\n'
        '\tlisted = table.concat(modules_enabled:values(), ",")\n',
    )
    assert options["*"]["modules_enabled"] == {1: "roster"}  # the global list is copied, not changed
    assert options["a.example"]["modules_enabled"] == {1: "roster", 2: "lastlog2"}
    assert options["a.example"]["listed"] == "roster,lastlog2"
    assert (options["*"]["count"], options["*"]["first"]) == (1, "roster")


def test_environment_and_globals(tmp_path: Path) -> None:
    options = evaluate(
        tmp_path,
        "a = ENV_FOO\nb = os.getenv('FOO')\nc = ENV_MISSING == nil\nd = Lua.os.getenv('FOO')\n"
        "e = prosody.process_type\nf = prosody.paths.config\ng = type(os.execute)\n",
        environ={"FOO": "bar"},
    )
    assert options["*"] == {
        "a": "bar",
        "b": "bar",
        "c": True,
        "d": "bar",
        "e": "prosody-lastlog",
        "f": str(tmp_path),
        "g": "function",
    }


def test_a_config_may_set_package_fields_for_prosodys_modules(tmp_path: Path) -> None:
    """What configs do before modules load (a library path, a preloaded table, a test clock): it evaluates, and
    changes nothing outside the config."""
    options = evaluate(
        tmp_path,
        "local lua = Lua or _G\nlua.package.path = lua.package.path .. ';/opt/lib/?.lua'\n"
        "lua.package.loaded.clock = {}\nx = type(lua.package.loaded.clock)\n",
    )
    assert options["*"] == {"x": "table"}


def test_read_only_io(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_bytes(b"first\nsecond\r\n42 rest\n")
    options = evaluate(
        tmp_path,
        "local dir = prosody.paths.config\n"
        'local f = assert(io.open(dir .. "/data.txt", "rb"))\n'
        'l1, l2 = f:read("l", "L")\n'
        'n, rest = f:read("n", "a")\n'
        'at_end = f:read("l") == nil\n'
        'pos = f:seek("set", 6)\n'
        "five = f:read(5)\n"
        "kind = io.type(f)\nf:close()\nclosed = io.type(f)\n"
        'lines = {}\nfor line in io.lines(dir .. "/data.txt") do lines[#lines + 1] = line end\n'
        'missing, why = io.open(dir .. "/nope.txt")\n'
        'nul = io.open("x\\0y") == nil\n'
        'io.stderr:write("ignored")\n',
    )
    assert options["*"] == {
        "l1": "first",
        "l2": "second\r\n",
        "n": 42,
        "rest": " rest\n",
        "at_end": True,
        "pos": 6,
        "five": "secon",
        "kind": "file",
        "closed": "closed file",
        "lines": {1: "first", 2: "second\r", 3: "42 rest"},
        "why": f"{tmp_path}/nope.txt: No such file or directory",
        "nul": True,
    }


def test_duplicate_option_warns_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "prosody.cfg.lua"
    path.write_text('admins = { }\nVirtualHost "a.example"\nadmins = { }\nadmins = { "x@a.example" }\n')
    assert load_prosody_config(path, environ={}).warnings == (f"{path}:4: Duplicate option 'admins'",)


def test_unusable_values_are_left_out(tmp_path: Path) -> None:
    options = evaluate(tmp_path, "f = print\nt = { 1, print, x = { } }\nt.self = t\nbad = '\\255'\n")
    assert options["*"] == {"t": {1: 1, "x": {}}, "bad": "?"}


def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    started = time.monotonic()
    options = evaluate(tmp_path, 'f, why = io.open(prosody.paths.config .. "/fifo")\n')
    assert options["*"] == {"why": f"{tmp_path}/fifo: not a regular file"}
    assert time.monotonic() - started < TIME_LIMIT


def test_what_decides_which_accounts_count_and_where_modules_are(tmp_path: Path) -> None:
    """Per host: the auth provider, measure_active_users_count_disabled, whether mod_measure_active_users runs (it
    loads lastlog2 itself); and the module directories Prosody looks in before its own."""
    config = tmp_path / "prosody.cfg.lua"
    config.write_text(
        'data_path = "/srv/data"\nplugin_paths = { "/opt/modules", "relative" }\n'
        'modules_enabled = { "account_activity" }\n'
        'VirtualHost "hashed.example"\n'
        'VirtualHost "plain.example"\n  authentication = "internal_plain"\n'
        '  modules_enabled = { "measure_active_users" }\n  measure_active_users_count_disabled = true\n'
        'VirtualHost "anon.example"\n  anonymous_login = true\n  measure_active_users_count_disabled = "true"\n'
        'Component "rooms.example" "muc"\n  modules_enabled = { "lastlog2" }\n'
    )
    found = load_prosody_config(config, environ={})
    assert found.module_dirs == (DEFAULT_DATA_PATH / "custom_plugins", Path("/opt/modules"), Path("/srv/data/relative"))
    hosts = found.hosts
    assert (hosts["hashed.example"].auth_provider, hosts["hashed.example"].count_disabled) == ("internal_hashed", False)
    assert not hosts["hashed.example"].measures and set(hosts["hashed.example"].stores) == {AA}
    plain = hosts["plain.example"]
    assert (plain.auth_provider, plain.count_disabled, plain.measures) == ("internal_plain", True, True)
    assert set(plain.stores) == {AA, L2}  # mod_measure_active_users depends on lastlog2
    assert (hosts["anon.example"].auth_provider, hosts["anon.example"].count_disabled) == ("anonymous", True)
    assert hosts["rooms.example"].auth_provider is None and hosts["rooms.example"].is_component


@pytest.mark.parametrize(
    ("lines", "open_registration"),
    [
        ('modules_enabled = { "lastlog2", "register" }\nallow_registration = true', True),
        ('modules_enabled = { "lastlog2", "register" }\nallow_registration = "true"', True),  # get_option_boolean
        ('modules_enabled = { "lastlog2", "register" }\nallow_registration = 1', True),
        ('modules_enabled = { "lastlog2", "register" }\nallow_registration = "yes"', False),  # not a boolean: default
        ('modules_enabled = { "lastlog2", "register" }', False),  # allow_registration is off by default
        ('modules_enabled = { "lastlog2" }\nallow_registration = true', False),  # no mod_register: nothing registers
        ('modules_enabled = { "lastlog2", "register_ibr" }', True),  # the in-band module itself takes anyone
        ('modules_enabled = { "lastlog2", "register", "invites_register" }\nallow_registration = true', False),
        (
            'modules_enabled = { "lastlog2", "register", "invites_register" }\nallow_registration = true\n'
            "registration_invite_only = false",
            True,
        ),
        ('modules_enabled = { "lastlog2", "register" }\nallow_registration = true\nmodules_disabled = { "register" }',
         False),
        ('modules_enabled = { "lastlog2", "register" }\nallow_registration = { true }', True),  # a list: its first
        ('modules_enabled = { "lastlog2", "register", "invites_register" }\nallow_registration = true\n'
         'registration_invite_only = "yes"', True),  # not understood: nil, which `if` takes as off
        ('modules_enabled = { "lastlog2", "register" }\nallow_registration = true\nallowlist_registration_only = true',
         False),  # only the allowlisted addresses (127.0.0.1 and ::1 by default) may register
        ('modules_enabled = { "lastlog2", "register" }\nallow_registration = true\nwhitelist_registration_only = true',
         False),  # the option's former name
        ('modules_enabled = { "lastlog2", "register" }\nallow_registration = true\nauthentication = "anonymous"',
         False),  # cannot create accounts
        ('modules_enabled = { "lastlog2", "register" }\nallow_registration = true\nauthentication = "internal_plain"',
         True),
    ],
)  # fmt: skip
def test_open_registration_as_prosody_decides_it(lines: str, open_registration: bool, tmp_path: Path) -> None:
    """Whether anyone may register in-band (NodeInfo's openRegistrations): mod_register_ibr loaded, by mod_register
    with allow_registration or by itself, an auth provider that creates accounts, and not held to allowlisted
    addresses by mod_register_limits or to invites by mod_invites_register."""
    config = tmp_path / "prosody.cfg.lua"
    config.write_text(f'data_path = "/srv/data"\n{lines}\nVirtualHost "example.com"\n')
    assert load_prosody_config(config, environ={}).hosts["example.com"].open_registration is open_registration


def test_open_registration_per_host(tmp_path: Path) -> None:
    """A host's own option wins over the global one, as configmanager's lookup does."""
    config = tmp_path / "prosody.cfg.lua"
    config.write_text(
        'data_path = "/srv/data"\nmodules_enabled = { "lastlog2", "register" }\nallow_registration = true\n'
        'VirtualHost "open.example"\nVirtualHost "closed.example"\n  allow_registration = false\n'
        'VirtualHost "invites.example"\n  modules_enabled = { "invites_register" }\n'
    )
    hosts = load_prosody_config(config, environ={}).hosts
    assert {name: settings.open_registration for name, settings in hosts.items()} == {
        "closed.example": False, "invites.example": False, "open.example": True
    }  # fmt: skip


def test_the_debian_stock_config_does_not_open_registration(tmp_path: Path) -> None:
    """Debian's shipped config loads mod_register and mod_invites_register and leaves allow_registration off."""
    found = load_prosody_config(copy_tree("debian_stock", tmp_path) / "prosody.cfg.lua", environ={})
    assert found.hosts and not any(settings.open_registration for settings in found.hosts.values())


# --- what the export to Python may cost, and nesting past Lua's limits --------------------------------------

# The five lines of issue 17: one string, stored many times, passes every limit of the evaluation.
FAN_OUT = 'local s = string.rep("x", {size})\npadding = {{}}\nfor i = 1, {uses} do padding[i] = s end\n'


@pytest.mark.parametrize(
    ("size", "uses"),
    [
        (200, 100_000),  # 20 MB of copies: over the budget only when each use is counted
        (4 * 1024 * 1024, 100_000),  # 400 GB of copies: the evaluation used to scan them for minutes
    ],
)
def test_a_string_stored_many_times_is_refused_quickly_naming_the_file(size: int, uses: int, tmp_path: Path) -> None:
    path = tmp_path / "prosody.cfg.lua"
    path.write_text(FAN_OUT.format(size=size, uses=uses))
    started = time.monotonic()
    with pytest.raises(ConfigError) as raised:
        load_prosody_config(path, environ={})
    assert time.monotonic() - started < TIME_LIMIT
    assert str(raised.value) == (
        f"{path}: the config's option values are too large to export (over 16777216 bytes of strings, "
        "counting every use)"
    )


def test_a_string_stored_many_times_within_the_budget_is_exported(tmp_path: Path) -> None:
    options = evaluate(tmp_path, FAN_OUT.format(size=100, uses=100_000))  # 10 MB in Python
    padding = options["*"]["padding"]
    assert isinstance(padding, dict) and len(padding) == 100_000 and padding[100_000] == "x" * 100


def test_options_count_in_the_export_budget(tmp_path: Path) -> None:
    path = tmp_path / "prosody.cfg.lua"
    path.write_text('for i = 1, 210000 do _ENV["option" .. i] = true end\n')
    with pytest.raises(ConfigError) as raised:
        load_prosody_config(path, environ={})
    assert str(raised.value).startswith(f"{path}: the config's option values are too large to export (over 200000")


@pytest.mark.parametrize("failure", [MemoryError(), RecursionError("maximum recursion depth exceeded")])
def test_any_failure_of_the_evaluation_is_a_config_error_naming_the_file(
    failure: Exception, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(value: object) -> PlainValue:
        raise failure

    monkeypatch.setattr("prosody_lastlog.prosody.config._to_python", fail)
    path = tmp_path / "prosody.cfg.lua"
    path.write_text('VirtualHost "a.example"\n')
    with pytest.raises(ConfigError) as raised:
        load_prosody_config(path, environ={})
    assert str(raised.value) == f"{path}: cannot evaluate the config: {str(failure) or type(failure).__name__}"


DEEP = 300  # Lua's parser and its calls through C stop at 200 levels
NESTED_TOO_DEEPLY = {  # config text → where the message says it is: Lua's parser cannot tell the line
    "x = " + "{" * DEEP + "}" * DEEP + "\n": "",
    "x = " + "(" * DEEP + "1" + ")" * DEEP + "\n": "",
    "x = " + " .. ".join(['"a"'] * DEEP) + "\n": "",
    "x = " + "not " * DEEP + "true\n": "",
    "local function f() local ok, e = pcall(f) error(e, 0) end\nf()\n": r":\d+",
    "local function f() return ('x'):gsub('.', f) end\nf()\n": r":\d+",
}


@pytest.mark.parametrize(("text", "line"), NESTED_TOO_DEEPLY.items())
def test_a_config_nested_too_deeply_is_named_with_its_file(text: str, line: str, tmp_path: Path) -> None:
    path = tmp_path / "prosody.cfg.lua"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_prosody_config(path, environ={})
    assert re.fullmatch(f"{re.escape(str(path))}{line}: the config is nested too deeply", str(raised.value))


def test_an_included_file_nested_too_deeply_is_the_one_named(tmp_path: Path) -> None:
    (tmp_path / "deep.cfg.lua").write_text("x = " + "{" * DEEP + "}" * DEEP + "\n")
    (tmp_path / "prosody.cfg.lua").write_text('Include "deep.cfg.lua"\n')
    with pytest.raises(ConfigError) as raised:
        load_prosody_config(tmp_path / "prosody.cfg.lua", environ={})
    assert str(raised.value) == f"{tmp_path}/deep.cfg.lua: the config is nested too deeply"


def test_a_warning_repeated_in_a_loop_is_given_once(tmp_path: Path) -> None:
    path = tmp_path / "prosody.cfg.lua"
    path.write_text("for i = 1, 100000 do\n  x = i\nend\n")
    assert load_prosody_config(path, environ={}).warnings == (f"{path}:2: Duplicate option 'x'",)

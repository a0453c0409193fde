"""Zero-configuration discovery: where a Prosody server keeps its last-activity data, read from its config.

The config (prosody.cfg.lua) is a Lua program. config.lua evaluates it the way Prosody's
configmanager does, in a private runtime from `restricted_runtime` that offers only a read-only subset of
Lua (no require/os.execute/os.exit/debug, read-mode io.open only), caps instructions, memory, file reads and
pattern-matching cost, and reaches files only through the read-only callables defined here. From the
evaluated options this module derives, per host, which last-activity stores are written and by which
storage driver, following Prosody 0.12's modulemanager and storagemanager.

Decisions worth knowing:
- `RunScript` runs the script in the same sandbox, with the sandbox's globals as its environment (Prosody
  uses `dofile`, i.e. its real globals), so its assignments are Lua globals, not options.
- A relative `data_path` is resolved against the config file's directory. Prosody resolves it against its
  working directory at startup, which a reader cannot know; a warning says so.
- `io.open`/`io.lines` with a relative name read relative to our working directory, as Lua does.
- Prosody 13: FileContents/FileLine/FileLines resolve against the directory of the file calling them;
  `Credential(name)` reads `$CREDENTIALS_DIRECTORY/name` from the `environ` given, and without it warns
  and gives nil (prosodyctl's behaviour; the daemon would stop); `Lua` is the sandbox's globals; a bare
  name reads the current host's option, else the global one, else a Lua global; a table option comes
  back as a proxy whose `:append{...}` stores the appended copy as the current host's own value.
- Lua string patterns run in C, out of the instruction hook's reach, so find/match/gmatch/gsub refuse a
  call whose worst-case backtracking (bounded by the subject's runs of matching characters) is too large.
- Python gets its own copy of a string or table at each place the options hold it, so the export counts each
  use against its caps (MAX_EXPORT_BYTES, MAX_EXPORT_VALUES): else five lines storing one string 100,000 times
  would ask for gigabytes. Those caps also bound the export's time, which runs without the instruction hook.

Not emulated: Prosody 13's deprecation warnings for bare Lua globals, C modules (require, lfs, socket),
coroutines, setmetatable/getmetatable, and modules pulled in by another module's `module:depends()` (but for
mod_measure_active_users, which loads lastlog2). `package` is a private table, so a config may add to it.
Storage driver names are reported as configured, not checked against the installed drivers.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from lupa.lua54 import lua_type

from prosody_lastlog.core.model import ACCOUNTS, Store
from prosody_lastlog.core.rules import ACCOUNTS_IN_STORAGE, DEFAULT_AUTH
from prosody_lastlog.prosody.pathnames import DEFAULT_DATA_PATH
from prosody_lastlog.prosody.sandbox import PlainValue, restricted_runtime
from prosody_lastlog.prosody.sql_settings import DRIVERS, SqlSettings

MAX_MEMORY = 64 * 1024 * 1024
MAX_MILLION_INSTRUCTIONS = 50
MAX_SECONDS = 2.0  # of CPU time; a real config evaluates in milliseconds
MAX_PATTERN_COST = 3e8  # Lua's matcher does roughly 1e9 of these steps in 1.5 s
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_READ_BYTES = 32 * 1024 * 1024
MAX_FILE_OPERATIONS = 2_000
MAX_DIR_ENTRIES = 10_000
MAX_INCLUDE_DEPTH = 20
MAX_EXPORT_VALUES = 200_000  # table entries handed to Python, each use of a shared table counted
MAX_EXPORT_BYTES = 16 * 1024 * 1024  # string bytes handed to Python, each use of a shared string counted

# The module that writes each last-activity store; the store name is the module name.
STORE_MODULES: Mapping[Store, str] = {
    Store.ACCOUNT_ACTIVITY: "account_activity",
    Store.LASTLOG2: "lastlog2",
    Store.LASTLOG: "lastlog",
}
# Prosody 0.12 core/modulemanager.lua: loaded on every host, and the global modules a Component inherits.
AUTOLOAD_MODULES = frozenset({"posix", "presence", "message", "iq", "offline", "c2s", "s2s", "s2s_auth_certs"})
COMPONENT_INHERITABLE_MODULES = frozenset(
    {"tls", "saslauth", "dialback", "iq", "s2s", "s2s_bidi", "smacks", "server_contact_info"}
)
MEASURE_MODULE = "measure_active_users"
NO_STORE_MODULE = "no lastlog2, lastlog or account_activity module enabled"
DISABLED = "disabled (enabled = false)"

Options: TypeAlias = dict[str, dict[str, PlainValue]]


class ConfigError(Exception):
    """The config cannot be evaluated or used; the message names the file (and line when known)."""


@dataclass(frozen=True)
class HostSettings:
    """Where one host's last-activity stores live, and what decides which of its accounts count."""

    name: str  # nameprepped (lower-case)
    is_component: bool
    stores: Mapping[Store, str]  # each store whose writer module is loaded here → its storage driver
    sql: SqlSettings | None  # the host's effective `sql` option; None if no store read uses sql
    drivers: Mapping[str, str]  # the storage driver of every store a count may read: activity stores, accounts
    auth_provider: str | None = DEFAULT_AUTH  # `authentication` (None on a component)
    count_disabled: bool = False  # `measure_active_users_count_disabled`
    measures: bool = False  # mod_measure_active_users is enabled here
    open_registration: bool = False  # anyone may register an account in-band, without an invite


@dataclass(frozen=True)
class ProsodyConfig:
    """What prosody-lastlog needs from a Prosody config."""

    path: Path
    data_path: Path
    pidfile: Path | None
    admin_socket: Path  # mod_admin_socket's socket, whether or not the module is loaded
    hosts: Mapping[str, HostSettings]  # enabled hosts with at least one last-activity store
    skipped: Mapping[str, str]  # every other host → one-line reason
    warnings: tuple[str, ...] = ()
    module_dirs: tuple[Path, ...] = ()  # where Prosody looks for modules before its own: installer path, plugin_paths


class _UnusableHostError(Exception):
    """A host's settings are unusable; the message is the one-line reason."""


def load_prosody_config(path: Path, *, environ: Mapping[str, str]) -> ProsodyConfig:
    """Evaluates the config at `path` in the sandbox and derives each host's last-activity storage."""
    path = Path(os.path.abspath(path))  # not resolve(): Include paths hang off the name as given
    options, lua_warnings = _evaluate(path, environ)
    warnings = list(lua_warnings)
    global_options = options.get("*", {})
    data_path = _data_path(path, global_options, warnings)
    hosts: dict[str, HostSettings] = {}
    skipped: dict[str, str] = {}
    for name in sorted(host for host in options if host != "*"):
        try:
            settings = _host_settings(options, name, data_path, warnings)
        except _UnusableHostError as reason:
            skipped[name] = str(reason)
            continue
        hosts[name] = settings
    return ProsodyConfig(
        path=path,
        data_path=data_path,
        pidfile=_pidfile(global_options, data_path),
        admin_socket=_admin_socket(global_options, data_path),
        hosts=hosts,
        skipped=skipped,
        warnings=tuple(warnings),
        module_dirs=_module_dirs(global_options, data_path),
    )


def evaluate_config(path: Path, *, environ: Mapping[str, str]) -> Options:
    """The raw evaluated options: "*" and each host (a host's value identical to the global one is omitted)."""
    return _evaluate(Path(os.path.abspath(path)), environ)[0]


# --- evaluation -------------------------------------------------------------------------------------------


def _evaluate(path: Path, environ: Mapping[str, str]) -> tuple[Options, tuple[str, ...]]:
    try:
        return _evaluate_in_sandbox(path, environ)
    except ConfigError:
        raise
    except Exception as exc:  # the runtime's memory cap, ours (MemoryError), whatever else: the config is at fault
        raise ConfigError(f"{path}: cannot evaluate the config: {str(exc) or type(exc).__name__}") from None


def _evaluate_in_sandbox(path: Path, environ: Mapping[str, str]) -> tuple[Options, tuple[str, ...]]:
    from importlib import resources  # noqa: PLC0415  # here: not every command reads a config

    lua = restricted_runtime(max_memory=MAX_MEMORY)
    source = resources.files(__package__).joinpath("config.lua").read_bytes()
    loader = lua.globals().load(source, "=config.lua", "t")
    if isinstance(loader, tuple):  # nil and a message: our own Lua file is broken
        raise RuntimeError(f"config.lua does not load: {loader[1]}")
    hooks = lua.table_from({"read_file": _read_file, "list_dir": _list_dir, "nameprep": _nameprep})
    limits = lua.table_from(
        {
            "million_instructions": MAX_MILLION_INSTRUCTIONS,
            "max_seconds": MAX_SECONDS,
            "max_memory": MAX_MEMORY,
            "pattern_cost": MAX_PATTERN_COST,
            "max_file_operations": MAX_FILE_OPERATIONS,
            "max_read_bytes": MAX_READ_BYTES,
            "max_include_depth": MAX_INCLUDE_DEPTH,
            "max_export_values": MAX_EXPORT_VALUES,
            "max_export_bytes": MAX_EXPORT_BYTES,
        }
    )
    # Bytes on both sides: environment values need not be UTF-8.
    lua_environ = lua.table_from({os.fsencode(k): os.fsencode(v) for k, v in environ.items()})
    paths = lua.table_from({"config": str(path.parent), "data": str(DEFAULT_DATA_PATH)})
    result = loader(hooks, limits, lua_environ, paths)(str(path))
    if not result[0]:
        raise ConfigError(str(result[1]))
    options: Options = {}
    for host, values in result[1].items():
        plain = _to_python(values)
        if isinstance(plain, dict):
            options[str(host)] = plain
    warnings = result[2]
    return options, tuple(str(warnings[i]) for i in range(1, len(warnings) + 1))


def _to_python(value: Any) -> PlainValue:
    """A plain copy of a value the sandbox exported (tables become dicts)."""
    if lua_type(value) == "table":
        return {key: _to_python(item) for key, item in value.items()}
    plain: PlainValue = value
    return plain


def _read_file(path: str) -> bytes | tuple[None, str, int]:
    """The config's only way to read a file: the content, or (None, reason, errno) as Lua's io.open has them."""
    try:
        return _read_regular_file(path)
    except OSError as exc:
        return None, exc.strerror or str(exc), exc.errno or 0
    except ValueError as exc:  # a NUL in the name
        return None, str(exc), errno.EINVAL


def _read_regular_file(path: str) -> bytes:
    """A whole regular file of bounded size; never a FIFO or device, which could block or never end."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer before fstat can refuse it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as file:
            content = file.read(MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(content) > MAX_FILE_BYTES:
        raise OSError(errno.EFBIG, f"file larger than {MAX_FILE_BYTES} bytes")
    return content


def _list_dir(path: str) -> tuple[Any, ...]:
    """Directory entries for Include globs: (True, name, ...) or (None, reason)."""
    try:
        names = os.listdir(os.fsencode(path))
    except OSError as exc:
        return None, exc.strerror or str(exc)
    except ValueError as exc:  # a NUL in the name
        return None, str(exc)
    if len(names) > MAX_DIR_ENTRIES:
        return None, f"more than {MAX_DIR_ENTRIES} entries"
    return (True, *names)


def _nameprep(name: str) -> str | None:
    """RFC 3491 nameprep, as Prosody applies to host names; None when the name has forbidden characters."""
    from encodings.idna import nameprep  # noqa: PLC0415  # its tables load only for a config that needs them

    try:
        return nameprep(name)
    except UnicodeError:
        return None


# --- derivation -------------------------------------------------------------------------------------------


def _get(options: Options, host: str, key: str) -> PlainValue | None:
    """A host's option, else the global one (configmanager's fallback to "*")."""
    value = options.get(host, {}).get(key)
    return options.get("*", {}).get(key) if value is None else value


def _array(value: PlainValue | None) -> list[PlainValue]:
    """The items Lua's ipairs would visit: keys 1, 2, ... up to the first gap."""
    if not isinstance(value, dict):
        return []
    items: list[PlainValue] = []
    while len(items) + 1 in value:
        items.append(value[len(items) + 1])
    return items


def _data_path(path: Path, global_options: Mapping[str, PlainValue], warnings: list[str]) -> Path:
    value = global_options.get("data_path")
    if value is None:
        return DEFAULT_DATA_PATH
    if not isinstance(value, str):
        warnings.append(f"{path}: data_path is not a string; using {DEFAULT_DATA_PATH}")
        return DEFAULT_DATA_PATH
    data_path = Path(value)
    if not data_path.is_absolute():
        data_path = path.parent / data_path
        warnings.append(
            f"{path}: data_path {value!r} is relative; Prosody resolves it against its working directory, "
            f"prosody-lastlog against the config's directory ({data_path})"
        )
    return data_path


def _pidfile(global_options: Mapping[str, PlainValue], data_path: Path) -> Path | None:
    """mod_posix's pidfile; a relative one is relative to data_path (module:get_option_path)."""
    value = global_options.get("pidfile")
    return data_path / value if isinstance(value, str) else None


def _admin_socket(global_options: Mapping[str, PlainValue], data_path: Path) -> Path:
    """mod_admin_socket's `admin_socket` option (relative to data_path), by default data_path/prosody.sock."""
    value = global_options.get("admin_socket")
    return data_path / (value if isinstance(value, str) else "prosody.sock")


def _module_dirs(global_options: Mapping[str, PlainValue], data_path: Path) -> tuple[Path, ...]:
    """Where Prosody looks for a module before its own directory: the installer's path (`installer_plugin_path`,
    default `custom_plugins`, relative to CFG_DATADIR), then `plugin_paths`, in order. A relative plugin path is
    opened after Prosody changed its directory to data_path, so it is relative to that."""
    installer = global_options.get("installer_plugin_path")
    directories = [DEFAULT_DATA_PATH / (installer if isinstance(installer, str) else "custom_plugins")]
    directories += [data_path / path for path in _array(global_options.get("plugin_paths")) if isinstance(path, str)]
    return tuple(directories)


def _host_settings(options: Options, host: str, data_path: Path, warnings: list[str]) -> HostSettings:
    if _get(options, host, "enabled") is False:
        raise _UnusableHostError(DISABLED)
    component = _get(options, host, "component_module")
    modules = _modules_for_host(options, host, component)
    recorded = {store for store, module in STORE_MODULES.items() if module in modules}
    if MEASURE_MODULE in modules:
        recorded.add(Store.LASTLOG2)  # every revision depends on its writer; the packaged ones on lastlog2's
    if not recorded:
        raise _UnusableHostError(NO_STORE_MODULE)
    drivers = {str(store): _storage_driver(options, host, str(store), warnings) for store in (*Store, ACCOUNTS)}
    sql = _sql_settings(options, host, data_path) if "sql" in drivers.values() else None
    auth_provider = None if component is not None else _auth_provider(options, host)
    return HostSettings(
        name=host,
        is_component=component is not None,
        stores={store: drivers[str(store)] for store in Store if store in recorded},
        sql=sql,
        drivers=drivers,
        auth_provider=auth_provider,
        count_disabled=_boolean(_get(options, host, "measure_active_users_count_disabled")),
        measures=MEASURE_MODULE in modules,
        open_registration=auth_provider is not None and _open_registration(options, host, modules, auth_provider),
    )


def _open_registration(options: Options, host: str, modules: set[PlainValue], auth_provider: str) -> bool:
    """Whether anyone may register in-band, as Prosody 0.12 and 13 decide: mod_register_ibr is loaded (mod_register
    loads it when `allow_registration` is on; it may also be enabled itself), the auth provider can create accounts,
    mod_register_limits (which mod_register_ibr loads) does not hold it to allowlisted addresses
    (`allowlist_registration_only`, formerly `whitelist_...`), and mod_invites_register does not hold it to invites
    (`registration_invite_only`, on by default)."""

    def option(name: str, default: bool = False) -> bool:
        return _boolean(_get(options, host, name), default)

    in_band = "register_ibr" in modules or ("register" in modules and option("allow_registration"))
    allowlist_only = option("allowlist_registration_only", option("whitelist_registration_only"))
    invite_only = "invites_register" in modules and option("registration_invite_only", True)
    return in_band and auth_provider in ACCOUNTS_IN_STORAGE and not allowlist_only and not invite_only


def _boolean(value: PlainValue | None, default: bool = False) -> bool:
    """module:get_option_boolean as an `if` tests it: a list counts as its first item; unset is the default; true,
    "true" or 1 is on; anything else is off (false, "false", 0, or a value Prosody does not understand: nil)."""
    if isinstance(value, dict):
        value = value.get(1)
    if value is None:
        return default
    return value in (True, "true", 1)


def _auth_provider(options: Options, host: str) -> str:
    """usermanager's choice: `authentication`, "anonymous" with the old `anonymous_login`, else internal_hashed."""
    if _get(options, host, "anonymous_login"):
        return "anonymous"
    provider = _get(options, host, "authentication")
    return provider if isinstance(provider, str) else DEFAULT_AUTH


def _modules_for_host(options: Options, host: str, component: PlainValue | None) -> set[PlainValue]:
    """Prosody 0.12's get_modules_for_host: global modules (a Component keeps only a few) plus the host's own."""
    global_options = options.get("*", {})
    global_modules: set[PlainValue] = set(AUTOLOAD_MODULES)
    global_modules |= set(_array(global_options.get("modules_enabled")))
    global_modules -= set(_array(global_options.get("modules_disabled")))
    if component is not None:
        global_modules &= COMPONENT_INHERITABLE_MODULES
    # A host option identical to the global table counts as unset; evaluate_config already dropped those.
    host_options = options.get(host, {})
    modules = global_modules | set(_array(host_options.get("modules_enabled")))
    modules -= set(_array(host_options.get("modules_disabled")))
    if isinstance(component, str) and component != "component":
        modules.add(component)  # the component's own module is loaded first
    return modules


def _storage_driver(options: Options, host: str, store: str, warnings: list[str]) -> str:
    """storagemanager's get_driver: `storage` (a name, or a store → name map), else default_storage."""
    storage = _get(options, host, "storage")
    name = storage.get(store) if isinstance(storage, dict) else storage
    if name == "sql2":  # the old module's name, which Prosody rewrites (and logs an error about)
        warning = f"{host}: storage 'sql2' has been renamed 'sql'; reading it as 'sql'"
        warnings.extend([warning] if warning not in warnings else [])
        name = "sql"
    if name is None or name is False:
        name = _get(options, host, "default_storage")
        if name is None or name is False:
            name = "internal"
    if not isinstance(name, str):
        raise _UnusableHostError(f"storage driver for {store} is not a name: {name!r}")
    return name


def _sql_settings(options: Options, host: str, data_path: Path) -> SqlSettings:
    """mod_storage_sql's normalize_params on the host's `sql` option (default: SQLite3 prosody.sqlite)."""
    sql = _get(options, host, "sql")
    if sql is None:
        sql = {"driver": "SQLite3"}
    if not isinstance(sql, dict):
        raise _UnusableHostError("the sql option is not a table")
    driver = sql.get("driver")
    if driver not in DRIVERS:
        raise _UnusableHostError(f"sql driver {driver!r} is not one of {', '.join(DRIVERS)}")
    database = sql.get("database")
    if driver == "SQLite3":
        database = "prosody.sqlite" if database is None else database
        if database == ":memory:":
            raise _UnusableHostError("its SQLite database is :memory:, which nothing outside Prosody can read")
    if not isinstance(database, str) or not database:
        raise _UnusableHostError(f"sql.database is not set for {driver}")
    if driver == "SQLite3":
        database = str(data_path / database.removeprefix("./"))
    return SqlSettings(
        driver=str(driver),
        database=database,
        host=_optional_text(sql, "host"),
        port=_port(sql.get("port")),
        username=_optional_text(sql, "username"),
        password=_optional_text(sql, "password"),
    )


def _optional_text(sql: Mapping[Any, PlainValue], key: str) -> str | None:
    value = sql.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(int(value)) if float(value).is_integer() else str(value)  # as Lua's tostring would
    raise _UnusableHostError(f"sql.{key} is not text")  # never echo the value: it may be the password


def _port(value: PlainValue | None) -> int | None:
    if value is None:
        return None
    try:
        port = int(value) if isinstance(value, str) else value
    except ValueError:
        port = None
    if isinstance(port, float) and port.is_integer():
        port = int(port)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise _UnusableHostError(f"sql.port {value!r} is not a port number")
    return port

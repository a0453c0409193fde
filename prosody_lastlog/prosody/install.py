"""Finds this machine's Prosody install: its version, and the mod_measure_active_users it would load.

Prosody looks for a module in the installer's path (`installer_plugin_path`, default `<data_path>/custom_plugins`),
then the config's `plugin_paths` (relative to the config's directory), then its own module directory
(util/startup.lua, 0.12 and 13 alike); in each, `mod_<name>/mod_<name>.lua`, then `<name>/mod_<name>.lua`, then
`mod_<name>.lua` (util/pluginloader.lua). The module's source is only searched for a few names, never run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from prosody_lastlog.core.rules import InstalledProsody, MeasureModule, ModuleStore

# Where packages put Prosody's own code (CFG_SOURCEDIR) and modules (CFG_PLUGINDIR): Debian's, then a source build's.
SOURCE_DIRS = (Path("/usr/lib/prosody"), Path("/usr/local/lib/prosody"))
MODULE = "measure_active_users"
MAX_MODULE_BYTES = 256 * 1024
_STORE_NAME = re.compile(rb"""["'](lastlog2|account_activity)["']""")


def find_installed(*, config_dirs: Sequence[Path] = (), source_dirs: Sequence[Path] = SOURCE_DIRS) -> InstalledProsody:
    """The installed Prosody: the first `prosody.version` among `source_dirs`, and the first mod_measure_active_users
    in `config_dirs` (the installer's path and plugin_paths, in that order) then each source dir's `modules/`."""
    version, version_file = None, None
    for directory in source_dirs:
        path = directory / "prosody.version"
        version = read_version_file(path)
        if version is not None:
            version_file = str(path)
            break
    searched = [(directory, True) for directory in config_dirs]
    searched += [(directory / "modules", False) for directory in source_dirs]
    places = tuple(str(directory) for directory, _ in searched)
    for directory, named_by_config in searched:
        found = _module_in(directory)
        if found is not None:  # the one Prosody loads, whether or not we understand it
            module = read_module(found, named_by_config=named_by_config)
            unrecognized = None if module is not None else str(found)
            return InstalledProsody(version, version_file, module, places, unrecognized)
    return InstalledProsody(version, version_file, None, places)


def read_version_file(path: Path) -> str | None:
    """The version a `prosody.version` file names (a build from Mercurial names its revision: "hg:<rev>"); None if
    it cannot be read."""
    try:
        text = path.read_bytes()[:200].decode("utf-8", "replace").strip()
    except OSError:
        return None
    return f"hg:{text}" if re.fullmatch(r"[0-9a-f]{12}", text) else text


def read_module(path: Path, *, named_by_config: bool) -> MeasureModule | None:
    """What a mod_measure_active_users source says: which store it opens and whether it asks user_is_enabled;
    None if it names no last-activity store (not a revision we know)."""
    try:
        text = path.read_bytes()[:MAX_MODULE_BYTES]
    except OSError:
        return None
    names = {match.decode() for match in _STORE_NAME.findall(text)}
    if names == {"lastlog2", "account_activity"}:
        store = ModuleStore.BY_VERSION
    elif names:
        store = ModuleStore(names.pop())
    else:
        return None
    return MeasureModule(str(path), store, b"user_is_enabled" in text, named_by_config)


def _module_in(directory: Path) -> Path | None:
    for relative in (f"mod_{MODULE}/mod_{MODULE}.lua", f"{MODULE}/mod_{MODULE}.lua", f"mod_{MODULE}.lua"):
        path = directory / relative
        if path.is_file():
            return path
    return None

"""Finding the installed Prosody: its version, and the mod_measure_active_users it loads, where Prosody looks."""

from __future__ import annotations

from pathlib import Path

import pytest

from prosody_lastlog.core.rules import ModuleStore
from prosody_lastlog.prosody.install import SOURCE_DIRS, find_installed, read_module
from tests.prosody13_cases import account_activity_variant, prosody_13

MODULE = "mod_measure_active_users"


def put_module(directory: Path, text: str, relative: str = f"{MODULE}/{MODULE}.lua") -> Path:
    path = directory / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_the_packaged_revisions_are_told_apart(tmp_path: Path) -> None:
    """Debian 12's (this machine's) and Debian 13's (the trixie tree's) read lastlog2; only 13's asks about accounts;
    the account_activity variant reads account_activity."""
    bookworm = read_module(SOURCE_DIRS[0] / "modules" / MODULE / f"{MODULE}.lua", named_by_config=False)
    assert bookworm is not None and (bookworm.store, bookworm.checks_accounts) == (ModuleStore.LASTLOG2, False)
    trixie_path = prosody_13().host_path(f"/usr/lib/prosody/modules/{MODULE}/{MODULE}.lua")
    trixie = read_module(trixie_path, named_by_config=False)
    assert trixie is not None and (trixie.store, trixie.checks_accounts) == (ModuleStore.LASTLOG2, True)
    variant = account_activity_variant(trixie_path.read_text(encoding="utf-8"))
    assert store_of(variant, tmp_path) is ModuleStore.ACCOUNT_ACTIVITY


def store_of(text: str, directory: Path) -> ModuleStore | None:
    """How a module with this source picks its store."""
    module = read_module(put_module(directory, text), named_by_config=True)
    return None if module is None else module.store


def test_a_module_naming_both_stores_reads_by_version(tmp_path: Path) -> None:
    # As upstream's current revision picks: account_activity on Prosody 13, else lastlog2.
    text = 'local store = module:open_store(is_13 and "account_activity" or "lastlog2")\nuser_is_enabled()\n'
    assert store_of(text, tmp_path) is ModuleStore.BY_VERSION


def test_version_and_module_in_prosodys_order(tmp_path: Path) -> None:
    source, installer, plugins = tmp_path / "lib", tmp_path / "custom_plugins", tmp_path / "plugins"
    (source / "modules").mkdir(parents=True)
    (source / "prosody.version").write_text("13.0.1\n")
    put_module(source / "modules", 'module:open_store("lastlog2")')
    found = find_installed(config_dirs=[installer, plugins], source_dirs=[source])
    assert found.version == "13.0.1" and found.version_file == str(source / "prosody.version")
    assert found.module is not None and not found.module.named_by_config
    assert found.searched == (str(installer), str(plugins), str(source / "modules"))
    put_module(plugins, 'module:open_store("account_activity")', f"{MODULE}.lua")  # plugin_paths come first
    found = find_installed(config_dirs=[installer, plugins], source_dirs=[source])
    assert found.module is not None and found.module.named_by_config
    assert found.module.store is ModuleStore.ACCOUNT_ACTIVITY
    put_module(installer, "-- a revision we do not know\n")  # the installer's path, first of all: not understood
    found = find_installed(config_dirs=[installer, plugins], source_dirs=[source])
    assert found.module is None and found.unrecognized_module == str(installer / MODULE / f"{MODULE}.lua")


@pytest.mark.parametrize(("text", "version"), [("0.12.3\n", "0.12.3"), ("0123456789ab", "hg:0123456789ab")])
def test_the_version_file_as_prosody_reads_it(tmp_path: Path, text: str, version: str) -> None:
    (tmp_path / "prosody.version").write_text(text)
    assert find_installed(source_dirs=[tmp_path]).version == version


def test_nothing_installed(tmp_path: Path) -> None:
    found = find_installed(source_dirs=[tmp_path / "none"])
    assert (found.version, found.module, found.unrecognized_module) == (None, None, None)

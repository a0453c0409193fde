"""The Prosody 13 fixture cases and what reading them needs: the two mod_measure_active_users variants (the packaged
one from the trixie tree, and the account_activity one derived from it) in module directories, and a Prosody config
for a case, made from its scenario (the hosts, their modules and options) as Prosody ran it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.conftest import CASES, FIXTURES

sys.path.insert(0, str(FIXTURES))

from make_fixtures import load_scenario, lua_value
from prosody_runtime import account_activity_variant, prosody_13

__all__ = ["SCENARIO", "VARIANTS", "account_activity_variant", "case", "module_dir", "prosody_13", "write_config"]

SCENARIO = FIXTURES / "scenarios" / "prosody13.json"
# expected.json's key for each variant: the packaged module (reads lastlog2) and its account_activity twin.
VARIANTS = {"packaged": "active_users", "account_activity": "active_users_account_activity"}


def case(name: str) -> tuple[Path, dict[str, Any]]:
    """A Prosody 13 case's directory and expected.json."""
    directory = CASES / name
    expected: dict[str, Any] = json.loads((directory / "expected.json").read_text(encoding="utf-8"))
    return directory, expected


def module_dir(root: Path, variant: str) -> Path:
    """A directory holding `variant` of mod_measure_active_users, as a plugin path holds a module."""
    packaged = prosody_13().measure_active_users_source()
    text = packaged if variant == "packaged" else account_activity_variant(packaged)
    directory = root / f"modules-{variant}"
    (directory / "mod_measure_active_users").mkdir(parents=True, exist_ok=True)
    (directory / "mod_measure_active_users" / "mod_measure_active_users.lua").write_text(text, encoding="utf-8")
    return directory


def write_config(
    root: Path, *, data_path: Path, plugin_dir: Path, sql: dict[str, Any] | None = None, scenario: Path = SCENARIO
) -> Path:
    """The Prosody config the scenario ran with, reading `data_path` (and `sql`), the module from `plugin_dir`, and
    no installer path (an empty one), so that only `plugin_dir` can hold mod_measure_active_users."""
    spec = load_scenario(scenario)
    empty = root / "no-installed-modules"
    empty.mkdir(exist_ok=True)
    lines = [
        f"data_path = {lua_value(str(data_path))}",
        f"installer_plugin_path = {lua_value(str(empty))}",
        f"plugin_paths = {lua_value([str(plugin_dir)])}",
    ]
    if sql is not None:
        lines += ['storage = "sql"', f"sql = {lua_value(sql)}"]
    hosts = spec["hosts"]
    for host in sorted(hosts, key=lambda name: bool(hosts[name].get("component"))):  # components last
        settings = hosts[host]
        if settings.get("component"):
            lines.append(f"Component {lua_value(host)} {lua_value(settings['component'])}")
        else:
            lines.append(f"VirtualHost {lua_value(host)}")
        lines.append(f"\tmodules_enabled = {lua_value([*settings['modules'], 'measure_active_users'])}")
        lines += [f"\t{key} = {lua_value(value)}" for key, value in settings.get("options", {}).items()]
    path = root / "prosody.cfg.lua"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

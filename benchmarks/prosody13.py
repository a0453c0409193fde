"""The Prosody 13 data set of the benchmark suite: a Debian 13 server's file store, written and counted by Prosody 13.

Written by prosody13_seed.lua through Prosody 13's own util.datamanager, run with the Lua 5.4 of Debian 13's
Prosody 13 install in the tree tools/prosody13-tree.sh builds (fixtures/prosody_runtime.py runs it chrooted, the
cache directory and this directory bound in). Per user, as on a Debian 13 server running mod_lastlog2,
mod_account_activity and mod_auth_internal_hashed: lastlog2/<user>.dat as in the Prosody 0.12 set,
account_activity/<user>.dat ({timestamp}) for those who ever logged in, and accounts/<user>.dat with
mod_auth_internal_hashed's record (stored_key, server_key, salt, iteration_count, created, updated), 2% of them
disabled (half with mod_user_account_management's disabled_meta); 3% of users have no account record (deleted
accounts whose activity files remain), and accounts numbering 5% of the users have no activity at all.

Beside the data, `view-0.12` holds the same lastlog2 files (hard links: the same inodes, so the same page cache) and
nothing else, for the same users read as Prosody 0.12 data: no Prosody 13 store, so no account file is read.
Kept in <cache>/prosody13-users-N, made again only when prosody13_seed.lua (or VIEW_RECIPE) changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))

from prosody_runtime import ProsodyRuntime, prosody_13
from scan import HOSTS, NOW, SEED_USERS, Run, run_seed

from prosody_lastlog.prosody.pathnames import encode_name

HERE = Path(__file__).resolve().parent
SEED_SCRIPT = HERE / "prosody13_seed.lua"
VIEW = "view-0.12"
VIEW_RECIPE = 1  # bump when the view's making changes
ACTIVITY = "lastlog2"  # what Debian 13's packaged mod_measure_active_users reads
DEFAULT_STORE = "account_activity"  # what our reader reads on Prosody 13 data by default (no module found)
ACCOUNTS = "accounts"


@dataclass(frozen=True)
class DataSet:
    """A cached Prosody 13 data set: its cache entry, the data directory and the Prosody 0.12 view of it."""

    root: Path
    data_dir: Path
    view_dir: Path

    def stores(self, store: str) -> list[Path]:
        """Every host's `store` directory of the data."""
        return [self.data_dir / encode_name(host) / store for host in sorted(HOSTS)]

    def floor_args(self, store: str, *, accounts: bool) -> list[str]:
        """io_floor's arguments for every host's `store`, with its accounts directory if `accounts`."""
        args: list[str] = []
        for directory in self.stores(store):
            args += ["-a", str(directory.parent / ACCOUNTS), str(directory)] if accounts else [str(directory)]
        return args

    def view_floor_args(self) -> list[str]:
        """io_floor's arguments for the view: every host's lastlog2, nothing else."""
        return [str(self.view_dir / encode_name(host) / ACTIVITY) for host in sorted(HOSTS)]


def generator_version() -> str:
    """Identifies the generator: a cached data set made by another version is made again."""
    digest = hashlib.sha256(SEED_SCRIPT.read_bytes() + SEED_USERS.read_bytes() + f"view {VIEW_RECIPE}".encode())
    return digest.hexdigest()[:16]


def runtime() -> ProsodyRuntime:
    """Debian 13's Prosody 13 (ProsodyMissingError if its tree is not built)."""
    return prosody_13()


def lua(root: Path, *args: str) -> list[str]:
    """The command that runs prosody13_seed.lua with `args` in Prosody 13's Lua 5.4, `root` and this directory
    bound in at the same paths."""
    return runtime().command(["lua5.4", str(SEED_SCRIPT), *args], binds=[root, HERE])


def dataset(cache_dir: Path, users: int) -> DataSet:
    """The data set of `users` users, generated on first use (and when the generator changed) and cached."""
    root = (cache_dir / f"prosody13-users-{users}").resolve()
    found = DataSet(root, root / "data", root / VIEW)
    marker = root / "generated.json"
    version = generator_version()
    if marker.exists() and json.loads(marker.read_text()).get("generator") == version:
        return found
    shutil.rmtree(root, ignore_errors=True)  # an interrupted generation, or another generator's
    found.data_dir.mkdir(parents=True)
    print(f"generating {users:,} Prosody 13 users in {found.data_dir} (cached for later runs)", flush=True)
    started = time.perf_counter()
    write = ["write", str(found.data_dir), str(users), str(NOW), "42", *HOSTS]
    subprocess.run(lua(root, *write), check=True)
    _link_view(found)
    seconds = time.perf_counter() - started
    document = {"users": users, "now": NOW, "hosts": HOSTS, "generator": version, "seconds": seconds}
    marker.write_text(json.dumps(document) + "\n")
    print(f"generated in {seconds:.1f} s", flush=True)
    return found


def _link_view(found: DataSet) -> None:
    """The view: every host's lastlog2 files, hard-linked."""
    for host in HOSTS:
        source = found.data_dir / encode_name(host) / ACTIVITY
        target = found.view_dir / encode_name(host) / ACTIVITY
        target.mkdir(parents=True)
        for name in os.listdir(source):
            os.link(source / name, target / name)


def run_seed13(found: DataSet, store: str = ACTIVITY) -> Run:
    """Prosody 13's datamanager and mod_measure_active_users' algorithm (accounts checked by
    mod_auth_internal_hashed's is_enabled), counting from `store`, in a fresh Lua 5.4 process of Prosody 13's
    install."""
    return run_seed(lua(found.root, "count", str(found.data_dir), str(NOW), store, "enabled", *HOSTS))

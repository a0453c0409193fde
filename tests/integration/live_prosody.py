"""A real Prosody (Debian's, with mod_lastlog2 from prosody-modules) in the foreground on a free loopback port, with
a throwaway config: mod_lastlog2 records logins, mod_admin_socket answers, mod_posix writes the pidfile. Used by the
integration tests and the chaos soak; a missing Prosody is an error, never a skip.

By default this machine's own Prosody 0.12 runs; `runtime=prosody_13()` runs Debian 13's Prosody 13 from the tree of
tools/prosody13-tree.sh instead (fixtures/prosody_runtime.py), chrooted with the test's root directory bound at the
same path, so its pidfile, admin socket and data are where a 0.12 run puts them (13 writes the pidfile from its core;
mod_posix, no longer autoloaded there, stays enabled as in Debian's config). On 13, as in Debian's stock 13 config,
accounts are hashed (internal_plain cannot disable them) and mod_account_activity records logins too."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fixtures"))

from prometheus_client.parser import text_string_to_metric_families
from prosody_runtime import ProsodyRuntime, prosody_012

from tests.integration.servers import free_port, stop_process
from tests.integration.xmpp_client import XmppError, admin_shell

LASTLOG2 = "/usr/lib/prosody/modules/mod_lastlog2/mod_lastlog2.lua"
START_SECONDS = 20.0

CONFIG = """\
-- Throwaway config written by tests/integration/live_prosody.py.
{preamble}
data_path = {data}
pidfile = {pidfile}
certificates = {certs}
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = {log} }} }}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
c2s_direct_tls_ports = {{}}
legacy_ssl_ports = {{}}
modules_disabled = {{ "s2s", "s2s_auth_certs" }}
authentication = {authentication}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
modules_enabled = {{ "saslauth", "lastlog2", "admin_shell", "admin_socket", "posix"{more_modules} }}
run_as_root = {as_root}

{hosts}
"""


def lua_string(value: str) -> str:
    """A Lua string literal for a plain path or name."""
    if not value.isprintable():
        raise ValueError(f"unexpected character in {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class LiveProsody:
    """A running Prosody in `root`, with helpers that act through Prosody's own tools."""

    root: Path
    process: subprocess.Popen[bytes]
    c2s_port: int
    hosts: tuple[str, ...]
    runtime: ProsodyRuntime = field(default_factory=prosody_012)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def admin_socket(self) -> Path:
        return self.data / "prosody.sock"

    @property
    def pidfile(self) -> Path:
        return self.root / "prosody.pid"

    @property
    def config(self) -> Path:
        return self.root / "prosody.cfg.lua"

    def log_text(self) -> str:
        """Prosody's log so far."""
        path = self.root / "prosody.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        """The end of Prosody's log and console output."""
        parts = []
        for name in ("prosody.log", "console.txt"):
            path = self.root / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {name} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def shell(self, line: str) -> str:
        """Runs one line in Prosody's admin shell."""
        return admin_shell(self.admin_socket, line)

    def create_user(self, jid: str, password: str) -> None:
        """Creates an account through the running server (as `prosodyctl shell user:create` does)."""
        answer = self.shell(f"user:create({lua_string(jid)}, {lua_string(password)})")
        if not answer.startswith("OK"):
            raise RuntimeError(f"user:create({jid}) answered {answer!r}")

    def c2s_sessions(self) -> int:
        """How many client connections Prosody holds (bound or not), from its shell's `c2s:count()`."""
        answer = self.shell("c2s:count()")
        match = re.fullmatch(r"OK: Total: (\d+) clients", answer)
        if match is None:
            raise RuntimeError(f"unexpected answer to c2s:count(): {answer!r}")
        return int(match[1])

    def prosodyctl(self, *args: str) -> str:
        """Runs `prosodyctl --config <ours> ARGS` of this Prosody (it works on the data files, as on a live server,
        or, as `shell ...`, through the admin socket); returns its output."""
        if not _installed(self.runtime, "prosodyctl"):
            raise RuntimeError("prosodyctl is missing: run `make test`, which installs Debian's prosody")
        argv = self.runtime.command(["prosodyctl", "--config", str(self.config), *args], binds=[self.root])
        done = subprocess.run(argv, capture_output=True, timeout=20, check=False, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"prosodyctl {args[0]} failed: {done.stdout!r} {done.stderr!r}")
        return done.stdout.decode(errors="replace")


@contextmanager
def running_prosody(
    root: Path,
    hosts: Sequence[str],
    *,
    preamble: str = "",
    runtime: ProsodyRuntime | None = None,
    modules: Sequence[str] = (),
    host_options: Mapping[str, str] = MappingProxyType({}),
) -> Iterator[LiveProsody]:
    """Starts Prosody (this machine's 0.12 unless `runtime` says otherwise) on a free loopback port (three tries),
    `preamble` (Lua) at the top of its config, `modules` enabled besides the usual ones, `host_options` (Lua) under
    each host's VirtualHost line; always stops it by PID (SIGTERM, then SIGKILL)."""
    runtime = runtime or prosody_012()
    if not _installed(runtime, "prosody") or not runtime.host_path(LASTLOG2).exists():
        raise RuntimeError(
            "prosody and prosody-modules are missing: run `make test` (tools/install-debian-packages.sh)"
        )
    root = Path(os.path.abspath(root))
    for _ in range(3):  # a free port can be taken between choosing and binding it
        for name in ("prosody.log", "console.txt", "prosody.pid"):
            (root / name).unlink(missing_ok=True)
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "certs").mkdir(exist_ok=True)
        port = free_port()
        (root / "prosody.cfg.lua").write_text(
            CONFIG.format(
                preamble=preamble,
                data=lua_string(str(root / "data")),
                pidfile=lua_string(str(root / "prosody.pid")),
                certs=lua_string(str(root / "certs")),
                log=lua_string(str(root / "prosody.log")),
                c2s=port,
                as_root="true" if os.geteuid() == 0 else "false",
                # 13: Debian's defaults, hashed accounts (they can be disabled) and mod_account_activity.
                authentication='"internal_hashed"' if runtime.version == "13" else '"internal_plain"',
                more_modules="".join(
                    f", {lua_string(module)}"
                    for module in (*(["account_activity"] if runtime.version == "13" else []), *modules)
                ),
                hosts="".join(f"VirtualHost {lua_string(host)}\n{host_options.get(host, '')}\n" for host in hosts),
            ),
            encoding="utf-8",
        )
        with (root / "console.txt").open("wb") as console:
            process = subprocess.Popen(
                runtime.command(["prosody", "-F", "--config", str(root / "prosody.cfg.lua")], binds=[root]),
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        prosody = LiveProsody(root, process, port, tuple(hosts), runtime)
        try:
            if _wait_for_start(prosody):
                yield prosody
                return
        finally:
            stop_process(process)
    raise RuntimeError(f"prosody could not listen on a free port in three tries\n{prosody.log_tail()}")


def _installed(runtime: ProsodyRuntime, program: str) -> bool:
    """Whether `program` (prosody, prosodyctl) is there: on this machine's PATH, or in the runtime's tree."""
    if runtime.root is None:
        return shutil.which(program) is not None
    return runtime.host_path(f"/usr/bin/{program}").exists()


def _wait_for_start(prosody: LiveProsody) -> bool:
    """True once every host answers on the admin socket and the c2s port is open; False if the port was taken."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if "portmanager\terror" in prosody.log_text():
            return False
        if prosody.process.poll() is not None:
            raise RuntimeError(f"prosody exited with {prosody.process.returncode}\n{prosody.log_tail()}")
        if prosody.admin_socket.exists() and prosody.pidfile.exists():
            try:
                last = lua_string(prosody.hosts[-1])
                if prosody.shell(f">return prosody.hosts[{last}] ~= nil") == "Result: true":
                    socket.create_connection(("127.0.0.1", prosody.c2s_port), timeout=1).close()
                    return True
            except (OSError, XmppError):
                pass
        time.sleep(0.05)
    raise RuntimeError(f"prosody did not start within {START_SECONDS} s\n{prosody.log_tail()}")


def prosodys_own_counts(admin_socket: Path, http_port: int, host: str) -> dict[str, int]:
    """What Prosody 13's mod_measure_active_users on `host` computes now (asked to, through the admin socket), read
    from Prosody's own /metrics."""
    module = f"require'prosody.core.modulemanager'.get_module({lua_string(host)}, 'measure_active_users')"
    admin_shell(admin_socket, f">{module}.update_calculations()")
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    prefix = "prosody_mod_measure_active_users__active_users_"
    return {
        sample.name.removeprefix(prefix): int(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(prefix) and sample.labels == {"host": host}
    }

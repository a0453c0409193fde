"""A real Prosody (Debian's, with mod_lastlog2 from prosody-modules) in the foreground on a free loopback port, with
a throwaway config: mod_lastlog2 records logins, mod_admin_socket answers, mod_posix writes the pidfile. Used by the
integration tests and the chaos soak; a missing Prosody is an error, never a skip."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.integration.servers import free_port
from tests.integration.xmpp_client import XmppError, admin_shell

LASTLOG2 = Path("/usr/lib/prosody/modules/mod_lastlog2/mod_lastlog2.lua")
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
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
modules_enabled = {{ "saslauth", "lastlog2", "admin_shell", "admin_socket", "posix" }}
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

    def prosodyctl(self, *args: str) -> None:
        """Runs `prosodyctl --config <ours> ARGS` (it works on the data files, as on a live server)."""
        binary = shutil.which("prosodyctl")
        if binary is None:
            raise RuntimeError("prosodyctl is missing: run `make test`, which installs Debian's prosody")
        done = subprocess.run(
            [binary, "--config", str(self.config), *args], capture_output=True, timeout=20, check=False, cwd=self.root
        )
        if done.returncode != 0:
            raise RuntimeError(f"prosodyctl {args[0]} failed: {done.stdout!r} {done.stderr!r}")


@contextmanager
def running_prosody(root: Path, hosts: Sequence[str], *, preamble: str = "") -> Iterator[LiveProsody]:
    """Starts Prosody on a free loopback port (three tries), `preamble` (Lua) at the top of its config; always
    stops it (SIGTERM, then SIGKILL)."""
    binary = shutil.which("prosody")
    if binary is None or not LASTLOG2.exists():
        raise RuntimeError(
            "prosody and prosody-modules are missing: run `make test` (tools/install-debian-packages.sh)"
        )
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
                hosts="".join(f"VirtualHost {lua_string(host)}\n" for host in hosts),
            ),
            encoding="utf-8",
        )
        with (root / "console.txt").open("wb") as console:
            process = subprocess.Popen(
                [binary, "-F", "--config", str(root / "prosody.cfg.lua")],
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        prosody = LiveProsody(root, process, port, tuple(hosts))
        try:
            if _wait_for_start(prosody):
                yield prosody
                return
        finally:
            _stop(process)
    raise RuntimeError(f"prosody could not listen on a free port in three tries\n{prosody.log_tail()}")


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


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s; always reaped."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

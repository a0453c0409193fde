"""A real Prosody (Debian's, with mod_lastlog2 from prosody-modules) on a free loopback port, for the soak."""

from __future__ import annotations

import os
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
-- Written by the soak (soak/prosody.py): the Prosody that takes the soak's XMPP logins.
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


@dataclass(frozen=True)
class Prosody:
    """A running Prosody: its data directory, c2s port, admin socket and pidfile."""

    root: Path
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

    def shell(self, line: str) -> str:
        """Runs one line in Prosody's admin shell."""
        return admin_shell(self.admin_socket, line)

    def create_user(self, jid: str, password: str) -> None:
        """Creates an account through the running server (as `prosodyctl shell user:create` does)."""
        answer = self.shell(f"user:create({lua_string(jid)}, {lua_string(password)})")
        if not answer.startswith("OK"):
            raise RuntimeError(f"user:create({jid}) answered {answer!r}")

    def log_tail(self, lines: int = 30) -> str:
        """The end of Prosody's log and console output."""
        parts = []
        for name in ("prosody.log", "console.txt"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)


@contextmanager
def running_prosody(root: Path, hosts: Sequence[str]) -> Iterator[Prosody]:
    """Starts Prosody in the foreground on a free port (three tries); always stops it."""
    binary = shutil.which("prosody")
    if binary is None or not LASTLOG2.exists():
        raise RuntimeError("prosody and prosody-modules are needed: run tools/install-debian-packages.sh")
    for _ in range(3):  # a free port can be taken between choosing and binding it
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "certs").mkdir(exist_ok=True)
        for name in ("prosody.log", "console.txt", "prosody.pid"):
            (root / name).unlink(missing_ok=True)
        port = free_port()
        (root / "prosody.cfg.lua").write_text(
            CONFIG.format(
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
        prosody = Prosody(root, port, tuple(hosts))
        try:
            if _wait_for_start(prosody, process):
                yield prosody
                return
        finally:
            _stop(process)
    raise RuntimeError("prosody could not listen on a free port in three tries")


def _wait_for_start(prosody: Prosody, process: subprocess.Popen[bytes]) -> bool:
    """True once the admin socket and c2s port answer; False if the port was taken; raises otherwise."""
    deadline = time.monotonic() + START_SECONDS
    log = prosody.root / "prosody.log"
    while time.monotonic() < deadline:
        if log.exists() and "portmanager\terror" in log.read_text(errors="replace"):
            return False
        if process.poll() is not None:
            raise RuntimeError(f"prosody exited with {process.returncode}\n{prosody.log_tail()}")
        if prosody.admin_socket.exists() and prosody.pidfile.exists():
            try:
                last = prosody.hosts[-1]
                if prosody.shell(f">return prosody.hosts[{lua_string(last)}] ~= nil") == "Result: true":
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

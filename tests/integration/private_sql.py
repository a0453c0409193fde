"""Private PostgreSQL and MariaDB servers for tests that must stop and start a database server.

    with private_postgres() as server:      # or private_mariadb()
        server.create_database("prosody")
        ...read server.url("prosody")...
        server.stop()                        # the server is gone: connections are refused
        server.start()                       # the same data directory, on the same port

Each context manager initialises a new data directory in a temporary directory, runs the server on a free
127.0.0.1 port (its unix socket inside that directory too), and always stops it and removes the directory,
also when the body raises. The machine's shared servers (5432, 3306) are never touched.

Database servers refuse to run as root: when the tests do, the servers (and initdb / mariadb-install-db) run as
`nobody`, or as the engine's own system user where there is no `nobody`. Binaries that are missing are an
error, never a skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pymysql
from psycopg import sql

from tests.integration.servers import free_port

HOST = "127.0.0.1"
START_SECONDS = 30.0  # bound on a server becoming ready to accept connections
STOP_SECONDS = 30.0  # bound on a clean shutdown before the process is killed
SETUP_SECONDS = 120.0  # bound on initdb / mariadb-install-db
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")  # not on a normal user's PATH on Debian


class PrivateServerError(RuntimeError):
    """A private server's binaries are missing, or it could not be set up, started or stopped."""


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account a server runs as when the tests run as root."""

    name: str
    uid: int
    gid: int


def unprivileged_user(system_user: str) -> RunAs | None:
    """None when not root (servers run as the current user); else `nobody`, or `system_user` without it."""
    if os.geteuid() != 0:
        return None
    for name in ("nobody", system_user):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return RunAs(name, entry.pw_uid, entry.pw_gid)
    raise PrivateServerError(f"running as root, and neither `nobody` nor `{system_user}` exists to run the server")


def _find(names: tuple[str, ...], *, what: str, install: str) -> str:
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN_DIRS])
    for name in names:
        found = shutil.which(name, path=search)
        if found:
            return found
    raise PrivateServerError(f"{what} not found (looked for {', '.join(names)}): install {install}")


def _version_key(bindir: str) -> tuple[int, ...]:
    version = Path(bindir).parent.name  # /usr/lib/postgresql/<version>/bin
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def postgres_bindir() -> Path:
    """The newest /usr/lib/postgresql/*/bin (Debian) holding initdb and postgres, else their directory on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for bindir in candidates:
        if all(os.access(Path(bindir, name), os.X_OK) for name in ("initdb", "postgres")):
            return Path(bindir)
    initdb = shutil.which("initdb")
    if initdb and os.access(Path(initdb).with_name("postgres"), os.X_OK):
        return Path(initdb).parent
    raise PrivateServerError(
        "PostgreSQL server binaries (initdb, postgres) not found in /usr/lib/postgresql/*/bin or on PATH: "
        "install the Debian package postgresql"
    )


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


class PrivateServer(ABC):
    """One server process on its own data directory and port; `start()` and `stop()` may repeat."""

    driver: ClassVar[str]  # Prosody's name: "PostgreSQL" or "MySQL"
    scheme: ClassVar[str]  # of prosody-lastlog's --sql URL
    superuser: ClassVar[str]
    stop_signal: ClassVar[signal.Signals]

    def __init__(self, base: Path, port: int, run_as: RunAs | None) -> None:
        self.base = base
        self.port = port
        self.run_as = run_as
        self.data_dir = base / "data"
        self.log = base / "server.log"  # every start appends here
        self._process: subprocess.Popen[bytes] | None = None
        self._frozen: list[int] = []

    @abstractmethod
    def initialize(self) -> None:
        """Creates the data directory (initdb, mariadb-install-db)."""

    @abstractmethod
    def server_command(self) -> list[str]:
        """The command line that runs the server in the foreground."""

    @abstractmethod
    def connect(self, database: str | None = None, *, autocommit: bool = False) -> Any:
        """A DB-API connection as the superuser over TCP; raises the driver's error if the server is not up."""

    @abstractmethod
    def create_database(self, name: str) -> None:
        """Creates an empty UTF-8 database (`name`: letters, digits and `_` only)."""

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def url(self, database: str) -> str:
        """prosody-lastlog's --sql URL for `database` on this server."""
        return f"{self.scheme}://{self.superuser}@{HOST}:{self.port}/{database}"

    def start(self) -> None:
        """Starts the server and waits until it accepts connections on its port."""
        if self.running:
            raise PrivateServerError(f"{self.driver} on port {self.port} is already running")
        with self.log.open("ab") as output:
            self._process = subprocess.Popen(
                self.server_command(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C on the terminal reaches pytest, whose cleanup stops the server
                **self._as_user(),
            )
        process, deadline = self._process, time.monotonic() + START_SECONDS
        while True:
            if process.poll() is not None:
                self._process = None
                raise PrivateServerError(
                    f"{self.driver} on port {self.port} exited with status {process.returncode} while starting; "
                    f"its log:\n{_tail(self.log)}"
                )
            try:
                self.connect().close()
                return
            except (psycopg.Error, pymysql.MySQLError) as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise PrivateServerError(
                        f"{self.driver} on port {self.port} did not accept connections within {START_SECONDS} s "
                        f"({exc}); its log:\n{_tail(self.log)}"
                    ) from None
            time.sleep(0.05)

    def freeze(self) -> None:
        """Stops (SIGSTOP) the server process and every descendant: TCP still accepts and acknowledges, nothing
        answers. The server first, so it forks no new process meanwhile; PostgreSQL's backends are each in a
        process group of their own, so signalling the server's group would miss them."""
        if self._process is None:
            raise PrivateServerError(f"{self.driver} on port {self.port} is not running")
        os.kill(self._process.pid, signal.SIGSTOP)
        self._frozen = [self._process.pid, *_descendants(self._process.pid)]
        for pid in self._frozen[1:]:
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Continues what freeze() stopped; no-op when not frozen."""
        frozen, self._frozen = self._frozen, []
        for pid in reversed(frozen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        """Shuts the server down cleanly (killed after STOP_SECONDS) and waits for it; no-op when stopped."""
        self.thaw()
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(self.stop_signal)
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise PrivateServerError(
                    f"{self.driver} on port {self.port} did not stop within {STOP_SECONDS} s and was killed; "
                    f"its log:\n{_tail(self.log)}"
                ) from None

    def _setup(self, command: list[str]) -> None:
        """Runs a set-up command as the server's user; fails with its output."""
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=SETUP_SECONDS,
                check=False,
                **self._as_user(),
            )
        except subprocess.TimeoutExpired:
            raise PrivateServerError(f"{command[0]} took more than {SETUP_SECONDS} s") from None
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-3000:]
            raise PrivateServerError(f"{' '.join(command)} failed with status {done.returncode}:\n{output}")

    def _as_user(self) -> dict[str, Any]:
        # A minimal environment: no PG*/MYSQL_* settings of the caller, a HOME the server's user can read.
        environment = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(self.base), "LC_ALL": "C"}
        options: dict[str, Any] = {"cwd": self.base, "env": environment}
        if self.run_as is not None:
            options.update(user=self.run_as.uid, group=self.run_as.gid, extra_groups=[])
        return options


class PrivatePostgres(PrivateServer):
    """PostgreSQL: initdb with trust auth and superuser `postgres`, then `postgres` in the foreground."""

    driver = "PostgreSQL"
    scheme = "postgresql"
    superuser = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: ends open sessions instead of waiting for them

    def __init__(self, base: Path, port: int, run_as: RunAs | None, bindir: Path) -> None:
        super().__init__(base, port, run_as)
        self.bindir = bindir

    def initialize(self) -> None:
        """initdb: UTF-8, C locale, trust authentication, no fsync (throwaway data)."""
        self._setup(
            [
                str(self.bindir / "initdb"),
                f"--pgdata={self.data_dir}",
                f"--username={self.superuser}",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ]
        )

    def server_command(self) -> list[str]:
        """postgres on 127.0.0.1:port, its socket in the base directory, small and without fsync."""
        return [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-k",
            str(self.base),
            "-c",
            f"listen_addresses={HOST}",
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=20",
            "-c",
            "shared_buffers=16MB",
        ]

    def connect(self, database: str | None = None, *, autocommit: bool = False) -> Any:
        """A psycopg connection as `postgres` (to the `postgres` database by default)."""
        return psycopg.connect(
            host=HOST,
            port=self.port,
            user=self.superuser,
            dbname=database or "postgres",
            connect_timeout=2,
            autocommit=autocommit,
        )

    def create_database(self, name: str) -> None:
        """CREATE DATABASE in UTF-8 from template0."""
        with self.connect(autocommit=True) as connection:
            statement = sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0")
            connection.execute(statement.format(sql.Identifier(name)))


class PrivateMariadb(PrivateServer):
    """MariaDB: mariadb-install-db (root without password), then mariadbd in the foreground."""

    driver = "MySQL"
    scheme = "mysql"
    superuser = "root"
    stop_signal = signal.SIGTERM  # a clean shutdown

    def __init__(
        self, base: Path, port: int, run_as: RunAs | None, server: str, install_db: str, *, binlog: bool = False
    ) -> None:
        super().__init__(base, port, run_as)
        self.server = server
        self.install_db = install_db
        self.binlog = binlog  # a row-based binary log, as a server replicas follow has

    def _common_options(self) -> list[str]:
        # Small InnoDB files and buffers: the data is a few dozen rows.
        return [
            "--no-defaults",  # must come first; the machine's my.cnf belongs to the shared server
            f"--datadir={self.data_dir}",
            "--innodb-log-file-size=8M",
            "--innodb-buffer-pool-size=16M",
        ]

    def initialize(self) -> None:
        """mariadb-install-db: system tables, root@localhost/127.0.0.1 without password, no test database."""
        self._setup(
            [
                self.install_db,
                *self._common_options(),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ]
        )
        (self.base / "tmp").mkdir()
        if self.run_as is not None:
            os.chown(self.base / "tmp", self.run_as.uid, self.run_as.gid)

    def server_command(self) -> list[str]:
        """mariadbd on 127.0.0.1:port; socket, pid file, error log and tmpdir in the base directory."""
        return [
            self.server,
            *self._common_options(),
            f"--port={self.port}",
            f"--bind-address={HOST}",
            f"--socket={self.base / 'mysqld.sock'}",
            f"--pid-file={self.base / 'mysqld.pid'}",
            f"--tmpdir={self.base / 'tmp'}",
            "--skip-name-resolve",
            *(
                [f"--log-bin={self.base / 'binlog'}", "--binlog-format=ROW", "--server-id=1"]
                if self.binlog
                else ["--skip-log-bin"]
            ),
        ]

    def connect(self, database: str | None = None, *, autocommit: bool = False) -> Any:
        """A pymysql connection as root@127.0.0.1."""
        return pymysql.connect(
            host=HOST,
            port=self.port,
            user=self.superuser,
            password="",
            database=database,
            connect_timeout=2,
            autocommit=autocommit,
            charset="utf8mb4",
        )

    def create_database(self, name: str) -> None:
        """CREATE DATABASE in utf8mb4."""
        connection = self.connect(autocommit=True)
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        finally:
            connection.close()


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        below = children.get(pending.pop(), [])
        found += below
        pending += below
    return found


@contextmanager
def _running(server: PrivateServer) -> Iterator[PrivateServer]:
    """Initialises and starts `server`; stops it and removes its directory afterwards, whatever happens."""
    try:
        if server.run_as is not None:
            os.chown(server.base, server.run_as.uid, server.run_as.gid)
        server.initialize()
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(server.base, ignore_errors=True)


@contextmanager
def private_postgres() -> Iterator[PrivateServer]:
    """A new PostgreSQL cluster on a free port, superuser `postgres` with trust auth; stopped afterwards."""
    bindir = postgres_bindir()
    run_as = unprivileged_user("postgres")
    base = Path(tempfile.mkdtemp(prefix="prosody-lastlog-postgres-"))
    with _running(PrivatePostgres(base, free_port(), run_as, bindir)) as server:
        yield server


@contextmanager
def private_mariadb(*, binlog: bool = False) -> Iterator[PrivateServer]:
    """A new MariaDB server on a free port, root@127.0.0.1 without password, with a row-based binary log if
    `binlog`; stopped afterwards."""
    package = "the Debian package mariadb-server"
    server = _find(("mariadbd", "mysqld"), what="the MariaDB server", install=package)
    install_db = _find(("mariadb-install-db", "mysql_install_db"), what="mariadb-install-db", install=package)
    run_as = unprivileged_user("mysql")
    base = Path(tempfile.mkdtemp(prefix="prosody-lastlog-mariadb-"))
    with _running(PrivateMariadb(base, free_port(), run_as, server, install_db, binlog=binlog)) as running:
        yield running

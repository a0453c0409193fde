"""Load on the stored data: user files rewritten through Prosody's util.datamanager, logins and logouts in SQL.

Every timestamp written keeps `margin` seconds away from the edges of the 1d, 7d and 30d windows as long as the
soak runs (an SQL login or logout, written at its time as Prosody does, is a day from the 1d edge), so a count
taken a few seconds (or one SQL interval) earlier or later gives the same numbers.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import prosody_table

DAY = 86400
WINDOW_EDGES = (DAY, 7 * DAY, 30 * DAY)
OLDEST = 120 * DAY
WRITER = Path(__file__).with_name("datamanager_writer.lua")


def age_bands(margin: int) -> list[tuple[int, int]]:
    """Ages (seconds before now) that stay inside one window class for `margin` seconds either way."""
    if margin >= DAY // 2:
        raise ValueError("the soak is too long for its timestamps to stay clear of the 1d window edge")
    bands, low = [], 60
    for edge in WINDOW_EDGES:
        bands.append((low, edge - margin))
        low = edge + margin
    bands.append((low, OLDEST))
    return bands


@dataclass(frozen=True)
class Record:
    """One user's lastlog2 data: None for an event not recorded."""

    login: int | None
    logout: int | None
    registered: int | None

    def lua(self) -> str:
        """The Lua table constructor Prosody's datamanager stores."""
        fields = [f"{key} = {{ timestamp = {value} }}" for key, value in self._events()]
        return "{ " + ", ".join(fields) + " }"

    def rows(self, host: str, user: str) -> list[prosody_table.Row]:
        """The rows Prosody's mod_storage_sql keeps for this record."""
        return [
            (host, user, "lastlog2", key, "json", json.dumps({"timestamp": value}, separators=(",", ":")))
            for key, value in self._events()
        ]

    def _events(self) -> list[tuple[str, int]]:
        events = {"login": self.login, "logout": self.logout, "registered": self.registered}
        return [(key, value) for key, value in events.items() if value is not None]


def random_record(rng: random.Random, now: int, bands: Sequence[tuple[int, int]]) -> Record:
    """A record whose last activity and registration lie inside the bands (login a little before a logout)."""

    def stamp() -> int:
        low, high = rng.choice(bands)
        return now - rng.randint(low, high)

    registered = stamp() if rng.random() < 0.5 else None
    shape = rng.random()
    if shape < 0.1:
        return Record(None, None, registered or stamp())  # registered, never logged in
    last = stamp()
    if shape < 0.4:
        return Record(last, None, registered)  # a login without logout: a session left open
    return Record(last - rng.randint(0, 600), last, registered)


class FileGenerator:
    """Rewrites (and sometimes deletes) user files of `hosts` through one long-lived Lua datamanager process."""

    def __init__(self, data_path: Path, hosts: Sequence[str], users: int, *, margin: int, seed: int) -> None:
        lua = shutil.which("lua5.4")
        if lua is None:
            raise RuntimeError("lua5.4 is needed (Debian package lua5.4): run tools/install-debian-packages.sh")
        self.hosts, self.users = list(hosts), users
        self.bands = age_bands(margin)
        self.rewrites = self.deletes = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            [lua, str(WRITER), str(data_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )

    def populate(self) -> None:
        """Writes every user once."""
        for host in self.hosts:
            for number in range(self.users):
                self._store(host, f"user{number}", random_record(self._rng, int(time.time()), self.bands).lua())

    def step(self) -> None:
        """One random rewrite, or (one time in 30) a deletion, as Prosody does by storing an empty table."""
        host, user = self._rng.choice(self.hosts), f"user{self._rng.randrange(self.users)}"
        if self._rng.random() < 1 / 30:
            self._store(host, user, "{}")
            self.deletes += 1
        else:
            self._store(host, user, random_record(self._rng, int(time.time()), self.bands).lua())
            self.rewrites += 1

    def close(self) -> None:
        """Ends the Lua process."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _store(self, host: str, user: str, record: str) -> None:
        assert self._process.stdin is not None and self._process.stdout is not None
        with self._lock:
            self._process.stdin.write(f"{host}\t{user}\tlastlog2\t{record}\n")
            answer = self._process.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"datamanager refused {host}/{user}: {answer or 'the writer exited'}")


class SqlGenerator:
    """Writes one user's login or logout at a time into Prosody's table, as mod_storage_sql does; skips while
    down."""

    def __init__(
        self, connect: Callable[[], Any], driver: str, hosts: Sequence[str], users: int, *, margin: int, seed: int
    ) -> None:
        self._connect, self.driver = connect, driver
        self.hosts, self.users = list(hosts), users
        self.bands = age_bands(margin)
        self.rewrites = self.failures = 0
        self.last_write = 0.0  # time.time() of the last committed write
        self._rng = random.Random(seed)
        self._table = "`prosody`" if driver == "MySQL" else '"prosody"'
        self._column = "`user`" if driver == "MySQL" else '"user"'
        self._key = "`key`" if driver == "MySQL" else '"key"'

    def populate(self) -> None:
        """Creates the table and writes every user once."""
        rows = [
            row
            for host in self.hosts
            for number in range(self.users)
            for row in random_record(self._rng, int(time.time()), self.bands).rows(host, f"user{number}")
        ]
        with closing(self._connect()) as connection:
            prosody_table.create(connection, self.driver)
            prosody_table.replace_rows(connection, self.driver, rows)
        self.last_write = time.time()

    def step(self) -> None:
        """A login or logout of one random user, as mod_lastlog2 writes it through mod_storage_sql: that key's row
        replaced, in one transaction, with the time of the event (Prosody always writes os.time(); the look by time
        of MariaDB relies on it). A failure (server down) is counted, not raised."""
        host, user = self._rng.choice(self.hosts), f"user{self._rng.randrange(self.users)}"
        key = self._rng.choice(["login", "logout"])
        row = (host, user, "lastlog2", key, "json", json.dumps({"timestamp": int(time.time())}, separators=(",", ":")))
        try:
            with closing(self._connect()) as connection:
                cursor = connection.cursor()
                cursor.execute(
                    f"DELETE FROM {self._table} WHERE host = %s AND {self._column} = %s AND store = 'lastlog2' "
                    f"AND {self._key} = %s",
                    (host, user, key),
                )
                cursor.execute(f"INSERT INTO {self._table} VALUES (%s, %s, %s, %s, %s, %s)", row)
                connection.commit()
        except Exception:  # the server is stopped or frozen: psycopg, PyMySQL and socket errors alike
            self.failures += 1
            return
        self.rewrites += 1
        self.last_write = time.time()

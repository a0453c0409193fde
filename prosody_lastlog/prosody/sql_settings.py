"""Prosody's `sql = {...}` option as a value, and the SQL URLs that name the same thing on the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

DRIVERS = ("SQLite3", "PostgreSQL", "MySQL")  # Prosody's names for them
_URL_SCHEMES = {
    "sqlite": "SQLite3",
    "postgresql": "PostgreSQL",
    "postgres": "PostgreSQL",
    "mysql": "MySQL",
    "mariadb": "MySQL",
}


@dataclass(frozen=True)
class SqlSettings:
    """Where Prosody's `prosody` table lives, as in its `sql = {...}` option."""

    driver: str  # "SQLite3" | "PostgreSQL" | "MySQL"
    database: str  # for SQLite3: the file's path
    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """A name for logs and errors, without the password."""
        if self.driver == "SQLite3":
            return f"SQLite3 {self.database}"
        user = f"{self.username}@" if self.username else ""
        port = f":{self.port}" if self.port else ""
        return f"{self.driver} {user}{self.host or 'localhost'}{port}/{self.database}"


def parse_sql_url(url: str, *, password: str | None = None) -> SqlSettings:
    """Reads `sqlite:///path`, `postgresql://user[:pw]@host:port/db` or `mysql://user@host:port/db`.

    `password` (from --sql-password-file) wins over one written in the URL.
    """
    parts = urlsplit(url)
    driver = _URL_SCHEMES.get(parts.scheme.lower())
    if driver is None:
        raise ValueError(f"unsupported SQL URL scheme {parts.scheme!r}: use sqlite, postgresql or mysql")
    if driver == "SQLite3":
        if not parts.path.startswith("/"):
            raise ValueError("an sqlite URL needs an absolute file path: sqlite:///var/lib/prosody/prosody.sqlite")
        path = "/" + unquote(parts.path).lstrip("/")  # sqlite:///abs and sqlite:////abs both mean /abs
        if path == "/":
            raise ValueError("an sqlite URL needs a file path: sqlite:///var/lib/prosody/prosody.sqlite")
        return SqlSettings(driver, path)
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ValueError(f"the {parts.scheme} URL names no database: {parts.scheme}://user@host:port/prosody")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid port in the {parts.scheme} URL") from exc
    return SqlSettings(
        driver,
        database,
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=password if password is not None else (unquote(parts.password) if parts.password else None),
    )

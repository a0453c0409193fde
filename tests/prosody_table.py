"""Creates Prosody's `prosody` table exactly as 0.12's mod_storage_sql does, and fills it with rows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Row = tuple[str, str, str, str, str, str]  # host, user, store, key, type, value

# The DDL Prosody 0.12's util/sql.lua generates (PROSODY-FORMATS.md, section 2.1).
DDL = {
    "SQLite3": [
        'CREATE TABLE IF NOT EXISTS "prosody" ("host" TEXT NOT NULL, "user" TEXT NOT NULL, "store" TEXT NOT NULL, '
        '"key" TEXT NOT NULL, "type" TEXT NOT NULL, "value" TEXT NOT NULL)',
        'CREATE INDEX IF NOT EXISTS "prosody_index" ON "prosody" ("host", "user", "store", "key")',
    ],
    "PostgreSQL": [
        'CREATE TABLE IF NOT EXISTS "prosody" ("host" TEXT NOT NULL, "user" TEXT NOT NULL, "store" TEXT NOT NULL, '
        '"key" TEXT NOT NULL, "type" TEXT NOT NULL, "value" TEXT NOT NULL)',
        'CREATE INDEX IF NOT EXISTS "prosody_index" ON "prosody" ("host", "user", "store", "key")',
    ],
    "MySQL": [
        "CREATE TABLE IF NOT EXISTS `prosody` (`host` TEXT NOT NULL, `user` TEXT NOT NULL, `store` TEXT NOT NULL, "
        "`key` TEXT NOT NULL, `type` TEXT NOT NULL, `value` MEDIUMTEXT NOT NULL) "
        "CHARACTER SET 'utf8mb4' COLLATE 'utf8mb4_bin'",
        "CREATE INDEX `prosody_index` ON `prosody` (`host`(20), `user`(20), `store`(20), `key`(20))",
    ],
}


def create(connection: Any, driver: str) -> None:
    """Creates the table and its index (DB-API connection, autocommit or committed here)."""
    cursor = connection.cursor()
    for statement in DDL[driver]:
        cursor.execute(statement)
    connection.commit()


def replace_rows(connection: Any, driver: str, rows: Iterable[Row]) -> None:
    """Empties the table and inserts `rows`."""
    placeholder = "?" if driver == "SQLite3" else "%s"
    table = "`prosody`" if driver == "MySQL" else '"prosody"'
    cursor = connection.cursor()
    cursor.execute(f"DELETE FROM {table}")
    cursor.executemany(f"INSERT INTO {table} VALUES ({', '.join([placeholder] * 6)})", list(rows))
    connection.commit()

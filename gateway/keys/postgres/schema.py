"""The PostgreSQL store's schema: versioned SQL files in ``migrations/`` (``0001_keys.sql``, ...), applied in
order by ``gateway store migrate`` and checked by every gateway before it starts.

The table ``gateway_schema`` holds one row per version applied. :func:`migrate` applies every newer file, each
with its row, in one transaction under an advisory lock: two hosts migrating at once apply each file once (the
second waits for the first, then finds nothing left to do), and a file that fails leaves the database at the
version it had. PostgreSQL's DDL is transactional, so there is no half-applied version.

:func:`check` refuses a database made by a newer gateway (its schema is newer than the files here: this
gateway would misread it) and one that is older (or empty), naming the command that brings it up to date.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from gateway.keys.store import StoreError

# An arbitrary constant: the advisory lock taken while migrating ("gw schema" in ASCII).
MIGRATION_LOCK = 0x677720736368656D
_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_CREATE_TABLE = """CREATE TABLE IF NOT EXISTS gateway_schema (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """Every migration shipped with this gateway, by version (1, 2, ... with no gap)."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"PostgreSQL migrations are not numbered 1..n: {[m.name for m in found]}")
    return tuple(found)


def latest() -> int:
    """The schema version this gateway reads and writes."""
    return migrations()[-1].version


async def current(conn: Any) -> int:
    """The version the database is at (0: never migrated)."""
    exists = await conn.fetchval("SELECT to_regclass('gateway_schema') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM gateway_schema"))


async def check(conn: Any, where: str) -> int:
    """The database's version if it is the one this gateway knows; else StoreError saying what to do."""
    have, want = await current(conn), latest()
    if have > want:
        raise StoreError(f"{where}: the database has schema version {have}, made by a newer gateway; this one "
                         f"knows up to {want}: upgrade the gateway")
    if have < want:
        what = "has no gateway schema yet" if have == 0 else f"has schema version {have}"
        raise StoreError(f"{where}: the database {what}; this gateway needs version {want}: run "
                         "`gateway store migrate` (with the same configuration) first")
    return have


async def migrate(conn: Any, target: int | None = None) -> tuple[int, int]:
    """Apply every migration after the database's version, up to ``target`` (default: the latest), in one
    transaction. Returns (version before, version after). A database newer than ``target`` is left alone."""
    want = latest() if target is None else target
    if not 0 <= want <= latest():
        raise StoreError(f"no schema version {want}; this gateway knows 1 to {latest()}")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(_CREATE_TABLE)
        before = await current(conn)
        if before > latest():
            raise StoreError(f"the database has schema version {before}, made by a newer gateway; this one knows "
                             f"up to {latest()}: upgrade the gateway")
        for migration in migrations():
            if before < migration.version <= want:
                await conn.execute(migration.sql)
                await conn.execute("INSERT INTO gateway_schema (version) VALUES ($1)", migration.version)
    return before, max(before, want)

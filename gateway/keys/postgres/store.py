"""PostgreSQL key store: the same behaviour as the SQLite and Redis stores, shared by every gateway host.

Connections come from a bounded asyncpg pool (``store.pool_size``), made at the first call on the loop that
uses the store; every query, and every wait for a pooled connection, is bounded by ``store.timeout_ms``, so an
absent or hung server costs a request at most that long and the caller sees :class:`StoreError` (the gate
answers 503 unless the key is cached). The message names the server with its password masked and what failed,
never a key, a hash or a value.

Every management change is one transaction with its audit row. The checks a change depends on read the key's
row ``FOR UPDATE``: of two rotations of one key, the second waits for the first to commit and then sees the
successor it made (a :class:`Conflict`), so a key never gets two successors. Usage counts arrive in batches
(:class:`gateway.keys.usage.UsageRecorder`) and are written in one statement, the rows locked in id order so
two hosts flushing at once cannot deadlock.

Every change to a key the gate reads is announced on the ``gateway_keys`` channel by a trigger
(``migrations/0001_keys.sql``); :class:`gateway.keys.postgres.listener.InvalidationListener` turns that into
cache invalidations. The schema is versioned (:mod:`gateway.keys.postgres.schema`).
"""

from __future__ import annotations

import asyncio
import builtins  # the stores have a list() method: annotations after it name the type this way
import json
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

from gateway.keys.postgres import schema
from gateway.keys.postgres.text import unstorable
from gateway.keys.postgres.users import CHANNEL as CHANNEL
from gateway.keys.postgres.users import USAGE_DAILY, PostgresUsers
from gateway.keys.record import AuditEvent, KeyRecord, utcnow
from gateway.keys.store import Conflict, StoreError, UsageUpdate
from gateway.redisurl import redacted

SCHEMES = ("postgresql", "postgres")
_FIELDS = (
    "id", "key_hash", "hint", "name", "permissions", "allowed_ips", "environment", "created_at", "expires_at",
    "revoked_at", "rate_limit_tier", "description", "created_by", "auto_rotate", "rotation_period",
    "rotated_from", "rotated_to", "last_used_at", "last_used_ip", "request_count", "grace_period",
    "notification_email", "held_value", "notices",
)
_COLUMNS = ", ".join(_FIELDS)
_ARRAY_FIELDS = frozenset({"permissions", "allowed_ips"})
UPDATABLE = frozenset({"name", "permissions", "allowed_ips", "rate_limit_tier", "expires_at", "description",
                       "auto_rotate", "rotation_period", "grace_period", "notification_email"})
_INSERT = f"INSERT INTO api_keys ({_COLUMNS}) VALUES ({', '.join(f'${i}' for i in range(1, len(_FIELDS) + 1))})"
_AUDIT = "INSERT INTO audit_log (at, actor, action, key_id, details) VALUES ($1, $2, $3, $4, $5::jsonb)"
_USAGE = """
WITH u AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::text[]) AS u(id, n, at, ip)),
     locked AS (SELECT k.id FROM api_keys k JOIN u ON u.id = k.id ORDER BY k.id FOR UPDATE OF k)
UPDATE api_keys k SET
    request_count = k.request_count + u.n,
    last_used_at = CASE WHEN k.last_used_at IS NULL OR k.last_used_at < u.at THEN u.at ELSE k.last_used_at END,
    last_used_ip = CASE WHEN k.last_used_at IS NULL OR k.last_used_at <= u.at THEN u.ip ELSE k.last_used_ip END
FROM u JOIN locked ON locked.id = u.id
WHERE k.id = u.id
"""
# What makes a call fail (server gone, restarted, timed out, a statement refused): StoreError.
_DOWN = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError, OSError,
         asyncio.TimeoutError)
# What says the connection itself is dead (the server restarted or ended the session since it was made; a
# pooled connection that saw that happen while idle can be left in a state asyncpg refuses to use).
_BROKEN = (asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError, asyncpg.InterfaceError,
           asyncpg.exceptions.InternalClientError, ConnectionError)


class _StaleConnection(StoreError):
    """A call failed on a pooled connection that was dead: a read is tried once more on a new one."""

# Values most keys share (permission and allowlist lists, environment, creator), one copy each: a record lives
# in the key cache (see gateway.keys.sqlite, which does the same). Cleared when full.
_SHARED: dict[tuple[str, Any], Any] = {}
_SHARED_MAX = 4096
_SHARED_FIELDS = frozenset({"permissions", "allowed_ips", "environment", "rate_limit_tier", "created_by"})


def _shared(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _ARRAY_FIELDS:
        value = tuple(value)
    got = _SHARED.get((name, value))
    if got is None:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        got = _SHARED[(name, value)] = value
    return got


def _record(row: Mapping[str, Any]) -> KeyRecord:
    values = {name: (_shared(name, row[name]) if name in _SHARED_FIELDS else row[name]) for name in _FIELDS}
    return KeyRecord(**values)


def _to_db(name: str, value: Any) -> Any:
    return list(value) if name in _ARRAY_FIELDS else value


def _event_args(event: AuditEvent) -> tuple[Any, ...]:
    return (event.at, event.actor, event.action, event.key_id, json.dumps(event.details, default=str))


def _event(row: Mapping[str, Any]) -> AuditEvent:
    return AuditEvent(at=row["at"], actor=row["actor"], action=row["action"], key_id=row["key_id"],
                      details=json.loads(row["details"]))


class PostgresStore(PostgresUsers):
    """The :class:`gateway.keys.store.KeyStore` and :class:`gateway.keys.store.UserStore` protocols on PostgreSQL
    (asyncpg)."""

    def __init__(self, url: str, timeout_ms: float = 50.0, pool_size: int = 10) -> None:
        self.url = url
        self.where = redacted(url)
        self.timeout = timeout_ms / 1000
        # A new connection also does TLS and authentication: it gets at least a quarter second.
        self.connect_timeout = max(self.timeout, 0.25)
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r})"

    # --- connections -------------------------------------------------------------------------------------------

    def _fail(self, exc: BaseException, what: str) -> StoreError:
        # The class name only: a server message can quote a row (a duplicate key's hash); asyncpg's own
        # messages never carry the password, but the class name is all a client or a log needs.
        if isinstance(exc, asyncpg.UniqueViolationError):
            return StoreError("a key with this id or value already exists")
        if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedColumnError):
            return StoreError(f"{self.where}: {what} failed: the database lacks this gateway's tables: run "
                              "`gateway store migrate` (with the same configuration)")
        if isinstance(exc, asyncio.TimeoutError | TimeoutError):
            return StoreError(f"{self.where}: {what} failed: no answer within {self.timeout * 1000:g} ms")
        return StoreError(f"{self.where}: {what} failed: {exc.__class__.__name__}")

    async def connect(self) -> asyncpg.Connection:
        """One connection of its own (the schema commands, the invalidation listener, the rotation lease)."""
        try:
            conn: asyncpg.Connection = await asyncpg.connect(self.url, timeout=self.connect_timeout,
                                                             command_timeout=max(self.timeout, 5.0))
        except (*_DOWN, ValueError) as exc:
            raise self._fail(exc, "connect") from None
        return conn

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        if self._closed:
            raise StoreError(f"{self.where}: the store is closed")
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                try:
                    # min_size 0: a pool made while the server is down is still a pool; each acquire then
                    # tries to connect (bounded), and the first one after the server is back succeeds.
                    self._pool = await asyncpg.create_pool(
                        self.url, min_size=0, max_size=self.pool_size, timeout=self.connect_timeout,
                        command_timeout=self.timeout, max_inactive_connection_lifetime=60.0)
                except (*_DOWN, ValueError) as exc:
                    raise self._fail(exc, "connect") from None
            return self._pool

    @asynccontextmanager
    async def _conn(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; any database failure inside becomes StoreError naming ``what``."""
        pool = await self._get_pool()
        try:
            async with pool.acquire(timeout=self.connect_timeout) as conn:
                yield conn
        except _DOWN as exc:
            if isinstance(exc, _BROKEN):
                # One dead connection means the others made before it are dead too (a restart): each is
                # replaced when next taken, instead of failing one request each.
                await pool.expire_connections()
                raise _StaleConnection(str(self._fail(exc, what))) from None
            raise self._fail(exc, what) from None

    async def _read(self, what: str, method: str, sql: str, *args: Any) -> Any:
        """``conn.<method>(sql, *args)`` on a pooled connection. A read that met a dead connection (the server
        restarted since it was made) is tried once more, on a new one: nothing was changed, so nothing can be
        done twice. A timeout is not retried (the bound is the bound)."""
        try:
            async with self._conn(what) as conn:
                return await getattr(conn, method)(sql, *args)
        except _StaleConnection:
            async with self._conn(what) as conn:
                return await getattr(conn, method)(sql, *args)

    @asynccontextmanager
    async def _tx(self, what: str = "write") -> AsyncIterator[asyncpg.Connection]:
        async with self._conn(what) as conn, conn.transaction():
            yield conn

    async def check_schema(self) -> int:
        """The schema version, if it is the one this gateway knows (else StoreError naming what to run)."""
        async with self._conn("schema check") as conn:
            return await schema.check(conn, self.where)

    def check_schema_at_start(self) -> int:
        """:meth:`check_schema` for a gateway about to start (synchronous code, perhaps on a running loop): on
        a connection of its own, in a thread of its own, so the pool stays for the loop that will serve."""
        outcome: builtins.list[Any] = []

        async def check() -> int:
            conn = await self.connect()
            try:
                return await schema.check(conn, self.where)
            except _DOWN as exc:
                raise self._fail(exc, "schema check") from None
            finally:
                await conn.close()

        def run() -> None:
            try:
                outcome.append(asyncio.run(check()))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
                outcome.append(exc)

        thread = threading.Thread(target=run, name="postgres-schema-check")
        thread.start()
        thread.join()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return int(outcome[0])

    async def migrate(self, target: int | None = None) -> tuple[int, int]:
        """Bring the database to ``target`` (default: the latest schema); (version before, after)."""
        conn = await self.connect()
        try:
            return await schema.migrate(conn, target)
        except _DOWN as exc:
            raise self._fail(exc, "migration") from None
        finally:
            await conn.close()

    # --- reads -------------------------------------------------------------------------------------------------

    async def _one(self, where: str, arg: str) -> KeyRecord | None:
        if unstorable(arg):
            return None
        row = await self._read("lookup", "fetchrow", f"SELECT {_COLUMNS} FROM api_keys WHERE {where} = $1", arg)
        return _record(row) if row is not None else None

    async def get_by_hash(self, key_hash: str) -> KeyRecord | None:
        return await self._one("key_hash", key_hash)

    async def get(self, key_id: str) -> KeyRecord | None:
        return await self._one("id", key_id)

    async def list(
        self, *, environment: str | None = None, status: str | None = None, now: datetime | None = None,
        limit: int | None = None, offset: int = 0, created_by: str | None = None, watched: bool = False,
    ) -> list[KeyRecord]:
        clauses: builtins.list[str] = []
        args: builtins.list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if watched:
            clauses.append("(auto_rotate OR notification_email IS NOT NULL)")  # the partial index api_keys_watched
        if environment is not None:
            clauses.append(f"environment = {arg(environment)}")
        if created_by is not None:
            clauses.append(f"created_by = {arg(created_by)}")
        if status == "revoked":
            clauses.append("revoked_at IS NOT NULL")
        elif status == "expired":
            clauses.append(f"revoked_at IS NULL AND expires_at IS NOT NULL AND expires_at <= {arg(now or utcnow())}")
        elif status == "active":
            clauses.append(f"revoked_at IS NULL AND (expires_at IS NULL OR expires_at > {arg(now or utcnow())})")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (f"SELECT {_COLUMNS} FROM api_keys {where} ORDER BY created_at, id"
               f" LIMIT {arg(limit)}::bigint OFFSET {arg(offset)}::bigint")
        return [_record(r) for r in await self._read("list", "fetch", sql, *args)]

    async def audit_log(self, key_id: str | None = None, limit: int = 1000) -> builtins.list[AuditEvent]:
        if key_id is not None and unstorable(key_id):
            return []
        if key_id is None:
            rows = await self._read("audit read", "fetch", "SELECT at, actor, action, key_id, details FROM audit_log"
                                    " ORDER BY seq LIMIT $1", limit)
        else:
            rows = await self._read("audit read", "fetch", "SELECT at, actor, action, key_id, details FROM audit_log"
                                    " WHERE key_id = $1 ORDER BY seq LIMIT $2", key_id, limit)
        return [_event(r) for r in rows]

    # --- writes ------------------------------------------------------------------------------------------------

    @staticmethod
    async def _insert(conn: asyncpg.Connection, record: KeyRecord) -> None:
        await conn.execute(_INSERT, *(_to_db(f, getattr(record, f)) for f in _FIELDS))

    @staticmethod
    async def _row(conn: asyncpg.Connection, key_id: str) -> KeyRecord | None:
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
        return _record(row) if row is not None else None

    async def add(self, record: KeyRecord, audit: AuditEvent | None = None) -> None:
        async with self._tx() as conn:
            await self._insert(conn, record)
            if audit is not None:
                await conn.execute(_AUDIT, *_event_args(audit))

    async def update(self, key_id: str, changes: Mapping[str, Any], audit: AuditEvent) -> KeyRecord | None:
        bad = set(changes) - UPDATABLE
        if bad:
            raise StoreError(f"cannot update field {sorted(bad)[0]!r}")
        if unstorable(key_id):
            return None  # no such key
        names = builtins.list(changes)  # only names from UPDATABLE reach the SQL text
        async with self._tx() as conn:
            if await conn.fetchval("SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", key_id) is None:
                return None
            if names:
                sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
                await conn.execute(f"UPDATE api_keys SET {sets} WHERE id = $1", key_id,
                                   *(_to_db(n, changes[n]) for n in names))
            await conn.execute(_AUDIT, *_event_args(audit))
            return await self._row(conn, key_id)

    async def revoke(self, key_id: str, actor: str = "cli") -> KeyRecord | None:
        if unstorable(key_id):
            return None  # no such key
        async with self._tx() as conn:
            row = await conn.fetchrow("SELECT revoked_at FROM api_keys WHERE id = $1 FOR UPDATE", key_id)
            if row is None:
                return None
            if row["revoked_at"] is None:
                now = utcnow()
                await conn.execute("UPDATE api_keys SET revoked_at = $2 WHERE id = $1", key_id, now)
                await conn.execute(_AUDIT, *_event_args(AuditEvent(action="revoke", key_id=key_id, actor=actor,
                                                                   at=now)))
            return await self._row(conn, key_id)

    async def rotate(
        self, old_id: str, new: KeyRecord, old_expires_at: datetime, audit: AuditEvent
    ) -> KeyRecord | None:
        if unstorable(old_id):
            return None  # no such key
        async with self._tx() as conn:
            # The row lock is what keeps concurrent rotations to one successor: a second rotation waits here
            # for the first to commit, then reads its rotated_to.
            row = await conn.fetchrow("SELECT revoked_at, rotated_to, expires_at FROM api_keys WHERE id = $1"
                                      " FOR UPDATE", old_id)
            if row is None:
                return None
            if row["revoked_at"] is not None:
                raise Conflict("conflict.revoked")
            if row["rotated_to"] is not None:
                raise Conflict("conflict.rotated", key_id=row["rotated_to"])
            expires_at = row["expires_at"]
            if expires_at is not None and expires_at <= utcnow():
                raise Conflict("conflict.expired")
            if expires_at is not None and expires_at < old_expires_at:
                old_expires_at = expires_at  # rotation never extends a key's life
            await self._insert(conn, new)
            await conn.execute("UPDATE api_keys SET expires_at = $2, rotated_to = $3 WHERE id = $1",
                               old_id, old_expires_at, new.id)
            await conn.execute(_AUDIT, *_event_args(audit))
            return await self._row(conn, old_id)

    async def take_held_value(self, key_id: str, audit: AuditEvent) -> str | None:
        """The sealed value held for ``key_id``, erased in the same transaction (so only one caller ever gets
        it), with ``audit``; None when none is held."""
        if unstorable(key_id):
            return None  # no such key
        async with self._tx() as conn:
            held = await conn.fetchval("SELECT held_value FROM api_keys WHERE id = $1 FOR UPDATE", key_id)
            if held is None:
                return None
            await conn.execute("UPDATE api_keys SET held_value = NULL WHERE id = $1", key_id)
            await conn.execute(_AUDIT, *_event_args(audit))
            return str(held)

    async def set_notices(self, key_id: str, notices: str | None) -> None:
        """Record the state of a key's notices (no audit event: they change no key)."""
        async with self._conn("write") as conn:
            await conn.execute("UPDATE api_keys SET notices = $2 WHERE id = $1", key_id, notices)

    async def record_usage(self, updates: Sequence[UsageUpdate]) -> None:
        """Add usage counts to the keys' totals and to their counts per UTC day, in one transaction (a key
        deleted meanwhile is skipped)."""
        if not updates:
            return
        ids, counts, stamps = [u.key_id for u in updates], [u.count for u in updates], [u.last_used_at for u in updates]
        async with self._tx("usage write") as conn:
            await conn.execute(_USAGE, ids, counts, stamps, [u.last_used_ip for u in updates])
            await conn.execute(USAGE_DAILY, ids, counts, stamps)

    async def append_audit(self, events: Sequence[AuditEvent]) -> None:
        """Append audit rows as they are (``gateway store copy``), in one transaction."""
        if not events:
            return
        async with self._tx("audit write") as conn:
            await conn.executemany(_AUDIT, [_event_args(e) for e in events])

    async def ping(self) -> None:
        await self._read("ping", "fetchval", "SELECT 1")

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except (*_DOWN, RuntimeError):
                pool.terminate()

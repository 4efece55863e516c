"""The PostgreSQL store's dashboard users, refresh tokens and per-day usage (the
:class:`gateway.keys.store.UserStore` half of :class:`gateway.keys.postgres.store.PostgresStore`; tables of
schema version 2, ``migrations/0002_users.sql``).

A refresh is one transaction that reads the token presented ``FOR UPDATE``: of two refreshes with the same token
at once, the second waits for the first to commit, then finds it spent (reuse: the whole family is revoked, RFC
9700 4.14.2), so a token is never spent twice.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from datetime import date, datetime, timedelta
from typing import Any

from gateway.keys.postgres.text import unstorable
from gateway.keys.store import Conflict
from gateway.keys.users import (
    EXPIRED,
    REFRESH_FIELDS,
    REUSED,
    REVOKED,
    SPENT,
    UNKNOWN,
    USER_FIELDS,
    USER_INVALIDATION,
    USER_STANDING,
    USER_UPDATABLE,
    RefreshRecord,
    UserRecord,
    day_range,
    email_key,
)

# The invalidation channel: the trigger of migrations/0001_keys.sql sends a changed key's hash on it, and
# update_user "user:<id>" for a change to a user's standing (gateway.accounts.status).
CHANNEL = "gateway_keys"
_USER_COLUMNS = ", ".join(USER_FIELDS)
_REFRESH_COLUMNS = ", ".join(REFRESH_FIELDS)
_INSERT_REFRESH = f"INSERT INTO refresh_tokens ({_REFRESH_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
# Per key and UTC day, added to by every usage flush in its transaction (keys that exist only).
USAGE_DAILY = """
INSERT INTO usage_daily (key_id, day, count)
SELECT u.id, (u.at AT TIME ZONE 'UTC')::date, u.n
FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) AS u(id, n, at) JOIN api_keys k ON k.id = u.id
ON CONFLICT (key_id, day) DO UPDATE SET count = usage_daily.count + excluded.count
"""


def _user(row: Mapping[str, Any]) -> UserRecord:
    return UserRecord(**{name: row[name] for name in USER_FIELDS})


def _refresh(row: Mapping[str, Any]) -> RefreshRecord:
    return RefreshRecord(**{name: row[name] for name in REFRESH_FIELDS})


def _refresh_args(r: RefreshRecord) -> tuple[Any, ...]:
    return tuple(getattr(r, name) for name in REFRESH_FIELDS)


class PostgresUsers:
    """Mixed into PostgresStore, whose ``_conn`` (a pooled connection) and ``_tx`` (one in a transaction) it
    uses."""

    def _conn(self, what: str) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    def _tx(self, what: str = "write") -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def _read(self, what: str, method: str, sql: str, *args: Any) -> Any:
        raise NotImplementedError

    # --- users -------------------------------------------------------------------------------------------------

    async def add_user(self, user: UserRecord) -> None:
        async with self._tx("user write") as conn:
            # The row lock of an INSERT ... ON CONFLICT DO NOTHING settles two adds of one address at once: the
            # second sees the first's row and inserts nothing.
            added = await conn.fetchval(
                f"INSERT INTO users ({_USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                user.id, email_key(user.email), user.role, user.password_hash, user.status, user.created_at,
                user.last_login_at, user.password_changed_at)
            if added is None:
                raise Conflict("conflict.user_exists")

    async def get_user(self, user_id: str) -> UserRecord | None:
        if unstorable(user_id):
            return None
        row = await self._read("user read", "fetchrow", f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1", user_id)
        return _user(row) if row is not None else None

    async def get_user_by_email(self, email: str) -> UserRecord | None:
        if unstorable(email):
            return None
        row = await self._read("user read", "fetchrow", f"SELECT {_USER_COLUMNS} FROM users WHERE email = $1",
                               email_key(email))
        return _user(row) if row is not None else None

    async def list_users(self) -> builtins.list[UserRecord]:
        rows = await self._read("user read", "fetch", f"SELECT {_USER_COLUMNS} FROM users ORDER BY created_at, id")
        return [_user(r) for r in rows]

    async def update_user(self, user_id: str, changes: Mapping[str, Any]) -> UserRecord | None:
        bad = set(changes) - USER_UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {', '.join(sorted(bad))}")
        names = builtins.list(changes)  # only names from USER_UPDATABLE reach the SQL text
        async with self._tx("user write") as conn:
            if names:
                sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
                await conn.execute(f"UPDATE users SET {sets} WHERE id = $1", user_id, *(changes[n] for n in names))
            row = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1", user_id)
            if row is not None and USER_STANDING & set(names):
                # Sent when the transaction commits, on the keys' channel (gateway.accounts.status listens).
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, USER_INVALIDATION + user_id)
        return _user(row) if row is not None else None

    # --- refresh tokens ----------------------------------------------------------------------------------------

    async def add_refresh(self, token: RefreshRecord) -> None:
        async with self._conn("refresh write") as conn:
            await conn.execute(_INSERT_REFRESH, *_refresh_args(token))

    async def spend_refresh(self, token_hash: str, new: RefreshRecord,
                            now: datetime) -> tuple[str, RefreshRecord | None]:
        async with self._tx("refresh write") as conn:
            row = await conn.fetchrow(f"SELECT {_REFRESH_COLUMNS} FROM refresh_tokens WHERE token_hash = $1"
                                      " FOR UPDATE", token_hash)
            if row is None:
                return UNKNOWN, None
            old = _refresh(row)
            if old.revoked_at is not None:
                return REVOKED, old
            if old.used_at is not None:
                # A spent token presented again: stolen, or replayed. Every token of the login goes.
                await conn.execute("UPDATE refresh_tokens SET revoked_at = $2 WHERE family = $1"
                                   " AND revoked_at IS NULL", old.family, now)
                return REUSED, old
            if old.expires_at <= now:
                return EXPIRED, old
            await conn.execute("UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1", token_hash, now)
            new = dataclasses.replace(new, family=old.family, user_id=old.user_id, expires_at=old.expires_at)
            await conn.execute(_INSERT_REFRESH, *_refresh_args(new))
            # Tokens past their family's end are of no more use: the table does not grow.
            await conn.execute("DELETE FROM refresh_tokens WHERE expires_at < $1", now - timedelta(days=1))
            return SPENT, old

    async def revoke_refresh_family(self, token_hash: str, now: datetime) -> bool:
        async with self._tx("refresh write") as conn:
            family = await conn.fetchval("SELECT family FROM refresh_tokens WHERE token_hash = $1", token_hash)
            if family is None:
                return False
            await conn.execute("UPDATE refresh_tokens SET revoked_at = $2 WHERE family = $1 AND revoked_at IS NULL",
                               family, now)
            return True

    async def revoke_user_refresh(self, user_id: str, now: datetime) -> None:
        async with self._conn("refresh write") as conn:
            await conn.execute("UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1"
                               " AND revoked_at IS NULL", user_id, now)

    # --- usage per day -----------------------------------------------------------------------------------------

    async def usage_by_day(self, key_id: str, days: int) -> builtins.list[tuple[date, int]]:
        first, span = day_range(days)
        if unstorable(key_id):
            return [(d, 0) for d in span]
        rows = await self._read("usage read", "fetch",
                                "SELECT day, count FROM usage_daily WHERE key_id = $1 AND day >= $2", key_id, first)
        counts = {r["day"]: int(r["count"]) for r in rows}
        return [(d, counts.get(d, 0)) for d in span]

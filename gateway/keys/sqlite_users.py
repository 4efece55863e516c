"""The SQLite store's dashboard users, refresh tokens and per-day usage (the
:class:`gateway.keys.store.UserStore` half of :class:`gateway.keys.sqlite.SQLiteStore`).

Reads run on the event loop like key lookups; every write goes through the store's writer thread in one
IMMEDIATE transaction, so a refresh (check the token, mark it spent, store its successor; or revoke its family)
is atomic against every other process sharing the file.
"""

from __future__ import annotations

import builtins
import dataclasses
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from gateway.keys.record import parse_iso, to_iso
from gateway.keys.store import Conflict
from gateway.keys.users import (
    EXPIRED,
    REFRESH_FIELDS,
    REUSED,
    REVOKED,
    SPENT,
    UNKNOWN,
    USER_FIELDS,
    USER_UPDATABLE,
    RefreshRecord,
    UserRecord,
    day_range,
    email_key,
)

T = TypeVar("T")

USERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    status        TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    last_login_at TEXT,
    password_changed_at TEXT
);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family     TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    revoked_at TEXT
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX IF NOT EXISTS refresh_tokens_user ON refresh_tokens (user_id);
CREATE TABLE IF NOT EXISTS usage_daily (
    key_id TEXT NOT NULL,
    day    TEXT NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (key_id, day)
);
"""
# Per key and UTC day: added to by every usage flush (gateway.keys.usage), in the flush's transaction.
USAGE_DAILY_SQL = (
    "INSERT INTO usage_daily (key_id, day, count) VALUES (?, ?, ?)"
    " ON CONFLICT (key_id, day) DO UPDATE SET count = count + excluded.count"
)
_USER_COLUMNS = ", ".join(USER_FIELDS)
_REFRESH_COLUMNS = ", ".join(REFRESH_FIELDS)


def _user(row: Sequence[Any]) -> UserRecord:
    i, email, role, pw, status, created, last, changed = row
    return UserRecord(id=i, email=email, role=role, password_hash=pw, status=status, created_at=parse_iso(created),
                      last_login_at=parse_iso(last) if last else None,
                      password_changed_at=parse_iso(changed) if changed else None)


def _refresh(row: Sequence[Any]) -> RefreshRecord:
    h, family, user_id, created, expires, used, revoked = row
    return RefreshRecord(token_hash=h, family=family, user_id=user_id, created_at=parse_iso(created),
                         expires_at=parse_iso(expires), used_at=parse_iso(used) if used else None,
                         revoked_at=parse_iso(revoked) if revoked else None)


def _refresh_row(r: RefreshRecord) -> tuple[Any, ...]:
    return (r.token_hash, r.family, r.user_id, to_iso(r.created_at), to_iso(r.expires_at), to_iso(r.used_at),
            to_iso(r.revoked_at))


class SQLiteUsers:
    """Mixed into SQLiteStore, whose ``_read``, ``_write`` and ``_in_writer`` it uses."""

    # Provided by SQLiteStore.
    _read: Callable[..., builtins.list[Any]]
    _write: Callable[[], AbstractContextManager[sqlite3.Connection]]

    async def _in_writer(self, work: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError

    # --- users -----------------------------------------------------------------------------------------------

    async def add_user(self, user: UserRecord) -> None:
        await self._in_writer(self._add_user, user)

    def _add_user(self, user: UserRecord) -> None:
        with self._write() as db:
            taken = db.execute("SELECT 1 FROM users WHERE email = ? OR id = ?",
                               (email_key(user.email), user.id)).fetchone()
            if taken:
                raise Conflict("conflict.user_exists")
            db.execute(f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (user.id, email_key(user.email), user.role, user.password_hash, user.status,
                        to_iso(user.created_at), to_iso(user.last_login_at), to_iso(user.password_changed_at)))

    async def get_user(self, user_id: str) -> UserRecord | None:
        rows = self._read(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,))
        return _user(rows[0]) if rows else None

    async def get_user_by_email(self, email: str) -> UserRecord | None:
        rows = self._read(f"SELECT {_USER_COLUMNS} FROM users WHERE email = ?", (email_key(email),))
        return _user(rows[0]) if rows else None

    async def list_users(self) -> builtins.list[UserRecord]:
        return [_user(r) for r in self._read(f"SELECT {_USER_COLUMNS} FROM users ORDER BY created_at, id")]

    async def update_user(self, user_id: str, changes: Mapping[str, Any]) -> UserRecord | None:
        bad = set(changes) - USER_UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {', '.join(sorted(bad))}")
        row = await self._in_writer(self._update_user, user_id, dict(changes))
        return _user(row) if row is not None else None

    def _update_user(self, user_id: str, changes: dict[str, Any]) -> Sequence[Any] | None:
        with self._write() as db:
            if changes:
                sets = ", ".join(f"{name} = ?" for name in changes)
                values = [to_iso(v) if isinstance(v, datetime) else v for v in changes.values()]
                db.execute(f"UPDATE users SET {sets} WHERE id = ?", (*values, user_id))
            row: Sequence[Any] | None = db.execute(
                f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone()
            return row

    # --- refresh tokens --------------------------------------------------------------------------------------

    async def add_refresh(self, token: RefreshRecord) -> None:
        await self._in_writer(self._add_refresh, token)

    def _add_refresh(self, token: RefreshRecord) -> None:
        with self._write() as db:
            db.execute(f"INSERT INTO refresh_tokens ({_REFRESH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       _refresh_row(token))

    async def spend_refresh(self, token_hash: str, new: RefreshRecord,
                            now: datetime) -> tuple[str, RefreshRecord | None]:
        return await self._in_writer(self._spend_refresh, token_hash, new, now)

    def _spend_refresh(self, token_hash: str, new: RefreshRecord,
                       now: datetime) -> tuple[str, RefreshRecord | None]:
        with self._write() as db:
            row = db.execute(f"SELECT {_REFRESH_COLUMNS} FROM refresh_tokens WHERE token_hash = ?",
                             (token_hash,)).fetchone()
            if row is None:
                return UNKNOWN, None
            old = _refresh(row)
            stamp = to_iso(now)
            if old.revoked_at is not None:
                return REVOKED, old
            if old.used_at is not None:
                # A spent token presented again: stolen, or replayed. Every token of the login goes.
                db.execute("UPDATE refresh_tokens SET revoked_at = ? WHERE family = ? AND revoked_at IS NULL",
                           (stamp, old.family))
                return REUSED, old
            if old.expires_at <= now:
                return EXPIRED, old
            db.execute("UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ?", (stamp, token_hash))
            new = dataclasses.replace(new, family=old.family, user_id=old.user_id, expires_at=old.expires_at)
            db.execute(f"INSERT INTO refresh_tokens ({_REFRESH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       _refresh_row(new))
            # Spent and revoked tokens past their family's end are of no more use: the table does not grow.
            db.execute("DELETE FROM refresh_tokens WHERE expires_at < ?", (to_iso(now - timedelta(days=1)),))
            return SPENT, old

    async def revoke_refresh_family(self, token_hash: str, now: datetime) -> bool:
        return await self._in_writer(self._revoke_family, token_hash, now)

    def _revoke_family(self, token_hash: str, now: datetime) -> bool:
        with self._write() as db:
            row = db.execute("SELECT family FROM refresh_tokens WHERE token_hash = ?", (token_hash,)).fetchone()
            if row is None:
                return False
            db.execute("UPDATE refresh_tokens SET revoked_at = ? WHERE family = ? AND revoked_at IS NULL",
                       (to_iso(now), row[0]))
            return True

    async def revoke_user_refresh(self, user_id: str, now: datetime) -> None:
        await self._in_writer(self._revoke_user, user_id, now)

    def _revoke_user(self, user_id: str, now: datetime) -> None:
        with self._write() as db:
            db.execute("UPDATE refresh_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
                       (to_iso(now), user_id))

    # --- usage per day ---------------------------------------------------------------------------------------

    async def usage_by_day(self, key_id: str, days: int) -> builtins.list[tuple[date, int]]:
        first, span = day_range(days)
        rows = self._read("SELECT day, count FROM usage_daily WHERE key_id = ? AND day >= ?",
                          (key_id, first.isoformat()))
        counts = {date.fromisoformat(day): int(count) for day, count in rows}
        return [(d, counts.get(d, 0)) for d in span]


def iter_days(updates: Sequence[Any]) -> Iterator[tuple[str, str, int]]:
    """(key id, UTC day, count) of a usage batch: a batch is counted on the day of its last use."""
    for u in updates:
        yield u.key_id, u.last_used_at.date().isoformat(), u.count

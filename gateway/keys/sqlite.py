"""SQLite key store: one file, WAL mode, synchronous=FULL so a kill -9 loses nothing committed.

Lookups are single indexed reads, fast enough (tens of microseconds) to run on the event loop; in WAL mode
readers never wait for the writer (the CLI, another process, the writer thread below).

Writes never run on the event loop: a write takes the file's write lock (BEGIN IMMEDIATE), may wait up to the
busy timeout (5 s) for another process to let it go, and fsyncs its commit (synchronous=FULL); on the loop
that would stall every proxied request of the process meanwhile. So every write (a management change with its
audit event in one transaction, a usage flush: one row per key used since the last, 12,000 rows took ~260 ms
on a 100,000-key store) runs in one dedicated writer thread, on a connection of its own that only that thread
uses, and the loop awaits it. The single thread keeps writes one at a time and in order; a write that has
begun is finished even if its caller is cancelled, and :meth:`SQLiteStore.close` waits for the ones queued.
"""

from __future__ import annotations

import asyncio
import builtins  # the stores have a list() method: annotations after it name the type this way
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from gateway.keys.files import create_private_file, make_private_dirs, tighten
from gateway.keys.record import AuditEvent, KeyRecord, parse_iso, to_iso, utcnow
from gateway.keys.sqlite_users import USAGE_DAILY_SQL, USERS_SCHEMA, SQLiteUsers, iter_days
from gateway.keys.store import Conflict, StoreError, UsageUpdate

T = TypeVar("T")

# 1: the first; 2: grace_period, notification_email, held_value and notices (added to a 1 when it is opened);
# 3: the users, refresh_tokens and usage_daily tables (gateway.keys.sqlite_users); 4: users.password_changed_at
# (added to a 3 when it is opened).
SCHEMA_VERSION = 5
# The keys the rotation pass looks after (KeyStore.list(watched=True)): the condition of the partial index
# api_keys_watched (schema 5), so a pass over a store of 100,000 keys reads the few it needs, not every row.
_WATCHED = "(auto_rotate = 1 OR notification_email IS NOT NULL)"
# Made once the columns it names exist (a schema-1 file gets them in _migrate first).
_WATCHED_INDEX = f"CREATE INDEX IF NOT EXISTS api_keys_watched ON api_keys (created_at, id) WHERE {_WATCHED}"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id              TEXT PRIMARY KEY,
    key_hash        TEXT NOT NULL UNIQUE,
    hint            TEXT NOT NULL,
    name            TEXT NOT NULL,
    permissions     TEXT NOT NULL,
    allowed_ips     TEXT NOT NULL,
    environment     TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    expires_at      TEXT,
    revoked_at      TEXT,
    rate_limit_tier TEXT,
    description     TEXT,
    created_by      TEXT NOT NULL,
    auto_rotate     INTEGER NOT NULL DEFAULT 0,
    rotation_period INTEGER,
    rotated_from    TEXT,
    rotated_to      TEXT,
    last_used_at    TEXT,
    last_used_ip    TEXT,
    request_count   INTEGER NOT NULL DEFAULT 0,
    grace_period    INTEGER,
    notification_email TEXT,
    held_value      TEXT,
    notices         TEXT
);
CREATE INDEX IF NOT EXISTS api_keys_created ON api_keys (created_at, id);
CREATE TABLE IF NOT EXISTS audit_log (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    key_id  TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_key ON audit_log (key_id, seq);
""" + USERS_SCHEMA
_FIELDS = (
    "id", "key_hash", "hint", "name", "permissions", "allowed_ips", "environment", "created_at", "expires_at",
    "revoked_at", "rate_limit_tier", "description", "created_by", "auto_rotate", "rotation_period",
    "rotated_from", "rotated_to", "last_used_at", "last_used_ip", "request_count", "grace_period",
    "notification_email", "held_value", "notices",
)
# Columns a store of schema 1 lacks, added when it is opened (ALTER TABLE ... ADD COLUMN keeps every row).
_ADDED_IN_2 = (("grace_period", "INTEGER"), ("notification_email", "TEXT"), ("held_value", "TEXT"),
               ("notices", "TEXT"))
_COLUMNS = ", ".join(_FIELDS)
_JSON_FIELDS = frozenset({"permissions", "allowed_ips"})
_TIME_FIELDS = frozenset({"created_at", "expires_at", "revoked_at", "last_used_at"})
_USAGE_SQL = (
    "UPDATE api_keys SET request_count = request_count + ?,"
    " last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < ? THEN ? ELSE last_used_at END,"
    " last_used_ip = CASE WHEN last_used_at IS NULL OR last_used_at <= ? THEN ? ELSE last_used_ip END"
    " WHERE id = ?"
)
# Fields an update may change (the rest are fixed at creation or owned by rotate/revoke/usage).
UPDATABLE = frozenset({"name", "permissions", "allowed_ips", "rate_limit_tier", "expires_at", "description",
                       "auto_rotate", "rotation_period", "grace_period", "notification_email"})


def _to_db(name: str, value: Any) -> Any:
    if name in _JSON_FIELDS:
        return json.dumps(list(value))
    if name in _TIME_FIELDS:
        return to_iso(value)
    if name == "auto_rotate":
        return int(bool(value))
    return value


# Values most keys share (permission and allowlist lists, environment, tier, creator), one copy each: a record
# lives in the key cache (up to cache.max_size of them) and these were ~400 of its ~1,900 bytes. Cleared when
# full, so keys that all differ cost a dict lookup, not memory.
_SHARED: dict[tuple[str, str], Any] = {}
_SHARED_MAX = 4096
_SHARED_FIELDS = frozenset({"permissions", "allowed_ips", "environment", "rate_limit_tier", "created_by"})


def _shared(name: str, value: Any) -> Any:
    if value is None:
        return None
    got = _SHARED.get((name, value))
    if got is None:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        got = _SHARED[(name, value)] = tuple(json.loads(value)) if name in _JSON_FIELDS else value
    return got


def _from_db(row: Sequence[Any]) -> KeyRecord:
    values: dict[str, Any] = {}
    for name, value in zip(_FIELDS, row, strict=True):
        if name in _SHARED_FIELDS:
            value = _shared(name, value)
        elif name in _TIME_FIELDS:
            value = parse_iso(value) if value else None
        elif name == "auto_rotate":
            value = bool(value)
        values[name] = value
    return KeyRecord(**values)


def _status_clause(status: str | None, now: datetime) -> tuple[str, list[Any]]:
    stamp = to_iso(now)
    if status == "revoked":
        return "revoked_at IS NOT NULL", []
    if status == "expired":
        return "revoked_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ?", [stamp]
    if status == "active":
        return "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)", [stamp]
    return "", []


def _private(path: Path) -> None:
    """Make the store file exist, mode 600, before SQLite opens it; tighten it and its -wal and -shm if
    others could read them (docs/security.md).

    SQLite creates the -wal and -shm files itself, with the database file's permissions (os_unix.c,
    findCreateFileMode and robust_open, which fchmods a new file past the umask). So a database created here
    mode 600 makes them 600 too, whichever process or thread (the writer connection, the CLI, the sqlite3 tool)
    creates them later. Setting the umask around the open instead would not do: it is process-wide, so it
    would race with the writer thread's open and anything else creating files, and would not cover
    connections of other programs."""
    make_private_dirs(path.parent)
    fd = create_private_file(path)
    if fd is not None:
        os.close(fd)  # an empty file is an empty database to SQLite
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        tighten(file)


def _os_problem(exc: OSError) -> str:
    return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc.strerror or exc)


def _connect(path: Path) -> sqlite3.Connection:
    """A connection to the store at ``path`` (made private first). Raises sqlite3.Error or OSError."""
    _private(path)
    db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=5000")
    return db


class SQLiteStore(SQLiteUsers):
    def __init__(self, path: Path) -> None:
        self.path = path
        # The writer: its thread and connection, both made at the first write (a read-only use never needs them).
        self._writer: ThreadPoolExecutor | None = None
        self._write_db: sqlite3.Connection | None = None
        self._closed = False
        try:
            self._db = _connect(path)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{path}: made by a newer gateway (schema {version}); upgrade the gateway")
            if version < SCHEMA_VERSION:
                self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the SQLite store: {exc}") from None
        except OSError as exc:
            raise StoreError(f"{path}: cannot open the SQLite store: {_os_problem(exc)}") from None

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def _migrate(self) -> None:
        """Bring the file to :data:`SCHEMA_VERSION` in one IMMEDIATE transaction: the tables if there are none,
        the columns a schema-1 store lacks, the index of schema 5. Another process opening the same file at the
        same moment waits for the lock and then finds the work done."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            have = {row[1] for row in db.execute("PRAGMA table_info(api_keys)")}
            for column, kind in _ADDED_IN_2:
                if column not in have:
                    db.execute(f"ALTER TABLE api_keys ADD COLUMN {column} {kind}")
            if "password_changed_at" not in {row[1] for row in db.execute("PRAGMA table_info(users)")}:
                db.execute("ALTER TABLE users ADD COLUMN password_changed_at TEXT")
            db.execute(_WATCHED_INDEX)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def _in_writer(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` run in the writer thread, awaited."""
        if self._closed:
            raise StoreError(f"{self.path}: write failed: the store is closed")
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        return await asyncio.get_running_loop().run_in_executor(self._writer, work, *args)

    def _writer_db(self, what: str) -> sqlite3.Connection:
        """In the writer thread: its connection, opened at the first write."""
        if self._write_db is None:
            try:
                self._write_db = _connect(self.path)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {what} failed: {exc}") from None
            except OSError as exc:
                raise StoreError(f"{self.path}: {what} failed: {_os_problem(exc)}") from None
        return self._write_db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """In the writer thread: one IMMEDIATE transaction on its connection. The write lock is taken up front,
        so check-then-write is atomic."""
        db = self._writer_db("write")
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: write failed: {exc}") from None
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the failed statement may have ended the transaction already
            if isinstance(exc, sqlite3.IntegrityError):
                raise StoreError("a key with this id or value already exists") from None
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.path}: write failed: {exc}") from None
            raise

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: read failed: {exc}") from None

    def _get(self, where: str, arg: str) -> KeyRecord | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM api_keys WHERE {where} = ?", (arg,))
        return _from_db(rows[0]) if rows else None

    @staticmethod
    def _row(db: sqlite3.Connection, key_id: str) -> Sequence[Any] | None:
        """In the writer thread, inside its transaction: the key's row as written (made a record on the loop:
        :func:`_from_db` shares values through a dict the loop owns)."""
        row: Sequence[Any] | None = db.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?",
                                               (key_id,)).fetchone()
        return row

    @staticmethod
    def _insert(db: sqlite3.Connection, record: KeyRecord) -> None:
        db.execute(
            f"INSERT INTO api_keys ({_COLUMNS}) VALUES ({', '.join('?' * len(_FIELDS))})",
            [_to_db(f, getattr(record, f)) for f in _FIELDS],
        )

    @staticmethod
    def _audit(db: sqlite3.Connection, event: AuditEvent) -> None:
        db.execute(
            "INSERT INTO audit_log (at, actor, action, key_id, details) VALUES (?, ?, ?, ?, ?)",
            (to_iso(event.at), event.actor, event.action, event.key_id, json.dumps(event.details, default=str)),
        )

    async def get_by_hash(self, key_hash: str) -> KeyRecord | None:
        return self._get("key_hash", key_hash)

    async def get(self, key_id: str) -> KeyRecord | None:
        return self._get("id", key_id)

    async def add(self, record: KeyRecord, audit: AuditEvent | None = None) -> None:
        await self._in_writer(self._add, record, audit)

    def _add(self, record: KeyRecord, audit: AuditEvent | None) -> None:
        with self._write() as db:
            self._insert(db, record)
            if audit is not None:
                self._audit(db, audit)

    async def list(
        self, *, environment: str | None = None, status: str | None = None, now: datetime | None = None,
        limit: int | None = None, offset: int = 0, created_by: str | None = None, watched: bool = False,
    ) -> list[KeyRecord]:
        clauses, args = [], []
        if watched:
            clauses.append(_WATCHED)  # word for word the index's condition, so the index serves it
        if environment is not None:
            clauses.append("environment = ?")
            args.append(environment)
        if created_by is not None:
            clauses.append("created_by = ?")
            args.append(created_by)
        clause, more = _status_clause(status, now or utcnow())
        if clause:
            clauses.append(clause)
            args.extend(more)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {_COLUMNS} FROM api_keys {where} ORDER BY created_at, id LIMIT ? OFFSET ?"
        rows = self._read(sql, [*args, -1 if limit is None else limit, offset])
        return [_from_db(r) for r in rows]

    async def update(self, key_id: str, changes: Mapping[str, Any], audit: AuditEvent) -> KeyRecord | None:
        bad = set(changes) - UPDATABLE
        if bad:
            raise StoreError(f"cannot update field {sorted(bad)[0]!r}")
        row = await self._in_writer(self._update, key_id, dict(changes), audit)
        return _from_db(row) if row else None

    def _update(self, key_id: str, changes: dict[str, Any], audit: AuditEvent) -> Sequence[Any] | None:
        with self._write() as db:
            if not db.execute("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)).fetchone():
                return None
            if changes:
                sets = ", ".join(f"{name} = ?" for name in changes)
                db.execute(f"UPDATE api_keys SET {sets} WHERE id = ?",
                           [*(_to_db(n, v) for n, v in changes.items()), key_id])
            self._audit(db, audit)
            return self._row(db, key_id)

    async def revoke(self, key_id: str, actor: str = "cli") -> KeyRecord | None:
        row = await self._in_writer(self._revoke, key_id, actor)
        return _from_db(row) if row else None

    def _revoke(self, key_id: str, actor: str) -> Sequence[Any] | None:
        with self._write() as db:
            row = db.execute("SELECT revoked_at FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                return None
            if row[0] is None:
                db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (to_iso(utcnow()), key_id))
                self._audit(db, AuditEvent(action="revoke", key_id=key_id, actor=actor))
            return self._row(db, key_id)

    async def rotate(
        self, old_id: str, new: KeyRecord, old_expires_at: datetime, audit: AuditEvent
    ) -> KeyRecord | None:
        row = await self._in_writer(self._rotate, old_id, new, old_expires_at, audit)
        return _from_db(row) if row else None

    def _rotate(
        self, old_id: str, new: KeyRecord, old_expires_at: datetime, audit: AuditEvent
    ) -> Sequence[Any] | None:
        with self._write() as db:
            row = db.execute("SELECT revoked_at, rotated_to, expires_at FROM api_keys WHERE id = ?",
                             (old_id,)).fetchone()
            if row is None:
                return None
            revoked_at, rotated_to, expires_at = row
            if revoked_at is not None:
                raise Conflict("conflict.revoked")
            if rotated_to is not None:
                raise Conflict("conflict.rotated", key_id=rotated_to)
            if expires_at is not None and parse_iso(expires_at) <= utcnow():
                raise Conflict("conflict.expired")
            if expires_at is not None and parse_iso(expires_at) < old_expires_at:
                old_expires_at = parse_iso(expires_at)  # rotation never extends a key's life
            self._insert(db, new)
            db.execute("UPDATE api_keys SET expires_at = ?, rotated_to = ? WHERE id = ?",
                       (to_iso(old_expires_at), new.id, old_id))
            self._audit(db, audit)
            return self._row(db, old_id)

    async def take_held_value(self, key_id: str, audit: AuditEvent) -> str | None:
        """The sealed value held for ``key_id``, erased in the same transaction (so only one caller ever gets
        it), with ``audit``; None when none is held."""
        return await self._in_writer(self._take_held_value, key_id, audit)

    def _take_held_value(self, key_id: str, audit: AuditEvent) -> str | None:
        with self._write() as db:
            row = db.execute("SELECT held_value FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            if row is None or row[0] is None:
                return None
            db.execute("UPDATE api_keys SET held_value = NULL WHERE id = ?", (key_id,))
            self._audit(db, audit)
            return str(row[0])

    async def set_notices(self, key_id: str, notices: str | None) -> None:
        """Record the state of a key's notices (no audit event: they change no key)."""
        await self._in_writer(self._set_notices, key_id, notices)

    def _set_notices(self, key_id: str, notices: str | None) -> None:
        with self._write() as db:
            db.execute("UPDATE api_keys SET notices = ? WHERE id = ?", (notices, key_id))

    async def audit_log(self, key_id: str | None = None, limit: int = 1000) -> builtins.list[AuditEvent]:
        if key_id is None:
            rows = self._read("SELECT at, actor, action, key_id, details FROM audit_log ORDER BY seq LIMIT ?",
                              (limit,))
        else:
            rows = self._read("SELECT at, actor, action, key_id, details FROM audit_log WHERE key_id = ?"
                              " ORDER BY seq LIMIT ?", (key_id, limit))
        return [AuditEvent(at=parse_iso(at), actor=actor, action=action, key_id=kid, details=json.loads(d))
                for at, actor, action, kid, d in rows]

    async def record_usage(self, updates: Sequence[UsageUpdate]) -> None:
        """Add usage counts in one transaction, written by the writer thread.

        Returns once the transaction is committed. A write that has begun is finished even if the caller is
        cancelled, and :meth:`close` waits for it.
        """
        if not updates:
            return
        if self._closed:
            raise StoreError(f"{self.path}: usage write failed: the store is closed")
        await self._in_writer(self._write_usage, list(updates))

    def _write_usage(self, updates: builtins.list[UsageUpdate]) -> None:
        """In the writer thread: one IMMEDIATE transaction on its connection."""
        db = self._writer_db("usage write")
        try:
            rows = []
            stamps: dict[datetime, str | None] = {}  # a batch holds a handful of distinct seconds
            for u in updates:
                stamp = stamps.get(u.last_used_at)
                if stamp is None:
                    stamp = stamps[u.last_used_at] = to_iso(u.last_used_at)
                rows.append((u.count, stamp, stamp, stamp, u.last_used_ip, u.key_id))
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: usage write failed: {exc}") from None
        try:
            db.executemany(_USAGE_SQL, rows)
            db.executemany(USAGE_DAILY_SQL, iter_days(updates))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the failed statement may have ended the transaction already
            raise StoreError(f"{self.path}: usage write failed: {exc}") from None

    def _close_write_db(self) -> None:
        if self._write_db is not None:
            self._write_db.close()
            self._write_db = None

    async def append_audit(self, events: Sequence[AuditEvent]) -> None:
        """Append audit rows as they are (``gateway store copy``), in one transaction."""
        await self._in_writer(self._append_audit, list(events))

    def _append_audit(self, events: builtins.list[AuditEvent]) -> None:
        with self._write() as db:
            for event in events:
                self._audit(db, event)

    async def ping(self) -> None:
        self._read("SELECT 1")

    async def close(self) -> None:
        """Close both connections, after the writes already submitted (if any) are committed, and end the
        writer thread."""
        self._closed = True
        thread, self._writer = self._writer, None
        if thread is not None:
            # Queued behind any write already submitted: the thread runs them in order.
            await asyncio.get_running_loop().run_in_executor(thread, self._close_write_db)
            thread.shutdown(wait=True)  # nothing is left queued: returns once the thread has ended
        self._db.close()

"""A lease on work that one process at a time must do on a store (the automatic rotation and its notices).

Every gateway process sharing a store runs the rotation check; the lease decides which one does the work each
time. It only keeps processes from doing the same work side by side (two e-mails for one notice, two webhook
posts): a key can be rotated once whatever happens, because each store's ``rotate`` refuses a key already
rotated in the same transaction (SQLite ``BEGIN IMMEDIATE``) or script (Redis) that rotates it.

* Redis: ``SET {gw}:rotation:lock <token> NX PX <ttl>``; renewed and released by scripts that touch the key
  only while it still holds this process's token, so a lease that ran out and was taken by another process is
  never extended or deleted by the first. A process that dies holding it is replaced within ``ttl``.
* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) held on a connection of the process's
  own; PostgreSQL lets it go when that session ends, so a process that dies, or is cut off, is replaced at once.
* SQLite: an exclusive ``flock`` on a file beside the store (``<store>.rotation.lock``, mode 600), released
  by the kernel if the process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from gateway.keys.files import create_private_file, make_private_dirs
from gateway.keys.store import KeyStore

log = logging.getLogger("gateway.rotation")

LOCK_KEY = "{gw}:rotation:lock"
TTL_MS = 15_000

# ARGV: token, ttl (ms). 1 if renewed (still ours), 0 if not.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# ARGV: token. Deletes the lock only while it is ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease(Protocol):
    held: bool

    async def acquire(self) -> bool:
        """Take the lease, or renew it if this process holds it; True if it holds it now."""
        ...

    async def release(self) -> None: ...


class LocalLease:
    """For a store only this process uses: always held."""

    held = False

    async def acquire(self) -> bool:
        self.held = True
        return True

    async def release(self) -> None:
        self.held = False


class RedisLease:
    """The lease as a Redis key holding this process's random token, with an expiry."""

    def __init__(self, redis: Any, ttl_ms: int = TTL_MS, key: str = LOCK_KEY) -> None:
        self._redis = redis
        self._key = key
        self._ttl = ttl_ms
        self._token = secrets.token_hex(16)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self.held = False

    async def acquire(self) -> bool:
        try:
            if await self._redis.set(self._key, self._token, nx=True, px=self._ttl):
                self.held = True
            else:
                self.held = bool(int(await self._renew(keys=[self._key], args=[self._token, self._ttl])))
        except Exception as exc:  # noqa: BLE001 - any failure to reach Redis: not held
            if self.held:
                log.warning("rotation lease: cannot renew it (%s); another process may take over",
                            exc.__class__.__name__)
            self.held = False
        return self.held

    async def release(self) -> None:
        if not self.held:
            return
        self.held = False
        with contextlib.suppress(Exception):
            await self._release(keys=[self._key], args=[self._token])


ADVISORY_LOCK = 0x67772072_6F746174  # an arbitrary constant: "gw rotat" in ASCII


class PostgresLease:
    """The lease as a PostgreSQL advisory lock on a connection of its own (``store.connect()``)."""

    def __init__(self, store: Any, key: int = ADVISORY_LOCK) -> None:
        self._store = store
        self._key = key
        self._conn: Any = None
        self.held = False

    async def acquire(self) -> bool:
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = None
                self.held = False
                self._conn = await self._store.connect()
            if self.held:
                await self._conn.fetchval("SELECT 1")  # the session is alive, so the lock is still ours
            else:
                self.held = bool(await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key))
        except Exception as exc:  # noqa: BLE001 - any failure to reach PostgreSQL: not held
            if self.held:
                log.warning("rotation lease: lost the database (%s); another process may take over",
                            exc.__class__.__name__)
            self.held = False
            if self._conn is not None:
                self._conn.terminate()  # the session ends: the server lets the lock go
                self._conn = None
        return self.held

    async def release(self) -> None:
        self.held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 1.0)  # ending the session releases the lock
            except Exception:  # noqa: BLE001 - a connection that cannot close cleanly is dropped
                conn.terminate()


class FileLease:
    """The lease as an exclusive ``flock`` on ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.held = False

    async def acquire(self) -> bool:
        if self._fd is not None:
            return True
        make_private_dirs(self.path.parent)
        fd = create_private_file(self.path)
        if fd is None:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            self.held = False
            return False
        self._fd = fd
        self.held = True
        return True

    async def release(self) -> None:
        fd, self._fd = self._fd, None
        self.held = False
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def lease_for(store: KeyStore) -> Lease:
    """The lease that keeps the processes sharing ``store`` from doing its rotation work side by side."""
    from gateway.keys.redis import RedisStore
    from gateway.keys.sqlite import SQLiteStore

    if isinstance(store, RedisStore):
        return RedisLease(store.redis)
    postgres = sys.modules.get("gateway.keys.postgres.store")  # loaded if the store is one (asyncpg is not cheap)
    if postgres is not None and isinstance(store, postgres.PostgresStore):
        return PostgresLease(store)
    if isinstance(store, SQLiteStore):
        return FileLease(Path(f"{store.path}.rotation.lock"))
    return LocalLease()


async def wait_for_lease(lease: Lease, timeout: float, poll: float = 0.1) -> bool:
    """Take ``lease``, waiting up to ``timeout`` seconds for the process holding it (``keys rotate-due``)."""
    deadline = time.monotonic() + timeout
    while not await lease.acquire():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll)
    return True

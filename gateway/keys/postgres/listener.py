"""Keeps this process's key cache in step with every change made on the PostgreSQL store, from any host.

A trigger on ``api_keys`` (``migrations/0001_keys.sql``) sends the keyed hash of every key changed on the
channel :data:`gateway.keys.postgres.store.CHANNEL` when its transaction commits; this task ``LISTEN``\\s on a
connection of its own and drops that cache entry as each notification arrives (well under a second).

PostgreSQL keeps no notification for a session that was not listening, so whenever the listener (re)connects it
empties the whole cache: a revocation made while it was away (the server restarted, the network broke) is then
read from the store at the next use instead of served from a stale entry. The connection is watched with a
query every :attr:`PING_EVERY` seconds bounded by :attr:`DEAD_AFTER`: a server that is down, hung or
unreachable is noticed within about two seconds and the listener reconnects every :attr:`RETRY` seconds until it
is back. Meanwhile ``cache.ttl_seconds`` remains the bound.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from gateway.background import Background
from gateway.keys.postgres.store import CHANNEL, PostgresStore
from gateway.keys.store import StoreError

log = logging.getLogger("gateway.store")

_DOWN = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError, OSError,
         asyncio.TimeoutError, StoreError)


class InvalidationListener:
    PING_EVERY = 0.5
    DEAD_AFTER = 1.5
    RETRY = 0.25

    def __init__(self, store: PostgresStore, cache: Any) -> None:
        self._store = store
        self._cache = cache
        self._task = Background("key-invalidations")
        self.connected = False
        self.received = 0

    def start(self) -> None:
        self._task.start(self._run)

    async def stop(self) -> None:
        await self._task.stop()

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self.received += 1
        self._cache.invalidate(payload)

    async def _run(self) -> None:
        while True:
            conn: Any = None
            try:
                conn = await self._store.connect()
                await asyncio.wait_for(conn.add_listener(CHANNEL, self._notified), self.DEAD_AFTER)
                # Listening from here on; whatever changed before is unknown: start from an empty cache.
                self._cache.invalidate()
                if not self.connected:
                    log.info("key invalidations: listening on %s", self._store.where)
                self.connected = True
                while True:
                    await asyncio.sleep(self.PING_EVERY)
                    if conn.is_closed():
                        raise ConnectionResetError("the connection was closed")
                    await conn.fetchval("SELECT 1", timeout=self.DEAD_AFTER)
            except _DOWN as exc:
                if self.connected:
                    log.warning("key invalidations: lost %s (%s); revocations fall back to cache.ttl_seconds "
                                "until it is back", self._store.where, exc.__class__.__name__)
                self.connected = False
            finally:
                if conn is not None:
                    conn.terminate()  # never waits on a server that is gone
            await asyncio.sleep(self.RETRY)

"""The pool of upstream connections (:class:`gateway.doors.proxy.upstream.Connection`) to one origin.

:class:`Pool` holds at most ``size`` connections (idle and busy); a request waits for a free one beyond that,
as aiohttp's connector did, first come first served (a released connection is handed to the first waiter).
Idle connections are reused last-in first-out; those idle longer than :data:`KEEP_ALIVE` seconds are closed
(when next met, and by a sweep every KEEP_ALIVE seconds while any are idle).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from gateway.doors.proxy.upstream import Connection

KEEP_ALIVE = 15.0  # seconds an idle connection is kept (aiohttp's connector's keepalive_timeout)


class Pool:
    """At most ``size`` connections to one origin, idle ones reused last-in first-out."""

    def __init__(self, host: str, port: int, tls: bool, server_hostname: str | None, size: int,
                 connect_timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.host, self.port = host, port
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None
        self.server_hostname = server_hostname if tls else None
        self.size = size
        self.connect_timeout = connect_timeout
        self.idle: list[Connection] = []
        self.open: set[Connection] = set()
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()
        self.connecting = 0
        self.closed = False
        self.reaper: asyncio.TimerHandle | None = None

    def idle_one(self) -> Connection | None:
        """An idle connection still open and fresh, or None (no waiting: the usual case needs no coroutine)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if self.loop.time() - conn.idle_since > KEEP_ALIVE:
                conn.close()
                continue
            return conn
        return None

    async def acquire(self) -> Connection:
        """An idle connection, or a new one; waits while ``size`` are open. Raises TimeoutError (connect
        timeout) or OSError."""
        while True:
            if self.closed:
                raise OSError("the upstream pool is closed")
            conn = self.idle_one()
            if conn is not None:
                return conn
            if len(self.open) + self.connecting < self.size:
                break
            # Wait in line: a released connection is handed to the first waiter (put), so a request arriving
            # later cannot take it first; a freed slot wakes the first waiter with None (forget).
            waiter: asyncio.Future[Connection | None] = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                handed = await waiter
            except BaseException:
                if not waiter.cancelled() and waiter.done():
                    # Woken, but it will not take what it was given: pass it on.
                    got = waiter.result()
                    if got is not None:
                        self.put(got)
                    else:
                        self._notify()
                raise
            if handed is not None and not handed.closed:
                return handed
        self.connecting += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    self._protocol, self.host, self.port, ssl=self.ssl, server_hostname=self.server_hostname)
        except BaseException:
            self.connecting -= 1
            self._notify()  # the slot it held is free again
            raise
        self.connecting -= 1
        if self.closed:
            conn.close()
            raise OSError("the upstream pool is closed")
        self.open.add(conn)
        return conn

    def _protocol(self) -> Connection:
        return Connection(self)

    def put(self, conn: Connection) -> None:
        if self.closed:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)
        if self.reaper is None:
            self.reaper = self.loop.call_later(KEEP_ALIVE, self._reap)

    def _reap(self) -> None:
        """Close the connections idle for longer than KEEP_ALIVE (the oldest are at the bottom of the stack, where
        a lightly loaded gateway never reaches)."""
        self.reaper = None
        limit = self.loop.time() - KEEP_ALIVE
        stale = [conn for conn in self.idle if conn.idle_since < limit or conn.closed]
        if stale:
            self.idle = [conn for conn in self.idle if not (conn.idle_since < limit or conn.closed)]
            for conn in stale:
                conn.close()
        if self.idle and not self.closed:
            self.reaper = self.loop.call_later(KEEP_ALIVE, self._reap)

    def forget(self, conn: Connection) -> None:
        if conn in self.open:
            self.open.discard(conn)
            self._notify()

    def _notify(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        self.closed = True
        if self.reaper is not None:
            self.reaper.cancel()
            self.reaper = None
        for conn in [*self.open]:
            conn.close()
        self.idle.clear()
        while self.waiters:
            self._notify()  # each finds the pool closed

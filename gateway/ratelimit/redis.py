"""Limits shared by every gateway process through Redis: one Lua script per request, pipelined per loop pass.

Redis trouble never hangs a request: every call is bounded by ``redis_timeout_ms`` (socket timeouts; only a
broken connection is retried, once), and after a failure Redis is left alone for a second (then tried again,
so recovery is automatic).
While it is away, ``on_store_error`` decides: ``deny`` (503), ``allow``, or ``local`` (limit in this
process's memory at 1/``local_share`` of each limit).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from gateway.ratelimit import Decision, LimiterUnavailable, Quota, Window, _summary, decide
from gateway.ratelimit.memory import MemoryLimiter
from gateway.redisconn import POOL_WAIT, BoundedCluster, connect  # noqa: F401 - POOL_WAIT: its old home

log = logging.getLogger("gateway.ratelimit")
LUA = (Path(__file__).parent / "gcra.lua").read_text()
PAUSE_AFTER_FAILURE = 1.0


def redis_client(url: str, timeout_ms: float, max_connections: int = 64) -> Any:
    """A client for any Redis URL (one server, Sentinel, Cluster: :func:`gateway.redisconn.connect`) whose
    talk with Redis is bounded by ``timeout_ms`` (connect and every read; a timeout is never retried, a broken
    connection, as a pooled one is after Redis restarts, once at once).

    The wait for a free pooled connection is bounded separately (``POOL_WAIT``): it measures this process's
    own load, not Redis, and a burst of requests should queue for a connection rather than fail. Every key is
    ``{rl:<key id>}`` (one hash slot), so on a Cluster each script runs on one node."""
    return connect(url, timeout_ms, max_connections)


class RedisLimiter:
    """GCRA on Redis. Every request is one run of the Lua script (atomic on its own); the scripts of the
    requests that reach the limiter in the same event-loop pass go to Redis together, in one pipeline (one
    write and one read on one pooled connection instead of one each), which is what makes a shared limit
    affordable at thousands of requests a second. Each script still decides alone, so limits stay exact.
    On a Cluster each request's script is sent on its own (the key's node differs from request to request)."""

    def __init__(self, url: str, timeout_ms: float, on_error: str = "deny", local_share: int = 1,
                 max_keys: int = 1_000_000) -> None:
        self._redis = redis_client(url, timeout_ms)
        self._script = self._redis.register_script(LUA)
        self._batching = not isinstance(self._redis, BoundedCluster)
        self._queue: list[tuple[bytes, asyncio.Future[Any]]] = []  # (EVALSHA command in RESP, its waiter)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_error = on_error
        self._share = local_share
        self._local = MemoryLimiter(max_keys) if on_error == "local" else None
        self._scaled: dict[Quota, Quota] = {}
        # The script's arguments per quota: encoded (for redis-py's call on a Cluster) and framed (RESP, for the
        # batches written straight on a connection).
        self._args: dict[tuple[Quota, bool], tuple[list[bytes], bytes]] = {}
        self._head = b"*6\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n1\r\n" % self._script.sha.encode()
        self._paused_until = 0.0
        self.errors = 0

    async def _run(self, bucket: str, quota: Quota, consume: bool) -> Decision:
        if time.monotonic() < self._paused_until:
            raise LimiterUnavailable()
        args = self._args.get((quota, consume))
        if args is None:
            # Encoded once per quota, not on every call (redis-py's Encoder.encode and pack_command were the
            # costliest functions of a request).
            windows = " ".join(f"{w.name} {w.period_us} {w.emission_us}" for w in quota.windows).encode()
            flag = b"1" if consume else b"0"
            args = self._args[(quota, consume)] = ([flag, windows], b"$1\r\n%s\r\n$%d\r\n%s\r\n" % (
                flag, len(windows), windows))
        key = b"{rl:%s}" % bucket.encode()
        try:
            if self._batching:
                out = await self._queued(b"%s$%d\r\n%s\r\n%s" % (self._head, len(key), key, args[1]))
            else:
                out = await self._script(keys=[key], args=args[0])
        except (RedisError, OSError, TimeoutError) as exc:
            self.errors += 1
            if time.monotonic() >= self._paused_until:
                log.warning("rate limiter: Redis unavailable (%s); on_store_error=%s for %.0f s",
                            exc.__class__.__name__, self._on_error, PAUSE_AFTER_FAILURE)
            self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
            raise LimiterUnavailable() from None
        admitted, now, tats = int(out[0]), int(out[1]), [int(x) for x in out[2:]]
        if admitted and consume:
            return _summary(quota, tats, now, True, 0)  # tats are already the spent times
        return decide(quota, tats, now, consume=False)[0]

    async def _queued(self, command: bytes) -> Any:
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((command, future))
        if len(self._queue) == 1:
            loop.call_soon(self._send_queued)
        return await future

    def _send_queued(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.ensure_future(self._exchange(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _exchange(self, batch: list[tuple[bytes, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._pipeline([command for command, _ in batch])
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter; cancellation included
            failure = exc if isinstance(exc, Exception) else LimiterUnavailable()
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _pipeline(self, commands: list[bytes]) -> list[Any]:
        """Send the EVALSHA commands in one write on one pooled connection and read their answers in order;
        a server that lost the script (restart, SCRIPT FLUSH) gets it loaded and the commands that missed it
        sent again, once."""
        results: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        for attempt in range(2):
            answers = await self._send(b"".join([commands[i] for i in todo]), len(todo))
            missed = []
            for i, answer in zip(todo, answers, strict=True):
                if isinstance(answer, NoScriptError) and attempt == 0:
                    missed.append(i)
                else:
                    results[i] = answer
            if not missed:
                break
            await self._redis.script_load(LUA)
            todo = missed
        return results

    async def _send(self, wire: bytes, count: int) -> list[Any]:
        """``count`` commands, already in RESP, written at once on a pooled connection; their answers in order
        (an error answer as its exception). This is what redis-py's pipeline does, without its per-command
        encoding, per-batch objects and bookkeeping: the connection, its pool and its errors are still redis-py's
        (AUTH, TLS, the database, Sentinel's master and a demoted master's READONLY all work as for any call).
        A broken connection (a pooled one after Redis restarted) is retried once on another, as redis-py's
        retry does; a timeout is not: the connection is dropped and the batch fails."""
        try:
            return await self._send_once(wire, count)
        except RedisConnectionError:
            return await self._send_once(wire, count)

    async def _send_once(self, wire: bytes, count: int) -> list[Any]:
        pool = self._redis.connection_pool
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(wire)
            answers: list[Any] = []
            for _ in range(count):
                try:
                    answers.append(await connection.read_response())
                except ResponseError as exc:  # an error answer: the stream is still in step
                    answers.append(exc)
            return answers
        except BaseException:
            # Answers may be left unread (redis-py drops the connection on a socket error, not on LOADING or a
            # demoted master): never hand such a connection to the next batch.
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)

    async def _fallback(self, bucket: str, quota: Quota, consume: bool) -> Decision | None:
        if self._on_error == "deny":
            raise LimiterUnavailable()
        if self._local is None:  # allow
            return None
        scaled = self._scaled.get(quota)
        if scaled is None:
            scaled = self._scaled[quota] = Quota(
                tuple(Window(w.name, max(1, w.limit // self._share), w.period_us) for w in quota.windows),
                quota.policy_header,
            )
        return await (self._local.hit(bucket, scaled) if consume else self._local.peek(bucket, scaled))

    async def hit(self, bucket: str, quota: Quota) -> Decision | None:
        try:
            return await self._run(bucket, quota, True)
        except LimiterUnavailable:
            return await self._fallback(bucket, quota, True)

    async def peek(self, bucket: str, quota: Quota) -> Decision | None:
        try:
            return await self._run(bucket, quota, False)
        except LimiterUnavailable:
            return await self._fallback(bucket, quota, False)

    async def start(self) -> None:
        """Load the script once, so the first burst does not all miss it (NOSCRIPT) at once."""
        try:
            await self._redis.script_load(LUA)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("rate limiter: Redis unavailable at start (%s); will retry", exc.__class__.__name__)

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()

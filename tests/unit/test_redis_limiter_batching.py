"""The Redis limiter sends the scripts of requests that arrive together as one pipeline, and stays exact.

Against a real redis-server of the test's own (tests/support/procs.py RedisServer)."""

from __future__ import annotations

import asyncio

import redis

from gateway.ratelimit import Quota
from gateway.ratelimit.redis import RedisLimiter
from tests.support.procs import RedisServer

LIMITED = Quota.of(100, 10)
assert LIMITED is not None


def _evalsha_calls(url: str) -> int:
    stats = redis.Redis.from_url(url).info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def _clients(url: str) -> int:
    return len(redis.Redis.from_url(url).client_list())


def test_a_burst_is_exact_and_goes_in_one_pipeline(own_redis: RedisServer) -> None:
    async def run() -> tuple[int, int]:
        lim = RedisLimiter(own_redis.url, 500)
        await lim.start()
        before = _evalsha_calls(own_redis.url)
        decisions = await asyncio.gather(*(lim.hit("key_burst", LIMITED) for _ in range(200)))
        connections = _clients(own_redis.url)
        await lim.close()
        assert _evalsha_calls(own_redis.url) - before == 200  # one script run per request
        return sum(d is not None and d.allowed for d in decisions), connections

    admitted, connections = asyncio.run(run())
    assert admitted == 10
    # 200 requests in one loop pass: one pooled connection (plus the test's own), not dozens.
    assert connections <= 3


def test_a_flushed_script_is_loaded_again(own_redis: RedisServer) -> None:
    async def run() -> list[bool]:
        lim = RedisLimiter(own_redis.url, 500)
        await lim.start()
        first = await lim.hit("key_flush", LIMITED)
        redis.Redis.from_url(own_redis.url).script_flush()
        rest = await asyncio.gather(*(lim.hit("key_flush", LIMITED) for _ in range(20)))
        await lim.close()
        return [d is not None and d.allowed for d in (first, *rest)]

    allowed = asyncio.run(run())
    assert sum(allowed) == 10 and all(allowed[:10])


def test_redis_gone_fails_every_waiter_of_the_batch(own_redis: RedisServer) -> None:
    async def run() -> list[object]:
        lim = RedisLimiter(own_redis.url, 200, on_error="allow")
        await lim.start()
        own_redis.stop()
        out = await asyncio.wait_for(asyncio.gather(*(lim.hit("key_gone", LIMITED) for _ in range(50))), 5)
        await lim.close()
        return list(out)

    assert asyncio.run(run()) == [None] * 50  # on_store_error allow: unlimited, nobody hangs or crashes


def test_a_restarted_redis_is_used_again_at_once(own_redis: RedisServer) -> None:
    """The pooled connection is dead and the new server has no script: the next burst still gets answers
    (a fresh connection, the script loaded again), not on_store_error."""

    async def run() -> list[bool]:
        lim = RedisLimiter(own_redis.url, 500)  # on_store_error deny: a failure would raise, not admit
        await lim.start()
        assert (await lim.hit("key_restart", LIMITED)) is not None
        own_redis.stop()
        own_redis.start()
        decisions = await asyncio.gather(*(lim.hit("key_restart", LIMITED) for _ in range(20)))
        await lim.close()
        return [d is not None and d.allowed for d in decisions]

    allowed = asyncio.run(run())
    assert sum(allowed) == 10 and all(allowed[:10])  # the new server starts from nothing: 10 more


def test_error_answers_leave_the_connection_in_step(own_redis: RedisServer) -> None:
    """A read-only server answers every script of a batch with an error; each waiter gets it (on_store_error
    deny), and the same connection then carries the next batch's answers to the right waiters."""
    admin = redis.Redis.from_url(own_redis.url)

    async def run() -> tuple[int, list[bool], int]:
        lim = RedisLimiter(own_redis.url, 500)
        await lim.start()
        await lim.hit("key_warm", LIMITED)
        admin.replicaof("127.0.0.1", "1")  # a replica of nothing: read-only, every script write refused
        refused = await asyncio.gather(*(lim.hit("key_ro", LIMITED) for _ in range(5)), return_exceptions=True)
        admin.replicaof("no", "one")
        lim._paused_until = 0.0  # the pause after a failure is the limiter's own; not under test here
        answers = await asyncio.gather(*(lim.hit(f"key_{i % 2}", LIMITED) for i in range(30)))
        clients = len(admin.client_list())
        await lim.close()
        return sum(isinstance(r, Exception) for r in refused), [d is not None and d.allowed for d in answers], clients

    failed, allowed, clients = asyncio.run(run())
    assert failed == 5
    assert allowed == [True] * 20 + [False] * 10  # two keys, 10 each, answers matched to their own requests
    assert clients <= 2  # the limiter's one connection (kept, in step) and the admin's

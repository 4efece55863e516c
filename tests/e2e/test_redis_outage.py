"""Redis trouble never hangs a request. Real gateway processes against a real redis-server that is stopped
and started again (connection refused) or SIGSTOPped (a hung server: it accepts connections and answers
nothing). Every answer comes within about a second; then ``on_store_error`` decides (deny: 503 JSON, allow,
local: in-memory at 1/local_share of the limit); cached keys keep working; recovery is automatic."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.support.procs import Gateway, RedisServer, Upstream

PROMPT = 1.0  # seconds: every answer during an outage comes within this


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def timed_get(gw: Gateway, value: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    resp = httpx.get(f"{gw.url}/v1/servers", headers=bearer(value), timeout=10)
    return resp, time.monotonic() - started


def until(check: Callable[[], bool], limit: float = 10.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < limit, "not recovered in time"
        time.sleep(0.05)
    return time.monotonic() - started


def test_redis_down_then_back_each_on_store_error(
    make_gateway: Callable[..., Gateway], fresh_upstream: Upstream, own_redis: RedisServer
) -> None:
    """Limits in Redis, keys in each gateway's own SQLite file (so the restart, which empties Redis, loses
    no key)."""

    def gw(name: str, **rl: Any) -> tuple[Gateway, str]:
        g = make_gateway(fresh_upstream.url, name=name, settings={"rate_limits": {"url": own_redis.url, **rl}})
        return g, g.create_key(name, "servers:read", "--tier", "limited")["value"]

    deny, deny_key = gw("deny")  # the default
    allow, allow_key = gw("allow", on_store_error="allow")
    local, local_key = gw("local", on_store_error="local", local_share=2)
    for g, v in ((deny, deny_key), (allow, allow_key), (local, local_key)):
        resp, _ = timed_get(g, v)
        assert resp.status_code == 200 and resp.headers["x-ratelimit-remaining"] == "9"

    own_redis.stop()
    # deny: 503 JSON, promptly, every time.
    for _ in range(3):
        resp, took = timed_get(deny, deny_key)
        assert took < PROMPT
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "rate_limit_unavailable"
        assert resp.headers["retry-after"] == "1"
        assert deny_key not in resp.text
    # allow: through, without limit headers (there is no count to report).
    for _ in range(3):
        resp, took = timed_get(allow, allow_key)
        assert took < PROMPT and resp.status_code == 200
        assert "x-ratelimit-limit" not in resp.headers
    # local: limited in this process's memory at half the limit (local_share: 2): 5 per minute.
    answers = [timed_get(local, local_key) for _ in range(7)]
    assert all(took < PROMPT for _, took in answers)
    assert [r.status_code for r, _ in answers] == [200] * 5 + [429] * 2
    assert answers[0][0].headers["x-ratelimit-limit"] == "5"

    own_redis.start()  # same port, empty
    # Recovery is automatic: within a couple of seconds the shared limiter answers again.
    until(lambda: timed_get(deny, deny_key)[0].status_code == 200)
    resp, _ = timed_get(deny, deny_key)
    assert resp.status_code == 200 and resp.headers["x-ratelimit-limit"] == "10"
    assert "rate limiter: Redis unavailable" in deny.log()
    assert deny_key not in deny.log()


def test_hung_redis_store_answers_promptly_from_the_cache(
    make_gateway: Callable[..., Gateway], fresh_upstream: Upstream, own_redis: RedisServer
) -> None:
    """Keys and limits in Redis; Redis SIGSTOPped. Cached keys keep working (allow) or get a prompt 503
    (deny); a key not in the cache gets a prompt 503; nothing waits; all is well again on SIGCONT."""
    settings = {"store": {"url": own_redis.url}, "cache": {"ttl_seconds": 300}}
    allow = make_gateway(fresh_upstream.url, name="allow",
                         settings={**settings, "rate_limits": {"on_store_error": "allow"}})
    deny = make_gateway(fresh_upstream.url, name="deny", settings=settings)
    cached = allow.create_key("cached", "servers:read")["value"]
    uncached = allow.create_key("uncached", "servers:read")["value"]
    for g in (allow, deny):
        assert timed_get(g, cached)[0].status_code == 200  # now in both caches

    with httpx.Client(timeout=10, limits=httpx.Limits(max_connections=20)) as client:

        def timed(i: int) -> tuple[int, int, float, Any]:
            started = time.monotonic()
            r = client.get(f"{allow.url}/v1/servers", headers=bearer(cached if i % 2 else uncached))
            return i % 2, r.status_code, time.monotonic() - started, r

        with ThreadPoolExecutor(max_workers=20) as pool:
            # What 20 concurrent requests cost on this (possibly busy) machine with Redis well.
            baseline = max(took for _, _, took, _ in pool.map(lambda i: timed(1), range(20)))
            own_redis.pause()
            try:
                results = list(pool.map(timed, range(20)))
                slowest = max(took for _, _, took, _ in results)
                # Nothing waits on the hung server: at most a second more than the same load costs anyway.
                assert slowest < baseline + PROMPT, (slowest, baseline)
                # Cached: served from the cache; not cached: the store is away (prompt 503).
                assert {(which, status) for which, status, _, _ in results} == {(1, 200), (0, 503)}
                refused = next(r for which, _, _, r in results if which == 0)
                assert refused.json()["error"]["code"] == "store_unavailable"

                resp, took = timed_get(deny, cached)
                assert took < baseline + PROMPT
                assert resp.status_code == 503 and resp.json()["error"]["code"] == "rate_limit_unavailable"
            finally:
                own_redis.resume()

    until(lambda: timed_get(allow, uncached)[0].status_code == 200)
    until(lambda: timed_get(deny, cached)[0].status_code == 200)
    resp, _ = timed_get(deny, cached)
    assert resp.headers["x-ratelimit-limit"] == "100"

"""`gateway serve` with several uvicorn workers (listen.workers / --workers): a warning names what drifts
between workers when limits live in memory or keys in SQLite; with Redis there is nothing to warn about and
the limit holds across workers exactly."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.support.procs import Gateway, RedisServer, Upstream
from tests.support.redisdb import fresh_db


def test_workers_with_sqlite_and_memory_limits_warn(
    make_gateway: Callable[..., Gateway], fresh_upstream: Upstream
) -> None:
    gw = make_gateway(fresh_upstream.url, settings={"listen": {"workers": 2}})
    key = gw.create_key("w", "servers:read")
    with gw.client() as c:
        assert [c.get("/v1/servers", headers={"Authorization": f"Bearer {key['value']}"}).status_code
                for _ in range(4)] == [200] * 4
    log = gw.log()
    assert "a key can make up to 2 times its limit" in log
    assert "keeps working in the others for up to cache.ttl_seconds" in log
    assert "redis://host:port/db" in log
    assert log.count("Application startup complete") == 2  # two workers
    assert key["value"] not in log


def test_workers_sharing_redis_hold_the_limit_exactly(
    make_gateway: Callable[..., Gateway], fresh_upstream: Upstream, redis_server: RedisServer | str
) -> None:
    settings = {"listen": {"workers": 2}, "store": {"url": fresh_db(redis_server)},
                "rate_limits": {"redis_timeout_ms": 2000, "tiers": {"ten_per_hour": {"per_hour": 10}}}}
    gw = make_gateway(fresh_upstream.url, settings=settings)
    # 10 per hour: the next one is 6 minutes away, so however slow this machine is, exactly 10 pass.
    key = gw.create_key("ten", "servers:read", "--tier", "ten_per_hour")
    # New connections each time, so uvicorn's workers share the requests.
    statuses = [httpx.get(f"{gw.url}/v1/servers", headers={"Authorization": f"Bearer {key['value']}"},
                          timeout=10).status_code for _ in range(30)]
    assert statuses.count(200) == 10 and statuses.count(429) == 20
    log = gw.log()
    assert log.count("Application startup complete") == 2
    assert "listen.workers is 2" not in log  # nothing drifts: no warning

"""Revocation everywhere within one second: two real gateway processes share one real redis-server as their
key store, each with ``cache.ttl_seconds: 300``. A change made through one process's API or through the CLI is
enforced by the other within 1 s (pub/sub invalidation), and still after Redis restarts (resubscription)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.procs import Gateway, RedisServer, Upstream
from tests.support.redisdb import fresh_db

BOUND = 1.0  # seconds: the documented bound
TTL = {"cache": {"ttl_seconds": 300}}


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def status(gw: Gateway, value: str, path: str = "/v1/servers") -> int:
    return httpx.get(gw.url + path, headers=bearer(value), timeout=5).status_code


def seconds_until(gw: Gateway, value: str, wanted: int, limit: float = 5.0, path: str = "/v1/servers") -> float:
    """Poll until ``gw`` answers ``wanted`` for ``value``; how long it took (fails after ``limit``)."""
    started = time.monotonic()
    while True:
        got = status(gw, value, path)
        elapsed = time.monotonic() - started
        if got == wanted:
            return elapsed
        assert elapsed < limit, f"still {got} after {elapsed:.2f} s"
        time.sleep(0.02)


def pair(make_gateway: Callable[..., Gateway], upstream: Upstream, store_url: str) -> tuple[Gateway, Gateway]:
    settings: dict[str, Any] = {**TTL, "store": {"url": store_url}}
    return (make_gateway(upstream.url, settings=settings, name="a"),
            make_gateway(upstream.url, settings=settings, name="b"))


def wait_subscribed(gw: Gateway, times: int = 1, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while gw.log().count("key invalidations: subscribed") < times:
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.05)


def test_revoke_through_one_process_is_enforced_by_the_other_within_a_second(
    make_gateway: Callable[..., Gateway], fresh_upstream: Upstream, redis_server: RedisServer | str
) -> None:
    a, b = pair(make_gateway, fresh_upstream, fresh_db(redis_server))
    wait_subscribed(a)
    wait_subscribed(b)
    admin = a.create_key("admin", "*")

    def make(name: str) -> dict[str, Any]:  # through A's API: quicker than starting the CLI each time
        resp = httpx.post(f"{a.url}/v1/api-keys", headers=bearer(admin["value"]), timeout=5,
                          json={"name": name, "permissions": ["servers:read"]})
        assert resp.status_code == 201, resp.text
        return resp.json()  # type: ignore[no-any-return]

    via_api, via_cli, rotated, narrowed = (make(n) for n in ("api", "cli", "rot", "nar"))
    for k in (via_api, via_cli, rotated, narrowed):
        assert status(a, k["value"]) == 200 and status(b, k["value"]) == 200  # now cached in both, for 300 s

    # Revoked through process A's API: B refuses within the bound.
    resp = httpx.delete(f"{a.url}/v1/api-keys/{via_api['id']}", headers=bearer(admin["value"]), timeout=5)
    assert resp.status_code == 200
    assert seconds_until(b, via_api["value"], 401) < BOUND

    # Revoked with the CLI (no gateway process involved): both refuse within the bound.
    a.cli("keys", "revoke", via_cli["id"])
    assert seconds_until(b, via_cli["value"], 401) < BOUND
    assert seconds_until(a, via_cli["value"], 401) < BOUND

    # Rotated with no grace period: the old value stops working everywhere, the new one works everywhere.
    out = a.cli("keys", "rotate", rotated["id"], "--grace-period", "0", "--json")
    new_value = json.loads(out.stdout)["new_key"]["value"]
    assert seconds_until(b, rotated["value"], 401) < BOUND
    assert status(b, new_value) == 200

    # Permissions narrowed: B applies the new scopes within the bound.
    a.cli("keys", "update", narrowed["id"], "--permissions", "instances:read")
    assert seconds_until(b, narrowed["value"], 403) < BOUND


def test_invalidation_resumes_after_redis_restarts(
    make_gateway: Callable[..., Gateway], fresh_upstream: Upstream, own_redis: RedisServer
) -> None:
    a, b = pair(make_gateway, fresh_upstream, own_redis.url)
    wait_subscribed(b)
    own_redis.stop()
    time.sleep(2.0)  # longer than the listener's dead-connection limit (1.5 s)
    own_redis.start()  # same port, empty (no persistence)
    wait_subscribed(b, times=2)
    key = a.create_key("after-restart", "servers:read")
    assert status(b, key["value"]) == 200  # cached in B for 300 s
    a.cli("keys", "revoke", key["id"])
    assert seconds_until(b, key["value"], 401) < BOUND
    assert "key invalidations: lost" in b.log()

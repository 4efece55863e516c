"""The key store failing under the management API: every endpoint answers a prompt 503 JSON error in the
configured format (``store_unavailable`` / DeployAlly ``SERVICE_UNAVAILABLE``), never a 500 or a traceback, and
a log line without a secret; a change cut off by the failure leaves nothing half-written; once the store is
back, every endpoint works again.

Real processes and real stores throughout: a `gateway serve` process on a real redis-server that is stopped
and started again (its data saved to and reloaded from its RDB file, so the keys survive the restart), on a real
PostgreSQL server that is stopped and started again, and on a real SQLite file that another connection breaks (a
table renamed away, a write lock held).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support import postgres
from tests.support.lifecycle import KeysAPI, admin_gateway, bearer, wait_for
from tests.support.metrics import scrape, value
from tests.support.postgres import PostgresServer
from tests.support.procs import ROOT, RedisServer, Upstream

PROMPT = 2.0  # seconds: every answer while Redis is down comes within this (connection refused is at once)

FORMATS: dict[str, tuple[dict[str, Any], str, str]] = {
    # error format: (settings, management prefix, a permission the policy knows)
    "deployerp": ({}, "/v1", "servers:read"),
    "deployally": ({"error_format": "deployally", "key_format": "deployally", "management": {"prefix": "/api/v1"},
                    "policies": str(ROOT / "policies" / "deployally.yaml")}, "/api/v1", "servers:manage"),
}


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    u = Upstream(tmp_path_factory.mktemp("store-errors-up"))
    yield u
    u.stop()


def data(resp: httpx.Response, fmt: str) -> Any:
    """The answer's document, unwrapped from DeployAlly's {"success": true, "data": ...}."""
    doc = resp.json()
    return doc["data"] if fmt == "deployally" else doc


def assert_logged_without_secrets(log: str, secrets: list[str]) -> None:
    """The outage was logged, without a traceback and without any key value."""
    assert "key store unavailable" in log
    assert "Traceback" not in log
    for secret in secrets:
        assert secret not in log


def assert_store_unavailable(resp: httpx.Response, fmt: str, secrets: list[str]) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["cache-control"] == "no-store"
    doc = resp.json()
    if fmt == "deployally":
        assert doc == {"success": False, "error": {"code": "SERVICE_UNAVAILABLE", "message": doc["error"]["message"]}}
    else:
        assert doc == {"error": {"code": "store_unavailable", "message": doc["error"]["message"], "status": 503}}
    for secret in secrets:
        assert secret not in resp.text


def management_calls(victim: str, permission: str) -> list[tuple[str, str, str, Any]]:
    """(name, method, path below the prefix, body) of every store-backed management endpoint."""
    return [
        ("list", "GET", "/api-keys", None),
        ("get", "GET", f"/api-keys/{victim}", None),
        ("create", "POST", "/api-keys", {"name": "during-outage", "permissions": [permission]}),
        ("update", "PATCH", f"/api-keys/{victim}", {"name": "renamed-during-outage"}),
        ("revoke", "DELETE", f"/api-keys/{victim}", None),
        ("rotate", "POST", f"/api-keys/{victim}/rotate", {"grace_period": "1h"}),
    ]


def snapshot(api: KeysAPI, fmt: str, victim: str) -> tuple[list[str], dict[str, Any]]:
    """Every key id, and the victim's record: what an interrupted change must not have touched."""
    listed = api.list(limit=500)
    assert listed.status_code == 200, listed.text
    record = api.get(victim)
    assert record.status_code == 200, record.text
    doc = data(record, fmt)
    doc.pop("last_used_at"), doc.pop("last_used_ip"), doc.pop("request_count")  # usage, not management
    return [r["id"] for r in listed.json()["data"]], doc  # a page is `data` in both formats


def assert_all_work_again(api: KeysAPI, fmt: str, victim: str, permission: str) -> None:
    created = api.create({"name": "after-outage", "permissions": [permission]})
    assert created.status_code == 201, created.text
    fresh = data(created, fmt)["id"]
    assert api.list().status_code == 200
    assert api.get(victim).status_code == 200
    patched = api.patch(victim, {"name": "renamed-after"})
    assert patched.status_code == 200 and data(patched, fmt)["name"] == "renamed-after"
    rotated = api.rotate(victim, {"grace_period": "1h"})
    assert rotated.status_code == 200, rotated.text
    revoked = api.delete(fresh)
    assert revoked.status_code == 200 and data(revoked, fmt)["status"] == "revoked"
    assert api.call("GET", "/auth/test").status_code == 200


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_redis_store_down_every_endpoint_503_then_back(
    fmt: str, tmp_path: Path, up: Upstream, own_redis: RedisServer
) -> None:
    settings, prefix, permission = FORMATS[fmt]
    # A long cache TTL: the admin key, once used, authenticates from the cache while Redis is away, so each
    # call reaches the management API and its own store call is what fails.
    gw, admin = admin_gateway(tmp_path / "gw", up.url,
                              {**settings, "store": {"url": own_redis.url}, "cache": {"ttl_seconds": 300}})
    api = KeysAPI(gw, admin, prefix=prefix)
    try:
        assert api.call("GET", "/auth/test").status_code == 200  # the admin key is now cached
        made = api.create({"name": "victim", "permissions": [permission]})
        assert made.status_code == 201, made.text
        victim, victim_value = data(made, fmt)["id"], data(made, fmt)["value"]
        uncached = gw.create_key("uncached", permission)["value"]  # never used: not in the gateway's cache
        before = snapshot(api, fmt, victim)
        secrets = [admin, victim_value, uncached]

        with closing(redis.Redis.from_url(own_redis.url)) as r:
            # 1. Redis refuses writes (NOREPLICAS: fewer good replicas than min-replicas-to-write) and still
            #    answers reads: each change gets past its reads and fails at its one Lua script.
            r.config_set("min-replicas-to-write", 1)
            try:
                for name, method, path, body in management_calls(victim, permission):
                    resp = api.call(method, path, body)
                    if name in ("list", "get"):
                        assert resp.status_code == 200, (name, resp.text)
                    else:
                        assert_store_unavailable(resp, fmt, secrets)
            finally:
                r.config_set("min-replicas-to-write", 0)
            assert snapshot(api, fmt, victim) == before
            r.save()  # the restart below reloads the keys from dump.rdb

        # 2. Redis is down (connection refused): every store call fails.
        own_redis.stop()

        for name, method, path, body in management_calls(victim, permission):
            started = time.monotonic()
            resp = api.call(method, path, body)
            took = time.monotonic() - started
            assert_store_unavailable(resp, fmt, secrets)
            assert took < PROMPT, (name, took)
        # /auth/test reads no store: the cached admin key still gets its answer; a key the cache does not
        # know cannot be looked up, and gets the same 503 from the gate.
        assert api.call("GET", "/auth/test").status_code == 200
        with gw.client() as c:
            assert_store_unavailable(c.get(f"{prefix}/auth/test", headers=bearer(uncached)), fmt, secrets)

        own_redis.start()  # same port, the saved data
        wait_for(lambda: api.list().status_code == 200)
        # Nothing the outage cut off was half-done: the same keys, the victim as it was.
        assert snapshot(api, fmt, victim) == before
        assert_all_work_again(api, fmt, victim, permission)
        with gw.client() as c:
            assert c.get(f"{prefix}/auth/test", headers=bearer(uncached)).status_code == 200
    finally:
        api.close()
        gw.stop()

    assert_logged_without_secrets(gw.log(), secrets)


def _sqlite(path: Path) -> sqlite3.Connection:
    # Autocommit, so BEGIN/ROLLBACK below are exactly the statements written.
    return sqlite3.connect(str(path), isolation_level=None, timeout=10)


def test_sqlite_store_failing_every_endpoint_503_and_nothing_half_written(tmp_path: Path, up: Upstream) -> None:
    fmt, permission = "deployerp", "servers:read"
    gw, admin = admin_gateway(tmp_path / "gw", up.url, {"cache": {"ttl_seconds": 300}})
    api = KeysAPI(gw, admin)
    db_path = gw.work / "keys.db"
    try:
        assert api.call("GET", "/auth/test").status_code == 200  # the admin key is now cached
        made = api.created(name="victim", permissions=[permission])
        victim, victim_value = made["id"], made["value"]
        uncached = gw.create_key("uncached", permission)["value"]
        secrets = [admin, victim_value, uncached]
        before = snapshot(api, fmt, victim)
        with closing(_sqlite(db_path)) as db:
            audit_rows = db.execute("SELECT count(*) FROM audit_log").fetchone()[0]

            # 1. Writes fail half-way: the key row is written, then the audit row cannot be (its table is
            #    gone), so each change must roll back whole. Reads still work.
            db.execute("ALTER TABLE audit_log RENAME TO audit_log_away")
            for name, method, path, body in management_calls(victim, permission):
                resp = api.call(method, path, body)
                if name in ("list", "get"):
                    assert resp.status_code == 200, (name, resp.text)
                else:
                    assert_store_unavailable(resp, fmt, secrets)
            db.execute("ALTER TABLE audit_log_away RENAME TO audit_log")
            assert snapshot(api, fmt, victim) == before
            assert db.execute("SELECT count(*) FROM audit_log").fetchone()[0] == audit_rows

            # 2. Nothing can be read: the keys table is gone.
            db.execute("ALTER TABLE api_keys RENAME TO api_keys_away")
            for _, method, path, body in management_calls(victim, permission):
                assert_store_unavailable(api.call(method, path, body), fmt, secrets)
            with gw.client() as c:
                assert_store_unavailable(c.get("/v1/auth/test", headers=bearer(uncached)), fmt, secrets)
            db.execute("ALTER TABLE api_keys_away RENAME TO api_keys")

            # 3. Another process holds the write lock past the store's busy timeout (5 s): database is locked.
            db.execute("BEGIN EXCLUSIVE")
            try:
                assert_store_unavailable(api.delete(victim), fmt, secrets)
            finally:
                db.execute("ROLLBACK")

        assert snapshot(api, fmt, victim) == before
        assert_all_work_again(api, fmt, victim, permission)
        with gw.client() as c:
            assert c.get("/v1/auth/test", headers=bearer(uncached)).status_code == 200
    finally:
        api.close()
        gw.stop()

    assert_logged_without_secrets(gw.log(), secrets)


def test_sqlite_write_waiting_on_a_lock_does_not_stall_proxied_requests(tmp_path: Path, up: Upstream) -> None:
    """Another process holds the SQLite write lock for 2 s (less than the store's 5 s busy timeout) while a key
    is created through the management API: the create waits for the lock, and meanwhile the proxied requests
    of the same gateway process keep answering promptly (the write waits off the event loop). Once the lock
    is let go, the create completes, its audit event with it."""
    gw, admin = admin_gateway(tmp_path / "gw", up.url)
    api = KeysAPI(gw, admin)
    user = gw.create_key("user", "servers:read", "--tier", "unlimited")["value"]  # many requests, no limit
    hold, prompt = 2.0, 0.5  # seconds: the lock is held this long; every proxied answer comes within prompt
    try:
        with gw.client() as c:
            assert c.get("/v1/servers", headers=bearer(user)).status_code == 200  # key cached, pool warm
        with closing(_sqlite(gw.work / "keys.db")) as db, ThreadPoolExecutor(max_workers=1) as pool:
            db.execute("BEGIN EXCLUSIVE")
            held_at = time.monotonic()
            try:
                create = pool.submit(api.call, "POST", "/api-keys", {"name": "behind-lock",
                                                                     "permissions": ["servers:read"]})
                time.sleep(0.3)
                assert not create.done(), "the create should be waiting for the lock"
                slowest, answered = 0.0, 0
                with gw.client() as c:
                    while time.monotonic() - held_at < hold:
                        start = time.monotonic()
                        resp = c.get("/v1/servers", headers=bearer(user))
                        slowest = max(slowest, time.monotonic() - start)
                        assert resp.status_code == 200, resp.text
                        answered += 1
                waited_through = not create.done()
            finally:
                db.execute("ROLLBACK")
            resp = create.result(timeout=10)
        assert slowest < prompt, f"a proxied request took {slowest:.2f} s while a write waited on the lock"
        assert answered > 10
        assert waited_through, "the create should have waited for the lock as long as it was held"
        assert resp.status_code == 201, resp.text
        made = resp.json()
        assert api.call("GET", f"/api-keys/{made['id']}").status_code == 200
        with closing(_sqlite(gw.work / "keys.db")) as db:
            actions = [row[0] for row in db.execute("SELECT action FROM audit_log WHERE key_id = ?", (made["id"],))]
        assert actions == ["create"]
    finally:
        api.close()
        gw.stop()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_postgres_store_down_every_endpoint_503_then_back(
    fmt: str, tmp_path: Path, up: Upstream, own_postgres: PostgresServer
) -> None:
    """A real PostgreSQL server stopped (fast shutdown: sessions ended, then connection refused) and started
    again: cached keys keep working, a key the cache does not know and every management call get a prompt 503,
    /readyz says the store does not answer, and the gateway recovers by itself once the server is back."""
    settings, prefix, permission = FORMATS[fmt]
    url = postgres.fresh_db(own_postgres)
    gw, admin = admin_gateway(tmp_path / "gw", up.url, {**settings, "store": {"url": url, "timeout_ms": 2000},
                                                        "cache": {"ttl_seconds": 300}})
    api = KeysAPI(gw, admin, prefix=prefix)
    try:
        assert api.call("GET", "/auth/test").status_code == 200  # the admin key is now cached
        made = api.create({"name": "victim", "permissions": [permission]})
        assert made.status_code == 201, made.text
        victim, victim_value = data(made, fmt)["id"], data(made, fmt)["value"]
        uncached = gw.create_key("uncached", permission)["value"]  # never used: not in the gateway's cache
        before = snapshot(api, fmt, victim)
        secrets = [admin, victim_value, uncached]
        with gw.client() as c:
            assert c.get(f"{prefix}/auth/test", headers=bearer(victim_value)).status_code == 200  # cached too
            assert c.get("/readyz").status_code == 200

        own_postgres.stop()

        for name, method, path, body in management_calls(victim, permission):
            started = time.monotonic()
            resp = api.call(method, path, body)
            took = time.monotonic() - started
            assert_store_unavailable(resp, fmt, secrets)
            assert took < PROMPT, (name, took)
        with gw.client() as c:
            assert c.get(f"{prefix}/auth/test", headers=bearer(victim_value)).status_code == 200
            assert_store_unavailable(c.get(f"{prefix}/auth/test", headers=bearer(uncached)), fmt, secrets)
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["store"] != "ok", ready.text
        # the failed lookup is counted, under the store's kind
        assert value(scrape(gw, bearer(admin)), "gateway_key_store_errors_total", store="postgresql") >= 1

        own_postgres.start()
        wait_for(lambda: api.list().status_code == 200)
        assert snapshot(api, fmt, victim) == before
        assert_all_work_again(api, fmt, victim, permission)
        with gw.client() as c:
            assert c.get(f"{prefix}/auth/test", headers=bearer(uncached)).status_code == 200
            assert c.get("/readyz").status_code == 200
    finally:
        api.close()
        gw.stop()

    assert_logged_without_secrets(gw.log(), secrets)

"""The PostgreSQL key store with real `gateway serve` processes and a real PostgreSQL server started by the tests
(tests/support/postgres.py): a revocation through one gateway reaches another within a second (LISTEN/NOTIFY),
also after the database restarted; a key acknowledged with 201 survives kill -9 of the gateway and a restart of
PostgreSQL; a hung database costs a lookup at most the timeout; the password in the URL is never shown; `gateway
store copy` moves keys and users from SQLite to PostgreSQL and on; the rotation lease; users across hosts.

The schema and its migrations are tests/e2e/test_postgres_schema.py; the store's behaviour call by call, the
same as SQLite's and Redis's, is tests/e2e/test_store_behaviour.py; the management API with the database stopped
and started again is tests/e2e/test_store_errors.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.config.settings import KeyFormat
from gateway.keys.format import generate_key_id
from gateway.keys.hashing import Pepper
from gateway.keys.lease import PostgresLease, lease_for
from gateway.keys.postgres.listener import InvalidationListener
from gateway.keys.postgres.store import PostgresStore
from gateway.keys.record import AuditEvent, utcnow
from gateway.keys.service import create_key, revoke_key, rotate_key, update_key
from gateway.keys.store import StoreError, UsageUpdate
from tests.support.lifecycle import KeysAPI, admin_gateway, bearer, use, wait_for
from tests.support.postgres import PostgresServer, fresh_db, settings_for, sql
from tests.support.procs import SECRET, Gateway, RedisServer, Upstream, run_cli
from tests.support.redisdb import fresh_db as fresh_redis_db


def status(gw: Gateway, value: str) -> int:
    return use(gw, value).status_code


# --- across hosts ---------------------------------------------------------------------------------------------


def test_revocation_through_one_gateway_reaches_another_within_a_second(
    postgres_server: PostgresServer, tmp_path: Path, fresh_upstream: Upstream, make_gateway: Callable[..., Gateway]
) -> None:
    """Two gateway processes on one database, each with a long cache TTL: only the notification can make the
    second refuse the key so soon."""
    url = fresh_db(postgres_server)
    long_cache = {**settings_for(url), "cache": {"ttl_seconds": 300}}
    one, admin = admin_gateway(tmp_path / "one", fresh_upstream.url, long_cache)
    two = make_gateway(fresh_upstream.url, settings=long_cache, name="two")
    api = KeysAPI(one, admin)
    try:
        made = api.created(name="victim", permissions=["servers:read"])
        # The second gateway cached nothing about it yet, then learns it: created through one, usable on two.
        assert status(two, made["value"]) == 200
        assert api.delete(made["id"]).status_code == 200
        started = time.monotonic()
        wait_for(lambda: status(two, made["value"]) == 401, timeout=1.0)
        assert time.monotonic() - started < 1.0
    finally:
        api.close()
        one.stop()


def test_after_a_database_restart_the_listener_resyncs_the_whole_cache(
    own_postgres: PostgresServer, fresh_upstream: Upstream, make_gateway: Callable[..., Gateway]
) -> None:
    """A revocation made while a gateway's listener was disconnected (its notification lost) still takes
    effect: on reconnecting the listener empties the cache."""
    url = fresh_db(own_postgres)
    gw = make_gateway(fresh_upstream.url, settings={**settings_for(url), "cache": {"ttl_seconds": 300}})
    made = gw.create_key("victim", "servers:read")
    assert status(gw, made["value"]) == 200  # cached for 300 s

    own_postgres.stop()
    own_postgres.start()
    # The listener is now reconnecting. Revoke behind its back, before it is back (what the trigger sends
    # goes to whoever is listening: perhaps nobody).
    sql(url, f"UPDATE api_keys SET revoked_at = now() WHERE id = '{made['id']}'")
    wait_for(lambda: status(gw, made["value"]) == 401, timeout=5.0)
    assert "key invalidations: lost" in gw.log()


# --- nothing lost ---------------------------------------------------------------------------------------------


def test_an_acknowledged_key_survives_kill_9_and_a_database_restart(
    own_postgres: PostgresServer, tmp_path: Path, fresh_upstream: Upstream
) -> None:
    url = fresh_db(own_postgres)
    gw, admin = admin_gateway(tmp_path / "gw", fresh_upstream.url, settings_for(url))
    api = KeysAPI(gw, admin)
    made = [api.created(name=f"k{i}", permissions=["servers:read"]) for i in range(5)]
    api.close()
    gw.kill()  # SIGKILL right after the 201s: no shutdown, no flush
    own_postgres.stop("immediate")  # as if the server crashed: recovery replays its WAL
    own_postgres.start()

    gw.start()
    try:
        for m in made:
            assert status(gw, m["value"]) == 200
        actions = [e["action"] for e in json.loads(gw.cli("audit", "--json").stdout)]
        assert actions.count("create") == 6  # the admin key and the five, each with its audit event
    finally:
        gw.stop()


# --- secrets and failures -------------------------------------------------------------------------------------


def test_the_password_is_never_shown_and_an_absent_server_fails_fast(tmp_path: Path) -> None:
    url = "postgresql://gw:hunter2-secret@127.0.0.1:1/keys"

    async def main() -> None:
        store = PostgresStore(url, timeout_ms=200)
        assert "hunter2" not in repr(store)
        started = time.monotonic()
        with pytest.raises(StoreError) as err:
            await store.get(generate_key_id())
        assert time.monotonic() - started < 1.0
        assert "hunter2" not in str(err.value) and "127.0.0.1:1" in str(err.value)
        await store.close()

    asyncio.run(main())
    out = run_cli("store", "migrate", "--url", url, check=False, cwd=tmp_path)
    assert out.returncode == 1 and "store error" in out.stderr
    assert "hunter2" not in out.stdout + out.stderr and "Traceback" not in out.stderr


def test_the_database_holds_no_key_value(postgres_server: PostgresServer, tmp_path: Path) -> None:
    url = fresh_db(postgres_server)
    gw = Gateway(tmp_path / "gw", "http://127.0.0.1:9", settings_for(url), start=False)
    values = [gw.create_key(f"k{i}", "servers:read")["value"] for i in range(3)]
    rotated = json.loads(gw.cli("keys", "rotate", json.loads(gw.cli("keys", "list", "--json").stdout)[0]["id"],
                                "--grace-period", "0", "--json").stdout)
    values.append(rotated["new_key"]["value"])

    async def everything() -> str:
        store = PostgresStore(url, timeout_ms=5000)
        conn = await store.connect()
        try:
            rows = [await conn.fetch(f"SELECT t::text FROM {table} t") for table in ("api_keys", "audit_log")]
        finally:
            await conn.close()
        return "\n".join(r[0] for batch in rows for r in batch)

    dumped = asyncio.run(everything())
    assert dumped
    for value in values:
        assert value not in dumped and value[len("dep_live_"):] not in dumped


# --- gateway store copy ---------------------------------------------------------------------------------------


def test_store_copy_sqlite_to_postgres_and_on_to_redis_keeps_keys_working(
    postgres_server: PostgresServer, redis_server: RedisServer | str, make_gateway: Callable[..., Gateway],
    fresh_upstream: Upstream,
) -> None:
    """One host outgrowing its SQLite file: every key, the audit trail and the dashboard users copied into a new
    (never migrated) PostgreSQL database, counted; a gateway on PostgreSQL then accepts the keys and refuses the
    revoked one, and the user's password hash still verifies. PostgreSQL as the source works too (on to Redis)."""
    first = make_gateway(fresh_upstream.url, name="first", start=False)
    made = [first.create_key(f"k{i}", "servers:read") for i in range(3)]
    revoked = made[2]
    first.cli("keys", "revoke", revoked["id"])
    password = "correct horse battery staple"
    first.cli("users", "create", "ana@example.com", "--role", "developer", "--password-stdin", input=password + "\n")
    sqlite_url = f"sqlite:///{first.work / 'keys.db'}"
    pg_url = fresh_db(postgres_server, migrate=False)  # copy brings a new database to the schema itself
    counts = {"copied_keys": 3, "skipped_keys": 0, "copied_audit_events": 4, "copied_users": 1, "skipped_users": 0}

    out = first.cli("store", "copy", "--from", sqlite_url, "--to", pg_url, "--json")
    assert json.loads(out.stdout) == counts
    again = json.loads(first.cli("store", "copy", "--from", sqlite_url, "--to", pg_url, "--json").stdout)
    assert (again["skipped_keys"], again["skipped_users"]) == (3, 1)  # idempotent
    redis_url = fresh_redis_db(redis_server)
    onward = first.cli("store", "copy", "--from", pg_url, "--to", redis_url, "--json")
    assert json.loads(onward.stdout) == counts
    for m in made:
        assert m["value"] not in out.stdout + out.stderr + onward.stdout + onward.stderr

    for url in (pg_url, redis_url):
        gw = make_gateway(fresh_upstream.url, settings=settings_for(url))
        for m in made[:2]:
            assert status(gw, m["value"]) == 200
        assert status(gw, revoked["value"]) == 401
        listed = json.loads(gw.cli("audit", "--json").stdout)
        assert [e["action"] for e in listed] == ["create", "create", "create", "revoke"]
        users = json.loads(gw.cli("users", "list", "--json").stdout)
        assert [(u["email"], u["role"]) for u in users] == [("ana@example.com", "developer")]
        gw.stop()

    async def password_hash_kept() -> bool:
        from gateway.accounts.passwords import verify_password

        store = PostgresStore(pg_url, timeout_ms=5000)
        try:
            user = await store.get_user_by_email("ana@example.com")
            assert user is not None and password not in repr(user)
            return bool(verify_password(user.password_hash, password))
        finally:
            await store.close()

    assert asyncio.run(password_hash_kept())  # the copied user can sign in with the same password


# --- the rotation lease ---------------------------------------------------------------------------------------


def test_the_rotation_lease_is_held_by_one_process_and_freed_when_its_session_ends(
    postgres_server: PostgresServer,
) -> None:
    url = fresh_db(postgres_server)

    async def main() -> None:
        a, b = PostgresStore(url, timeout_ms=5000), PostgresStore(url, timeout_ms=5000)
        first, second = lease_for(a), lease_for(b)
        assert isinstance(first, PostgresLease)
        assert await first.acquire() and await first.acquire()  # renewed: still held
        assert not await second.acquire()
        await first.release()
        assert await second.acquire()
        # The holder's session is cut off (a process dying, a network cut): the lock goes with it.
        admin = await a.connect()
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                            " AND pid <> pg_backend_pid()")
        await admin.close()
        assert await first.acquire()
        assert not await second.acquire()  # it noticed its session is gone
        await first.release()
        await second.release()

    asyncio.run(main())


def test_a_hung_database_costs_a_lookup_at_most_the_timeout(
    own_postgres: PostgresServer, fresh_upstream: Upstream, make_gateway: Callable[..., Gateway]
) -> None:
    """Every PostgreSQL process SIGSTOPped (connections open, no answer): a cached key is served at once, one
    the cache does not know gets 503 store_unavailable within about store.timeout_ms, and all is well again
    once the server runs on."""
    url = fresh_db(own_postgres)
    gw = make_gateway(fresh_upstream.url, settings={**settings_for(url, timeout_ms=300), "cache": {"ttl_seconds": 300}})
    cached, uncached = gw.create_key("cached")["value"], gw.create_key("uncached")["value"]
    assert status(gw, cached) == 200
    own_postgres.pause()
    try:
        for value, expected in ((cached, 200), (uncached, 503), (cached, 200), (uncached, 503)):
            started = time.monotonic()
            resp = httpx.get(f"{gw.url}/v1/servers", headers=bearer(value), timeout=10)
            took = time.monotonic() - started
            assert resp.status_code == expected and took < 1.0, (expected, resp.status_code, took)
            if expected == 503:
                assert resp.json()["error"]["code"] == "store_unavailable"
    finally:
        own_postgres.resume()
    wait_for(lambda: status(gw, uncached) == 200, timeout=10.0)


# --- dashboard users ------------------------------------------------------------------------------------------


def test_users_log_in_and_refresh_on_any_gateway_sharing_the_database(
    postgres_server: PostgresServer, make_gateway: Callable[..., Gateway], fresh_upstream: Upstream
) -> None:
    """A user made through one gateway's configuration logs in on another host's gateway; its refresh token is
    single use across both (the second host sees the first host's spend), and the reuse ends the login."""
    url = fresh_db(postgres_server)
    settings = {**settings_for(url), "accounts": {"enabled": True}}
    one = make_gateway(fresh_upstream.url, settings=settings, name="one")
    two = make_gateway(fresh_upstream.url, settings=settings, name="two")
    password = "correct horse battery"
    one.cli("users", "create", "ops@example.com", "--role", "viewer", "--password-stdin", input=password + "\n")

    def post(gw: Gateway, path: str, body: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{gw.url}/v1{path}", json=body, timeout=10)

    logged = post(two, "/auth/login", {"email": "ops@example.com", "password": password})
    assert logged.status_code == 200, logged.text
    first = logged.json()["refresh_token"]
    refreshed = post(one, "/auth/refresh", {"refresh_token": first})
    assert refreshed.status_code == 200, refreshed.text
    assert post(two, "/auth/refresh", {"refresh_token": first}).status_code == 401  # spent on the other host
    assert post(one, "/auth/refresh", {"refresh_token": refreshed.json()["refresh_token"]}).status_code == 401
    listed = json.loads(two.cli("users", "list", "--json").stdout)
    assert listed[0]["last_login_at"] is not None
    for gw in (one, two):
        assert password not in gw.log() and first not in gw.log()


def test_changes_the_gate_reads_are_announced_and_usage_flushes_are_not(postgres_server: PostgresServer) -> None:
    """The trigger names the keyed hash of each key changed (create, update, rotate: both keys, revoke), and stays
    quiet for usage counts, notices and a held value taken: a usage flush every few seconds must not empty every
    gateway's cache."""
    url = fresh_db(postgres_server)

    class Recorder:
        def __init__(self) -> None:
            self.hashes: list[str | None] = []

        def invalidate(self, key_hash: str | None = None) -> None:
            self.hashes.append(key_hash)

    async def main() -> None:
        store = PostgresStore(url, timeout_ms=5000)
        cache = Recorder()
        listener = InvalidationListener(store, cache)
        listener.start()
        try:
            await until_async(lambda: listener.connected)
            assert cache.hashes == [None]  # connected: the whole cache dropped once
            pepper = Pepper(SECRET.encode(), "test")
            _, a = await create_key(store, pepper, KeyFormat(), name="a", permissions=["servers:read"])
            await store.record_usage([UsageUpdate(a.id, 5, utcnow(), "10.0.0.1")])
            await store.set_notices(a.id, "{}")
            await store.take_held_value(a.id, AuditEvent("reveal", a.id, "cli"))
            await update_key(store, a.id, {"name": "renamed"})
            rotated = await rotate_key(store, pepper, KeyFormat(), a.id, grace_period="1h")
            assert rotated is not None
            await revoke_key(store, a.id)
            expected = [None, a.key_hash, a.key_hash, rotated[2].key_hash, a.key_hash, a.key_hash]
            await until_async(lambda: len(cache.hashes) >= len(expected))
            await asyncio.sleep(0.2)  # nothing more arrives
            assert sorted(map(str, cache.hashes)) == sorted(map(str, expected))
        finally:
            await listener.stop()
            await store.close()

    asyncio.run(main())


async def until_async(check: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.01)


def test_reads_after_a_database_restart_are_served_on_new_connections(own_postgres: PostgresServer) -> None:
    """Pooled connections made before a restart are dead (and asyncpg may refuse one outright): the first read
    that meets one is tried again on a new connection and every other stale one is replaced, so no lookup fails
    for it; after a crash too."""
    url = fresh_db(own_postgres)

    async def main() -> None:
        store = PostgresStore(url, timeout_ms=2000)
        try:
            for mode in ("fast", "immediate"):
                await asyncio.gather(*(store.ping() for _ in range(5)))  # five pooled connections
                own_postgres.stop(mode)
                own_postgres.start()
                for _ in range(8):
                    assert await store.get(generate_key_id()) is None
                await store.ping()
        finally:
            await store.close()

    asyncio.run(main())

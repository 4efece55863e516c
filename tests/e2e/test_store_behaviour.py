"""The key stores behave alike: the same calls on a real SQLite file, a real redis-server and a real PostgreSQL
server (started by the tests with initdb) give the same answers; changes are atomic; concurrent rotations of one
key leave one successor; values are never stored; `gateway store copy` moves keys between them and the keys still
authenticate."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import cast

import httpx
import pytest

from gateway.config.settings import KeyFormat
from gateway.keys.format import generate_key, generate_key_id
from gateway.keys.hashing import Pepper
from gateway.keys.postgres.store import PostgresStore
from gateway.keys.record import AuditEvent, KeyRecord, utcnow
from gateway.keys.redis import RedisStore
from gateway.keys.service import create_key, revoke_key, rotate_key, update_key
from gateway.keys.sqlite import SQLiteStore
from gateway.keys.store import Conflict, KeyStore, StoreError, UsageUpdate, UserStore
from gateway.keys.users import REUSED, REVOKED, SPENT, RefreshRecord
from tests.support import postgres
from tests.support.procs import SECRET, Gateway, RedisServer, Upstream, run_cli
from tests.support.redisdb import dump, fresh_db

PEPPER = Pepper(SECRET.encode(), "test")
FMT = KeyFormat()


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A real, empty store of each kind (the session's redis-server and PostgreSQL server, started on demand)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keys.db'}"
    if request.param == "postgres":
        return postgres.fresh_db(request.getfixturevalue("postgres_server"))
    return fresh_db(request.getfixturevalue("redis_server"))


def open_store(url: str) -> KeyStore:
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url[len("sqlite:///"):]))
    if url.startswith("postgresql://"):
        return PostgresStore(url, timeout_ms=2000)
    return RedisStore(url, timeout_ms=2000)


def run(coro_fn: Callable[[KeyStore], object], url: str) -> None:
    async def main() -> None:
        store = open_store(url)
        try:
            await coro_fn(store)  # type: ignore[misc]
        finally:
            await store.close()

    asyncio.run(main())


def test_same_behaviour_as_sqlite(store_url: str) -> None:
    async def check(store: KeyStore) -> None:
        value, a = await create_key(store, PEPPER, FMT, name="a", permissions=["servers:read"],
                                    allowed_ips=["10.0.0.0/8"], rate_limit_tier="limited", description="first")
        _, b = await create_key(store, PEPPER, FMT, name="b", permissions=["instances:*"], environment="test",
                                expires_at=utcnow() + timedelta(days=1), created_by="user:usr_b")
        assert await store.get_by_hash(PEPPER.hash(value)) == a
        assert await store.get_by_hash(PEPPER.hash(generate_key("dep_live_"))) is None
        assert await store.get(a.id) == a and await store.get("key_nope") is None
        order = [r.id for r in sorted([a, b], key=lambda r: (r.created_at, r.id))]  # created_at, then id
        assert [r.id for r in await store.list()] == order
        assert [r.id for r in await store.list(environment="test")] == [b.id]
        assert [r.id for r in await store.list(limit=1, offset=1)] == order[1:]
        # A dashboard user who is not an admin lists only the keys the user made.
        assert [r.id for r in await store.list(created_by="user:usr_b")] == [b.id]
        assert await store.list(created_by="user:usr_nobody") == []

        updated = await update_key(store, a.id, {"name": "a2", "allowed_ips": [], "rate_limit_tier": None})
        assert updated is not None
        assert (updated.name, updated.allowed_ips, updated.rate_limit_tier) == ("a2", (), None)
        assert updated.description == "first"
        assert await update_key(store, "key_nope", {"name": "x"}) is None

        rotated = await rotate_key(store, PEPPER, FMT, b.id, grace_period="7d")
        assert rotated is not None
        old, new_value, new = rotated
        assert old.rotated_to == new.id and new.rotated_from == b.id
        assert old.expires_at == b.expires_at  # rotation never extends a key's life
        assert (await store.get_by_hash(PEPPER.hash(new_value))) == new
        with pytest.raises(Conflict, match="already rotated"):
            await rotate_key(store, PEPPER, FMT, b.id, grace_period="0")

        revoked = await revoke_key(store, a.id)
        assert revoked is not None and revoked.revoked_at is not None
        again = await revoke_key(store, a.id)
        assert again is not None and again.revoked_at == revoked.revoked_at
        with pytest.raises(Conflict, match="revoked"):
            await rotate_key(store, PEPPER, FMT, a.id, grace_period="0")
        assert [r.id for r in await store.list(status="revoked")] == [a.id]
        assert {r.id for r in await store.list(status="active")} == {b.id, new.id}

        now = utcnow()
        await store.record_usage([UsageUpdate(new.id, 3, now, "10.1.2.3"),
                                  UsageUpdate("key_gone", 1, now, None)])
        await store.record_usage([UsageUpdate(new.id, 2, now - timedelta(seconds=5), "10.9.9.9")])
        used = await store.get(new.id)
        assert used is not None
        assert (used.request_count, used.last_used_at, used.last_used_ip) == (5, now, "10.1.2.3")

        actions = [(e.action, e.key_id) for e in await store.audit_log()]
        assert actions == [("create", a.id), ("create", b.id), ("update", a.id), ("rotate", b.id),
                           ("revoke", a.id)]
        assert [e.action for e in await store.audit_log(a.id)] == ["create", "update", "revoke"]
        assert [e.action for e in await store.audit_log(limit=2)] == ["create", "create"]

        with pytest.raises(StoreError, match="already exists"):
            await store.add(a)
        await store.ping()

    run(check, store_url)


def test_the_rotation_pass_lists_only_the_keys_it_looks_after(store_url: str) -> None:
    """list(watched=True): the auto-rotating keys and those with a notification address, with the other filters
    and in the usual order; every other key is left out (the rotation pass reads only these)."""
    async def check(store: KeyStore) -> None:
        _, plain = await create_key(store, PEPPER, FMT, name="plain", permissions=["servers:read"])
        _, rotating = await create_key(store, PEPPER, FMT, name="rotating", permissions=["servers:read"],
                                       auto_rotate=True, rotation_period="30d")
        _, mailed = await create_key(store, PEPPER, FMT, name="mailed", permissions=["servers:read"],
                                     notification_email="ops@example.com", environment="test")
        _, gone = await create_key(store, PEPPER, FMT, name="gone", permissions=["servers:read"],
                                   auto_rotate=True, rotation_period="30d")
        await revoke_key(store, gone.id)
        order = [r.id for r in sorted([rotating, mailed], key=lambda r: (r.created_at, r.id))]
        assert [r.id for r in await store.list(status="active", watched=True)] == order
        assert [r.id for r in await store.list(watched=True, environment="test")] == [mailed.id]
        assert {r.id for r in await store.list(watched=True)} == {rotating.id, mailed.id, gone.id}
        assert plain.id in {r.id for r in await store.list(status="active")}

    run(check, store_url)


def test_sqlite_answers_the_rotation_pass_from_its_index(tmp_path: Path) -> None:
    """The watched listing of a SQLite store is served by the partial index (schema 5), not by a scan of every
    key: the plan of the very statement the store runs names the index."""
    seen: list[str] = []

    async def check(store: KeyStore) -> None:
        db = cast(SQLiteStore, store)._db
        db.set_trace_callback(seen.append)  # the statement as run, its parameters bound
        await store.list(status="active", watched=True)
        db.set_trace_callback(None)
        listing = [q for q in seen if q.lstrip().startswith("SELECT") and "api_keys" in q]
        assert listing, seen
        plan = db.execute("EXPLAIN QUERY PLAN " + listing[-1]).fetchall()
        assert any("USING INDEX api_keys_watched" in row[-1] for row in plan), plan

    run(check, f"sqlite:///{tmp_path / 'keys.db'}")


def test_a_schema_4_sqlite_file_gets_the_index_when_opened(tmp_path: Path) -> None:
    """A store written by the gateway before the index (schema 4) is brought to schema 5 when a gateway opens
    it; its keys are kept."""
    path = tmp_path / "keys.db"

    async def make(store: KeyStore) -> None:
        await create_key(store, PEPPER, FMT, name="kept", permissions=["servers:read"])

    run(make, f"sqlite:///{path}")
    db = sqlite3.connect(path)
    db.execute("DROP INDEX api_keys_watched")
    db.execute("PRAGMA user_version=4")
    db.commit()
    db.close()

    async def reopen(store: KeyStore) -> None:
        assert [r.name for r in await store.list()] == ["kept"]

    run(reopen, f"sqlite:///{path}")
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5
        assert db.execute("SELECT 1 FROM sqlite_master WHERE name = 'api_keys_watched'").fetchone() == (1,)
    finally:
        db.close()


def test_concurrent_rotations_exactly_one_wins(store_url: str) -> None:
    async def check(store: KeyStore) -> None:
        _, rec = await create_key(store, PEPPER, FMT, name="r", permissions=["servers:read"])
        # Connections for all eight made first (a pooled store makes them as needed): the rotations then
        # overlap for real instead of each waiting for a connection while the one before finishes.
        await asyncio.gather(*(store.ping() for _ in range(8)))
        results = await asyncio.gather(
            *(rotate_key(store, PEPPER, FMT, rec.id, grace_period="1h") for _ in range(8)), return_exceptions=True
        )
        wins = [r for r in results if isinstance(r, tuple)]
        assert len(wins) == 1, results
        assert all(isinstance(r, Conflict) for r in results if not isinstance(r, tuple))
        assert len(await store.list()) == 2
        assert [e.action for e in await store.audit_log(rec.id)] == ["create", "rotate"]

    run(check, store_url)


def test_a_held_value_is_taken_once_and_notices_are_kept(store_url: str) -> None:
    """What the automatic rotation keeps on a key: its successor's sealed value, handed out once (the second
    caller gets None) with an audit event; the state of its e-mail notices, written without one."""

    async def check(store: KeyStore) -> None:
        value = generate_key("dep_live_")
        held = KeyRecord(id=generate_key_id(), key_hash=PEPPER.hash(value), hint=value[-4:], name="held",
                         permissions=("servers:read",), held_value="sealed-value-stand-in")
        await store.add(held, AuditEvent("create", held.id, "rotation"))
        taken = await asyncio.gather(*(store.take_held_value(held.id, AuditEvent("reveal", held.id, "cli"))
                                       for _ in range(4)))
        assert [t for t in taken if t is not None] == ["sealed-value-stand-in"] and taken.count(None) == 3
        assert await store.take_held_value("key_nope", AuditEvent("reveal", "key_nope", "cli")) is None
        assert [e.action for e in await store.audit_log(held.id)] == ["create", "reveal"]

        await store.set_notices(held.id, '{"expiry": "sent"}')
        await store.set_notices("key_nope", "{}")  # a key that is gone is not made again
        got = await store.get(held.id)
        assert got is not None and got.notices == '{"expiry": "sent"}' and got.held_value is None
        assert await store.get("key_nope") is None
        assert [e.action for e in await store.audit_log(held.id)] == ["create", "reveal"]

    run(check, store_url)


def test_a_refresh_token_presented_twice_at_once_is_spent_once(store_url: str) -> None:
    """Eight refreshes with one token at the same moment: one gets the successor; the next finds it spent and
    revokes the family (RFC 9700 4.14.2), the rest find the family revoked; never two successors."""
    now = utcnow()

    async def check(store: KeyStore) -> None:
        users = cast(UserStore, store)
        await users.add_refresh(RefreshRecord(token_hash="t0", family="f", user_id="usr_1", created_at=now,
                                              expires_at=now + timedelta(days=1)))
        outcomes = await asyncio.gather(*(
            users.spend_refresh("t0", RefreshRecord(token_hash=f"t{i}", family="", user_id="", created_at=now,
                                                    expires_at=now), now) for i in range(1, 9)))
        found = [o for o, _ in outcomes]
        # The first reuse revokes the family; those after it find it revoked.
        assert found.count(SPENT) == 1 and found.count(REUSED) == 1 and found.count(REVOKED) == 6, found
        winner = next(i for i, (o, _) in enumerate(outcomes, start=1) if o == SPENT)
        # The one successor was made, and the reuse that followed revoked it with its family.
        assert (await users.spend_refresh(f"t{winner}", RefreshRecord(
            token_hash="t99", family="", user_id="", created_at=now, expires_at=now), now))[0] == REVOKED

    run(check, store_url)


def test_an_id_no_key_can_have_finds_nothing(store_url: str) -> None:
    """An id with a NUL in it (from a URL path, %00) is simply not found, by every call that takes an id; never a
    store error (PostgreSQL cannot hold the character at all)."""

    async def check(store: KeyStore) -> None:
        bad = "key_\x00x"
        event = AuditEvent("update", bad, "cli")
        assert await store.get(bad) is None
        assert await store.update(bad, {"name": "x"}, event) is None
        assert await store.revoke(bad) is None
        assert await store.rotate(bad, KeyRecord(id=generate_key_id(), key_hash="0" * 64, hint="0000", name="n",
                                                 permissions=()), utcnow(), event) is None
        assert await store.take_held_value(bad, event) is None
        assert await store.audit_log(bad) == []
        assert await cast(UserStore, store).get_user_by_email("a\x00@example.com") is None
        assert await store.list() == [] and await store.audit_log() == []

    run(check, store_url)


def test_a_failed_change_writes_nothing(store_url: str) -> None:
    async def check(store: KeyStore) -> None:
        _, rec = await create_key(store, PEPPER, FMT, name="r", permissions=["servers:read"])
        _, other = await create_key(store, PEPPER, FMT, name="o", permissions=["servers:read"])
        # A successor whose id is taken: the rotation must leave the old key untouched.
        clash = KeyRecord(id=other.id, key_hash=PEPPER.hash(generate_key("dep_live_")), hint="zzzz", name="r",
                          permissions=rec.permissions)
        with pytest.raises(StoreError):
            await store.rotate(rec.id, clash, utcnow() + timedelta(hours=1),
                               AuditEvent("rotate", rec.id, "cli"))
        assert await store.get(rec.id) == rec
        assert [e.action for e in await store.audit_log()] == ["create", "create"]

    run(check, store_url)


def test_redis_holds_no_key_value(redis_server: RedisServer | str) -> None:
    url = fresh_db(redis_server)
    values: list[str] = []

    async def check(store: KeyStore) -> None:
        for i in range(3):
            value, rec = await create_key(store, PEPPER, FMT, name=f"k{i}", permissions=["servers:read"])
            values.append(value)
        rotated = await rotate_key(store, PEPPER, FMT, rec.id, grace_period="0")
        assert rotated is not None
        values.append(rotated[1])

    run(check, url)
    everything = dump(url)
    assert everything
    for value in values:
        assert value.encode() not in everything
        assert value[len("dep_live_"):].encode() not in everything
        assert PEPPER.hash(value).encode() in everything  # found by its keyed hash only


def test_unreachable_redis_fails_fast_with_a_clean_message(own_redis: RedisServer) -> None:
    own_redis.pause()  # a hung server: accepts nothing, answers nothing

    async def check() -> None:
        store = RedisStore(own_redis.url, timeout_ms=50)
        try:
            started = time.monotonic()
            with pytest.raises(StoreError) as err:
                await store.get_by_hash("0" * 64)
            assert time.monotonic() - started < 1.0
            assert "0" * 64 not in str(err.value)
        finally:
            await store.close()

    try:
        asyncio.run(check())
    finally:
        own_redis.resume()


def test_password_is_not_in_messages() -> None:
    async def check() -> None:
        store = RedisStore("redis://:hunter2-secret@127.0.0.1:1/0", timeout_ms=50)
        try:
            assert "hunter2" not in repr(store)
            with pytest.raises(StoreError) as err:
                await store.get(generate_key_id())
            assert "hunter2" not in str(err.value)
        finally:
            await store.close()

    asyncio.run(check())


# --- gateway store copy ---------------------------------------------------------------------------------------


def test_store_copy_round_trip_keeps_keys_working(
    tmp_path: Path, redis_server: RedisServer | str, make_gateway: Callable[..., Gateway], fresh_upstream: Upstream
) -> None:
    first = make_gateway(fresh_upstream.url, name="first", start=False)
    made = [first.create_key(f"k{i}", "servers:read") for i in range(3)]
    # A dashboard user moves with the keys (its password hash; the password itself was never stored).
    first.cli("users", "create", "ana@example.com", "--role", "viewer", "--password-stdin", input="moved password\n")
    revoked = made[2]
    first.cli("keys", "revoke", revoked["id"])
    sqlite_a = f"sqlite:///{first.work / 'keys.db'}"
    redis_url = fresh_db(redis_server)
    sqlite_b = f"sqlite:///{tmp_path / 'back' / 'keys.db'}"

    out = first.cli("store", "copy", "--from", sqlite_a, "--to", redis_url, "--json")
    assert json.loads(out.stdout) == {"copied_keys": 3, "skipped_keys": 0, "copied_audit_events": 4,
                                      "copied_users": 1, "skipped_users": 0}
    for m in made:
        assert m["value"] not in out.stdout + out.stderr
    again = first.cli("store", "copy", "--from", sqlite_a, "--to", redis_url, "--json")
    assert json.loads(again.stdout)["skipped_keys"] == 3  # idempotent
    assert (json.loads(again.stdout)["copied_users"], json.loads(again.stdout)["skipped_users"]) == (0, 1)
    back = first.cli("store", "copy", "--from", redis_url, "--to", sqlite_b)
    assert "Copied 3 key(s), 4 audit event(s) and 1 dashboard user(s)" in back.stdout

    for url in (redis_url, sqlite_b):
        gw = make_gateway(fresh_upstream.url, settings={"store": {"url": url}})
        with gw.client() as c:
            for m in made[:2]:
                assert c.get("/v1/servers", headers={"Authorization": f"Bearer {m['value']}"}).status_code == 200
            assert c.get("/v1/servers",
                         headers={"Authorization": f"Bearer {revoked['value']}"}).status_code == 401
        listed = json.loads(gw.cli("audit", "--json").stdout)
        assert [e["action"] for e in listed] == ["create", "create", "create", "revoke"]
        users = json.loads(gw.cli("users", "list", "--json").stdout)
        assert [(u["email"], u["role"], u["status"]) for u in users] == [("ana@example.com", "viewer", "active")]
        gw.stop()
    # ... and logs in on the store it was copied to.
    moved = make_gateway(fresh_upstream.url, settings={"store": {"url": redis_url}, "accounts": {"enabled": True}})
    login = httpx.post(f"{moved.url}/v1/auth/login", json={"email": "ana@example.com", "password": "moved password"},
                       timeout=10)
    assert login.status_code == 200, login.text


def test_store_copy_bad_arguments(tmp_path: Path) -> None:
    same = run_cli("store", "copy", "--from", "redis://127.0.0.1:1/0", "--to", "redis://127.0.0.1:1/0", check=False,
                   cwd=tmp_path)
    assert same.returncode == 2 and "same store" in same.stderr
    bad = run_cli("store", "copy", "--from", "ftp://x", "--to", f"sqlite:///{tmp_path}/k.db", check=False,
                  cwd=tmp_path)
    assert bad.returncode == 2 and "unsupported scheme" in bad.stderr and "Traceback" not in bad.stderr
    down = run_cli("store", "copy", "--from", "redis://127.0.0.1:1/0", "--to", f"sqlite:///{tmp_path}/k.db",
                   check=False, cwd=tmp_path)
    assert down.returncode == 1 and "store error" in down.stderr and "Traceback" not in down.stderr




def test_a_key_of_the_wrong_type_stops_a_change_before_any_write(redis_server: RedisServer | str) -> None:
    """Redis does not undo a script's writes when a later command fails, so each script checks the types of
    the keys it touches first: with the audit list replaced by a string, a revoke and a rotate are refused
    (StoreError naming the key, never a value or hash) and the key is exactly as it was."""
    import redis as redis_sync

    url = fresh_db(redis_server)

    async def main(store: KeyStore) -> None:
        value, record = await create_key(store, PEPPER, FMT, name="typed", permissions=["servers:read"])
        raw = redis_sync.Redis.from_url(url)
        raw.delete("{gw}:audit")
        raw.set("{gw}:audit", "not a list")
        before = raw.hgetall(f"{{gw}}:key:{record.id}")
        for change in (lambda: revoke_key(store, record.id),
                       lambda: rotate_key(store, PEPPER, FMT, record.id, grace_period="1d")):
            with pytest.raises(StoreError) as info:
                await change()
            text = str(info.value)
            assert "{gw}:audit holds a string, not a list" in text and "nothing written" in text
            assert value not in text and record.key_hash not in text
            assert raw.hgetall(f"{{gw}}:key:{record.id}") == before
        assert raw.get("{gw}:audit") == b"not a list"
        assert len(raw.zrange("{gw}:ids", 0, -1)) == 1  # the rotation added no second key

    run(main, url)

"""The stores' users, refresh tokens and per-day usage (gateway.keys.store.UserStore), on a real SQLite file, a
real redis-server and a real PostgreSQL server (started by the tests), the same assertions for all three."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.keys.postgres.store import PostgresStore
from gateway.keys.record import KeyRecord, utcnow
from gateway.keys.redis import RedisStore
from gateway.keys.sqlite import SQLiteStore
from gateway.keys.store import Conflict, UsageUpdate
from gateway.keys.users import EXPIRED, REUSED, REVOKED, SPENT, UNKNOWN, RefreshRecord, UserRecord
from tests.support import postgres
from tests.support.procs import RedisServer
from tests.support.redisdb import fresh_db


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keys.db'}"
    elif request.param == "postgres":
        yield postgres.fresh_db(request.getfixturevalue("postgres_server"))
    else:
        server: RedisServer | str = request.getfixturevalue("redis_server")
        yield fresh_db(server)


def _open(url: str) -> SQLiteStore | RedisStore | PostgresStore:
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url[len("sqlite:///"):]))
    if url.startswith("postgresql://"):
        return PostgresStore(url, timeout_ms=2000)
    return RedisStore(url, timeout_ms=2000)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _user(uid: str = "usr_1", email: str = "ana@example.com") -> UserRecord:
    return UserRecord(id=uid, email=email, role="developer", password_hash="$argon2id$v=19$fake", status="active",
                      created_at=NOW)


def _token(h: str, family: str = "fam1", expires: datetime = NOW + timedelta(days=30)) -> RefreshRecord:
    return RefreshRecord(token_hash=h, family=family, user_id="usr_1", created_at=NOW, expires_at=expires)


def test_users_are_added_found_by_address_in_any_case_listed_and_updated(store_url: str) -> None:
    async def go() -> None:
        store = _open(store_url)
        try:
            await store.add_user(_user())
            await store.add_user(_user("usr_2", "bob@example.com"))
            with pytest.raises(Conflict) as caught:
                await store.add_user(_user("usr_3", "ANA@example.com"))
            assert caught.value.message_id == "conflict.user_exists"
            found = await store.get_user_by_email("Ana@Example.COM")
            assert found is not None and found.id == "usr_1" and found.password_hash.startswith("$argon2id$")
            assert "fake" not in repr(found)
            assert [u.id for u in await store.list_users()] == ["usr_1", "usr_2"]
            updated = await store.update_user("usr_1", {"status": "disabled", "last_login_at": NOW})
            assert updated is not None and updated.status == "disabled" and updated.last_login_at == NOW
            assert await store.update_user("usr_9", {"status": "disabled"}) is None
            assert await store.get_user("usr_9") is None
        finally:
            await store.close()

    run(go())


def test_a_refresh_token_is_spent_once_and_its_reuse_revokes_the_whole_family(store_url: str) -> None:
    """RFC 9700 4.14.2: a refresh token presented a second time revokes every token of its family."""

    async def go() -> None:
        store = _open(store_url)
        try:
            await store.add_refresh(_token("h1"))
            placeholder = RefreshRecord(token_hash="h2", family="", user_id="", created_at=NOW, expires_at=NOW)
            outcome, old = await store.spend_refresh("h1", placeholder, NOW)
            assert outcome == SPENT and old is not None and old.user_id == "usr_1" and old.family == "fam1"
            # The successor inherits the family and its end: it can be spent in turn.
            outcome, _ = await store.spend_refresh(
                "h2", RefreshRecord(token_hash="h3", family="", user_id="", created_at=NOW, expires_at=NOW), NOW)
            assert outcome == SPENT
            # h1 again: a replay. Its family, h3 included, is revoked.
            outcome, _ = await store.spend_refresh(
                "h1", RefreshRecord(token_hash="h4", family="", user_id="", created_at=NOW, expires_at=NOW), NOW)
            assert outcome == REUSED
            outcome, _ = await store.spend_refresh(
                "h3", RefreshRecord(token_hash="h5", family="", user_id="", created_at=NOW, expires_at=NOW), NOW)
            assert outcome == REVOKED
            outcome, none = await store.spend_refresh(
                "nope", RefreshRecord(token_hash="h6", family="", user_id="", created_at=NOW, expires_at=NOW), NOW)
            assert outcome == UNKNOWN and none is None
        finally:
            await store.close()

    run(go())


def test_expired_logged_out_and_user_revoked_families_are_refused(store_url: str) -> None:
    async def go() -> None:
        store = _open(store_url)
        try:
            later = utcnow() + timedelta(days=1)
            await store.add_refresh(_token("old", "famA", expires=NOW - timedelta(seconds=1)))
            await store.add_refresh(_token("out", "famB", expires=later))
            await store.add_refresh(_token("u1", "famC", expires=later))
            await store.add_refresh(_token("u2", "famD", expires=later))

            def nxt(h: str) -> RefreshRecord:
                return RefreshRecord(token_hash=h, family="", user_id="", created_at=NOW, expires_at=NOW)

            assert (await store.spend_refresh("old", nxt("n1"), NOW))[0] == EXPIRED
            assert await store.revoke_refresh_family("out", NOW) is True
            assert await store.revoke_refresh_family("unknown", NOW) is False
            assert (await store.spend_refresh("out", nxt("n2"), NOW))[0] == REVOKED
            await store.revoke_user_refresh("usr_1", NOW)
            assert (await store.spend_refresh("u1", nxt("n3"), NOW))[0] == REVOKED
            assert (await store.spend_refresh("u2", nxt("n4"), NOW))[0] == REVOKED
        finally:
            await store.close()

    run(go())


def test_usage_by_day_counts_requests_per_utc_day_oldest_first_with_zero_days(store_url: str) -> None:
    async def go() -> None:
        store = _open(store_url)
        try:
            await store.add(KeyRecord(id="key_1", key_hash="a" * 64, hint="abcd", name="k",
                                      permissions=("servers:read",)))
            now = utcnow()
            yesterday = now - timedelta(days=1)
            await store.record_usage([UsageUpdate("key_1", 3, yesterday, "127.0.0.1")])
            await store.record_usage([UsageUpdate("key_1", 2, now, "127.0.0.1")])
            await store.record_usage([UsageUpdate("key_1", 5, now, None)])
            days = await store.usage_by_day("key_1", 4)
            assert [d for d, _ in days] == [now.date() - timedelta(days=n) for n in (3, 2, 1, 0)]
            assert [c for _, c in days] == [0, 0, 3, 7]
            assert await store.usage_by_day("key_other", 2) == [(now.date() - timedelta(days=1), 0), (now.date(), 0)]
            # The key's own total is kept as before.
            record = await store.get("key_1")
            assert record is not None and record.request_count == 10
        finally:
            await store.close()

    run(go())

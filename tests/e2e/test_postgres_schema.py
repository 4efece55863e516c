"""The PostgreSQL store's schema with a real PostgreSQL server started by the tests (tests/support/postgres.py):
versioned SQL files applied by `gateway store migrate`, in one transaction under a lock; a gateway refuses a
database at a schema it does not know and names what to do; an upgrade from each released schema keeps every key,
audit event and their use."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config.settings import KeyFormat
from gateway.keys.hashing import Pepper
from gateway.keys.postgres import schema
from gateway.keys.postgres.store import PostgresStore
from gateway.keys.service import create_key, revoke_key
from tests.support.lifecycle import use, wait_for
from tests.support.postgres import PostgresServer, fresh_db, settings_for, sql
from tests.support.procs import SECRET, Gateway, Upstream, run_cli


def test_a_gateway_refuses_an_unmigrated_or_newer_schema_naming_what_to_do(
    postgres_server: PostgresServer, make_gateway: Callable[..., Gateway], fresh_upstream: Upstream
) -> None:
    url = fresh_db(postgres_server, migrate=False)
    gw = make_gateway(fresh_upstream.url, settings=settings_for(url), start=False)

    refused = gw.cli("keys", "list", check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "has no gateway schema yet" in refused.stderr and "gateway store migrate" in refused.stderr
    serve = run_cli("serve", "--config", str(gw.config), env=gw.env, check=False, cwd=gw.work, timeout=30)
    assert serve.returncode == 1 and "gateway store migrate" in serve.stderr

    first = json.loads(gw.cli("store", "migrate", "--json").stdout)
    assert first["migrated"] is True and (first["from_version"], first["to_version"]) == (0, schema.latest())
    again = gw.cli("store", "migrate").stdout
    assert f"already at schema version {schema.latest()}" in again
    assert json.loads(gw.cli("keys", "list", "--json").stdout) == []

    # A newer gateway migrated this database: this one would misread it, and says so.
    sql(url, f"INSERT INTO gateway_schema (version) VALUES ({schema.latest() + 1})")
    newer = gw.cli("keys", "list", check=False)
    assert newer.returncode == 1 and "made by a newer gateway" in newer.stderr and "upgrade the gateway" in newer.stderr
    assert "newer gateway" in gw.cli("store", "migrate", check=False).stderr


@pytest.mark.parametrize("released", range(1, schema.latest()))
def test_an_upgrade_from_each_released_schema_keeps_every_key_and_event(
    released: int, postgres_server: PostgresServer, make_gateway: Callable[..., Gateway], fresh_upstream: Upstream
) -> None:
    """A database made by an older gateway (schema ``released``, keys made and revoked through it): the new
    gateway refuses it naming the command; `gateway store migrate` brings it up; every key and audit event is
    still there, keys authenticate and usage is counted (per day too, a table of schema 2)."""
    url = fresh_db(postgres_server, migrate=False)
    gw = make_gateway(fresh_upstream.url, settings={**settings_for(url), "usage": {"flush_seconds": 0.2}}, start=False)

    async def made_by_the_old_gateway() -> tuple[str, str]:
        store = PostgresStore(url, timeout_ms=5000)
        try:
            assert await store.migrate(released) == (0, released)
            pepper = Pepper(SECRET.encode(), "test")
            value, kept = await create_key(store, pepper, KeyFormat(), name="kept", permissions=["servers:read"])
            _, gone = await create_key(store, pepper, KeyFormat(), name="gone", permissions=["servers:read"])
            await revoke_key(store, gone.id)
            return value, kept.id
        finally:
            await store.close()

    value, kept_id = asyncio.run(made_by_the_old_gateway())
    refused = gw.cli("keys", "list", check=False)
    assert refused.returncode == 1 and f"has schema version {released}" in refused.stderr
    assert "gateway store migrate" in refused.stderr

    out = json.loads(gw.cli("store", "migrate", "--json").stdout)
    assert (out["from_version"], out["to_version"]) == (released, schema.latest())
    assert sorted(k["name"] for k in json.loads(gw.cli("keys", "list", "--json").stdout)) == ["gone", "kept"]
    assert [e["action"] for e in json.loads(gw.cli("audit", "--json").stdout)] == ["create", "create", "revoke"]
    gw.start()
    try:
        assert use(gw, value).status_code == 200
        wait_for(lambda: json.loads(gw.cli("keys", "show", kept_id, "--json").stdout)["request_count"] == 1)
    finally:
        gw.stop()

    async def per_day() -> list[tuple[object, int]]:
        store = PostgresStore(url, timeout_ms=5000)
        try:
            return await store.usage_by_day(kept_id, 1)
        finally:
            await store.close()

    assert [count for _, count in asyncio.run(per_day())] == [1]


def test_migrate_on_a_sqlite_store_says_there_is_nothing_to_do(tmp_path: Path) -> None:
    out = run_cli("store", "migrate", "--url", f"sqlite:///{tmp_path / 'k.db'}", cwd=tmp_path)
    assert "needs no migration" in out.stdout


def test_concurrent_migrations_apply_each_version_once(postgres_server: PostgresServer) -> None:
    """Two hosts starting their upgrade at once: the advisory lock makes the second wait, then find the work
    done (no 'relation already exists')."""
    url = fresh_db(postgres_server, migrate=False)

    async def main() -> list[tuple[int, int]]:
        stores = [PostgresStore(url, timeout_ms=5000) for _ in range(4)]
        return list(await asyncio.gather(*(s.migrate() for s in stores)))

    results = asyncio.run(main())
    assert sorted(results) == [(0, schema.latest())] + [(schema.latest(), schema.latest())] * 3


def test_a_command_that_skips_the_schema_check_still_names_the_migration(postgres_server: PostgresServer,
                                                                          tmp_path: Path) -> None:
    url = fresh_db(postgres_server, migrate=False)
    gw = Gateway(tmp_path / "gw", "http://127.0.0.1:9", settings_for(url), start=False)
    out = gw.cli("users", "list", check=False)
    assert out.returncode == 1 and "gateway store migrate" in out.stderr and "Traceback" not in out.stderr

"""Shared fixtures: real processes on loopback (see tests/support/procs.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.postgres import PostgresServer
from tests.support.procs import Gateway, RedisServer, Upstream


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """One recording upstream process for the whole session (tests clear or filter its records)."""
    up = Upstream(tmp_path_factory.mktemp("upstream"))
    yield up
    up.stop()


@pytest.fixture
def fresh_upstream(tmp_path: Path) -> Iterator[Upstream]:
    """An upstream of this test's own: its records hold only this test's requests."""
    up = Upstream(tmp_path)
    yield up
    up.stop()


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Start `gateway serve` processes: ``make_gateway(upstream_url, settings={...}, env={...})``."""
    started: list[Gateway] = []

    def make(upstream_url: str, settings: dict[str, Any] | None = None, env: dict[str, str] | None = None,
             name: str | None = None, start: bool = True) -> Gateway:
        gw = Gateway(tmp_path / (name or f"gw{len(started)}"), upstream_url, settings, env, start=start)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> Gateway:
    """A gateway with the default settings in front of this test's own recording upstream."""
    return make_gateway(fresh_upstream.url)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | str]:
    """A real redis-server for the session (or REDIS_URL when set). Tests use distinct DB numbers or keys."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop, pause and restart."""
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (initdb in a temporary directory, a free port; see
    tests/support/postgres.py). Tests take a database each (tests.support.postgres.fresh_db)."""
    server = PostgresServer()
    yield server
    server.remove()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, to stop and start again."""
    server = PostgresServer()
    yield server
    server.remove()

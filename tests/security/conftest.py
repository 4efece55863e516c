"""Fixtures of the attack tests: one shared gateway in front of one recording upstream, both real processes.

The shared gateway trusts 127.0.0.2 as a proxy (127.0.0.1 stays an untrusted client), limits bodies on
``/v1/backups/**`` to 1000 bytes, and has the failed-authentication cool-down switched off so that the tests
that send hundreds of bad credentials cannot lock each other out (tests/security/test_bruteforce.py runs its
own gateways with it on). Each test starts with the upstream's records cleared, so ``env.seen()`` is exactly
what that test's requests delivered.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.support.procs import Gateway, Upstream

BACKUP_LIMIT = 1000


@dataclass
class Env:
    upstream: Upstream
    gateway: Gateway
    reader: dict[str, Any]  # servers:read
    writer: dict[str, Any]  # servers:write, backups:read/write
    office: dict[str, Any]  # servers:read, only from 10.0.0.0/8
    # One kept-alive client for the upstream's control endpoints (a new client per call costs ~50 ms).
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=5))

    @property
    def port(self) -> int:
        return self.gateway.port

    def seen(self) -> list[dict[str, Any]]:
        """What the upstream received since this test began."""
        return self.http.get(f"{self.upstream.url}/__records").json()  # type: ignore[no-any-return]

    def clear(self) -> None:
        self.http.delete(f"{self.upstream.url}/__records")

    def auth(self, key: dict[str, Any] | None = None) -> bytes:
        return b"Authorization: Bearer " + (key or self.reader)["value"].encode()


@pytest.fixture(scope="session")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("security")
    up = Upstream(work)
    gw = Gateway(work / "gw", up.url, settings={
        "trusted_proxies": ["127.0.0.2/32"],
        "limits": {"auth_failures_per_minute": 0, "body_bytes_per_route": {"/v1/backups/**": BACKUP_LIMIT}},
    })
    try:
        env = Env(
            up, gw,
            reader=gw.create_key("reader", "servers:read"),
            writer=gw.create_key("writer", "servers:write,backups:read,backups:write"),
            office=gw.create_key("office", "servers:read", "--allow-ip", "10.0.0.0/8"),
        )
        yield env
        env.http.close()
    finally:
        gw.stop()
        up.stop()


@pytest.fixture
def env(shared: Env) -> Env:
    shared.clear()
    return shared

"""Failed authentications are counted per client address; past the threshold that address
cools down (429), a JSON log event fires, counters exist for metrics, and other addresses are unaffected.

Two clients are two real loopback source addresses (127.0.0.3 the attacker, 127.0.0.4 a legitimate user),
and a third test goes through a trusted proxy (127.0.0.2) that names the clients in X-Forwarded-For.
The counter itself (bounded memory, windows) is tested directly on :class:`FailureGuard` with explicit times.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.gate.failures import FailureGuard
from tests.support.attack import exchange, request
from tests.support.procs import Gateway, Upstream

THRESHOLD = 5
COOLDOWN = 2.0


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Upstream, Gateway, dict[str, Any]]]:
    work = tmp_path_factory.mktemp("brute")
    up = Upstream(work)
    gw = Gateway(work / "gw", up.url, settings={
        "trusted_proxies": ["127.0.0.2/32"],
        "limits": {"auth_failures_per_minute": THRESHOLD, "auth_failures_cooldown_seconds": COOLDOWN,
                   "auth_failures_global_per_minute": 12},
    })
    try:
        yield up, gw, gw.create_key("reader", "servers:read")
    finally:
        gw.stop()
        up.stop()


def _wrong(key: dict[str, Any], i: int) -> bytes:
    """A well-formed guess: the key's prefix and 32 other characters (fails the checksum or the lookup)."""
    return b"Authorization: Bearer dep_live_" + (b"%032d" % i)


def _events(log: str) -> list[dict[str, Any]]:
    out = []
    for line in log.splitlines():
        if '{"event":' in line:
            out.append(json.loads(line[line.index('{"event":'):]))
    return out


def test_failures_from_one_address_cool_it_down_only(guarded: tuple[Upstream, Gateway, dict[str, Any]]) -> None:
    up, gw, key = guarded
    good = b"Authorization: Bearer " + key["value"].encode()
    statuses = [exchange(gw.port, request("GET", "/v1/servers", _wrong(key, i)), source="127.0.0.3").status
                for i in range(THRESHOLD)]
    assert statuses == [401] * THRESHOLD
    blocked = exchange(gw.port, request("GET", "/v1/servers", good), source="127.0.0.3")
    assert blocked.status == 429, blocked.raw[:300]
    assert blocked.first.json()["error"]["code"] == "too_many_failed_attempts"
    assert 1 <= int(blocked.first.header("retry-after") or "0") <= COOLDOWN + 1
    # Another address with the valid key is unaffected, and so are requests without any credential.
    other = exchange(gw.port, request("GET", "/v1/servers/1", good), source="127.0.0.4")
    assert other.status == 200
    assert [r["path"] for r in up.records()] == ["/v1/servers/1"]
    # The event: one JSON line naming the address, never a credential.
    log = gw.log()
    (event,) = [e for e in _events(log) if e["event"] == "auth_failures_blocked" and e["client"] == "127.0.0.3"]
    assert event["failures"] == THRESHOLD and event["cooldown_seconds"] == COOLDOWN
    assert key["value"] not in log and "dep_live_0000" not in log
    # After the cool-down the address may try again, and a valid key works.
    time.sleep(COOLDOWN + 0.2)
    again = exchange(gw.port, request("GET", "/v1/servers/2", good), source="127.0.0.3")
    assert again.status == 200


def test_missing_credentials_are_not_failures(guarded: tuple[Upstream, Gateway, dict[str, Any]]) -> None:
    _, gw, key = guarded
    statuses = {exchange(gw.port, request("GET", "/v1/servers"), source="127.0.0.5").status for _ in range(8)}
    assert statuses == {401}
    good = b"Authorization: Bearer " + key["value"].encode()
    assert exchange(gw.port, request("GET", "/v1/servers", good), source="127.0.0.5").status == 200


def test_clients_behind_a_trusted_proxy_are_counted_apart(guarded: tuple[Upstream, Gateway, dict[str, Any]]) -> None:
    """The proxy is not blocked for one of its clients: each X-Forwarded-For client has its own count."""
    _, gw, key = guarded
    good = b"Authorization: Bearer " + key["value"].encode()
    for i in range(THRESHOLD):
        exchange(gw.port, request("GET", "/v1/servers", _wrong(key, 100 + i), b"X-Forwarded-For: 198.51.100.7"),
                 source="127.0.0.2")
    bad = exchange(gw.port, request("GET", "/v1/servers", good, b"X-Forwarded-For: 198.51.100.7"),
                   source="127.0.0.2")
    fine = exchange(gw.port, request("GET", "/v1/servers", good, b"X-Forwarded-For: 198.51.100.8"),
                    source="127.0.0.2")
    assert (bad.status, fine.status) == (429, 200)
    assert any(e.get("client") == "198.51.100.7" for e in _events(gw.log()))


def test_global_failure_rate_logs_an_alert(guarded: tuple[Upstream, Gateway, dict[str, Any]]) -> None:
    """Spread over many addresses no single one is blocked, but the total raises one alert event."""
    _, gw, key = guarded
    for i in range(14):
        exchange(gw.port, request("GET", "/v1/servers", _wrong(key, 200 + i)), source=f"127.0.1.{i + 1}")
    events = [e for e in _events(gw.log()) if e["event"] == "auth_failures_global"]
    assert events and events[0]["failures"] == 12


# --- the counter ----------------------------------------------------------------------------------------------


def test_guard_blocks_at_the_threshold_and_forgets_after_the_cooldown() -> None:
    g = FailureGuard(per_minute=3, cooldown=30, global_per_minute=1000, max_tracked=10)
    for _ in range(2):
        g.failure("192.0.2.1", 100.0)
    assert g.retry_after("192.0.2.1", 100.0) is None
    g.failure("192.0.2.1", 100.0)
    assert g.retry_after("192.0.2.1", 110.0) == pytest.approx(20.0)
    assert g.retry_after("192.0.2.2", 110.0) is None
    assert g.retry_after("192.0.2.1", 131.0) is None
    assert (g.failures_total, g.blocks_total, g.refused_total) == (3, 1, 1)


def test_guard_window_restarts_each_minute() -> None:
    g = FailureGuard(per_minute=3, cooldown=30, global_per_minute=1000, max_tracked=10)
    for t in (0.0, 30.0, 61.0, 90.0):  # never three within one window
        g.failure("192.0.2.1", t)
    assert not g.blocked


def test_guard_memory_is_bounded() -> None:
    g = FailureGuard(per_minute=2, cooldown=600, global_per_minute=10**9, max_tracked=100)
    for i in range(20_000):
        address = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        g.failure(address, float(i) / 1000)
        g.failure(address, float(i) / 1000)
    assert len(g._windows) <= 100 and len(g.blocked) <= 100
    assert g.failures_total == 40_000


def test_guard_off_still_counts() -> None:
    g = FailureGuard(per_minute=0, cooldown=60, global_per_minute=1000, max_tracked=10)
    for _ in range(100):
        g.failure("192.0.2.1", 1.0)
    assert not g.blocked and g.failures_total == 100


def test_event_lines_are_json(caplog: pytest.LogCaptureFixture) -> None:
    g = FailureGuard(per_minute=1, cooldown=60, global_per_minute=1, max_tracked=10)
    with caplog.at_level("WARNING", logger="gateway.security"):
        g.failure("192.0.2.9", 1.0)
    docs = [json.loads(r.getMessage()) for r in caplog.records]
    assert {d["event"] for d in docs} == {"auth_failures_blocked", "auth_failures_global"}

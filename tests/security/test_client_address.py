"""The client address is the socket peer unless that peer is a trusted proxy.

The shared gateway trusts 127.0.0.2 only. The ``office`` key may only be used from 10.0.0.0/8, so any header
that could make the gateway believe the client is at 10.1.2.3 is an attack: from 127.0.0.1 it must get 403
and reach nothing. The control test connects from 127.0.0.2 (a second loopback source address, no mock) and
shows the allowlist does pass when a trusted proxy says so.
"""

from __future__ import annotations

import pytest

from tests.security.conftest import Env
from tests.support.attack import exchange, request

SPOOFS = [
    b"X-Forwarded-For: 10.1.2.3",
    b"X-Forwarded-For: 10.1.2.3, 10.1.2.4",
    b"X-Real-IP: 10.1.2.3",
    b"Forwarded: for=10.1.2.3",
    b'Forwarded: for="10.1.2.3:80";proto=https',
    b"True-Client-IP: 10.1.2.3",
    b"CF-Connecting-IP: 10.1.2.3",
    b"X-Client-IP: 10.1.2.3",
    b"X-Cluster-Client-IP: 10.1.2.3",
    b"Fastly-Client-IP: 10.1.2.3",
    b"X-Originating-IP: 10.1.2.3",
]


def _xff(record: dict[str, object]) -> list[str]:
    return [v for k, v in record["headers"] if k.lower() == "x-forwarded-for"]  # type: ignore[union-attr]


def test_trusted_proxy_control(env: Env) -> None:
    """From the trusted proxy, X-Forwarded-For names the client: the allowlist passes and the chain grows."""
    ex = exchange(env.port, request("GET", "/v1/servers", env.auth(env.office), b"X-Forwarded-For: 10.1.2.3"),
                  source="127.0.0.2")
    assert ex.status == 200, ex.raw[:300]
    (rec,) = env.seen()
    assert _xff(rec) == ["10.1.2.3, 127.0.0.2"]


@pytest.mark.parametrize("spoof", SPOOFS, ids=lambda s: s.split(b":")[0].decode())
def test_address_headers_from_an_untrusted_peer_are_ignored(env: Env, spoof: bytes) -> None:
    ex = exchange(env.port, request("GET", "/v1/servers", env.auth(env.office), spoof))
    assert ex.status == 403, ex.raw[:300]
    assert ex.first.json()["error"]["code"] == "ip_restricted"
    assert env.seen() == []


def test_spoofed_address_headers_never_reach_the_upstream(env: Env) -> None:
    """A key without an allowlist passes, but the upstream hears only the gateway's word on the address."""
    ex = exchange(env.port, request("GET", "/v1/servers", env.auth(), *SPOOFS))
    assert ex.status == 200, ex.raw[:300]
    (rec,) = env.seen()
    assert _xff(rec) == ["127.0.0.1"]
    names = {k.lower() for k, _ in rec["headers"]}
    for gone in ("x-real-ip", "forwarded", "true-client-ip", "cf-connecting-ip", "x-client-ip",
                 "x-cluster-client-ip", "fastly-client-ip"):
        assert gone not in names, gone
    assert not any("10.1.2.3" in v and k.lower() != "x-originating-ip" for k, v in rec["headers"])


@pytest.mark.parametrize("xff", [
    [b"10.1.2.3:80"],
    [b"garbage"],
    [b"10.1.2.3, garbage"],
    [b"10.1.2.3", b"garbage"],
    [b"10.1.2.3,"],
    [b","],
    [b"unknown"],
    [b"[10.1.2.3]"],
    [b"10.1.2.3%eth0"],
    [b"10.1.2.3/8"],
    [b"0x0a.1.2.3"],
    [b"010.001.002.003"],
    [b"10.1.2.3 10.1.2.4"],
    [b"1" * 4000],
    [b"10.1.2.3, " * 300 + b"x"],
    [b"10.1.2.3, 127.0.0.1"],  # the attacker's entry on the left, an untrusted hop on the right
    [b"\xff\xfe10.1.2.3"],
], ids=lambda v: repr(b"|".join(v)[:40]))
def test_malformed_forwarded_for_from_a_trusted_peer_never_yields_an_address(env: Env, xff: list[bytes]) -> None:
    headers = [b"X-Forwarded-For: " + v for v in xff]
    ex = exchange(env.port, request("GET", "/v1/servers", env.auth(env.office), *headers), source="127.0.0.2")
    assert ex.status == 403, ex.raw[:300]
    assert ex.first.json()["error"]["code"] == "ip_restricted"
    assert env.seen() == []

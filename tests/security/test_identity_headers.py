"""The upstream trusts X-Auth-* because only the gateway can set them.

A client forging them in any spelling, or naming them in ``Connection`` so a hop-by-hop filter drops the
injected ones, must leave the upstream with exactly the gateway's values. Two Authorization headers are
refused, never resolved by picking one.
"""

from __future__ import annotations

import pytest

from tests.security.conftest import Env
from tests.support.attack import exchange, request

FORGED = [
    b"X-Auth-Key-ID: key_forgedforged",
    b"x-auth-key-id: key_forgedforged",
    b"X-AUTH-KEY-ID: key_forgedforged",
    b"X_Auth_Key_Id: key_forgedforged",
    b"x_auth-key_id: key_forgedforged",
    b"X-Auth_Key-ID: key_forgedforged",
    b"X-Auth-Permissions: *",
    b"X_Auth_Permissions: *",
    b"X-Auth-Environment: live",
    b"X-Auth-Subject: admin",
    b"X-Auth-Key-Status: active",
]


def _values(record: dict[str, object], name: str) -> list[str]:
    """Every value of a header in any spelling: '-' and '_' are the same to many upstream frameworks."""
    want = name.lower().replace("_", "-")
    return [v for k, v in record["headers"] if k.lower().replace("_", "-") == want]  # type: ignore[union-attr]


def _assert_only_gateway_identity(env: Env, record: dict[str, object]) -> None:
    assert _values(record, "x-auth-key-id") == [env.reader["id"]]
    assert _values(record, "x-auth-permissions") == ["servers:read"]
    assert _values(record, "x-auth-environment") == ["live"]
    assert _values(record, "x-auth-subject") == []
    assert _values(record, "x-auth-key-status") == []
    assert not any("forged" in v for _, v in record["headers"])  # type: ignore[union-attr]


@pytest.mark.parametrize("forged", FORGED, ids=lambda f: f.split(b":")[0].decode())
def test_forged_identity_header_is_replaced(env: Env, forged: bytes) -> None:
    ex = exchange(env.port, request("GET", "/v1/servers", env.auth(), forged))
    assert ex.status == 200, ex.raw[:300]
    (rec,) = env.seen()
    _assert_only_gateway_identity(env, rec)


def test_all_forgeries_at_once_and_twice(env: Env) -> None:
    ex = exchange(env.port, request("GET", "/v1/servers", env.auth(), *FORGED, *FORGED))
    assert ex.status == 200
    (rec,) = env.seen()
    _assert_only_gateway_identity(env, rec)


@pytest.mark.parametrize("connection", [
    b"Connection: X-Auth-Key-ID",
    b"Connection: x-auth-key-id, X-Auth-Permissions, X-Auth-Environment",
    b"Connection: keep-alive, X-Auth-Key-ID, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host",
    b"Connection: close, x-auth-key-id",
])
def test_connection_header_cannot_drop_injected_headers(env: Env, connection: bytes) -> None:
    ex = exchange(env.port, request("GET", "/v1/servers", env.auth(), connection, b"X-Auth-Key-ID: key_forgedforged"))
    assert ex.status == 200, ex.raw[:300]
    (rec,) = env.seen()
    _assert_only_gateway_identity(env, rec)
    assert _values(rec, "x-forwarded-for") == ["127.0.0.1"]
    assert _values(rec, "x-forwarded-proto") == ["http"]


def test_connection_header_still_drops_the_headers_it_names(env: Env) -> None:
    """The control: the hop-by-hop filter itself works (so the test above can fail)."""
    ex = exchange(env.port, request("GET", "/v1/servers", env.auth(), b"Connection: X-Hop", b"X-Hop: 1",
                                    b"X-Kept: 1"))
    assert ex.status == 200
    (rec,) = env.seen()
    assert _values(rec, "x-hop") == [] and _values(rec, "x-kept") == ["1"]


def test_forged_identity_without_a_key_reaches_nothing(env: Env) -> None:
    ex = exchange(env.port, request("GET", "/v1/servers", *FORGED))
    assert ex.status == 401
    assert env.seen() == []


@pytest.mark.parametrize("pair", [
    ("reader", "writer"),
    ("reader", "reader"),
    ("reader", None),
    (None, "reader"),
])
def test_duplicate_authorization_is_refused(env: Env, pair: tuple[str | None, str | None]) -> None:
    lines = []
    for name in pair:
        lines.append(b"Authorization: " + (b"Bearer " + getattr(env, name)["value"].encode() if name else b""))
    ex = exchange(env.port, request("GET", "/v1/servers", *lines))
    assert ex.status in (400, 401), ex.raw[:300]
    assert ex.first.json()["error"]["code"] in ("invalid_request", "invalid_token", "authentication_required")
    assert env.seen() == []


def test_authorization_in_two_spellings_is_still_two(env: Env) -> None:
    ex = exchange(env.port, request("GET", "/v1/servers", b"authorization: Bearer " + env.reader["value"].encode(),
                                    b"AUTHORIZATION: Bearer " + env.writer["value"].encode()))
    assert ex.status in (400, 401)
    assert env.seen() == []

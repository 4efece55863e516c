"""End to end: authentication, client network and policy, through a real `gateway serve` process.

Every request goes over a socket to the gateway, which forwards to the real recording upstream process; keys
are written to the gateway's real SQLite store with its real server secret (``store_key``: the code the CLI
runs, without a process per key; the CLI itself is proven in test_core_cli.py). No part is mocked.

Clients pass ``verify=False``: everything is plain HTTP on loopback, and it spares loading the CA bundle for
every client (about 0.1 s each on a busy machine).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.core import (
    Gateway6,
    assert_deployally_error,
    assert_deployerp_error,
    assert_no_secret,
    bearer,
    bearer_error,
    header,
    ipv6_loopback,
    store_key,
)
from tests.support.procs import ROOT, Gateway, Upstream, raw_request, status_of

# Every key value a test in this module makes: none may ever reach the gateway's log.
VALUES: list[str] = []


def _policy_with_public_route(folder: Path) -> Path:
    """The shipped deployERP policy plus one public route, to show a route that needs no key."""
    doc = yaml.safe_load((ROOT / "policies" / "deployerp.yaml").read_text())
    doc["routes"].append({"path": "/v1/status", "methods": ["GET"], "public": True})
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    up = Upstream(tmp_path_factory.mktemp("core-auth-up"))
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("core-auth-gw")
    g = Gateway(work, upstream.url, {"policies": str(_policy_with_public_route(work)), "cache": {"ttl_seconds": 1}})
    yield g
    g.stop()
    assert_no_secret(g.log(), VALUES)
    assert "Traceback" not in g.log()


def key(g: Gateway, permissions: str, *extra: str) -> dict[str, str]:
    made = store_key(g, "t", permissions, *extra)
    VALUES.append(made["value"])
    return made


def get(
    g: Gateway, path: str, value: str | None = None, method: str = "GET", headers: dict[str, str] | None = None,
    **kw: Any,
) -> httpx.Response:
    """One request through the gateway, with ``value`` as the bearer key when given."""
    sent = {**(headers or {}), **(bearer(value) if value is not None else {})}
    with g.client(verify=False) as c:
        return c.request(method, path, headers=sent, **kw)


# --- 401 ------------------------------------------------------------------------------------------------------


def test_missing_header_is_authentication_required_without_bearer_error(gw: Gateway, upstream: Upstream) -> None:
    upstream.clear()
    resp = get(gw, "/v1/servers")
    assert_deployerp_error(resp, "authentication_required")
    # RFC 6750 3.1: no credentials at all -> a challenge without an error attribute.
    assert bearer_error(resp) is None
    assert upstream.records() == []


@pytest.mark.parametrize(
    "credential",
    [
        "Bearer not-a-key",
        "Bearer dep_live_short",
        "Basic dXNlcjpwYXNz",
        "Bearer dep_test_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6",  # the seed's example: no valid checksum
        "Bearer da_k8s9f7d6a5s4d3f2g1h0j9k8l7m6n5o4",  # a DeployAlly key on a deployERP gateway
    ],
)
def test_malformed_credentials_are_invalid_token(gw: Gateway, upstream: Upstream, credential: str) -> None:
    upstream.clear()
    resp = get(gw, "/v1/servers", headers={"Authorization": credential})
    assert_deployerp_error(resp, "invalid_token")
    assert bearer_error(resp) == "invalid_token"
    assert upstream.records() == []


@pytest.mark.parametrize("scheme", ["Bearer ", "bearer ", "BEARER ", "Bearer   ", "bEARER  "])
def test_scheme_is_case_insensitive_and_followed_by_one_or_more_spaces(
    gw: Gateway, upstream: Upstream, scheme: str,
) -> None:
    """RFC 9110 11.1: the auth-scheme is case-insensitive; 11.4: ``auth-scheme 1*SP token68``."""
    made = key(gw, "servers:read")
    upstream.clear()
    resp = get(gw, "/v1/servers", headers={"Authorization": scheme + made["value"]})
    assert resp.status_code == 200, resp.text
    assert [r["target"] for r in upstream.records()] == ["/v1/servers"]


@pytest.mark.parametrize(
    ("credential", "problem"),
    [
        ("Basic dXNlcjpwYXNz", "The Authorization scheme is not Bearer"),
        ("Token dep_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6", "The Authorization scheme is not Bearer"),
        ("Bearer one two", "exactly one key after Bearer"),
        ("Bearer dep_live_a1b2c3d4e5f6g7h8 i9j0k1l2m3n4o5p6", "exactly one key after Bearer"),
        ("Bearer:dep_live_a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6", "Bearer must be followed by a space"),
    ],
)
def test_malformed_header_says_what_is_wrong_and_the_form_expected(
    gw: Gateway, upstream: Upstream, credential: str, problem: str,
) -> None:
    """Not ``auth-scheme 1*SP token68`` with the scheme Bearer (RFC 9110 11.4, RFC 6750 2.1): 401
    ``invalid_token`` whose message names the problem and the expected ``Authorization: Bearer <key>``."""
    upstream.clear()
    resp = get(gw, "/v1/servers", headers={"Authorization": credential})
    assert_deployerp_error(resp, "invalid_token")
    message = resp.json()["error"]["message"]
    assert problem in message and "Authorization: Bearer <key>" in message, message
    assert "revoked" not in message
    assert bearer_error(resp) == "invalid_token"
    assert upstream.records() == []


def test_non_ascii_credential_says_so(gw: Gateway, upstream: Upstream) -> None:
    upstream.clear()
    with gw.client(verify=False) as c:
        resp = c.get("/v1/servers", headers=[(b"Authorization", "Bearer dep_live_chaveç".encode())])
    assert_deployerp_error(resp, "invalid_token")
    message = resp.json()["error"]["message"]
    assert "characters" in message and "Authorization: Bearer <key>" in message, message
    assert upstream.records() == []


def test_bad_checksum_unknown_and_revoked_keys_are_invalid_token(gw: Gateway, upstream: Upstream) -> None:
    good = key(gw, "servers:read")
    value = good["value"]
    # One mistyped character in the random part: the checksum no longer matches.
    typo = value[:12] + ("A" if value[12] != "A" else "B") + value[13:]
    # A well-formed key with a valid checksum that was never issued by this store.
    from gateway.keys.format import generate_key

    unknown = generate_key("dep_live_")
    assert get(gw, "/v1/servers", value).status_code == 200
    upstream.clear()
    for bad in (typo, unknown):
        resp = get(gw, "/v1/servers", bad)
        assert_deployerp_error(resp, "invalid_token")
        assert bearer_error(resp) == "invalid_token"
    assert upstream.records() == []
    gw.cli("keys", "revoke", good["id"])
    deadline = time.monotonic() + 10  # cache.ttl_seconds is 1 here
    while True:
        resp = get(gw, "/v1/servers", value)
        if resp.status_code == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert_deployerp_error(resp, "invalid_token")
    assert bearer_error(resp) == "invalid_token"
    assert value not in resp.text and value not in str(resp.headers)
    # Same code, its own words: only the key's holder can send it, so saying it was revoked tells no one else.
    assert resp.json()["error"]["message"] == "The API key has been revoked"
    assert get(gw, "/v1/servers", unknown).json()["error"]["message"] == "The authentication token is invalid"


def test_expired_key_is_expired_token(gw: Gateway, upstream: Upstream) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    made = key(gw, "servers:read", "--expires-at", expires.isoformat().replace("+00:00", "Z"))
    assert made["expires_at"] == expires.isoformat().replace("+00:00", "Z")
    if time.time() < expires.timestamp() - 0.7:  # a busy machine can be slow: only check with margin
        assert get(gw, "/v1/servers", made["value"]).status_code == 200
    time.sleep(max(0.0, expires.timestamp() - time.time()) + 0.3)
    resp = get(gw, "/v1/servers", made["value"])
    assert_deployerp_error(resp, "expired_token")
    assert bearer_error(resp) == "invalid_token"  # RFC 6750 has one code for expired tokens


# --- 403 ------------------------------------------------------------------------------------------------------


def test_missing_scope_is_insufficient_permissions(gw: Gateway, upstream: Upstream) -> None:
    made = key(gw, "servers:read")
    upstream.clear()
    assert_deployerp_error(get(gw, "/v1/servers", made["value"], method="DELETE"), "insufficient_permissions")
    assert_deployerp_error(get(gw, "/v1/invoices", made["value"]), "insufficient_permissions")
    assert upstream.records() == []


def test_wildcards_and_unmatched_routes(gw: Gateway, upstream: Upstream) -> None:
    inst = key(gw, "instances:*")
    admin = key(gw, "*")
    upstream.clear()
    # instances:* covers instances:write and instances:delete ...
    assert get(gw, "/v1/instances", inst["value"], method="POST", json={"a": 1}).status_code == 200
    assert get(gw, "/v1/instances/i-1", inst["value"], method="DELETE").status_code == 200
    # ... and nothing outside instances:
    assert_deployerp_error(get(gw, "/v1/servers", inst["value"]), "insufficient_permissions")
    # * covers every scope of every route.
    for method, path in (("GET", "/v1/invoices"), ("POST", "/v1/teams"), ("DELETE", "/v1/servers/s-1")):
        assert get(gw, path, admin["value"], method=method).status_code == 200, (method, path)
    # A path or method no rule names is denied, even to *.
    assert_deployerp_error(get(gw, "/v1/unknown", admin["value"]), "insufficient_permissions")
    assert_deployerp_error(get(gw, "/v1/backups/b-1", admin["value"], method="DELETE"), "insufficient_permissions")
    assert_deployerp_error(get(gw, "/v2/servers", admin["value"]), "insufficient_permissions")
    assert [r["method"] + " " + r["path"] for r in upstream.records()] == [
        "POST /v1/instances", "DELETE /v1/instances/i-1", "GET /v1/invoices", "POST /v1/teams",
        "DELETE /v1/servers/s-1",
    ]


def test_unmatched_route_without_key_is_401_not_a_leak(gw: Gateway) -> None:
    assert_deployerp_error(get(gw, "/v1/unknown"), "authentication_required")


def test_public_route_needs_no_key(gw: Gateway, upstream: Upstream) -> None:
    upstream.clear()
    resp = get(gw, "/v1/status", headers={"X-Auth-Key-ID": "key_forged0000", "X-Auth-Permissions": "*"})
    assert resp.status_code == 200
    (rec,) = upstream.records()
    assert rec["target"] == "/v1/status"
    # No identity is claimed for an anonymous caller, and a forged one is dropped.
    assert [k for k, _ in rec["headers"] if k.lower().startswith("x-auth-")] == []
    # The public rule is for GET only.
    assert_deployerp_error(get(gw, "/v1/status", method="POST"), "authentication_required")


def test_ip_allowlist(gw: Gateway, upstream: Upstream) -> None:
    elsewhere = key(gw, "servers:read", "--allow-ip", "203.0.113.0/24", "--allow-ip", "2001:db8::/32")
    here = key(gw, "servers:read", "--allow-ip", "203.0.113.0/24", "--allow-ip", "127.0.0.1")
    upstream.clear()
    resp = get(gw, "/v1/servers", elsewhere["value"])
    assert_deployerp_error(resp, "ip_restricted")
    # X-Forwarded-For from an untrusted peer (no trusted_proxies here) changes nothing.
    resp = get(gw, "/v1/servers", elsewhere["value"], headers={"X-Forwarded-For": "203.0.113.9",
                                                                "X-Real-IP": "203.0.113.9",
                                                                "Forwarded": "for=203.0.113.9"})
    assert_deployerp_error(resp, "ip_restricted")
    assert upstream.records() == []
    assert get(gw, "/v1/servers", here["value"]).status_code == 200
    # The allowlist is checked before the policy: a request from outside learns nothing about the scopes.
    assert_deployerp_error(get(gw, "/v1/invoices", elsewhere["value"]), "ip_restricted")


@pytest.mark.skipif(not ipv6_loopback(), reason="IPv6 loopback (::1) is not available on this machine")
def test_ipv6_allowlist_on_ipv6_listener(tmp_path: Path, upstream: Upstream) -> None:
    g = Gateway6(tmp_path / "gw6", upstream.url)
    try:
        v6 = store_key(g, "v6", "servers:read", "--allow-ip", "::1")
        v6net = store_key(g, "v6net", "servers:read", "--allow-ip", "fd00::/8", "--allow-ip", "127.0.0.1")
        VALUES.extend([v6["value"], v6net["value"]])
        upstream.clear()
        with httpx.Client(base_url=g.url, timeout=10, verify=False) as c:
            ok = c.get("/v1/servers", headers=bearer(v6["value"]))
            denied = c.get("/v1/servers", headers=bearer(v6net["value"]))
        assert ok.status_code == 200, ok.text
        assert header(ok.json(), "x-forwarded-for") == ["::1"]
        assert_deployerp_error(denied, "ip_restricted")
    finally:
        g.stop()
    assert_no_secret(g.log(), VALUES)
    assert "Traceback" not in g.log()


# --- the gateway's own answers --------------------------------------------------------------------------------


def test_auth_test_endpoint(gw: Gateway, upstream: Upstream) -> None:
    made = key(gw, "servers:read,instances:*")
    upstream.clear()
    resp = get(gw, "/v1/auth/test", made["value"])
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["authenticated"] is True
    assert doc["key_id"] == made["id"]
    assert doc["permissions"] == ["servers:read", "instances:*"]
    assert "rate_limit" in doc
    assert doc["rate_limit"] is None or set(doc["rate_limit"]) >= {"limit", "remaining", "reset"}
    assert made["value"] not in resp.text
    assert upstream.records() == []  # answered by the gateway itself
    assert_deployerp_error(get(gw, "/v1/auth/test"), "authentication_required")


def test_debug_headers_on_success_and_denials(gw: Gateway) -> None:
    plain = key(gw, "servers:read,instances:*")
    fenced = key(gw, "servers:read", "--allow-ip", "127.0.0.0/8")
    outside = key(gw, "servers:read", "--allow-ip", "198.51.100.45")
    dbg = {"X-Debug-Auth": "true"}

    ok = get(gw, "/v1/servers", plain["value"], headers=dbg)
    assert ok.status_code == 200
    assert ok.headers["x-auth-key-id"] == plain["id"]
    assert ok.headers["x-auth-permissions"] == "servers:read,instances:*"
    assert ok.headers["x-auth-ip-check"] == "not_configured"
    assert "x-auth-rate-limit" in ok.headers

    passed = get(gw, "/v1/servers", fenced["value"], headers=dbg)
    assert passed.status_code == 200 and passed.headers["x-auth-ip-check"] == "passed"

    # On denials too, so an operator can see why.
    scope = get(gw, "/v1/invoices", fenced["value"], headers=dbg)
    assert_deployerp_error(scope, "insufficient_permissions")
    assert scope.headers["x-auth-key-id"] == fenced["id"]
    assert scope.headers["x-auth-permissions"] == "servers:read"
    assert scope.headers["x-auth-ip-check"] == "passed"
    assert "x-auth-rate-limit" in scope.headers

    ip = get(gw, "/v1/servers", outside["value"], headers=dbg)
    assert_deployerp_error(ip, "ip_restricted")
    assert ip.headers["x-auth-ip-check"] == "failed"
    assert ip.headers["x-auth-key-id"] == outside["id"]

    anonymous = get(gw, "/v1/servers", headers=dbg)
    assert_deployerp_error(anonymous, "authentication_required")
    assert anonymous.headers["x-auth-ip-check"] == "not_configured"
    assert "x-auth-key-id" not in anonymous.headers

    # Without the header: none of them.
    quiet = get(gw, "/v1/servers", plain["value"])
    assert not [h for h in quiet.headers if h.startswith("x-auth-")]
    for resp in (ok, passed, scope, ip, anonymous):
        for made in (plain, fenced, outside):
            assert made["value"] not in str(resp.headers) and made["value"] not in resp.text


def test_debug_headers_off_ignores_x_debug_auth(tmp_path: Path, upstream: Upstream) -> None:
    g = Gateway(tmp_path / "gw", upstream.url, {"debug_headers": False})
    try:
        made = store_key(g, "quiet", "servers:read")
        VALUES.append(made["value"])
        for path in ("/v1/servers", "/v1/invoices"):
            resp = get(g, path, made["value"], headers={"X-Debug-Auth": "true"})
            assert resp.status_code in (200, 403)
            assert not [h for h in resp.headers if h.startswith("x-auth-")], resp.headers
    finally:
        g.stop()
    assert_no_secret(g.log(), VALUES)
    assert "Traceback" not in g.log()


# --- DeployAlly -----------------------------------------------------------------------------------------------


def test_deployally_formats(tmp_path: Path, upstream: Upstream) -> None:
    g = Gateway(tmp_path / "ally", upstream.url, {
        "error_format": "deployally", "key_format": "deployally",
        "policies": str(ROOT / "policies" / "deployally.yaml"),
        "upstream": {"environments": {"test": upstream.url}},
    })
    try:
        live = store_key(g, "ci", "templates:read,instances:manage")
        test = store_key(g, "dev", "templates:read", "--env", "test")
        fenced = store_key(g, "fenced", "templates:read", "--allow-ip", "203.0.113.10")
        VALUES.extend([live["value"], test["value"], fenced["value"]])
        assert live["value"].startswith("da_") and not live["value"].startswith("da_test_")
        assert len(live["value"]) == len("da_") + 32
        assert test["value"].startswith("da_test_") and len(test["value"]) == len("da_test_") + 32
        assert test["environment"] == "test"

        upstream.clear()
        assert get(g, "/api/v1/templates", live["value"]).status_code == 200
        assert get(g, "/api/v1/instances/i-1/restart", live["value"], method="POST").status_code == 200
        seen = get(g, "/api/v1/templates", test["value"])
        assert seen.status_code == 200
        assert header(seen.json(), "x-auth-environment") == ["test"]

        for resp, status in (
            (get(g, "/api/v1/templates"), 401),
            (get(g, "/api/v1/templates", "da_k8s9f7d6a5s4d3f2g1h0j9k8l7m6n5o4"), 401),  # the seed's example
            (get(g, "/api/v1/templates", "dep_live_" + live["value"][3:]), 401),  # deployERP key here
            (get(g, "/api/v1/deployments", live["value"], method="POST"), 403),
            (get(g, "/api/v1/templates", fenced["value"]), 403),
        ):
            assert_deployally_error(resp, status)
            if status == 401:
                assert resp.headers["www-authenticate"].startswith("Bearer")
        assert len(upstream.records()) == 3

        # The scheme in any case (RFC 9110 11.1); a malformed header told in the platform's language.
        upstream.clear()
        assert get(g, "/api/v1/templates", headers={"Authorization": "bearer  " + live["value"]}).status_code == 200
        for credential, problem in (
            ("Basic dXNlcjpwYXNz", "não é Bearer"),
            ("Bearer " + live["value"] + " " + live["value"], "uma única key após Bearer"),
        ):
            resp = get(g, "/api/v1/templates", headers={"Authorization": credential})
            assert_deployally_error(resp, 401)
            message = resp.json()["error"]["message"]
            assert problem in message and "Authorization: Bearer <key>" in message, message
        assert len(upstream.records()) == 1
    finally:
        g.stop()
    assert_no_secret(g.log(), VALUES)
    assert "Traceback" not in g.log()


def test_raw_socket_denials_are_complete_json(gw: Gateway) -> None:
    """A denial over a raw HTTP/1.1 socket: a complete response with a correct Content-Length."""
    raw = raw_request(gw.port, b"GET /v1/servers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(raw) == 401
    head, _, body = raw.partition(b"\r\n\r\n")
    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    assert length == [len(body)]

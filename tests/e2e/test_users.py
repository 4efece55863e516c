"""Dashboard users end to end: `gateway users` on the store, then a real `gateway serve` process answering the
DeployAlly guide's login (and deployERP's, under its own prefix), refresh and logout, publishing its keys, and
proxying a user's JWT with the user's identity to a real recording upstream."""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.support.core import assert_deployally_error, bearer, header
from tests.support.procs import PYTHON, ROOT, Gateway, Upstream
from tests.support.redisdb import dump, fresh_db

PASSWORD = "correct horse battery"
ALLY = {
    "error_format": "deployally", "key_format": "deployally", "policies": str(ROOT / "policies" / "deployally.yaml"),
    "management": {"prefix": "/api/v1", "allow_jwt": True},
    # Client addresses for the lockout tests come from X-Forwarded-For, believed from loopback only.
    "trusted_proxies": ["127.0.0.1/32"],
}


def ally_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The DeployAlly error body: {"success": false, "error": {"code", "message"[, "field"]}}; its error."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    doc = resp.json()
    assert set(doc) == {"success", "error"} and doc["success"] is False, doc
    assert doc["error"]["code"] == code and isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    return doc["error"]  # type: ignore[no-any-return]


def accounts(**extra: Any) -> dict[str, Any]:
    return {"accounts": {"enabled": True, **extra}}


def create_user(gw: Gateway, email: str, role: str, password: str = PASSWORD) -> dict[str, Any]:
    out = gw.cli("users", "create", email, "--role", role, "--password-stdin", "--json", input=password + "\n")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def login(gw: Gateway, email: str, password: str = PASSWORD, prefix: str = "/api/v1", **headers: str) -> httpx.Response:
    return httpx.post(f"{gw.url}{prefix}/auth/login", json={"email": email, "password": password}, headers=headers,
                      timeout=10)


def post(gw: Gateway, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, timeout=10)


@pytest.fixture
def ally(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> Gateway:
    return make_gateway(fresh_upstream.url, {**ALLY, **accounts()})


def test_a_user_made_on_the_command_line_logs_in_as_the_deployally_guide_shows(ally: Gateway) -> None:
    user = create_user(ally, "Ana@Example.com", "developer")
    assert user["email"] == "ana@example.com" and user["role"] == "developer" and user["status"] == "active"
    resp = login(ally, "ana@example.com")
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"  # RFC 6749 5.1: an answer carrying tokens
    doc = resp.json()
    assert doc["success"] is True and set(doc["data"]) == {"token", "expires_at", "refresh_token"}
    assert doc["data"]["token"].startswith("eyJ") and doc["data"]["expires_at"].endswith("Z")
    listed = json.loads(ally.cli("users", "list", "--json").stdout)
    assert listed[0]["last_login_at"] is not None and "password" not in json.dumps(listed)


def test_deployerp_logs_in_under_its_own_prefix_in_its_own_format(
        make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, accounts())
    create_user(gw, "ops@example.com", "viewer")
    resp = login(gw, "ops@example.com", prefix="/v1")
    assert resp.status_code == 200 and set(resp.json()) == {"token", "expires_at", "refresh_token"}
    bad = login(gw, "ops@example.com", "wrong password", prefix="/v1")
    assert bad.status_code == 401
    assert bad.json() == {"error": {"code": "invalid_credentials", "message": "The e-mail address or password is "
                                    "incorrect", "status": 401}}
    # The token works where the deployERP policy takes JWTs: the key check.
    test = httpx.get(f"{gw.url}/v1/auth/test", headers=bearer(resp.json()["token"]), timeout=10)
    assert test.status_code == 200 and test.json()["credential"] == "jwt"
    assert "servers:read" in test.json()["permissions"] and "servers:write" not in test.json()["permissions"]


def test_a_wrong_password_and_an_unknown_address_get_the_same_answer_in_the_same_time(
        make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    """OWASP Authentication Cheat Sheet, "Authentication and Error Messages": the answer and the work must not tell
    whether the address has an account (the unknown one is verified against a dummy argon2id hash)."""
    gw = make_gateway(fresh_upstream.url, {**ALLY, **accounts(login_failures_per_address=0,
                                                              login_failures_per_account=0)})
    create_user(gw, "ana@example.com", "viewer")
    wrong, unknown = [], []
    bodies = set()
    for _ in range(6):
        for who, times in (("ana@example.com", wrong), ("nobody@example.com", unknown)):
            start = time.perf_counter()
            resp = login(gw, who, "not the password")
            times.append(time.perf_counter() - start)
            assert_deployally_error(resp, 401)
            bodies.add((resp.status_code, resp.content, resp.headers.get("www-authenticate")))
    assert len(bodies) == 1, bodies
    assert json.loads(next(iter(bodies))[1])["error"]["code"] == "UNAUTHORIZED"
    w, u = statistics.median(wrong), statistics.median(unknown)
    # Both did the argon2id work (tens of ms); neither is a fraction of the other.
    assert w > 0.01 and u > 0.01, (w, u)
    assert 0.5 < w / u < 2.0, (w, u)


def test_failed_logins_are_limited_per_address_and_per_account_with_retry_after(
        make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, {**ALLY, **accounts(login_failures_per_address=3,
                                                              login_failures_per_account=3,
                                                              login_cooldown_seconds=120)})
    create_user(gw, "ana@example.com", "viewer")
    create_user(gw, "bob@example.com", "viewer")
    # Per address: three failures for three accounts from 198.51.100.7; the fourth try, right password, waits.
    for who in ("x@example.com", "y@example.com", "z@example.com"):
        assert login(gw, who, "nope", **{"X-Forwarded-For": "198.51.100.7"}).status_code == 401
    held = login(gw, "bob@example.com", **{"X-Forwarded-For": "198.51.100.7"})
    ally_error(held, 429, "TOO_MANY_REQUESTS")
    assert 0 < int(held.headers["retry-after"]) <= 120
    assert login(gw, "bob@example.com", **{"X-Forwarded-For": "198.51.100.8"}).status_code == 200
    # Per account: three failures for ana from three addresses; the right password from a fourth waits too.
    for n in (1, 2, 3):
        assert login(gw, "ana@example.com", "nope", **{"X-Forwarded-For": f"203.0.113.{n}"}).status_code == 401
    held = login(gw, "ana@example.com", **{"X-Forwarded-For": "203.0.113.9"})
    ally_error(held, 429, "TOO_MANY_REQUESTS")
    assert int(held.headers["retry-after"]) > 0
    assert login(gw, "bob@example.com", **{"X-Forwarded-For": "203.0.113.9"}).status_code == 200


def test_refresh_rotates_the_token_and_reuse_of_a_spent_one_revokes_the_family(ally: Gateway) -> None:
    """RFC 9700 4.14.2: refresh tokens are single use; presenting a spent one revokes every token of the login."""
    create_user(ally, "ana@example.com", "developer")
    first = login(ally, "ana@example.com").json()["data"]
    second = post(ally, "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    second_data = second.json()["data"]
    assert second_data["refresh_token"] != first["refresh_token"] and second_data["token"].startswith("eyJ")
    # The attacker (or the slow tab) presents the first token again: refused, and the family is gone.
    replay = post(ally, "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
    assert_deployally_error(replay, 401)
    after = post(ally, "/api/v1/auth/refresh", {"refresh_token": second_data["refresh_token"]})
    assert_deployally_error(after, 401)
    assert "refresh_token_reused" in ally.log()
    # A new login is a new family.
    fresh = login(ally, "ana@example.com").json()["data"]
    assert post(ally, "/api/v1/auth/refresh", {"refresh_token": fresh["refresh_token"]}).status_code == 200


def test_logout_revokes_the_login_and_bad_bodies_get_a_validation_error(ally: Gateway) -> None:
    create_user(ally, "ana@example.com", "developer")
    data = login(ally, "ana@example.com").json()["data"]
    out = post(ally, "/api/v1/auth/logout", {"refresh_token": data["refresh_token"]})
    assert out.status_code == 204 and out.content == b""
    assert_deployally_error(post(ally, "/api/v1/auth/refresh", {"refresh_token": data["refresh_token"]}), 401)
    # Logging out twice, or with a token never issued, is not an error.
    assert post(ally, "/api/v1/auth/logout", {"refresh_token": "never-issued"}).status_code == 204
    missing = post(ally, "/api/v1/auth/login", {"email": "ana@example.com"})
    assert ally_error(missing, 422, "VALIDATION_ERROR")["field"] == "password"
    not_json = httpx.post(f"{ally.url}/api/v1/auth/login", content=b"{", timeout=10)
    ally_error(not_json, 422, "VALIDATION_ERROR")
    wrong_method = httpx.get(f"{ally.url}/api/v1/auth/login", timeout=10)
    ally_error(wrong_method, 405, "METHOD_NOT_ALLOWED")
    assert wrong_method.headers["allow"] == "POST"


def test_the_published_keys_verify_the_token_with_pyjwt_and_it_lasts_at_most_24_hours(ally: Gateway) -> None:
    """RFC 7517 (JWK Set) and RFC 7519 (JWT): an upstream verifies the gateway's tokens with its published keys."""
    create_user(ally, "ana@example.com", "developer")
    data = login(ally, "ana@example.com").json()["data"]
    jwks = httpx.get(f"{ally.url}/.well-known/jwks.json", timeout=10)
    assert jwks.status_code == 200 and jwks.headers["content-type"] == "application/jwk-set+json"
    doc = jwks.json()
    assert all(set(k) == {"kty", "crv", "x", "y", "kid", "use", "alg"} for k in doc["keys"])  # no private "d"
    keyset = jwt.PyJWKSet.from_dict(doc)
    kid = jwt.get_unverified_header(data["token"])["kid"]
    key = next(k for k in keyset.keys if k.key_id == kid)
    claims = jwt.decode(data["token"], key.key, algorithms=["ES256"], issuer="gateway")
    assert claims["email"] == "ana@example.com" and claims["role"] == "developer"
    assert claims["exp"] - claims["iat"] == 86_400
    assert "api-keys:write" in claims["permissions"]
    # The signing key was made on first start: 600 in a 700 directory.
    key_dir = ally.work / "signing-keys"
    assert (key_dir.stat().st_mode & 0o777) == 0o700
    assert (key_dir / "signing-key.pem").stat().st_mode & 0o777 == 0o600
    # Signed with another key under the same kid: refused by the gate.
    forged = jwt.encode(claims, _other_ec_key(), algorithm="ES256", headers={"kid": kid})
    assert_deployally_error(httpx.get(f"{ally.url}/api/v1/user/profile", headers=bearer(forged), timeout=10), 401)


def _other_ec_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def test_a_token_lifetime_over_24_hours_is_refused_at_start_up(tmp_path: Path, upstream: Upstream) -> None:
    gw = Gateway(tmp_path / "gw", upstream.url, {**ALLY, **accounts(token_lifetime="48h")}, start=False)
    proc = subprocess.run([PYTHON, "-m", "gateway", "serve", "--config", str(gw.config)], capture_output=True,
                          text=True, env=gw.env, cwd=gw.work, timeout=60)
    assert proc.returncode == 2
    assert "accounts.token_lifetime: must be at most 24h" in proc.stderr, proc.stderr


def test_the_profile_reaches_the_upstream_with_the_users_identity_headers(ally: Gateway,
                                                                           fresh_upstream: Upstream) -> None:
    user = create_user(ally, "ana@example.com", "viewer")
    token = login(ally, "ana@example.com").json()["data"]["token"]
    resp = httpx.get(f"{ally.url}/api/v1/user/profile", timeout=10,
                     headers={**bearer(token), "X-Auth-User-Role": "admin", "X-Auth-User-Id": "usr_forged"})
    assert resp.status_code == 200, resp.text
    record = fresh_upstream.records()[-1]
    assert record["path"] == "/api/v1/user/profile"
    assert header(record, "x-auth-user-id") == [user["id"]]
    assert header(record, "x-auth-user-email") == ["ana@example.com"]
    assert header(record, "x-auth-user-role") == ["viewer"]  # the client's own X-Auth-* never pass
    assert header(record, "x-auth-subject") == [user["id"]]
    # The viewer's token reads templates but cannot deploy.
    assert httpx.get(f"{ally.url}/api/v1/templates", headers=bearer(token), timeout=10).status_code == 200
    assert_deployally_error(httpx.post(f"{ally.url}/api/v1/deployments", headers=bearer(token), timeout=10), 403)


def test_a_user_cannot_create_a_key_with_a_scope_outside_the_role(ally: Gateway) -> None:
    dev_id = create_user(ally, "dev@example.com", "developer")["id"]
    create_user(ally, "view@example.com", "viewer")
    dev = login(ally, "dev@example.com").json()["data"]["token"]
    view = login(ally, "view@example.com").json()["data"]["token"]
    url = f"{ally.url}/api/v1/api-keys"
    ok = httpx.post(url, headers=bearer(dev), json={"name": "ci", "permissions": ["templates:read"]}, timeout=10)
    assert ok.status_code == 201, ok.text
    assert ok.json()["data"]["value"].startswith("da_") and ok.json()["data"]["created_by"] == "user:" + dev_id
    refused = httpx.post(url, headers=bearer(dev), json={"name": "srv", "permissions": ["servers:manage"]},
                         timeout=10)
    assert_deployally_error(refused, 403)
    assert "servers:manage" in refused.json()["error"]["message"] and "papel" in refused.json()["error"]["message"]
    # A viewer's role holds no api-keys:write at all.
    assert_deployally_error(httpx.post(url, headers=bearer(view), json={"name": "x", "permissions":
                                                                       ["templates:read"]}, timeout=10), 403)


def test_disable_and_reset_end_the_users_sessions(ally: Gateway) -> None:
    create_user(ally, "ana@example.com", "developer")
    data = login(ally, "ana@example.com").json()["data"]
    ally.cli("users", "reset", "ana@example.com", "--password-stdin", input="a brand new password\n")
    assert_deployally_error(post(ally, "/api/v1/auth/refresh", {"refresh_token": data["refresh_token"]}), 401)
    assert_deployally_error(login(ally, "ana@example.com"), 401)
    data = login(ally, "ana@example.com", "a brand new password").json()["data"]
    ally.cli("users", "disable", "ana@example.com")
    assert_deployally_error(post(ally, "/api/v1/auth/refresh", {"refresh_token": data["refresh_token"]}), 401)
    assert_deployally_error(login(ally, "ana@example.com", "a brand new password"), 401)
    short = ally.cli("users", "reset", "ana@example.com", "--password-stdin", input="short\n", check=False)
    assert short.returncode == 2 and "password: must be at least 8 characters" in short.stderr
    argv = ally.cli("users", "create", "x@example.com", "--role", "viewer", check=False)
    assert argv.returncode == 2 and "--password-stdin" in argv.stderr  # no terminal: never a password in argv


def test_a_user_who_is_not_an_admin_manages_only_the_keys_the_user_made_through_the_api(ally: Gateway) -> None:
    """With management.allow_jwt, a developer's JWT lists, reads, changes, rotates and revokes only the keys that
    developer made; another's key is 404 as an unknown one is (no id leaks). An admin's JWT sees every key."""
    dev_id = create_user(ally, "dev@example.com", "developer")["id"]
    create_user(ally, "other@example.com", "developer")
    create_user(ally, "boss@example.com", "admin")
    dev, other, boss = (bearer(login(ally, e).json()["data"]["token"])
                        for e in ("dev@example.com", "other@example.com", "boss@example.com"))
    url = f"{ally.url}/api/v1/api-keys"

    def make(headers: dict[str, str], name: str) -> str:
        resp = httpx.post(url, headers=headers, json={"name": name, "permissions": ["templates:read"]}, timeout=10)
        assert resp.status_code == 201, resp.text
        return resp.json()["data"]["id"]  # type: ignore[no-any-return]

    mine, theirs, admins = make(dev, "mine"), make(other, "theirs"), make(boss, "admins")
    listed = httpx.get(url, headers=dev, timeout=10).json()["data"]
    assert [k["id"] for k in listed] == [mine] and listed[0]["created_by"] == "user:" + dev_id
    assert {k["id"] for k in httpx.get(url, headers=boss, timeout=10).json()["data"]} >= {mine, theirs, admins}
    unknown = ally_error(httpx.get(f"{url}/key_00000000000000000000", headers=dev, timeout=10), 404, "NOT_FOUND")
    for key_id in (theirs, admins):
        for method, path, body in (("GET", "", None), ("PATCH", "", {"name": "taken"}),
                                   ("POST", "/rotate", {}), ("DELETE", "", None)):
            resp = httpx.request(method, f"{url}/{key_id}{path}", headers=dev, json=body, timeout=10)
            assert ally_error(resp, 404, "NOT_FOUND") == unknown, (method, path)
    # Nothing changed: the admin still reads both as they were.
    for key_id, name in ((theirs, "theirs"), (admins, "admins")):
        got = httpx.get(f"{url}/{key_id}", headers=boss, timeout=10).json()["data"]
        assert got["name"] == name and got["status"] == "active"
    # The developer manages its own; the admin manages another's.
    assert httpx.post(f"{url}/{mine}/rotate", headers=dev, json={}, timeout=10).status_code == 200
    assert httpx.delete(f"{url}/{theirs}", headers=boss, timeout=10).status_code == 200


def _refused_within(gw: Gateway, token: str, bound: float) -> float:
    """Seconds until the profile refuses ``token`` (401 invalid_token, DeployAlly's UNAUTHORIZED), polled; fails
    past ``bound``."""
    start = time.monotonic()
    while True:
        resp = httpx.get(f"{gw.url}/api/v1/user/profile", headers=bearer(token), timeout=10)
        if resp.status_code != 200:
            ally_error(resp, 401, "UNAUTHORIZED")
            return time.monotonic() - start
        assert time.monotonic() - start < bound, "the token still works past the cache bound"
        time.sleep(0.1)


def _works_again_within(gw: Gateway, token: str, bound: float) -> bool:
    start = time.monotonic()
    while time.monotonic() - start < bound:
        if httpx.get(f"{gw.url}/api/v1/user/profile", headers=bearer(token), timeout=10).status_code == 200:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("store", ["redis", "postgres"])
def test_a_shared_store_ends_a_disabled_users_jwt_within_a_second_whatever_the_cache_ttl(
        make_gateway: Callable[..., Gateway], fresh_upstream: Upstream, request: pytest.FixtureRequest,
        store: str) -> None:
    """With Redis or PostgreSQL, disabling a user (in the CLI's process) reaches the serving gateway through the
    store's invalidation channel (pub/sub, NOTIFY), as a revoked key does: within a second, not cache.ttl_seconds
    (300 here)."""
    if store == "redis":
        extra: dict[str, Any] = {"store": {"url": fresh_db(request.getfixturevalue("redis_server"))}}
    else:
        from tests.support import postgres

        extra = postgres.settings_for(postgres.fresh_db(request.getfixturevalue("postgres_server")))
    gw = make_gateway(fresh_upstream.url, {**ALLY, **accounts(), "cache": {"ttl_seconds": 300}, **extra})
    create_user(gw, "ana@example.com", "developer")
    token = login(gw, "ana@example.com").json()["data"]["token"]
    assert httpx.get(f"{gw.url}/api/v1/user/profile", headers=bearer(token), timeout=10).status_code == 200
    time.sleep(0.5)  # the listener is subscribed (it starts with the gateway)
    gw.cli("users", "disable", "ana@example.com")
    assert _refused_within(gw, token, 1.5) <= 1.5
    gw.cli("users", "enable", "ana@example.com")
    assert _works_again_within(gw, token, 1.5)


@pytest.mark.parametrize("store", ["sqlite", "redis", "postgres"])
def test_a_disabled_or_reset_users_jwt_is_refused_within_the_cache_bound(
        make_gateway: Callable[..., Gateway], fresh_upstream: Upstream, request: pytest.FixtureRequest,
        store: str) -> None:
    """OWASP Session Management Cheat Sheet: disabling an account (or changing its password) ends its sessions,
    the access JWT included, not only the refresh tokens: `gateway users disable` / `reset` in another process
    (the CLI) on the same store (a real SQLite file, redis-server or PostgreSQL), and the serving gateway refuses
    the token within cache.ttl_seconds."""
    extra: dict[str, Any] = {}
    if store == "redis":
        extra = {"store": {"url": fresh_db(request.getfixturevalue("redis_server"))}}
    elif store == "postgres":
        from tests.support import postgres

        extra = postgres.settings_for(postgres.fresh_db(request.getfixturevalue("postgres_server")))
    gw = make_gateway(fresh_upstream.url, {**ALLY, **accounts(), "cache": {"ttl_seconds": 1}, **extra})
    create_user(gw, "ana@example.com", "developer")
    token = login(gw, "ana@example.com").json()["data"]["token"]
    keys = f"{gw.url}/api/v1/api-keys"
    assert httpx.get(keys, headers=bearer(token), timeout=10).status_code == 200  # the management API too
    assert httpx.get(f"{gw.url}/api/v1/user/profile", headers=bearer(token), timeout=10).status_code == 200
    gw.cli("users", "disable", "ana@example.com")
    assert _refused_within(gw, token, 3.0) <= 3.0
    ally_error(httpx.get(keys, headers=bearer(token), timeout=10), 401, "UNAUTHORIZED")
    gw.cli("users", "enable", "ana@example.com")
    assert _works_again_within(gw, token, 3.0)  # enabled again: its unexpired token stands
    old = login(gw, "ana@example.com").json()["data"]["token"]
    time.sleep(1.1)  # a reset a second later than the token's iat (both are whole seconds)
    gw.cli("users", "reset", "ana@example.com", "--password-stdin", input="a brand new password\n")
    assert _refused_within(gw, old, 3.0) <= 3.0
    fresh = login(gw, "ana@example.com", "a brand new password").json()["data"]["token"]
    assert httpx.get(f"{gw.url}/api/v1/user/profile", headers=bearer(fresh), timeout=10).status_code == 200


def test_no_password_or_token_reaches_a_log_line_or_the_redis_store(
        make_gateway: Callable[..., Gateway], fresh_upstream: Upstream, redis_server: Any) -> None:
    url = fresh_db(redis_server)
    gw = make_gateway(fresh_upstream.url, {**ALLY, **accounts(), "store": {"url": url},
                                           "ops": {"access_log": True}})
    made = gw.cli("users", "create", "ana@example.com", "--role", "developer", "--password-stdin",
                  input=PASSWORD + "\n")
    first = login(gw, "ana@example.com").json()["data"]
    login(gw, "ana@example.com", "a wrong password guess")
    second = post(gw, "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]}).json()["data"]
    post(gw, "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]})  # a reuse: logged as an event
    httpx.get(f"{gw.url}/api/v1/user/profile", headers=bearer(second["token"]), timeout=10)
    post(gw, "/api/v1/auth/logout", {"refresh_token": second["refresh_token"]})
    gw.stop()
    secrets_ = [PASSWORD, "a wrong password guess", first["token"], first["refresh_token"], second["token"],
                second["refresh_token"]]
    text = gw.log() + made.stdout + made.stderr
    assert "login_failed" in text and "refresh_token_reused" in text  # the log was written
    for s in secrets_:
        assert s not in text
        assert s.encode() not in dump(url)

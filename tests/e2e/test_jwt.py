"""JWTs for dashboard users, through real gateway processes: HS256 with a shared secret, RS256 and ES256 from
a JWKS file, RS256 from a PEM public key; the matrix of valid, expired, not yet valid, wrong key, wrong
issuer/audience, ``none`` and HS/RS algorithm confusion. Keys are generated here with ``cryptography``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.config.settings import ConfigError, load_settings
from gateway.gate.jwt import JWTVerifier
from tests.support.lifecycle import KeysAPI, bearer, wait_for
from tests.support.procs import Gateway, Upstream, run_cli

HS_SECRET = "jwt-shared-secret-" + "0123456789abcdef" * 3  # 66 bytes: more than HS256 needs
ISSUER, AUDIENCE = "https://auth.deployally.example", "gateway"
POLICY = """
routes:
  - {path: /v1/servers/**, methods: [GET, HEAD], scopes: [servers:read], credentials: [api_key, jwt]}
  - {path: /v1/instances/**, methods: [GET], scopes: [instances:read]}
  - {path: /v1/user/profile, methods: [GET], scopes: [profile:read], credentials: [jwt]}
scopes: [api-keys:read, api-keys:write]
"""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A token assembled by hand (PyJWT rightly refuses to make the forgeries below)."""
    signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    sig = b"" if secret is None else hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(sig)


def pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,  # type: ignore[no-any-return]
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    doc = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
    return {**doc, "kid": kid, "alg": alg, "use": "sig"}


@dataclass
class Keys:
    rsa: Any
    ec: Any
    other_rsa: Any

    def claims(self, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {"sub": "user-42", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600,
                "permissions": ["servers:read", "profile:read"]}
        base.update(extra)
        return {k: v for k, v in base.items() if v is not None}

    def hs(self, **extra: Any) -> str:
        return jwt.encode(self.claims(**extra), HS_SECRET, algorithm="HS256")

    def rs(self, kid: str = "rsa-1", key: Any = None, **extra: Any) -> str:
        return jwt.encode(self.claims(**extra), key or self.rsa, algorithm="RS256", headers={"kid": kid})

    def es(self, kid: str = "ec-1", **extra: Any) -> str:
        return jwt.encode(self.claims(**extra), self.ec, algorithm="ES256", headers={"kid": kid})


@dataclass
class Env:
    keys: Keys
    multi: Gateway  # HS256 + RS256 + ES256 (JWKS), issuer and audience checked
    pem: Gateway  # RS256 from a PEM file only, scopes from a "scope" string, no iss/aud configured
    up: Upstream
    work: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("jwt")
    keys = Keys(rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
                ec=ec.generate_private_key(ec.SECP256R1()),
                other_rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    (work / "policy.yaml").write_text(POLICY)
    (work / "jwks.json").write_text(json.dumps({"keys": [jwk(keys.rsa, "rsa-1", "RS256"),
                                                         jwk(keys.ec, "ec-1", "ES256")]}))
    (work / "public.pem").write_bytes(pem(keys.rsa))
    up = Upstream(work)
    policy = str(work / "policy.yaml")
    # The failed-authentication cool-down is off: this matrix is refused tokens from one address, on purpose.
    no_cooldown = {"auth_failures_per_minute": 0}
    multi = Gateway(work / "multi", up.url, {
        "policies": policy, "limits": no_cooldown,
        "jwt": {"enabled": True, "algorithms": ["HS256", "RS256", "ES256"], "jwks_file": str(work / "jwks.json"),
                "issuer": ISSUER, "audience": AUDIENCE},
    }, env={"GATEWAY_JWT__SECRET": HS_SECRET})
    pem_gw = Gateway(work / "pem", up.url, {
        "policies": policy, "limits": no_cooldown,
        "jwt": {"enabled": True, "algorithms": ["RS256"], "public_key_file": str(work / "public.pem"),
                "scopes_claim": "scope"},
    })
    yield Env(keys, multi, pem_gw, up, work)
    multi.stop()
    pem_gw.stop()
    up.stop()


def get(gw: Gateway, token: str, path: str = "/v1/servers", **headers: str) -> Any:
    with gw.client() as c:
        return c.get(path, headers={**bearer(token), **headers})


def assert_refused(resp: Any, code: str = "invalid_token") -> None:
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"]["code"] == code
    assert resp.headers["www-authenticate"].startswith("Bearer")


def upstream_headers(record: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in record["headers"]}


def test_valid_tokens_of_each_algorithm_reach_the_upstream_with_identity(env: Env) -> None:
    for token in (env.keys.hs(), env.keys.rs(), env.keys.es()):
        env.up.clear()
        resp = get(env.multi, token, "/v1/servers/s-1")
        assert resp.status_code == 200, resp.text
        [seen] = env.up.records()
        headers = upstream_headers(seen)
        assert headers["x-auth-subject"] == "user-42"
        assert headers["x-auth-permissions"] == "servers:read,profile:read"
        assert "authorization" not in headers  # the token is not passed on
        assert token not in json.dumps(seen)


def test_scope_claim_as_a_space_separated_string(env: Env) -> None:
    env.up.clear()
    token = env.keys.rs(scope="openid servers:read email", permissions=None, iss=None, aud=None)
    resp = get(env.pem, token)
    assert resp.status_code == 200, resp.text
    assert upstream_headers(env.up.records()[0])["x-auth-permissions"] == "openid,servers:read,email"
    # The scope string grants only what it lists.
    denied = get(env.pem, env.keys.rs(scope="openid", permissions=None))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "insufficient_permissions"


def test_expiry_is_required_and_enforced(env: Env) -> None:
    past = int(time.time()) - 5
    for gw, make in ((env.multi, env.keys.hs), (env.multi, env.keys.rs), (env.multi, env.keys.es),
                     (env.pem, env.keys.rs)):
        assert_refused(get(gw, make(exp=past)), "expired_token")
        assert_refused(get(gw, make(exp=None)))  # no exp at all: refused, never "valid forever"
        assert_refused(get(gw, make(exp="tomorrow")))
    assert_refused(get(env.multi, env.keys.hs(nbf=int(time.time()) + 600)))
    # JSON lets a signer write NaN or Infinity: an exp that is never reached must not mean "forever".
    for never in (float("nan"), float("inf")):
        assert_refused(get(env.multi, hand_made({"alg": "HS256"}, env.keys.claims(exp=never), HS_SECRET.encode())))
    assert get(env.multi, env.keys.hs(nbf=int(time.time()) - 5)).status_code == 200


def test_issuer_and_audience_are_checked_when_configured(env: Env) -> None:
    k = env.keys
    assert_refused(get(env.multi, k.hs(aud="another-service")))
    assert_refused(get(env.multi, k.hs(aud=None)))
    assert_refused(get(env.multi, k.rs(iss="https://evil.example")))
    assert_refused(get(env.multi, k.es(iss=None)))
    assert get(env.multi, k.hs(aud=[AUDIENCE, "other"])).status_code == 200
    # Not configured on the PEM gateway: any (or no) iss/aud is accepted there.
    assert get(env.pem, k.rs(scope="servers:read", iss="anyone", aud="anything")).status_code == 200


def test_wrong_keys_are_refused(env: Env) -> None:
    k = env.keys
    assert_refused(get(env.multi, jwt.encode(k.claims(), "x" * 64, algorithm="HS256")))
    assert_refused(get(env.multi, k.rs(key=k.other_rsa)))  # right kid, wrong key
    assert_refused(get(env.pem, k.rs(key=k.other_rsa, scope="servers:read")))
    assert_refused(get(env.multi, k.rs(kid="unknown")))
    assert_refused(get(env.multi, k.rs(kid="ec-1")))  # an EC key for an RS256 token
    token = k.hs()
    head, payload, sig = token.split(".")
    forged = b64(json.dumps({**k.claims(), "permissions": ["*"]}).encode())
    assert_refused(get(env.multi, f"{head}.{forged}.{sig}"))  # payload changed after signing
    assert_refused(get(env.multi, f"{head}.{payload}."))  # signature removed


def test_alg_none_is_refused(env: Env) -> None:
    claims = env.keys.claims()
    for alg in ("none", "None", "NONE"):
        token = hand_made({"alg": alg, "typ": "JWT"}, claims, None)
        assert_refused(get(env.multi, token))
        assert_refused(get(env.pem, token))
    # ES256 is not allowed on the PEM gateway at all.
    assert_refused(get(env.pem, env.keys.es()))


def test_hs_rs_algorithm_confusion_is_refused(env: Env) -> None:
    """An HS256 token whose HMAC secret is the (public) RSA key PEM must not verify: the public key is only
    ever used for RS*, and HS* only ever with the shared secret."""
    public_pem = pem(env.keys.rsa)
    for claims, gw in ((env.keys.claims(), env.multi), (env.keys.claims(scope="servers:read"), env.pem)):
        for header in ({"alg": "HS256", "typ": "JWT"}, {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}):
            token = hand_made(header, claims, public_pem)
            assert_refused(get(gw, token))
            assert_refused(get(gw, hand_made(header, claims, public_pem.strip())))


def test_jwt_only_where_the_policy_allows_it(env: Env) -> None:
    token = env.keys.hs(permissions=["servers:read", "instances:read", "profile:read"])
    assert get(env.multi, token, "/v1/user/profile").status_code == 200
    refused = get(env.multi, token, "/v1/instances")  # an api_key-only route
    assert_refused(refused)
    assert "JWT" in refused.json()["error"]["message"]
    # And the other way round: an API key on the JWT-only route.
    key = env.multi.create_key("svc", "profile:read,servers:read")
    assert get(env.multi, key["value"], "/v1/servers").status_code == 200
    assert_refused(get(env.multi, key["value"], "/v1/user/profile"))
    # Missing scope on an allowed route: 403, not 401.
    lacking = get(env.multi, env.keys.hs(permissions=["servers:read"]), "/v1/user/profile")
    assert lacking.status_code == 403 and lacking.json()["error"]["code"] == "insufficient_permissions"


def test_keys_and_jwts_are_told_apart_by_shape(env: Env) -> None:
    # Garbage that is neither: invalid_token; a JWT-looking string that is not valid JSON: invalid_token.
    for token in ("eyJhbGciOiJIUzI1NiJ9.e30", "eyJ.x.y", "dep_live_" + "A" * 32, "eyJ" + "A" * 40,
                  "not.a.jwt"):
        assert_refused(get(env.multi, token))


def test_auth_test_and_debug_headers_with_a_jwt(env: Env) -> None:
    """``{prefix}/auth/test`` is how a caller checks its credential: it takes a JWT whatever
    ``management.allow_jwt`` says (it changes nothing and tells the caller only about itself)."""
    token = env.keys.hs(permissions=["api-keys:*", "servers:read"])
    with env.multi.client() as c:
        me = c.get("/v1/auth/test", headers=bearer(token))
    assert me.status_code == 200, me.text
    doc = me.json()
    assert doc["authenticated"] is True and doc["credential"] == "jwt" and doc["subject"] == "user-42"
    assert doc["key_id"] is None and doc["permissions"] == ["api-keys:*", "servers:read"]
    assert doc["expires_at"].endswith("Z")
    debug = get(env.multi, token, **{"X-Debug-Auth": "true"})
    assert debug.headers["x-auth-subject"] == "user-42"
    assert debug.headers["x-auth-permissions"] == "api-keys:*,servers:read"


def management_calls(api: KeysAPI, key_id: str) -> list[Any]:
    """One call to each endpoint of the key-management API."""
    return [api.list(), api.create({"name": "from-dashboard", "permissions": ["servers:read"]}), api.get(key_id),
            api.patch(key_id, {"name": "renamed"}), api.delete(key_id), api.rotate(key_id)]


def test_management_api_refuses_jwts_by_default(env: Env) -> None:
    """``management.allow_jwt`` is off by default: a dashboard JWT, however wide its scopes, gets 401
    ``invalid_token`` on every key-management endpoint, saying the endpoint takes an API key; the WWW-Authenticate
    header carries the RFC 6750 (section 3.1) ``invalid_token`` error. Nothing is changed by a refused call, and
    API keys manage keys as before."""
    token = env.keys.hs(permissions=["*"])
    admin = env.multi.create_key("admin", "api-keys:read,api-keys:write,servers:read")
    target = env.multi.create_key("target", "servers:read")
    api = KeysAPI(env.multi, token)
    try:
        answers = management_calls(api, target["id"])
    finally:
        api.close()
    for resp in answers:
        assert_refused(resp)
        message = resp.json()["error"]["message"]
        assert "API key" in message and "JWT" in message, message
        assert 'error="invalid_token"' in resp.headers["www-authenticate"]
        assert token not in resp.text
    # The refused DELETE, PATCH and rotate changed nothing; an API key still manages keys.
    keys = KeysAPI(env.multi, admin["value"])
    try:
        shown = keys.get(target["id"])
        assert shown.status_code == 200, shown.text
        assert shown.json()["status"] == "active" and shown.json()["name"] == "target"
        assert shown.json()["replaced_by"] is None
        assert keys.create({"name": "by-key", "permissions": ["servers:read"]}).status_code == 201
    finally:
        keys.close()
    # The same JWT still works where the policy takes JWTs.
    assert get(env.multi, token, "/v1/servers").status_code == 200


def test_management_api_takes_jwts_when_allowed(env: Env) -> None:
    """With ``management.allow_jwt: true`` a dashboard user manages keys like a key does, and no further than
    its own scopes."""
    gw = Gateway(env.work / "allow-jwt", env.up.url, {
        "policies": str(env.work / "policy.yaml"), "management": {"allow_jwt": True},
        "jwt": {"enabled": True, "algorithms": ["HS256"], "issuer": ISSUER, "audience": AUDIENCE},
    }, env={"GATEWAY_JWT__SECRET": HS_SECRET})
    token = env.keys.hs(permissions=["api-keys:*", "servers:read"])
    api = KeysAPI(gw, token)
    try:
        made = api.create({"name": "from-dashboard", "permissions": ["servers:read"]})
        assert made.status_code == 201, made.text
        assert made.json()["created_by"] == "jwt:user-42"
        wider = api.create({"name": "wider", "permissions": ["profile:read"]})
        assert wider.status_code == 403 and wider.json()["error"]["code"] == "insufficient_permissions"
        assert api.get(made.json()["id"]).status_code == 200
        assert api.list().status_code == 200
        # Scopes still decide: a JWT without api-keys:write may read but not write.
        reader = api.as_key(env.keys.hs(permissions=["api-keys:read"]))
        try:
            assert reader.list().status_code == 200
            refused = reader.delete(made.json()["id"])
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_permissions"
        finally:
            reader.close()
        audit = json.loads(gw.cli("audit", "--key", made.json()["id"], "--json").stdout)
        assert audit[0]["actor"] == "jwt:user-42"
    finally:
        api.close()
        gw.stop()


def test_deployally_refuses_a_jwt_on_the_management_api_in_portuguese(env: Env) -> None:
    """The DeployAlly shape and language for the same refusal: ``{"success": false, "error": {"code":
    "UNAUTHORIZED", "message": ...}}`` at the DeployAlly guide's paths, while the DeployAlly policy's own routes
    (which all list ``jwt``) and ``auth/test`` still take the dashboard's JWT."""
    gw = Gateway(env.work / "ally", env.up.url, {
        "error_format": "deployally", "key_format": "deployally", "management": {"prefix": "/api/v1"},
        "policies": str(Path(__file__).resolve().parents[2] / "policies" / "deployally.yaml"),
        "jwt": {"enabled": True, "algorithms": ["HS256"]},
    }, env={"GATEWAY_JWT__SECRET": HS_SECRET})
    token = env.keys.hs(permissions=["*"])
    api = KeysAPI(gw, token, prefix="/api/v1")
    try:
        refused = api.create({"name": "x", "permissions": ["templates:read"]})
        assert refused.status_code == 401, refused.text
        message = "Este endpoint aceita apenas API Key, não JWT"
        assert refused.json() == {"success": False, "error": {"code": "UNAUTHORIZED", "message": message}}
        assert refused.headers["www-authenticate"].startswith('Bearer realm="api", error="invalid_token"')
        listed = api.list()
        assert listed.status_code == 401 and listed.json() == refused.json()
        me = api.call("GET", "/auth/test")
        assert me.status_code == 200 and me.json()["success"] is True and me.json()["data"]["subject"] == "user-42"
        assert get(gw, token, "/api/v1/templates/t-1").status_code == 200
    finally:
        api.close()
        gw.stop()


def test_allow_jwt_changes_at_a_restart_not_a_reload(env: Env) -> None:
    """``management`` settings wait for a restart (the reload event says so): a SIGHUP that re-reads a
    configuration now allowing JWTs must not open the management API to them half-way."""
    gw = Gateway(env.work / "reload", env.up.url, {
        "policies": str(env.work / "policy.yaml"), "ops": {"watch_policy": False},
        "jwt": {"enabled": True, "algorithms": ["HS256"]},
    }, env={"GATEWAY_JWT__SECRET": HS_SECRET})
    token = env.keys.hs(permissions=["api-keys:*"])
    api = KeysAPI(gw, token)
    try:
        assert_refused(api.list())
        config = yaml.safe_load(gw.config.read_text())
        gw.config.write_text(yaml.safe_dump({**config, "management": {"allow_jwt": True}}))

        def reloads() -> list[dict[str, Any]]:
            return [d for d in map(json.loads, filter(None, gw.log().splitlines())) if d.get("event") == "reload"]

        for n in (1, 2):  # a second reload must not take the first one's settings for the running ones
            assert gw.proc is not None
            gw.proc.send_signal(signal.SIGHUP)
            wait_for(lambda n=n: len(reloads()) == n)  # type: ignore[misc]
            assert_refused(api.list())
        assert reloads()[0]["restart_needed_for"] == ["management"], reloads()
        gw.stop()
        gw.start()
        assert api.list().status_code == 200
    finally:
        api.close()
        gw.stop()


def test_no_token_reaches_a_log_or_an_error(env: Env) -> None:
    tokens = [env.keys.hs(), env.keys.hs(exp=1), env.keys.rs(key=env.keys.other_rsa),
              hand_made({"alg": "none"}, env.keys.claims(), None)]
    bodies = [get(env.multi, t).text for t in tokens]
    log = env.multi.log() + env.pem.log()
    for token in tokens:
        sig = token.rsplit(".", 1)[-1]
        assert token not in log and token.split(".")[1] not in log
        assert all(token not in b for b in bodies)
        assert not sig or sig not in log
    assert HS_SECRET not in log


def test_bad_jwt_configuration_stops_serve_with_exit_2(env: Env) -> None:
    gw = Gateway(env.work / "bad-none", env.up.url, {"jwt": {"enabled": True, "algorithms": ["HS256", "none"],
                                                             "secret": HS_SECRET}}, start=False)
    proc = run_cli("serve", "--config", str(gw.config), env=gw.env, check=False, cwd=gw.work, timeout=30)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "jwt.algorithms" in proc.stderr and "Traceback" not in proc.stderr
    assert HS_SECRET not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("jwt_settings", "named"),
    [
        ({"algorithms": ["none"]}, "jwt.algorithms"),
        ({"algorithms": ["HS256", "ES999"], "secret": HS_SECRET}, "jwt.algorithms"),
        ({"algorithms": ["HS256"]}, "jwt.secret"),
        ({"algorithms": ["HS256"], "secret": "short-secret-1234"}, "jwt.secret"),
        ({"algorithms": ["RS256"]}, "jwt.public_key_file"),
        ({"algorithms": ["RS256"], "public_key_file": "missing.pem"}, "jwt.public_key_file"),
        ({"algorithms": ["ES256"], "public_key_file": "PEM"}, "jwt.algorithms"),  # an RSA key for ES256
        ({"algorithms": ["RS256"], "jwks_file": "policy.yaml"}, "jwt.jwks_file"),
    ],
)
def test_bad_jwt_settings_are_refused_naming_the_setting(env: Env, jwt_settings: dict[str, Any],
                                                         named: str) -> None:
    """In process (start-up is what fails; the test above shows serve turns it into exit status 2)."""
    settings = {"enabled": True, **jwt_settings}
    if settings.get("public_key_file") == "PEM":
        settings["public_key_file"] = str(env.work / "public.pem")
    if settings.get("jwks_file") == "policy.yaml":
        settings["jwks_file"] = str(env.work / "policy.yaml")
    loaded = load_settings(None, environ={}, overrides={"jwt": settings})
    with pytest.raises(ConfigError) as caught:
        JWTVerifier(loaded.jwt, str(env.work))
    assert str(caught.value).startswith(named), str(caught.value)
    assert HS_SECRET not in str(caught.value)

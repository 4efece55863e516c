"""The management API's OpenAPI document and docs page, and schemathesis run against a live gateway process.

schemathesis (the [test] extra) generates requests from the document, sends them to a real `gateway serve`
with a real SQLite store, and checks every answer: no 5xx, a documented status, the documented content type,
a body matching its schema. The number of examples is bounded so the run takes seconds.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.lifecycle import KeysAPI, admin_gateway
from tests.support.procs import ROOT, Gateway, Upstream

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def get(gw: Gateway, path: str, method: str = "GET") -> Any:
    with gw.client() as c:
        return c.request(method, path)


def resolved(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$ref`` followed and, if it may be null (OpenAPI 3.1 writes that as ``anyOf`` with
    ``{"type": "null"}``), its other member."""
    while True:
        if "$ref" in schema:
            schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
            continue
        others = [m for m in schema.get("anyOf", ()) if m != {"type": "null"}]
        if len(others) == 1:
            schema = others[0]
            continue
        return schema


def test_document_describes_the_management_api(make_gateway: Callable[..., Gateway],
                                               fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings={"management": {"prefix": "/api/v2"}})
    r = get(gw, "/openapi.json")  # no credential needed
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/api/v2/auth/test", "/api/v2/api-keys", "/api/v2/api-keys/{id}",
                                 "/api/v2/api-keys/{id}/rotate", "/api/v2/api-keys/{id}/reveal"}
    reveal = doc["paths"]["/api/v2/api-keys/{id}/reveal"]["post"]
    assert reveal["security"] == [{"bearerAuth": ["api-keys:write"]}] and "410" in reveal["responses"]
    assert {"grace_period", "notification_email"} <= set(doc["components"]["schemas"]["KeyCreate"]["properties"])
    assert set(doc["paths"]["/api/v2/api-keys/{id}"]) == {"parameters", "get", "patch", "delete"}
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "API key (dep_live_...) or JWT"}
    create = doc["paths"]["/api/v2/api-keys"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/KeyCreate"}
    assert {"201", "401", "403", "422", "default"} <= set(create["responses"])
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error"] and "ip_whitelist" in doc["components"]["schemas"]["ApiKey"]["properties"]
    # the document's error shape is the one the gateway sends
    with gw.client() as c:
        denied = c.get("/api/v2/api-keys").json()
    assert set(denied) == set(error["properties"])
    assert set(denied["error"]) >= set(resolved(doc, error["properties"]["error"])["required"])
    # the docs page: plain HTML from the same document, nothing loaded from elsewhere
    page = get(gw, "/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for path in doc["paths"]:
        assert path.replace("{", "&#x7b;").replace("}", "&#x7d;") in page.text or path in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)
    assert "<script" not in page.text
    assert get(gw, "/openapi.json", "POST").status_code == 405
    assert fresh_upstream.records() == []
    # auth/test's rate_limit is described field by field, burst included, as a standard key gets it
    rate = resolved(doc, doc["components"]["schemas"]["AuthTest"]["properties"]["rate_limit"])
    burst = resolved(doc, rate["properties"]["burst"])
    key = gw.create_key("std", "servers:read")["value"]
    with gw.client() as c:
        me = c.get("/api/v2/auth/test", headers={"Authorization": f"Bearer {key}"}).json()["rate_limit"]
    assert set(me) == set(rate["properties"]) and set(rate["required"]) <= set(me)
    assert set(me["burst"]) == set(burst["properties"]) == set(burst["required"])
    assert (me["limit"], me["burst"]["limit"]) == (1000, 100)
    assert "rate_limit.burst" in doc["paths"]["/api/v2/auth/test"]["get"]["description"]
    assert "rate_limit.burst" in page.text
    # and which credentials the key-management endpoints take
    assert "API keys only (`management.allow_jwt` is off)" in doc["info"]["description"]


def test_deployally_shapes_and_configurable_paths(make_gateway: Callable[..., Gateway],
                                                  fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings={
        "error_format": "deployally", "ops": {"openapi_path": "/-/openapi.json", "docs_path": "/-/docs"}})
    doc = get(gw, "/-/openapi.json").json()
    assert doc["components"]["schemas"]["Error"]["required"] == ["success", "error"]
    assert "allowed_ips" in doc["components"]["schemas"]["ApiKey"]["properties"]
    listed = doc["paths"]["/v1/api-keys"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listed["properties"]["success"] == {"type": "boolean", "enum": [True]}
    # a list is `data` itself, its pagination in `meta`; auth/test is wrapped too
    assert listed["required"] == ["success", "data", "meta"] and listed["properties"]["data"]["type"] == "array"
    assert resolved(doc, listed["properties"]["meta"])["required"] == ["pagination"]
    me = doc["paths"]["/v1/auth/test"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert me["required"] == ["success", "data"]
    assert me["properties"]["data"] == {"$ref": "#/components/schemas/AuthTest"}
    # the document's read-only endpoints refuse other methods in the format's error shape
    refused = get(gw, "/-/openapi.json", "POST")
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
    assert refused.json() == {"success": False, "error": {"code": "METHOD_NOT_ALLOWED",
                                                          "message": "Este endpoint aceita apenas GET e HEAD"}}
    assert get(gw, "/-/docs").status_code == 200
    assert get(gw, "/openapi.json").status_code == 401  # an ordinary path again: the gate answers


@pytest.mark.parametrize("fmt", ["deployerp", "deployally"])
def test_the_login_endpoints_are_in_the_document_with_their_models(
        fmt: str, make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    """With accounts on, login, refresh and logout are documented (no credential, their request models, the
    answer a real login gives); without accounts they are not (test_document_describes_the_management_api)."""
    settings, prefix, _, _ = FORMATS[fmt]
    gw = make_gateway(fresh_upstream.url, settings={**settings, "accounts": {"enabled": True}})
    doc = get(gw, "/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for path, body in (("login", "LoginBody"), ("refresh", "RefreshBody"), ("logout", "RefreshBody")):
        op = doc["paths"][f"{prefix}/auth/{path}"]["post"]
        assert op["security"] == []  # answered without a credential
        assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{body}"}
        assert {"401" if path != "logout" else "204", "422", "default"} <= set(op["responses"])
    assert schemas["LoginBody"]["required"] == ["email", "password"]
    assert schemas["RefreshBody"]["required"] == ["refresh_token"]
    assert "429" in doc["paths"][f"{prefix}/auth/login"]["post"]["responses"]
    # A real login's answer is what the document says it is.
    gw.cli("users", "create", "ana@example.com", "--role", "admin", "--password-stdin", input="long enough pw\n")
    with gw.client() as c:
        answer = c.post(f"{prefix}/auth/login", json={"email": "ana@example.com", "password": "long enough pw"})
        wrong = c.post(f"{prefix}/auth/login", json={"email": "ana@example.com", "password": "not it"})
        bad = c.post(f"{prefix}/auth/refresh", json={"refresh_token": 5})
    assert (answer.status_code, wrong.status_code, bad.status_code) == (200, 401, 422)
    ok = doc["paths"][f"{prefix}/auth/login"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    tokens = schemas["SessionTokens"]
    if fmt == "deployally":  # {"success": true, "data": {...}}, as the guide shows
        assert ok["required"] == ["success", "data"] and set(answer.json()) == {"success", "data"}
        assert ok["properties"]["data"] == {"$ref": "#/components/schemas/SessionTokens"}
    got = data(answer, fmt)
    assert set(got) == set(tokens["properties"]) == set(tokens["required"])
    assert tokens["properties"]["expires_at"]["format"] == "date-time" and got["expires_at"].endswith("Z")
    error = schemas["Error"]
    for refused in (wrong, bad):
        assert set(error["required"]) <= set(refused.json()) <= set(error["properties"])
    assert "auth/login" in get(gw, "/docs").text


def test_openapi_can_be_turned_off(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, env={"GATEWAY_OPS__OPENAPI_ENABLED": "false"})
    assert get(gw, "/openapi.json").status_code == 401
    assert get(gw, "/docs").status_code == 401


FORMATS: dict[str, tuple[dict[str, Any], str, str, str]] = {
    # error format: (settings, management prefix, a permission the policy knows, the allowlist in answers)
    "deployerp": ({}, "/v1", "servers:read", "ip_whitelist"),
    "deployally": ({"error_format": "deployally", "key_format": "deployally", "management": {"prefix": "/api/v1"},
                    "policies": str(ROOT / "policies" / "deployally.yaml")}, "/api/v1", "templates:read",
                   "allowed_ips"),
}


def served(tmp_path: Path, upstream: Upstream, fmt: str = "deployerp") -> tuple[Gateway, KeysAPI, dict[str, Any]]:
    """A gateway in ``fmt``, a client of its management API as an admin key, and the document it serves."""
    settings, prefix, _, _ = FORMATS[fmt]
    gw, admin = admin_gateway(tmp_path / fmt, upstream.url, settings)
    doc = get(gw, "/openapi.json").json()
    return gw, KeysAPI(gw, admin, prefix=prefix), doc


def body_schema(doc: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    op = doc["paths"][path][method]
    return resolved(doc, op["requestBody"]["content"]["application/json"]["schema"])


def data(resp: Any, fmt: str) -> Any:
    return resp.json()["data"] if fmt == "deployally" else resp.json()


def test_every_length_limit_in_the_document_is_the_one_the_api_enforces(tmp_path: Path,
                                                                        fresh_upstream: Upstream) -> None:
    """The document and the validation cannot disagree: for every string in a request body (a property, or
    the items of a list) with ``maxLength`` or ``minLength`` in the document the gateway serves, a value at
    the limit is accepted and one past it is refused with 422 naming the field. Driven by the document, so a
    limit changed on either side alone fails here."""
    gw, api, doc = served(tmp_path, fresh_upstream)
    try:
        victim = api.created(name="victim")["id"]
        operations = [("post", "/v1/api-keys", {"name": "x", "permissions": ["servers:read"]},
                       lambda b: api.create(b), 201),
                      ("patch", "/v1/api-keys/{id}", {}, lambda b: api.patch(victim, b), 200)]
        for method, path, base, send, ok in operations:
            checked = []
            for prop, schema in body_schema(doc, path, method)["properties"].items():
                schema = resolved(doc, schema)
                targets = [(schema, False)]
                if schema.get("type") == "array":
                    targets.append((resolved(doc, schema["items"]), True))
                for target, listed in targets:
                    for bound, past in (("maxLength", 1), ("minLength", -1)):
                        if target.get("type") != "string" or bound not in target or target[bound] + past < 0:
                            continue
                        limit = target[bound]
                        at, beyond = "a" * limit, "a" * (limit + past)
                        pattern = target.get("pattern")
                        assert pattern is None or re.search(pattern, at), \
                            f"{prop}: 'a' does not fit its pattern {pattern}; give this test another filler"
                        accepted = send({**base, prop: [at] if listed else at})
                        assert accepted.status_code == ok, (prop, bound, limit, accepted.text)
                        refused = send({**base, prop: [beyond] if listed else beyond})
                        assert refused.status_code == 422, (prop, bound, limit, refused.text)
                        assert refused.json()["error"]["field"] == prop, refused.text
                        checked.append((prop, bound))
            assert checked, f"{method} {path}: no length limit in the document to check"
    finally:
        api.close()
        gw.stop()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_both_spellings_of_an_aliased_field_are_documented_and_taken(fmt: str, tmp_path: Path,
                                                                     fresh_upstream: Upstream) -> None:
    """The platforms spell the allowlist two ways (deployERP's guide ``ip_whitelist``, DeployAlly's
    ``allowed_ips``), and the deployERP guide turns rotation on with ``rotation_enabled`` where keys answer
    ``auto_rotate``. A request body may use either spelling, never both at once (422 naming the field), in
    either format; and the document lists both, for creating and for changing a key."""
    _, prefix, permission, ip_answer = FORMATS[fmt]
    gw, api, doc = served(tmp_path, fresh_upstream, fmt)
    pairs = (("ip_whitelist", "allowed_ips"), ("auto_rotate", "rotation_enabled"))
    try:
        for path, method in ((f"{prefix}/api-keys", "post"), (f"{prefix}/api-keys/{{id}}", "patch")):
            props = body_schema(doc, path, method)["properties"]
            for pair in pairs:
                assert set(pair) <= set(props), (method, path, pair, sorted(props))
        base = {"name": "spelt", "permissions": [permission]}
        for spelling in pairs[0]:
            made = api.create({**base, spelling: ["203.0.113.10"]})
            assert made.status_code == 201, made.text
            assert data(made, fmt)[ip_answer] == ["203.0.113.10/32"]
        for spelling in pairs[1]:
            made = api.create({**base, spelling: True, "rotation_period": "90d"})
            assert made.status_code == 201, made.text
            assert data(made, fmt)["auto_rotate"] is True
        victim = data(api.create(base), fmt)["id"]
        for first, second in pairs:
            for send in (api.create, lambda b: api.patch(victim, b)):
                both = send({**base, first: [] if first == "ip_whitelist" else False,
                             second: [] if first == "ip_whitelist" else False})
                assert both.status_code == 422, both.text
                assert both.json()["error"]["field"] == first, both.text
    finally:
        api.close()
        gw.stop()


def test_a_body_that_is_not_json_gets_the_status_the_document_gives_it(tmp_path: Path,
                                                                       fresh_upstream: Upstream) -> None:
    """A request body that is not JSON is refused with 422 (``error.field`` ``body``), and the document says
    so under that status and under no other."""
    gw, api, doc = served(tmp_path, fresh_upstream)
    try:
        victim = api.created(name="victim")["id"]
        for method, path, call in (("post", "/v1/api-keys", "/api-keys"),
                                   ("patch", "/v1/api-keys/{id}", f"/api-keys/{victim}"),
                                   ("post", "/v1/api-keys/{id}/rotate", f"/api-keys/{victim}/rotate")):
            resp = api.call(method.upper(), call, raw=b'{"name": ')
            assert resp.status_code == 422 and resp.json()["error"]["field"] == "body", resp.text
            answers = doc["paths"][path][method]["responses"]
            saying = [status for status, a in answers.items() if "JSON" in a["description"]]
            assert saying == [str(resp.status_code)], (method, path, saying)
    finally:
        api.close()
        gw.stop()


@pytest.mark.parametrize("error_format", ["deployerp", "deployally"])
def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(
    error_format: str, make_gateway: Callable[..., Gateway], fresh_upstream: Upstream
) -> None:
    assert SCHEMATHESIS.exists(), "schemathesis is part of the [test] extra: pip install -e '.[test]'"
    # Failed-auth blocking off: schemathesis sends bad credentials on purpose and would lock itself out.
    # Accounts on: the login, refresh and logout endpoints are in the document, and are run too.
    gw = make_gateway(fresh_upstream.url, settings={
        "error_format": error_format, "key_format": error_format, "limits": {"auth_failures_per_minute": 0},
        "accounts": {"enabled": True}})
    key = gw.create_key("schemathesis", "*", "--tier", "unlimited")
    r = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{gw.url}/openapi.json", "--url", gw.url,
         "-H", f"Authorization: Bearer {key['value']}", "--max-examples", "20",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                     "response_schema_conformance",
         "--request-timeout", "10", "--no-color"],
        capture_output=True, text=True, timeout=120, cwd=gw.work,
    )
    report = r.stdout[-8000:] + r.stderr[-2000:]
    assert r.returncode == 0, report
    assert re.search(r"\d+ generated, \d+ passed", report), report
    # every operation was reached with the credential (not only refused)
    log = gw.log()
    assert '"status":201' in log and '"route":"/v1/api-keys/{id}/rotate"' in log
    # the 8 management operations and the 3 login ones, each run
    assert re.search(r"Selected: 11/11\s+Tested: 11\b", report), report
    assert "login_failed" in log  # the login endpoint was sent logins (all wrong), and answered them
    assert "Traceback" not in log and key["value"] not in log

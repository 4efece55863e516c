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

from tests.support.procs import Gateway, Upstream

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def get(gw: Gateway, path: str, method: str = "GET") -> Any:
    with gw.client() as c:
        return c.request(method, path)


def test_document_describes_the_management_api(make_gateway: Callable[..., Gateway],
                                               fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings={"management": {"prefix": "/api/v2"}})
    r = get(gw, "/openapi.json")  # no credential needed
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/api/v2/auth/test", "/api/v2/api-keys", "/api/v2/api-keys/{id}",
                                 "/api/v2/api-keys/{id}/rotate"}
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
    assert set(denied) == set(error["properties"]) and set(denied["error"]) >= set(error["properties"]["error"]
                                                                                 ["required"])
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
    rate = doc["components"]["schemas"]["AuthTest"]["properties"]["rate_limit"]
    key = gw.create_key("std", "servers:read")["value"]
    with gw.client() as c:
        me = c.get("/api/v2/auth/test", headers={"Authorization": f"Bearer {key}"}).json()["rate_limit"]
    assert set(me) == set(rate["properties"]) and set(rate["required"]) <= set(me)
    assert set(me["burst"]) == set(rate["properties"]["burst"]["properties"]) == set(rate["properties"]["burst"]
                                                                                      ["required"])
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
    assert get(gw, "/-/docs").status_code == 200
    assert get(gw, "/openapi.json").status_code == 401  # an ordinary path again: the gate answers


def test_openapi_can_be_turned_off(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, env={"GATEWAY_OPS__OPENAPI_ENABLED": "false"})
    assert get(gw, "/openapi.json").status_code == 401
    assert get(gw, "/docs").status_code == 401


@pytest.mark.parametrize("error_format", ["deployerp", "deployally"])
def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(
    error_format: str, make_gateway: Callable[..., Gateway], fresh_upstream: Upstream
) -> None:
    assert SCHEMATHESIS.exists(), "schemathesis is part of the [test] extra: pip install -e '.[test]'"
    # Failed-auth blocking off: schemathesis sends bad credentials on purpose and would lock itself out.
    gw = make_gateway(fresh_upstream.url, settings={
        "error_format": error_format, "key_format": error_format, "limits": {"auth_failures_per_minute": 0}})
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
    assert "Traceback" not in log and key["value"] not in log

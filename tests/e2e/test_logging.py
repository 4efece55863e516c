"""JSON logs and request ids over real sockets: a real `gateway serve` process and a real recording upstream.

The log file is the process's own stderr, read after the gateway has stopped (so every line is flushed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from gateway.keys.hashing import Pepper
from tests.support.procs import SECRET, Gateway, Upstream

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTEiLCJwZXJtaXNzaW9ucyI6WyIqIl19.c2lnbmF0dXJlLW5vdA"


def lines(gw: Gateway) -> list[dict[str, Any]]:
    out = []
    for line in gw.log().splitlines():
        if line.strip():
            out.append(json.loads(line))  # every line is one JSON object: this raises otherwise
    return out


def requests(gw: Gateway) -> list[dict[str, Any]]:
    return [doc for doc in lines(gw) if doc.get("event") == "request"]


def upstream_request_ids(up: Upstream) -> list[str]:
    return [v for rec in up.records() for n, v in rec["headers"] if n.lower() == "x-request-id"]


def test_one_json_line_per_request_with_the_request_id(gateway: Gateway, fresh_upstream: Upstream) -> None:
    key = gateway.create_key("reader", "servers:read")
    auth = {"Authorization": f"Bearer {key['value']}"}
    with gateway.client() as c:
        given = c.post("/v1/servers/7", headers={**auth, "X-Request-ID": "req.ABC-123_x"}, content=b"12345")
        made = c.get("/v1/servers/8?token=should-not-be-logged", headers=auth)
        invalid = c.get("/v1/servers/9", headers={**auth, "X-Request-ID": "has space"})
        too_long = c.get("/v1/servers/9", headers={**auth, "X-Request-ID": "a" * 129})
        denied = c.get("/v1/teams", headers=auth)
        missing = c.get("/v1/servers")
        c.get("/healthz")
        c.get("/readyz")
        c.get("/metrics")
    assert given.status_code == 403  # servers:write is needed; the id is still echoed
    assert given.headers["x-request-id"] == "req.ABC-123_x"
    assert made.status_code == 200
    generated = made.headers["x-request-id"]
    assert len(generated) == 24 and generated != "req.ABC-123_x"
    assert invalid.headers["x-request-id"] not in ("has space", generated)
    assert len(too_long.headers["x-request-id"]) == 24
    # the upstream saw exactly the ids the client got back (one header each)
    assert upstream_request_ids(fresh_upstream) == [generated, invalid.headers["x-request-id"],
                                                    too_long.headers["x-request-id"]]
    gateway.stop()
    logged = requests(gateway)
    assert [d["request_id"] for d in logged] == [r.headers["x-request-id"] for r in
                                                 (given, made, invalid, too_long, denied, missing)]
    first, second = logged[0], logged[1]
    assert first["method"] == "POST" and first["route"] == "/v1/servers/**" and first["path"] == "/v1/servers/7"
    assert first["status"] == 403 and first["deny_reason"] == "insufficient_permissions"
    assert first["key_id"] == key["id"] and first["client_ip"] == "127.0.0.1"
    assert first["upstream_ms"] is None and first["bytes_out"] == len(given.content)
    assert second["status"] == 200 and second["deny_reason"] is None and second["path"] == "/v1/servers/8"
    assert second["upstream_ms"] is not None and 0 < second["upstream_ms"] <= second["duration_ms"]
    assert second["bytes_out"] == len(made.content) and second["bytes_in"] == 0
    assert logged[4]["route"] == "/v1/teams/**" and logged[4]["status"] == 403
    assert logged[5]["status"] == 401 and logged[5]["key_id"] is None
    assert logged[5]["deny_reason"] == "authentication_required"
    for d in logged:
        assert set(d) >= {"ts", "request_id", "method", "route", "path", "status", "duration_ms", "upstream_ms",
                          "key_id", "client_ip", "bytes_in", "bytes_out", "deny_reason"}
        # ISO 8601 UTC to the millisecond, and the time of the test run (the gateway formats it from parts).
        ts = datetime.strptime(d["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert len(d["ts"]) == 24 and abs((datetime.now(UTC) - ts).total_seconds()) < 300, d["ts"]
    # probes and metrics are not logged by default; the query string never is
    text = gateway.log()
    assert "/healthz" not in text and "/readyz" not in text and "/metrics" not in text
    assert "should-not-be-logged" not in text
    # other events are JSON too: start, and uvicorn's own lines
    events = {d.get("event") for d in lines(gateway)}
    assert "start" in events


def test_request_body_bytes_are_counted(gateway: Gateway, fresh_upstream: Upstream) -> None:
    key = gateway.create_key("writer", "servers:write")
    with gateway.client() as c:
        r = c.post("/v1/servers", headers={"Authorization": f"Bearer {key['value']}"}, content=b"x" * 3000)
        chunked = c.post("/v1/servers", headers={"Authorization": f"Bearer {key['value']}"},
                         content=iter([b"a" * 100, b"b" * 50]))
    assert r.status_code == 200 and chunked.status_code == 200
    gateway.stop()
    logged = requests(gateway)
    assert [d["bytes_in"] for d in logged] == [3000, 150]


def test_no_key_hash_or_jwt_ever_reaches_the_log(make_gateway: Callable[..., Gateway],
                                                 fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings={"ops": {"access_log_probes": True}})
    key = gw.create_key("reader", "servers:read")
    revoked = gw.create_key("old", "servers:read")
    gw.cli("keys", "revoke", revoked["id"])
    admin = gw.create_key("admin", "api-keys:write,api-keys:read,servers:read")
    with gw.client() as c:
        c.get("/v1/servers", headers={"Authorization": f"Bearer {key['value']}"})
        c.get("/v1/servers", headers={"Authorization": f"Bearer {revoked['value']}"})
        c.get("/v1/servers", headers={"Authorization": f"Bearer {JWT}"})
        c.get("/v1/servers", headers={"Authorization": f"bearer {key['value']}"})
        c.get("/v1/servers", headers={"Authorization": f"Bearer {key['value'][:-1]}x"})
        created = c.post("/v1/api-keys", headers={"Authorization": f"Bearer {admin['value']}"},
                         json={"name": "made", "permissions": ["servers:read"]}).json()
        c.get("/healthz")
    gw.stop()
    text = gw.log()
    values = [key["value"], revoked["value"], admin["value"], created["value"], JWT, JWT.split(".")[1]]
    pepper = Pepper(SECRET.encode(), "test")
    hashes = [pepper.hash(v) for v in values[:4]]
    for secret in (*values, *hashes, key["value"][:-1], SECRET):
        assert secret not in text
    assert "Bearer" not in text and "bearer" not in text
    logged = requests(gw)
    # the lower-case scheme is the same credential (RFC 9110 11.1: the scheme is case-insensitive)
    assert [d["status"] for d in logged] == [200, 401, 401, 200, 401, 201, 200]
    assert logged[-1]["route"] == "/healthz"  # access_log_probes: true
    assert logged[-2]["route"] == "/v1/api-keys" and logged[-2]["key_id"] == admin["id"]


def test_access_log_off_and_text_format(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings={"ops": {"access_log": False}})
    with gw.client() as c:
        assert c.get("/v1/servers").status_code == 401
    gw.stop()
    assert requests(gw) == [] and any(d.get("event") == "start" for d in lines(gw))
    text = make_gateway(fresh_upstream.url, env={"GATEWAY_OPS__LOG_FORMAT": "text"})
    text.stop()
    assert not text.log().lstrip().startswith("{") and "listening on" in text.log()

"""Secrets. Key values, their keyed hashes and the pepper never appear in a log line, an error
body, a response header or the SQLite files; the pepper file the gateway creates is mode 600; the checksum is
checked before any store lookup; hashes are only ever compared with ``hmac.compare_digest``.

The session test runs a real gateway with no GATEWAY_SECRET (so it makes its own pepper file), drives it
through successes, failures, debug headers and the key-management API, stops it (so every buffered write
has landed), and then reads every byte it produced.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.keys.hashing import Pepper
from tests.support.attack import exchange, request
from tests.support.procs import ROOT, Gateway, RedisServer, Upstream


def _dump(resp: httpx.Response) -> bytes:
    head = b"".join(k + b": " + v + b"\r\n" for k, v in resp.headers.raw)
    return b"HTTP %d\r\n" % resp.status_code + head + b"\r\n" + resp.content


def test_no_secret_in_logs_bodies_headers_or_the_store(tmp_path: Path, fresh_upstream: Upstream) -> None:
    gw = Gateway(tmp_path / "gw", fresh_upstream.url, settings={"debug_headers": True}, start=False)
    del gw.env["GATEWAY_SECRET"]  # the gateway makes and keeps its own pepper file
    admin = gw.create_key("admin", "*")
    reader = gw.create_key("reader", "servers:read", "--allow-ip", "127.0.0.0/8")
    pepper_file = tmp_path / "gw" / "gateway.secret"
    assert stat.S_IMODE(pepper_file.stat().st_mode) == 0o600
    gw.start()
    answers: list[bytes] = []  # every response, except the two that show a new key's value once
    shown: list[str] = []
    try:
        with gw.client() as c:
            for value in (admin["value"], reader["value"]):
                auth = {"Authorization": f"Bearer {value}"}
                for path in ("/v1/servers", "/v1/invoices", "/v1/auth/test", "/v1/api-keys", "/v1/nowhere"):
                    answers.append(_dump(c.get(path, headers={**auth, "X-Debug-Auth": "true"})))
                answers.append(_dump(c.get("/v1/servers", headers={"Authorization": f"Bearer {value[:-1]}X",
                                                                   "X-Debug-Auth": "true"})))
                answers.append(_dump(c.get("/v1/servers", headers={"Authorization": f"Bearer {value}{value}"})))
                answers.append(_dump(c.get("/v1/servers", headers={"Authorization": f"Basic {value}"})))
                answers.append(_dump(c.get(f"/v1/servers?api_key={value}")))
            admin_auth = {"Authorization": f"Bearer {admin['value']}"}
            made = c.post("/v1/api-keys", headers=admin_auth, json={"name": "made", "permissions": ["servers:read"]})
            assert made.status_code in (200, 201), made.text
            new = made.json().get("data", made.json())
            shown.append(new["value"] if "value" in new else new["key"]["value"])
            rotated = c.post(f"/v1/api-keys/{reader['id']}/rotate", headers=admin_auth)
            assert rotated.status_code in (200, 201), rotated.text
            shown.append(rotated.json()["new_key"]["value"])
            answers.append(_dump(c.get("/v1/api-keys", headers=admin_auth)))
            answers.append(_dump(c.get(f"/v1/api-keys/{reader['id']}", headers=admin_auth)))
            answers.append(_dump(c.delete(f"/v1/api-keys/{reader['id']}", headers=admin_auth)))
            answers.append(_dump(c.patch(f"/v1/api-keys/{admin['id']}", headers=admin_auth,
                                         json={"permissions": 42})))
            answers.append(_dump(c.post("/v1/api-keys", headers=admin_auth, content=b"{not json")))
        for raw in (request("GET", "/v1/servers", b"Authorization: Bearer " + admin["value"].encode() + b"\x01"),
                    request("GET", "/v1/servers", b"Authorization: Bearer " + admin["value"].encode(),
                            b"Transfer-Encoding: gzip")):
            answers.append(exchange(gw.port, raw).raw)
    finally:
        gw.stop()
    pepper = pepper_file.read_bytes().strip()
    values = [admin["value"], reader["value"], *shown]
    hashes = [hmac.new(pepper, v.encode(), hashlib.sha256).hexdigest() for v in values]
    log = gw.log().encode()
    store = b"".join(p.read_bytes() for p in (tmp_path / "gw").glob("keys.db*"))
    assert store, "the SQLite files were not found"
    upstream_saw = repr(fresh_upstream.records()).encode()
    everything_but_store = [log, upstream_saw, *answers]
    for value in values:
        for piece in (value, value[len("dep_live_"):]):
            assert piece.encode() not in store, "a key value is in the SQLite file"
            for where in everything_but_store:
                assert piece.encode() not in where, where[:200]
    for digest in hashes:
        for where in everything_but_store:
            assert digest.encode() not in where, where[:200]
    assert any(h.encode() in store for h in hashes), "the store should hold the keyed hashes (control)"
    for where in [store, *everything_but_store]:
        assert pepper not in where
        assert pepper[:16] not in where
    assert b"Traceback" not in log


def test_hash_comparisons_use_compare_digest() -> None:
    """No ``==``/``!=`` on anything named like a hash, digest or secret in the gateway's code, and the one
    comparison helper is ``hmac.compare_digest``."""
    offenders = []
    for path in (ROOT / "gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                text = ast.unparse(node).lower()
                if any(word in text for word in ("hash", "digest", "secret", "pepper")):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []
    assert "compare_digest" in Pepper.same.__code__.co_names
    assert Pepper.same("a" * 64, "a" * 64) and not Pepper.same("a" * 64, "b" * 64)


def test_pepper_and_keys_have_no_revealing_repr() -> None:
    pepper = Pepper(b"pepper-0123456789-abcdef", "test")
    assert "pepper-0123" not in repr(pepper) and "pepper-0123" not in str(pepper)


@pytest.mark.timeout(60)
def test_checksum_is_verified_before_any_store_lookup(tmp_path: Path, fresh_upstream: Upstream,
                                                      own_redis: RedisServer) -> None:
    """With the key store (a real redis-server) hung, a well-formed key needs the store (503), while a key
    with a wrong checksum is refused at once (401): it never got as far as a lookup."""
    gw = Gateway(tmp_path / "gw", fresh_upstream.url, settings={"store": {"url": own_redis.url}}, start=False)
    key = gw.create_key("reader", "servers:read")
    gw.start()
    value = key["value"]
    bad_checksum = value[:-1] + ("A" if value[-1] != "A" else "B")
    unknown: Any = None
    own_redis.pause()
    try:
        started = time.monotonic()
        refused = exchange(gw.port, request("GET", "/v1/servers", f"Authorization: Bearer {bad_checksum}"))
        refused_in = time.monotonic() - started
        unknown = exchange(gw.port, request("GET", "/v1/servers", f"Authorization: Bearer {value}"), timeout=10)
    finally:
        own_redis.resume()
        gw.stop()
    assert refused.status == 401 and refused.first.json()["error"]["code"] == "invalid_token"
    assert refused_in < 1.0
    assert unknown.status == 503, unknown.raw[:300]
    assert fresh_upstream.records() == []

"""Forward-auth end to end behind a real nginx: client -> nginx (``auth_request`` to a real `gateway serve`) ->
the recording upstream.

nginx runs the configuration docs/forward-auth.md shows, read from the page (only its three addresses are
replaced), so the documented configuration is the tested one. The gateway trusts 127.0.0.1 (nginx) only; clients
connect to nginx from 127.0.0.2 and 127.0.0.3 (other loopback source addresses, no mock), so the client address
the gateway checks allowlists against is the one nginx saw, passed in ``X-Forwarded-For``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.procs import ROOT, Gateway, Nginx, Upstream

CLIENT, OTHER_CLIENT = "127.0.0.2", "127.0.0.3"


def documented_config() -> str:
    """The nginx block of docs/forward-auth.md, on the test's addresses ({port}, {api}, {gateway})."""
    doc = (ROOT / "docs" / "forward-auth.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```nginx\n(.*?)```", doc, re.S) if "auth_request " in b]
    for documented in ("listen 80;", "127.0.0.1:9000", "127.0.0.1:8080"):
        assert block.count(documented) == 1, documented
    return (block.replace("listen 80;", "listen 127.0.0.1:{port};").replace("127.0.0.1:9000", "{api}")
            .replace("127.0.0.1:8080", "{gateway}"))


@dataclass
class Stack:
    nginx: Nginx
    gateway: Gateway
    upstream: Upstream

    def client(self, source: str = CLIENT) -> httpx.Client:
        return httpx.Client(base_url=self.nginx.url, timeout=10,
                            transport=httpx.HTTPTransport(local_address=source))


@pytest.fixture
def stack(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream, tmp_path: Path) -> Iterator[Stack]:
    gw = make_gateway(fresh_upstream.url, settings={"trusted_proxies": ["127.0.0.1/32"], "cache": {"ttl_seconds": 1}})
    config = documented_config().replace("{api}", fresh_upstream.url[len("http://"):]).replace(
        "{gateway}", gw.url[len("http://"):])
    nginx = Nginx(tmp_path / "nginx", config)
    yield Stack(nginx, gw, fresh_upstream)
    nginx.stop()


def bearer(key: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key['value']}"}


def received(record: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in record["headers"] if k.lower() == name]


def test_an_allowed_request_reaches_the_api_with_the_identity_headers(stack: Stack) -> None:
    key = stack.gateway.create_key("reader", "servers:read")
    spoofed = {"X-Auth-Key-Id": "key_someone_else", "X-Auth-Subject": "admin", "X-Auth-Permissions": "*"}
    with stack.client() as c:
        r = c.get("/v1/servers/srv_1?expand=all", headers={**bearer(key), **spoofed})
    assert r.status_code == 200, (r.status_code, r.text, stack.nginx.log())
    assert r.headers["x-upstream"] == "recording"
    assert r.headers["x-ratelimit-limit"] == "100" and r.headers["x-ratelimit-remaining"] == "99"
    (rec,) = stack.upstream.records()
    assert rec["target"] == "/v1/servers/srv_1?expand=all"
    assert received(rec, "x-auth-key-id") == [key["id"]]
    assert received(rec, "x-auth-permissions") == ["servers:read"]
    assert received(rec, "x-auth-environment") == ["live"]
    assert received(rec, "x-auth-subject") == []  # the client's own copy was removed, not passed on
    assert received(rec, "authorization") == []  # the key stays with the gateway


def test_a_scope_refusal_reaches_the_client_as_the_gateways_403(stack: Stack) -> None:
    key = stack.gateway.create_key("reader", "servers:read")
    with stack.client() as c:
        r = c.delete("/v1/servers/srv_1", headers=bearer(key))
    assert r.status_code == 403 and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "insufficient_permissions"
    assert stack.upstream.records() == []


def test_the_allowlist_is_checked_against_the_address_nginx_saw(stack: Stack) -> None:
    key = stack.gateway.create_key("office", "servers:read", "--allow-ip", f"{CLIENT}/32")
    with stack.client(CLIENT) as c:
        assert c.get("/v1/servers", headers=bearer(key)).status_code == 200
    with stack.client(OTHER_CLIENT) as c:
        # A client's own X-Forwarded-For is to the left of the address nginx adds: never read.
        r = c.get("/v1/servers", headers={**bearer(key), "X-Forwarded-For": CLIENT})
    assert r.status_code == 403 and r.json()["error"]["code"] == "ip_restricted"
    assert len(stack.upstream.records()) == 1


def test_no_key_is_401_with_the_bearer_challenge(stack: Stack) -> None:
    """RFC 6750 3.1: a request without a credential gets a challenge with no error attribute."""
    with stack.client() as c:
        r = c.get("/v1/servers")
        bad = c.get("/v1/servers", headers={"Authorization": "Bearer dep_live_0000000000000000000000000000000x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "authentication_required"
    assert r.headers.get_list("www-authenticate") == ['Bearer realm="api"']
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_token"
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]
    assert stack.upstream.records() == []


def test_past_the_limited_tier_the_client_gets_429_with_retry_after(stack: Stack) -> None:
    """The limited tier admits 10 a minute. RFC 6585 4 (429) and RFC 9110 10.2.3 (Retry-After): without the
    documented error_page mapping nginx would answer 500."""
    key = stack.gateway.create_key("limited", "servers:read", "--tier", "limited")
    with stack.client() as c:
        answers = [c.get("/v1/servers", headers=bearer(key)) for _ in range(11)]
    assert [r.status_code for r in answers] == [200] * 10 + [429]
    refused = answers[10]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 6
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert len(stack.upstream.records()) == 10


def test_an_ambiguous_path_is_the_gateways_400(stack: Stack) -> None:
    """nginx would serve /v1/teams for this (it normalises for location matching) while passing the raw target
    on: the gateway refuses what two parsers could read differently."""
    key = stack.gateway.create_key("reader", "servers:read,teams:read")
    with stack.client() as c:
        r = c.get("/v1/servers/%2e%2e/teams", headers=bearer(key))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    assert stack.upstream.records() == []


def test_a_revoked_key_is_refused_within_the_cache_ttl(stack: Stack) -> None:
    """The key is cached by the gateway (cache.ttl_seconds: 1 here); revoked through the management API it
    is refused through nginx at the latest one TTL later."""
    key = stack.gateway.create_key("doomed", "servers:read")
    admin = stack.gateway.create_key("admin", "api-keys:write,servers:read")  # holds what it revokes
    with stack.client() as c:
        assert c.get("/v1/servers", headers=bearer(key)).status_code == 200
        with stack.gateway.client() as direct:
            assert direct.delete(f"/v1/api-keys/{key['id']}", headers=bearer(admin)).status_code == 200
        revoked = time.monotonic()
        while True:
            r = c.get("/v1/servers", headers=bearer(key))
            if r.status_code != 200 or time.monotonic() - revoked > 5:
                break
            time.sleep(0.05)
        took = time.monotonic() - revoked
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    assert took <= 1 + 0.5, took


def test_with_the_gateway_down_nobody_gets_in(stack: Stack) -> None:
    key = stack.gateway.create_key("reader", "servers:read")
    stack.gateway.stop()
    with stack.client() as c:
        r = c.get("/v1/servers", headers=bearer(key))
    assert r.status_code == 502 and r.json()["error"]["code"] == "auth_unavailable"
    assert stack.upstream.records() == []


def test_the_readme_snippet_works_as_shown(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream,
                                           tmp_path: Path) -> None:
    """The short nginx snippet in the README's first screen, in a server block on the test's addresses: an allowed
    request reaches the API with the key id; a key without the scope is refused by nginx (403) and the API sees
    nothing."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```nginx\n(.*?)```", readme, re.S)
    gw = make_gateway(fresh_upstream.url, settings={"trusted_proxies": ["127.0.0.1/32"]})
    config = block.replace("127.0.0.1:9000", fresh_upstream.url[len("http://"):]).replace(
        "127.0.0.1:8080", gw.url[len("http://"):])
    nginx = Nginx(tmp_path / "nginx", "server {\n    listen 127.0.0.1:{port};\n" + config + "}\n")
    try:
        reader = gw.create_key("reader", "servers:read")
        with httpx.Client(base_url=nginx.url, timeout=10) as c:
            allowed = c.get("/v1/servers", headers=bearer(reader))
            refused = c.get("/v1/invoices", headers=bearer(reader))
        assert allowed.status_code == 200, (allowed.text, nginx.log())
        (rec,) = fresh_upstream.records()
        assert rec["target"] == "/v1/servers" and received(rec, "x-auth-key-id") == [reader["id"]]
        assert refused.status_code == 403
        assert len(fresh_upstream.records()) == 1
    finally:
        nginx.stop()

"""The forward-auth endpoint (gateway/doors/forward_auth.py) of a real `gateway serve`, over a real socket.

No Traefik or Envoy binary can be had on this machine (nginx can: tests/e2e/test_forward_auth_nginx.py puts the
real one in front), so these tests send, byte for byte, the requests those proxies send, as their source shows:

* Traefik ForwardAuth (``pkg/middlewares/auth/forward.go``): a GET to the endpoint with the client's headers,
  ``X-Forwarded-Method``, ``-Proto``, ``-Host``, ``-Uri`` and ``X-Forwarded-For`` set to the client address; any
  non-2xx answer goes to the client as it is;
* Envoy ``ext_authz`` with an HTTP service (``ext_authz_http_impl.cc``): the original method, the path
  ``path_prefix`` + the original path and query, ``Content-Length: 0``, the ``Authorization`` header; on a 200
  the headers in ``allowed_upstream_headers`` are set on the upstream request, then the ones the answer lists in
  ``x-envoy-auth-headers-to-remove`` are removed;
* nginx ``auth_request`` as docs/forward-auth.md configures it: ``X-Original-Method`` and ``X-Original-URI``.

The gateway trusts 127.0.0.1 as a proxy; 127.0.0.2 (a second loopback source address, no mock) is an
untrusted client. Nothing here reaches the upstream: the endpoint only decides.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.support.attack import Response, exchange, request
from tests.support.metrics import scrape
from tests.support.procs import Gateway, Upstream

PATH = "/_gateway/verify"
UNTRUSTED = "127.0.0.2"


@dataclass
class Env:
    gateway: Gateway
    upstream: Upstream
    reader: dict[str, Any]  # servers:read
    office: dict[str, Any]  # servers:read, only from 10.0.0.0/8
    limited: dict[str, Any]  # servers:read, the limited tier (10 a minute)
    tester: dict[str, Any]  # a test key, servers:read


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("forward-auth")
    up = Upstream(work)
    gw = Gateway(work / "gw", up.url, settings={"trusted_proxies": ["127.0.0.1/32"]})
    try:
        yield Env(gw, up, gw.create_key("reader", "servers:read"),
                  gw.create_key("office", "servers:read", "--allow-ip", "10.0.0.0/8"),
                  gw.create_key("limited", "servers:read", "--tier", "limited"),
                  gw.create_key("tester", "servers:read", "--env", "test"))
    finally:
        gw.stop()
        up.stop()


def auth(key: dict[str, Any]) -> str:
    return "Authorization: Bearer " + key["value"]


def traefik(method: str, uri: str, client: str = "203.0.113.9") -> list[str]:
    return [f"X-Forwarded-Method: {method}", "X-Forwarded-Proto: https", "X-Forwarded-Host: api.example.com",
            f"X-Forwarded-Uri: {uri}", f"X-Forwarded-For: {client}"]


def nginx(method: str, uri: str) -> list[str]:
    return [f"X-Original-Method: {method}", f"X-Original-URI: {uri}", "X-Forwarded-For: 203.0.113.9"]


def ask(env: Env, *headers: str, method: str = "GET", target: str = PATH, source: str | None = None,
        body: bytes = b"") -> Response:
    ex = exchange(env.gateway.port, request(method, target, *headers, body=body, host=b"api.example.com"),
                  source=source)
    assert ex.raw.startswith(b"HTTP/1.1 "), ex.raw[:200]
    return ex.first


def error(r: Response) -> str:
    assert r.header("content-type") == "application/json", r
    doc = r.json()
    assert doc["error"]["status"] == r.status
    return str(doc["error"]["code"])


def test_traefik_allowed_request_gets_200_and_the_identity_headers(env: Env) -> None:
    r = ask(env, auth(env.reader), *traefik("GET", "/v1/servers?page=2"))
    assert (r.status, r.body) == (200, b""), r
    assert r.header("x-auth-key-id") == env.reader["id"]
    assert r.header("x-auth-permissions") == "servers:read"
    assert r.header("x-auth-environment") == "live"
    assert r.header("x-ratelimit-limit") == "100" and (r.header("x-ratelimit-remaining") or "").isdigit()
    assert r.header("cache-control") == "no-store"
    assert r.header("x-envoy-auth-headers-to-remove") is None  # only Envoy reads it
    assert env.upstream.records() == []


def test_each_decision_is_logged_as_the_original_request(env: Env) -> None:
    ask(env, auth(env.reader), *traefik("GET", "/v1/servers/srv_42?secret=never-logged"),
        "X-Request-ID: fa-log-check")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(ln) for ln in env.gateway.log().splitlines() if '"fa-log-check"' in ln]
        if lines:
            break
        time.sleep(0.05)
    (line,) = lines
    assert line["event"] == "request" and line["method"] == "GET" and line["path"] == "/v1/servers/srv_42"
    assert (line["route"], line["key_id"], line["status"]) == ("/v1/servers/**", env.reader["id"], 200)
    assert line["client_ip"] == "203.0.113.9"


def test_decisions_are_counted_by_route_and_method_with_bounded_labels(env: Env) -> None:
    """The method comes from a header here, not from the HTTP parser: a method outside the policy's set is 405
    and counted as OTHER, so a client cannot grow the metrics by one series per made-up method."""
    before = scrape(env.gateway)
    assert ask(env, auth(env.reader), *traefik("GET", "/v1/servers/srv_7")).status == 200
    for i in range(5):
        r = ask(env, auth(env.reader), *traefik(f"BREW{i}", "/v1/servers"))
        assert r.status == 405 and error(r) == "method_not_allowed"
    after = scrape(env.gateway)
    moved = {labels: n - before.get((name, labels), 0.0) for (name, labels), n in after.items()
             if name == "gateway_requests_total" and n != before.get((name, labels), 0.0)}
    assert moved == {(("method", "GET"), ("route", "/v1/servers/**"), ("status", "200")): 1,
                     (("method", "OTHER"), ("route", "<unmatched>"), ("status", "405")): 5}, moved


def test_the_original_method_decides_not_the_request_line(env: Env) -> None:
    """Every forward-auth request is a GET (nginx, Traefik): the method checked is the one in the header."""
    r = ask(env, auth(env.reader), *traefik("DELETE", "/v1/servers/srv_1"))
    assert r.status == 403 and error(r) == "insufficient_permissions"
    assert r.header("x-auth-key-id") is None
    r = ask(env, auth(env.reader), *nginx("POST", "/v1/servers"))
    assert r.status == 403 and error(r) == "insufficient_permissions"


def test_the_path_rules_apply_to_the_original_uri(env: Env) -> None:
    """The query is not part of the path; dot segments, encoded slashes and anything outside RFC 3986 3.3 path
    characters are refused (400) as in proxy mode, since the upstream would read them its own way."""
    assert ask(env, auth(env.reader), *nginx("GET", "/v1/servers?next=/v1/teams")).status == 200
    for uri in ("/v1/servers/../teams", "/v1/servers/%2e%2e/teams", "/v1/servers%2Fx", "*",
                "http://api.example.com/v1/servers", "v1/servers"):
        r = ask(env, auth(env.reader), *nginx("GET", uri))
        assert r.status == 400 and error(r) == "invalid_request", uri


def test_the_allowlist_reads_the_client_from_x_forwarded_for(env: Env) -> None:
    assert ask(env, auth(env.office), *traefik("GET", "/v1/servers", client="10.1.2.3")).status == 200
    r = ask(env, auth(env.office), *traefik("GET", "/v1/servers", client="198.51.100.7"))
    assert r.status == 403 and error(r) == "ip_restricted"


def test_no_key_is_401_with_a_bearer_challenge(env: Env) -> None:
    """RFC 6750 3.1: no credential, a challenge without an error attribute; a bad one, ``invalid_token``."""
    r = ask(env, *traefik("GET", "/v1/servers"))
    assert r.status == 401 and error(r) == "authentication_required"
    assert r.header("www-authenticate") == 'Bearer realm="api"'
    r = ask(env, "Authorization: Bearer dep_live_0000000000000000000000000000000x", *traefik("GET", "/v1/servers"))
    assert r.status == 401 and 'error="invalid_token"' in (r.header("www-authenticate") or "")


def test_past_the_rate_limit_the_answer_is_429_with_retry_after(env: Env) -> None:
    """RFC 6585 4 (429) and RFC 9110 10.2.3 (Retry-After): Traefik and Envoy hand this answer to the client."""
    answers = [ask(env, auth(env.limited), *traefik("GET", "/v1/servers")) for _ in range(11)]
    assert [r.status for r in answers[:10]] == [200] * 10
    assert [r.header("x-ratelimit-remaining") for r in answers[:10]] == [str(9 - i) for i in range(10)]
    refused = answers[10]
    assert refused.status == 429 and error(refused) == "rate_limit_exceeded"
    assert 1 <= int(refused.header("retry-after") or "0") <= 6
    assert refused.header("x-ratelimit-remaining") == "0"


def test_envoy_path_prefix_carries_the_original_path(env: Env) -> None:
    r = ask(env, auth(env.reader), "Content-Length: 0", target=f"{PATH}/v1/servers/srv_1?expand=all")
    assert (r.status, r.body) == (200, b"")
    assert r.header("x-auth-key-id") == env.reader["id"]
    # Set first, then removed (ext_authz.cc): the identity headers this answer does not set, so a client's own
    # X-Auth-Subject never reaches the upstream, and the key itself unless forward_authorization is on.
    removed = {h.strip() for h in (r.header("x-envoy-auth-headers-to-remove") or "").split(",")}
    assert removed == {"x-auth-subject", "authorization"}

    r = ask(env, auth(env.reader), "Content-Length: 0", method="DELETE", target=f"{PATH}/v1/servers/srv_1")
    assert r.status == 403 and error(r) == "insufficient_permissions"
    r = ask(env, auth(env.reader), "Content-Length: 0", method="HEAD", target=f"{PATH}/v1/servers")
    assert (r.status, r.body) == (200, b"")
    r = ask(env, auth(env.reader), target=f"{PATH}/v1/servers/../teams")
    assert r.status == 400 and error(r) == "invalid_request"


def test_envoy_with_request_body_gets_its_answer_and_the_connection_closed(env: Env) -> None:
    """The body is never read: the connection is closed after the answer rather than drained (RFC 9112 9.6)."""
    ex = exchange(env.gateway.port, request("POST", f"{PATH}/v1/servers", auth(env.reader), "Content-Length: 5",
                                            body=b"hello"))
    assert ex.status == 403 and ex.first.header("connection") == "close" and ex.closed


def test_an_untrusted_peer_gets_403_whatever_it_sends(env: Env) -> None:
    """A proxy left out of trusted_proxies would have every client checked as its own address (X-Forwarded-For is
    believed from trusted peers only): such a peer gets a refusal naming the setting, never a decision."""
    for headers, target in ((nginx("GET", "/v1/servers"), PATH), (traefik("GET", "/v1/servers"), PATH),
                            ([], f"{PATH}/v1/servers")):
        r = ask(env, auth(env.reader), *headers, target=target, source=UNTRUSTED)
        assert r.status == 403 and error(r) == "forward_auth_untrusted", target
        assert "trusted_proxies" in r.json()["error"]["message"]
        assert r.header("x-auth-key-id") is None


def test_a_client_cannot_smuggle_the_other_proxys_headers(env: Env) -> None:
    """nginx and Traefik both pass the client's own headers on: behind Traefik a client could add
    X-Original-Method/-URI naming a request its key may make (and behind nginx X-Forwarded-Method/-Uri). A request
    naming the original request both ways, or a header twice, is refused, never guessed."""
    smuggled = [*traefik("DELETE", "/v1/servers/srv_1"), "X-Original-Method: GET", "X-Original-URI: /v1/servers"]
    r = ask(env, auth(env.reader), *smuggled)
    assert r.status == 400 and error(r) == "forward_auth_malformed"
    for headers in ([*nginx("GET", "/v1/servers"), "X-Forwarded-Method: DELETE"],
                    [*nginx("GET", "/v1/servers"), "X-Original-URI: /v1/teams"],
                    ["X-Original-URI: /v1/servers"], ["X-Forwarded-Uri: /v1/servers"], []):
        r = ask(env, auth(env.reader), *headers)
        assert r.status == 400 and error(r) == "forward_auth_malformed", headers


def test_nginx_gets_the_denial_body_in_a_header_too(env: Env) -> None:
    """nginx's auth_request reads only the head of the answer: the JSON body is repeated in
    X-Gateway-Error-Body, which docs/forward-auth.md's nginx configuration returns to the client."""
    r = ask(env, auth(env.reader), *nginx("DELETE", "/v1/servers/srv_1"))
    assert r.status == 403 and r.header("x-gateway-error-body") == r.body.decode()
    r = ask(env, auth(env.reader), *traefik("DELETE", "/v1/servers/srv_1"))
    assert r.status == 403 and r.header("x-gateway-error-body") is None  # Traefik passes the body itself


def test_test_keys_are_refused_unless_allowed(env: Env) -> None:
    """The gateway cannot route here: a test key must not reach the live upstream behind the proxy."""
    r = ask(env, auth(env.tester), *traefik("GET", "/v1/servers"))
    assert r.status == 403 and error(r) == "environment_unavailable"


def test_the_reverse_proxy_still_serves_every_other_path(env: Env) -> None:
    """Only the endpoint's path and the paths below it are answered there (a prefix, not a string prefix)."""
    env.upstream.clear()
    with env.gateway.client() as c:
        assert c.get("/v1/servers", headers={"Authorization": f"Bearer {env.reader['value']}"}).status_code == 200
        r = c.get(f"{PATH}x/v1/servers", headers={"Authorization": f"Bearer {env.reader['value']}",
                                                  "X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v1/servers"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_permissions"
    assert [rec["path"] for rec in env.upstream.records()] == ["/v1/servers"]


def test_path_test_keys_and_enabled_are_settings(tmp_path_factory: pytest.TempPathFactory,
                                                 fresh_upstream: Upstream) -> None:
    """Also: in the DeployAlly error format (Portuguese messages) nginx's copy of the body is the same JSON, in
    ASCII (RFC 9110 5.5: field values are not UTF-8 text)."""
    work = tmp_path_factory.mktemp("forward-auth-settings")
    moved = Gateway(work / "moved", fresh_upstream.url, settings={
        "trusted_proxies": ["127.0.0.1"], "forward_auth": {"path": "/auth/check", "test_keys": True},
        "error_format": "deployally"})
    off = Gateway(work / "off", fresh_upstream.url, settings={
        "trusted_proxies": ["127.0.0.1"], "forward_auth": {"enabled": False}})
    try:
        tester = moved.create_key("tester", "servers:read", "--env", "test")
        ok = exchange(moved.port, request("GET", "/auth/check", auth(tester), *traefik("GET", "/v1/servers"))).first
        assert ok.status == 200 and ok.header("x-auth-environment") == "test"
        refused = exchange(moved.port, request("GET", "/auth/check", *nginx("GET", "/v1/servers"))).first
        copy = refused.header("x-gateway-error-body") or ""
        assert refused.status == 401 and not refused.body.isascii() and copy.isascii()
        assert json.loads(copy) == refused.json() and refused.json()["success"] is False
        reader = off.create_key("reader", "servers:read")
        for gw, key, code in ((moved, tester, "FORBIDDEN"), (off, reader, "insufficient_permissions")):
            # Not the endpoint: the reverse proxy decides about the path itself, which no policy rule names.
            r = exchange(gw.port, request("GET", PATH, auth(key), *traefik("GET", "/v1/servers"))).first
            assert r.status == 403 and r.json()["error"]["code"] == code
    finally:
        moved.stop()
        off.stop()


def test_a_reload_reaches_the_endpoint(tmp_path_factory: pytest.TempPathFactory, fresh_upstream: Upstream) -> None:
    """SIGHUP: the new policy decides at once, and ops.access_log turned off silences the endpoint's lines too."""
    work = tmp_path_factory.mktemp("forward-auth-reload")
    gw = Gateway(work / "gw", fresh_upstream.url, settings={"trusted_proxies": ["127.0.0.1"]})
    try:
        key = gw.create_key("reader", "servers:read,teams:read")

        def decide(uri: str, rid: str) -> int:
            return exchange(gw.port, request("GET", PATH, auth(key), *traefik("GET", uri), f"X-Request-ID: {rid}"),
                            ).first.status

        def logged(rid: str) -> bool:
            return f'"request_id":"{rid}"' in gw.log()

        assert decide("/v1/teams", "before-reload") == 200
        assert wait(lambda: logged("before-reload"))
        config = yaml.safe_load(gw.config.read_text())
        policy = work / "policy.yaml"
        policy.write_text(yaml.safe_dump({"routes": [{"path": "/v1/servers/**", "methods": ["GET"],
                                                      "scopes": ["servers:read"]}]}))
        gw.config.write_text(yaml.safe_dump({**config, "policies": str(policy), "ops": {"access_log": False}}))
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        assert wait(lambda: decide("/v1/teams", "after-reload") == 403)
        assert decide("/v1/servers", "after-reload-allowed") == 200
        time.sleep(0.3)
        assert not logged("after-reload") and not logged("after-reload-allowed")
    finally:
        gw.stop()


def wait(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False

"""CORS (the Fetch standard's CORS protocol, https://fetch.spec.whatwg.org/#http-cors-protocol) over real
sockets: a real `gateway serve` in front of a real recording upstream, asked as a browser would ask.

Refused preflights get 403 without any Access-Control-* header (the browser's CORS check then fails); Starlette's
CORSMiddleware answers them 400, Envoy's CORS filter passes them on to the upstream. The gateway answers every
preflight itself, with no key, and never forwards one.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.procs import PYTHON, SECRET, Gateway, Upstream

APP = "https://app.example.com"
OTHER = "https://evil.example.net"
CORS = {"allow_origins": [APP, "http://localhost:3000"], "max_age": 300}


def _cors_headers(r: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in r.headers.items() if k.lower().startswith("access-control-")}


def _vary(r: httpx.Response) -> set[str]:
    return {t.strip().lower() for v in r.headers.get_list("vary") for t in v.split(",")}


@pytest.fixture
def cors_gateway(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> Gateway:
    return make_gateway(fresh_upstream.url, settings={"cors": CORS, "rate_limits": {
        "default_tier": "tiny", "tiers": {"tiny": {"per_minute": 2}}}})


def _preflight(c: httpx.Client, origin: str, method: str, headers: str | None = None) -> httpx.Response:
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        h["Access-Control-Request-Headers"] = headers
    return c.options("/v1/servers", headers=h)


def test_an_allowed_preflight_is_answered_by_the_gateway_without_a_key(cors_gateway: Gateway,
                                                                      fresh_upstream: Upstream) -> None:
    """Fetch 3.2.2 (HTTP requests: a CORS-preflight request carries Origin and Access-Control-Request-Method) and
    3.2.3 (HTTP responses: Access-Control-Allow-Origin, -Methods, -Headers, -Max-Age); 4.8 (CORS-preflight fetch:
    an ok status, the request's method and each of its headers listed)."""
    with cors_gateway.client() as c:
        r = _preflight(c, APP, "DELETE", "authorization, content-type, traceparent")
    assert r.status_code == 204, r.text
    h = _cors_headers(r)
    assert h["access-control-allow-origin"] == APP
    assert "DELETE" in [m.strip() for m in h["access-control-allow-methods"].split(",")]
    allowed = {t.strip().lower() for t in h["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "traceparent"} <= allowed
    assert h["access-control-max-age"] == "300"
    assert "access-control-allow-credentials" not in h  # allow_credentials is off by default
    assert "origin" in _vary(r)
    assert fresh_upstream.records() == []  # answered by the gateway, not forwarded


def test_a_refused_preflight_gets_no_cors_headers(cors_gateway: Gateway, fresh_upstream: Upstream) -> None:
    """Fetch 4.8 (CORS-preflight fetch) and 4.9 (CORS check): without an Access-Control-Allow-Origin matching
    the origin, or with the method or a header not allowed, the browser's fetch is a network error; the
    gateway answers 403 with no Access-Control-* header at all."""
    with cors_gateway.client() as c:
        refused = [
            _preflight(c, OTHER, "GET"),  # origin not allowed
            _preflight(c, "https://app.example.com.evil.net", "GET"),  # no prefix matching
            _preflight(c, "null", "GET"),  # opaque origin (sandboxed iframe, file:)
            _preflight(c, APP, "TRACE"),  # method not allowed
            _preflight(c, APP, "GET", "authorization, x-secret-thing"),  # one header not allowed
        ]
    for r in refused:
        assert r.status_code == 403, (r.request.headers, r.text)
        assert _cors_headers(r) == {}, r.request.headers
        assert r.json()["error"]["code"] == "cors_preflight_refused"
    assert fresh_upstream.records() == []


def test_actual_requests_and_error_answers_carry_the_cors_headers(cors_gateway: Gateway,
                                                                  fresh_upstream: Upstream) -> None:
    """Fetch 3.2.3 (Access-Control-Allow-Origin on the actual response, Access-Control-Expose-Headers naming
    the headers script may read) and 3.2.5 (CORS protocol and HTTP caches: Vary: Origin when the answer depends
    on Origin). The gateway's own refusals (401, 403, 429) carry them too, so a page can read why."""
    key = cors_gateway.create_key("reader", "servers:read")
    auth = {"Authorization": f"Bearer {key['value']}", "Origin": APP}
    with cors_gateway.client() as c:
        ok = c.get("/v1/servers/1", headers=auth)
        forbidden = c.get("/v1/teams", headers=auth)
        unauthorized = c.get("/v1/servers/1", headers={"Origin": APP})
        c.get("/v1/servers/1", headers=auth)
        limited = c.get("/v1/servers/1", headers=auth)
        other_options = c.options("/v1/servers/1", headers={"Origin": APP})  # not a preflight: the gate's
    assert [ok.status_code, forbidden.status_code, unauthorized.status_code, limited.status_code,
            other_options.status_code] == [200, 403, 401, 429, 401]
    for r in (ok, forbidden, unauthorized, limited, other_options):
        h = _cors_headers(r)
        assert h["access-control-allow-origin"] == APP, (r.status_code, h)
        exposed = {t.strip().lower() for t in h["access-control-expose-headers"].split(",")}
        assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after",
                "x-request-id"} <= exposed
        assert "origin" in _vary(r)
        assert len(r.headers.get_list("access-control-allow-origin")) == 1
    assert limited.headers["retry-after"] and limited.json()["error"]["code"]
    # the upstream still sees the Origin (it may have its own rules)
    sent = [dict((n.lower(), v) for n, v in rec["headers"]) for rec in fresh_upstream.records()]
    assert sent and all(s["origin"] == APP for s in sent)


def test_the_upstreams_own_cors_headers_are_replaced(cors_gateway: Gateway, fresh_upstream: Upstream) -> None:
    """Fetch 4.9 (CORS check): one Access-Control-Allow-Origin, the gateway's; an upstream's `*` next to it
    would fail the check (two values), and its own -Allow-Credentials must not reach a disallowed origin."""
    key = cors_gateway.create_key("reader", "servers:read")
    auth = {"Authorization": f"Bearer {key['value']}"}
    with cors_gateway.client() as c:
        mine = c.get("/v1/servers/__cors", headers={**auth, "Origin": APP})
        other = c.get("/v1/servers/__cors", headers={**auth, "Origin": OTHER})
    assert mine.status_code == other.status_code == 200 and mine.headers["x-upstream"] == "recording"
    assert mine.headers.get_list("access-control-allow-origin") == [APP]
    assert "access-control-allow-credentials" not in mine.headers
    assert "x-upstream" not in mine.headers["access-control-expose-headers"].lower()
    assert _cors_headers(other) == {}


def test_a_disallowed_or_missing_origin_gets_no_cors_headers_but_vary(cors_gateway: Gateway) -> None:
    """Fetch 3.2.5: a server whose answer depends on Origin sends Vary: Origin in all its answers, those to
    requests without Origin included; a disallowed origin gets no Access-Control-Allow-Origin (the browser
    blocks the read)."""
    key = cors_gateway.create_key("reader", "servers:read")
    auth = {"Authorization": f"Bearer {key['value']}"}
    with cors_gateway.client() as c:
        other = c.get("/v1/servers/1", headers={**auth, "Origin": OTHER})
        none = c.get("/v1/servers/1", headers=auth)
        denied = c.get("/v1/servers/1", headers={"Origin": OTHER})
    assert [other.status_code, none.status_code, denied.status_code] == [200, 200, 401]
    for r in (other, none, denied):
        assert _cors_headers(r) == {}
        assert "origin" in _vary(r)


def test_credentials_mode(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    """Fetch 3.2.3 and 4.9 (CORS check): with credentials, Access-Control-Allow-Origin must be the origin
    itself (never `*`) and Access-Control-Allow-Credentials exactly `true`."""
    gw = make_gateway(fresh_upstream.url, settings={"cors": {"allow_origins": [APP], "allow_credentials": True}})
    key = gw.create_key("reader", "servers:read")
    with gw.client() as c:
        pre = _preflight(c, APP, "GET", "authorization")
        r = c.get("/v1/servers/1", headers={"Authorization": f"Bearer {key['value']}", "Origin": APP})
    for resp in (pre, r):
        h = _cors_headers(resp)
        assert h["access-control-allow-origin"] == APP and h["access-control-allow-credentials"] == "true"


def test_wildcard_origin_without_credentials(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    """Fetch 3.2.3: `*` as Access-Control-Allow-Origin for requests without credentials; the answer is then the
    same for every origin, so no Vary: Origin is needed (3.2.5)."""
    gw = make_gateway(fresh_upstream.url, settings={"cors": {"allow_origins": ["*"]}})
    with gw.client() as c:
        pre = _preflight(c, "https://anyone.example", "POST", "authorization")
        r = c.get("/v1/servers/1", headers={"Origin": "https://anyone.example"})
    assert pre.status_code == 204 and r.status_code == 401
    for resp in (pre, r):
        assert _cors_headers(resp)["access-control-allow-origin"] == "*"
        assert "origin" not in _vary(resp)


def test_cors_off_by_default(gateway: Gateway, fresh_upstream: Upstream) -> None:
    """With `cors.allow_origins` empty (the default) a preflight is an OPTIONS request like any other: the gate
    answers it (401 without a key) and no answer carries a CORS header."""
    with gateway.client() as c:
        r = _preflight(c, APP, "GET")
    assert r.status_code == 401 and _cors_headers(r) == {}


@pytest.mark.parametrize(("cors", "named"), [
    ({"allow_origins": ["*"], "allow_credentials": True}, "cors.allow_origins"),
    ({"allow_origins": ["https://app.example.com/path"]}, "cors.allow_origins"),
    ({"allow_origins": ["null"]}, "cors.allow_origins"),
    ({"allow_origins": [APP], "allow_methods": ["GET POST"]}, "cors.allow_methods"),
    ({"allow_origins": [APP], "allow_headers": ["x bad"]}, "cors.allow_headers"),
    ({"allow_origins": [APP], "max_age": -1}, "cors.max_age"),
])
def test_bad_cors_settings_are_refused_at_load(tmp_path: Path, cors: dict[str, Any], named: str) -> None:
    """Fetch 3.2.3 (and 4.9, CORS check): `*` is not a wildcard for credentialed requests, so the pair is refused
    when the configuration is loaded, not found out in a browser; an origin is scheme://host[:port] (3.2.1)."""
    import yaml

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"store": {"url": f"sqlite:///{tmp_path / 'k.db'}"}, "cors": cors}))
    out = subprocess.run([PYTHON, "-m", "gateway", "serve", "--config", str(config)], capture_output=True, text=True,
                         env={"GATEWAY_SECRET": SECRET, "PATH": "/usr/bin:/bin"}, cwd=tmp_path, timeout=60)
    assert out.returncode == 2, out.stderr[-2000:]
    assert named in out.stderr and "Traceback" not in out.stderr, out.stderr

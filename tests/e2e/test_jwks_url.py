"""JWT keys from an identity provider's JWKS URL (``jwt.jwks_url``), through real gateway processes.

The provider is a real HTTP server on a loopback port, started here, serving a JWKS document (RFC 7517 5) the
tests rotate, counting the requests it gets, and stopped to play a provider that is down. Keys are chosen by
the token's ``kid`` header (RFC 7515 4.1.4); a JWK's ``alg`` (RFC 7517 4.4) limits the key to that algorithm.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.e2e.test_jwt import AUDIENCE, ISSUER, assert_refused, hand_made, jwk, pem
from tests.support.lifecycle import bearer, wait_for
from tests.support.procs import Gateway, Upstream, free_port

FLOOR = 2.0  # jwt.jwks_min_refresh_seconds in these tests
POLICY = """
routes:
  - {path: /v1/servers/**, methods: [GET], scopes: [servers:read], credentials: [api_key, jwt]}
"""


class Provider:
    """A JWKS endpoint on 127.0.0.1: ``keys`` is what it serves; ``requests`` counts what it was asked."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/.well-known/jwks.json"
        self.keys: list[dict[str, Any]] = []
        self.requests: list[float] = []
        self._server: ThreadingHTTPServer | None = None
        self.start()

    def start(self) -> None:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                provider.requests.append(time.monotonic())
                body = json.dumps({"keys": provider.keys}).encode()
                self.send_response(200 if self.path == "/.well-known/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _rsa() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY_A, KEY_B = _rsa(), _rsa()
KEY_EC = ec.generate_private_key(ec.SECP256R1())


def token(key: Any, kid: str, alg: str = "RS256", **extra: Any) -> str:
    now = int(time.time())
    claims = {"sub": "user-7", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600,
              "permissions": ["servers:read"], "jti": uuid.uuid4().hex, **extra}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture
def provider() -> Iterator[Provider]:
    p = Provider()
    p.keys = [jwk(KEY_A, "key-a", "RS256")]
    yield p
    p.stop()


@pytest.fixture
def start(tmp_path: Path, fresh_upstream: Upstream, provider: Provider) -> Iterator[Callable[..., Gateway]]:
    gateways: list[Gateway] = []
    (tmp_path / "policy.yaml").write_text(POLICY)

    def make(**jwt_settings: Any) -> Gateway:
        gw = Gateway(tmp_path / f"gw{len(gateways)}", fresh_upstream.url, {
            "policies": str(tmp_path / "policy.yaml"),
            "limits": {"auth_failures_per_minute": 0},  # these tests send refused tokens on purpose
            "ops": {"watch_policy": False},
            "jwt": {"enabled": True, "algorithms": ["RS256", "ES256"], "jwks_url": provider.url,
                    "jwks_min_refresh_seconds": FLOOR, "issuer": ISSUER, "audience": AUDIENCE, **jwt_settings},
        })
        gateways.append(gw)
        return gw

    yield make
    for gw in gateways:
        gw.stop()


def status(gw: Gateway, tok: str) -> int:
    with gw.client() as c:
        return c.get("/v1/servers", headers=bearer(tok)).status_code


def events(gw: Gateway, name: str) -> list[dict[str, Any]]:
    return [d for d in map(json.loads, filter(None, gw.log().splitlines())) if d.get("event") == name]


def test_keys_are_fetched_at_start_and_rotation_is_followed(start: Callable[..., Gateway],
                                                            provider: Provider) -> None:
    """A token of key A works; the provider rotates to key B alone: a B token names an unknown ``kid``, which
    sets off one fetch that this request waits for, and is accepted; A tokens are refused from then on (also one
    verified, and cached, before)."""
    gw = start()
    assert len(provider.requests) == 1, "one fetch at start-up"
    old = token(KEY_A, "key-a")
    assert status(gw, old) == 200
    provider.keys = [jwk(KEY_B, "key-b", "RS256")]
    time.sleep(FLOOR)  # past the floor since the start-up fetch
    assert status(gw, token(KEY_B, "key-b")) == 200
    assert len(provider.requests) == 2
    with gw.client() as c:
        assert_refused(c.get("/v1/servers", headers=bearer(old)))
        assert_refused(c.get("/v1/servers", headers=bearer(token(KEY_A, "key-a"))))
    assert [e["kids"] for e in events(gw, "jwks_keys")] == [["key-a"], ["key-b"]]


def test_unknown_kid_inside_the_floor_is_refused_without_a_fetch(start: Callable[..., Gateway],
                                                                 provider: Provider) -> None:
    gw = start(jwks_min_refresh_seconds=30)
    provider.keys = [jwk(KEY_B, "key-b", "RS256")]
    with gw.client() as c:
        assert_refused(c.get("/v1/servers", headers=bearer(token(KEY_B, "key-b"))))
    assert len(provider.requests) == 1, "the start-up fetch was less than the floor ago"
    assert status(gw, token(KEY_A, "key-a")) == 200, "and the keys fetched then still serve"


def test_a_flood_of_random_kids_costs_at_most_one_fetch_per_floor(start: Callable[..., Gateway],
                                                                  provider: Provider) -> None:
    gw = start()
    time.sleep(FLOOR)
    began = time.monotonic()
    before = len(provider.requests)
    forged = [token(KEY_B, f"kid-{uuid.uuid4().hex}") for _ in range(100)]

    def one(tok: str) -> int:
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            return c.get("/v1/servers", headers=bearer(tok)).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, forged))
    elapsed = time.monotonic() - began
    assert statuses == [401] * 100
    fetches = len(provider.requests) - before
    assert 1 <= fetches <= 1 + int(elapsed / FLOOR), (fetches, elapsed)
    assert status(gw, token(KEY_A, "key-a")) == 200


def test_provider_down_cached_keys_keep_working(start: Callable[..., Gateway], provider: Provider) -> None:
    gw = start()
    assert status(gw, token(KEY_A, "key-a")) == 200
    provider.stop()
    time.sleep(FLOOR)
    # An unknown kid makes the gateway try the provider, which is away: refused, logged, counted.
    with gw.client() as c:
        assert_refused(c.get("/v1/servers", headers=bearer(token(KEY_B, "key-b"))))
    assert wait_for(lambda: bool(events(gw, "jwks_fetch_failed")))
    [failed] = events(gw, "jwks_fetch_failed")
    assert failed["keys"] == 1 and failed["url"] == provider.url
    # A fresh token of the cached key: a real signature check, against the keys fetched before.
    assert status(gw, token(KEY_A, "key-a")) == 200
    with gw.client() as c:
        metrics = c.get("/metrics").text
    assert 'gateway_jwks_fetches_total{result="failure"} 1.0' in metrics
    assert 'gateway_jwks_fetches_total{result="success"} 1.0' in metrics
    # Back: the next fetch (after the floor) takes the provider's new set.
    provider.keys = [jwk(KEY_A, "key-a", "RS256"), jwk(KEY_B, "key-b", "RS256")]
    provider.start()
    time.sleep(FLOOR)
    assert status(gw, token(KEY_B, "key-b")) == 200


def test_background_refresh_follows_the_provider(start: Callable[..., Gateway], provider: Provider) -> None:
    """Every ``jwt.jwks_refresh_seconds`` the set is fetched again, without a token asking."""
    gw = start(jwks_refresh_seconds=FLOOR)
    began = time.monotonic()
    provider.keys = [jwk(KEY_B, "key-b", "RS256")]
    assert wait_for(lambda: len(provider.requests) >= 2, timeout=FLOOR * 4)
    assert wait_for(lambda: len(events(gw, "jwks_keys")) == 2)
    fetches = len(provider.requests)
    assert status(gw, token(KEY_B, "key-b")) == 200
    assert fetches <= 2 + (time.monotonic() - began) / FLOOR, "one fetch per interval, no more"


def test_sighup_to_another_jwks_url_fetches_it(start: Callable[..., Gateway], provider: Provider) -> None:
    """A reload naming another provider: its keys are fetched (a token meanwhile waits for that fetch) and the
    first provider is not asked again."""
    gw = start()
    other = Provider()
    try:
        other.keys = [jwk(KEY_B, "key-b", "RS256")]
        config = yaml.safe_load(gw.config.read_text())
        config["jwt"]["jwks_url"] = other.url
        gw.config.write_text(yaml.safe_dump(config))
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: bool(events(gw, "reload")))
        assert status(gw, token(KEY_B, "key-b")) == 200
        with gw.client() as c:
            assert_refused(c.get("/v1/servers", headers=bearer(token(KEY_A, "key-a"))))
        assert len(other.requests) == 1 and len(provider.requests) == 1
    finally:
        other.stop()


def test_alg_from_each_jwk_and_no_confusion(start: Callable[..., Gateway], provider: Provider) -> None:
    """A JWK's ``alg`` limits its key to that algorithm (RFC 7517 4.4); ``alg: none`` (RFC 7518 3.6) and an HS256
    token "signed" with a provider's RSA public key as the HMAC secret are refused."""
    provider.keys = [jwk(KEY_A, "key-a", "RS256"), jwk(KEY_EC, "key-ec", "ES256"),
                     {**jwk(KEY_B, "key-b", "RS256"), "alg": "RS384"}]
    gw = start(algorithms=["RS256", "RS384", "ES256", "HS256"], secret="s" * 40)
    assert status(gw, token(KEY_EC, "key-ec", "ES256")) == 200
    assert status(gw, token(KEY_B, "key-b", "RS384")) == 200
    with gw.client() as c:
        for bad in (token(KEY_B, "key-b", "RS256"),  # the JWK says RS384
                    hand_made({"alg": "none", "kid": "key-a"}, {"sub": "x", "exp": time.time() + 60}, None),
                    hand_made({"alg": "HS256", "kid": "key-a", "typ": "JWT"},
                              {"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60,
                               "permissions": ["servers:read"]}, pem(KEY_A))):
            assert_refused(c.get("/v1/servers", headers=bearer(bad)))


def test_sighup_applies_a_changed_audience_and_keeps_the_keys(start: Callable[..., Gateway],
                                                               provider: Provider) -> None:
    gw = start()
    assert status(gw, token(KEY_A, "key-a")) == 200
    config = yaml.safe_load(gw.config.read_text())
    config["jwt"]["audience"] = "billing"
    gw.config.write_text(yaml.safe_dump(config))
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: bool(events(gw, "reload")))
    [reload] = events(gw, "reload")
    assert reload.get("restart_needed_for") is None and reload["jwt_reloaded"] is True
    with gw.client() as c:
        assert_refused(c.get("/v1/servers", headers=bearer(token(KEY_A, "key-a"))))
    assert status(gw, token(KEY_A, "key-a", aud="billing")) == 200
    assert len(provider.requests) == 1, "the same JWKS URL: the keys fetched before are kept"


def test_sighup_with_a_bad_jwt_section_keeps_the_running_verifier(start: Callable[..., Gateway],
                                                                 provider: Provider) -> None:
    gw = start()
    config = yaml.safe_load(gw.config.read_text())
    config["jwt"]["jwks_url"] = "http://idp.example/jwks.json"  # plain http off loopback
    gw.config.write_text(yaml.safe_dump(config))
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: bool(events(gw, "reload_failed")))
    assert "jwt.jwks_url" in events(gw, "reload_failed")[0]["reason"]
    assert status(gw, token(KEY_A, "key-a")) == 200


def test_a_hung_provider_is_bounded_and_blocks_no_other_request(start: Callable[..., Gateway],
                                                                provider: Provider) -> None:
    """A provider that accepts the connection and never answers: the token waiting for the fetch is refused
    after ``jwt.jwks_timeout_seconds``, and requests with known keys are answered meanwhile."""
    gw = start(jwks_timeout_seconds=1.5)
    provider.stop()
    listener = socket.create_server(("127.0.0.1", provider.port))  # accepts (backlog), never answers
    try:
        time.sleep(FLOOR)
        result: dict[str, Any] = {}

        def unknown() -> None:
            began = time.monotonic()
            with httpx.Client(base_url=gw.url, timeout=20) as c:
                result["status"] = c.get("/v1/servers", headers=bearer(token(KEY_B, "key-b"))).status_code
            result["took"] = time.monotonic() - began

        waiting = threading.Thread(target=unknown)
        waiting.start()
        time.sleep(0.3)  # the fetch is under way
        began = time.monotonic()
        assert status(gw, token(KEY_A, "key-a")) == 200
        assert time.monotonic() - began < 1.0, "a known key must not wait for the provider"
        waiting.join(20)
        assert result["status"] == 401 and 1.0 < result["took"] < 5.0, result
        assert wait_for(lambda: bool(events(gw, "jwks_fetch_failed")))
        assert "Timeout" in events(gw, "jwks_fetch_failed")[0]["reason"]
    finally:
        listener.close()

"""Front door 2, the ASGI middleware: a real FastAPI (or Starlette) application with the gate inside it.

Each behaviour runs over two transports (the ``door`` fixture):

- ``uvicorn``: a real uvicorn server in a thread on a free port, reached over a real socket, the middleware
  added with ``app.add_middleware(AuthMiddleware, ...)``; the server's lifespan starts and stops the gate;
- ``asgi``: httpx's ``ASGITransport``, the application wrapped directly (``AuthMiddleware(app, ...)``); that
  transport sends no lifespan, so the gate starts on the first request and ``aclose()`` stops it.

Keys are made with the project's own ``gateway.keys.service.create_key`` in a temporary SQLite store, which
the middleware then reads. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import jwt
import pytest
import uvicorn
import yaml
from fastapi import Depends, FastAPI, Security
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from gateway import AuthMiddleware, GatewayUser, RequireScope
from gateway.config.settings import ConfigError, Settings, load_settings
from gateway.keys.backends import open_store
from gateway.keys.hashing import load_pepper
from gateway.keys.record import KeyRecord
from gateway.keys.service import create_key, revoke_key
from tests.support.core import assert_deployally_error, assert_deployerp_error, bearer, bearer_error
from tests.support.procs import PYTHON, ROOT, free_port

SECRET = "middleware-secret-0123456789abcdef012345"
POLICY = """
routes:
  - {path: /v1/servers/**, methods: [GET, HEAD], scopes: [servers:read]}
  - {path: /v1/servers/**, methods: [POST],      scopes: [servers:write]}
  - {path: /public/**,     methods: [GET],       public: true}
scopes: [instances:read, instances:write, reports:read]
"""


# --- the applications -----------------------------------------------------------------------------------------

InstanceWriter = Annotated[GatewayUser, Security(RequireScope("instances:write"))]


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/servers")
    async def servers(request: Request):
        user = request.user
        return JSONResponse({
            "key_id": user.key_id, "name": user.name, "owner": user.owner, "created_by": user.created_by,
            "environment": user.environment, "permissions": sorted(user.permissions),
            "display_name": user.display_name, "identity": user.identity,
            "is_authenticated": user.is_authenticated, "scopes": request.auth.scopes,
            "principal": request.scope["gateway.principal"].record.id,
        }, headers={"x-app": "servers"})

    @app.post("/v1/servers")
    async def upload(request: Request):
        return {"bytes": len(await request.body())}

    @app.get("/public/ping")
    async def ping(request: Request):
        return {"is_authenticated": request.user.is_authenticated, "scopes": request.auth.scopes}

    @app.get("/instances", dependencies=[Depends(RequireScope("instances:read"))])
    async def instances():
        return {"instances": []}

    @app.post("/instances")
    async def create_instance(user: InstanceWriter):
        return {"created_by_key": user.key_id}

    @app.get("/me")
    async def me(request: Request):
        user = request.user
        return {"key_id": user.key_id, "subject": user.subject, "name": user.name, "owner": user.owner,
                "identity": user.identity, "environment": user.environment, "scopes": request.auth.scopes}

    @app.websocket("/v1/servers/stream")
    async def stream(websocket: WebSocket):
        await websocket.accept()
        await websocket.send_json({"key_id": websocket.user.key_id})
        await websocket.close()

    return app


def starlette_app() -> Starlette:
    @requires("reports:read")
    async def reports(request: Request) -> JSONResponse:
        return JSONResponse({"reports": [], "user": request.user.display_name})

    return Starlette(routes=[Route("/reports", reports)])


# --- the store, the settings and the keys ---------------------------------------------------------------------


class Work:
    """A temporary directory with the policy, the SQLite store and the settings every test starts from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "policy.yaml").write_text(POLICY)
        self.base: dict[str, Any] = {
            "store": {"url": f"sqlite:///{path / 'keys.db'}"},
            "policies": str(path / "policy.yaml"),
            "secret": SECRET,
            "usage": {"flush_seconds": 3600},  # only the flush at the stop writes: the lifespan test sees it
            "cache": {"ttl_seconds": 0.2},
        }
        self.settings = self.make()

    def make(self, **overrides: Any) -> Settings:
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in self.base.items()}
        for k, v in overrides.items():
            if isinstance(v, dict) and isinstance(data.get(k), dict):
                data[k] = {**data[k], **v}
            else:
                data[k] = v
        return load_settings(None, environ={}, overrides=data)

    def key(self, *permissions: str, settings: Settings | None = None, **kwargs: Any) -> tuple[str, KeyRecord]:
        settings = settings or self.settings
        pepper, _ = load_pepper(settings)

        async def make() -> tuple[str, KeyRecord]:
            store = open_store(settings)
            try:
                return await create_key(store, pepper, settings.key_format, name=kwargs.pop("name", "billing-app"),
                                        permissions=list(permissions), created_by="alice", **kwargs)
            finally:
                await store.close()

        return asyncio.run(make())

    def _with_store(self, fn: Callable[[Any], Any]) -> Any:
        async def run() -> Any:
            store = open_store(self.settings)
            try:
                return await fn(store)
            finally:
                await store.close()

        return asyncio.run(run())

    def revoke(self, key_id: str) -> None:
        self._with_store(lambda store: revoke_key(store, key_id))

    def record(self, key_id: str) -> KeyRecord:
        return self._with_store(lambda store: store.get(key_id))  # type: ignore[no-any-return]


@pytest.fixture
def work(tmp_path: Path) -> Work:
    return Work(tmp_path)


# --- the two transports ---------------------------------------------------------------------------------------


class UvicornDoor:
    """The application served by a real uvicorn server (lifespan on) in a thread with its own event loop."""

    kind = "uvicorn"

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # proxy_headers off: the client address is the socket's (uvicorn would otherwise believe
        # X-Forwarded-For from 127.0.0.1).
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, lifespan="on", log_level="warning",
                                proxy_headers=False)
        self.server = uvicorn.Server(config)
        self.leftover: set[asyncio.Task[Any]] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start: {self.error!r}")
            time.sleep(0.01)
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self.server.serve())
            self.leftover = asyncio.all_tasks(loop)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            loop.close()

    def request(self, method: str, path: str, chunks: list[bytes] | None = None, **kwargs: Any) -> httpx.Response:
        if chunks is not None:
            kwargs["content"] = iter(chunks)
        return self.client.request(method, path, **kwargs)

    def close(self) -> None:
        if not self.thread.is_alive():
            return
        self.client.close()
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "uvicorn did not stop"


class ASGIDoor:
    """The application wrapped directly and driven through httpx's ASGITransport on an event loop of its own."""

    kind = "asgi"

    def __init__(self, app: AuthMiddleware, client: tuple[str, int] = ("127.0.0.1", 50000)) -> None:
        self.mw = app
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=client),
                                        base_url="http://testserver", timeout=10)
        self.leftover: set[asyncio.Task[Any]] | None = None

    def request(self, method: str, path: str, chunks: list[bytes] | None = None, **kwargs: Any) -> httpx.Response:
        if chunks is not None:
            async def body() -> AsyncIterator[bytes]:
                for chunk in chunks:
                    yield chunk

            kwargs["content"] = body()
        return self.loop.run_until_complete(self.client.request(method, path, **kwargs))

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.run_until_complete(self.client.aclose())
        self.loop.run_until_complete(self.mw.aclose())
        self.leftover = asyncio.all_tasks(self.loop)
        self.loop.close()


Door = UvicornDoor | ASGIDoor


@pytest.fixture(params=["uvicorn", "asgi"])
def door(request: pytest.FixtureRequest, work: Work) -> Iterator[Callable[..., Door]]:
    """``door(app_factory=fastapi_app, settings=None, client=..., **middleware_options)``: the application with
    the middleware, served over this test's transport."""
    opened: list[Door] = []

    def open_door(app_factory: Callable[[], Any] = fastapi_app, settings: Settings | None = None,
                  client: tuple[str, int] = ("127.0.0.1", 50000), **options: Any) -> Door:
        settings = settings or work.settings
        app = app_factory()
        d: Door
        if request.param == "uvicorn":
            app.add_middleware(AuthMiddleware, settings=settings, **options)
            d = UvicornDoor(app)
        else:
            d = ASGIDoor(AuthMiddleware(app, settings=settings, **options), client)
        opened.append(d)
        return d

    yield open_door
    for d in opened:
        d.close()
        assert not d.leftover, f"tasks left running: {d.leftover}"


# --- authentication -------------------------------------------------------------------------------------------


def test_no_key_is_refused_401_with_a_bearer_challenge(door: Callable[..., Door]) -> None:
    """RFC 6750 3.1: a request without credentials gets ``WWW-Authenticate: Bearer`` with no error attribute;
    a bad credential gets ``error="invalid_token"``. The application is not reached."""
    d = door()
    resp = d.request("GET", "/v1/servers")
    assert_deployerp_error(resp, "authentication_required")
    assert bearer_error(resp) is None
    assert "x-app" not in resp.headers
    bad = d.request("GET", "/v1/servers", headers=bearer("dep_live_notarealkey"))
    assert_deployerp_error(bad, "invalid_token")
    assert bearer_error(bad) == "invalid_token"


def test_valid_key_reaches_the_endpoint_with_user_and_auth(door: Callable[..., Door], work: Work) -> None:
    """``request.user`` is a GatewayUser built from the key's record; ``request.auth.scopes`` its permissions,
    sorted, plus the policy's scopes its wildcards grant (for Starlette's exact ``@requires``)."""
    value, record = work.key("servers:read", "instances:*")
    d = door()
    resp = d.request("GET", "/v1/servers", headers=bearer(value))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-app"] == "servers"
    assert resp.json() == {
        "key_id": record.id, "name": "billing-app", "owner": "alice", "created_by": "alice",
        "environment": "live", "permissions": ["instances:*", "servers:read"], "display_name": "billing-app",
        "identity": record.id, "is_authenticated": True,
        "scopes": ["instances:*", "instances:read", "instances:write", "servers:read"],
        "principal": record.id,
    }
    assert value not in resp.text


def test_public_route_needs_no_key(door: Callable[..., Door]) -> None:
    d = door()
    resp = d.request("GET", "/public/ping")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"is_authenticated": False, "scopes": []}


def test_requires_on_a_starlette_endpoint(door: Callable[..., Door], work: Work) -> None:
    """Starlette's own ``@requires("reports:read")`` reads ``request.auth.scopes``: the exact scope and a
    wildcard over a scope the policy names both pass; another scope gets Starlette's own 403."""
    exact, _ = work.key("reports:read", name="exact")
    wildcard, _ = work.key("reports:*", name="wildcard")
    other, _ = work.key("servers:read", name="other")
    d = door(starlette_app, unmatched="authenticate")
    ok = d.request("GET", "/reports", headers=bearer(exact))
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"reports": [], "user": "exact"}
    assert d.request("GET", "/reports", headers=bearer(wildcard)).status_code == 200
    refused = d.request("GET", "/reports", headers=bearer(other))
    assert refused.status_code == 403
    assert_deployerp_error(d.request("GET", "/reports"), "authentication_required")


# --- scopes checked in code -----------------------------------------------------------------------------------


def test_fastapi_dependency_checks_scopes_with_wildcards(door: Callable[..., Door], work: Work) -> None:
    """``unmatched="authenticate"``: a path no policy rule names needs only a valid key, and
    ``RequireScope`` on the endpoint checks the scope with the gateway's wildcard rules; a missing scope is
    the gateway's 403 JSON, not FastAPI's ``{"detail": ...}``."""
    reader, _ = work.key("instances:read", name="reader")
    wildcard, record = work.key("instances:*", name="wildcard")
    everything, _ = work.key("*", name="everything")
    other, _ = work.key("servers:read", name="other")
    d = door(unmatched="authenticate")
    assert d.request("GET", "/instances", headers=bearer(reader)).json() == {"instances": []}
    assert d.request("GET", "/instances", headers=bearer(everything)).status_code == 200
    assert_deployerp_error(d.request("GET", "/instances", headers=bearer(other)), "insufficient_permissions")
    assert_deployerp_error(d.request("POST", "/instances", headers=bearer(reader)), "insufficient_permissions")
    created = d.request("POST", "/instances", headers=bearer(wildcard))
    assert created.status_code == 200, created.text
    assert created.json() == {"created_by_key": record.id}
    assert_deployerp_error(d.request("GET", "/instances"), "authentication_required")
    # A policy route still needs its own scopes.
    assert_deployerp_error(d.request("GET", "/v1/servers", headers=bearer(reader)), "insufficient_permissions")


def test_unmatched_paths_are_denied_by_default(door: Callable[..., Door], work: Work) -> None:
    """Without ``unmatched="authenticate"`` the middleware follows the policy as the proxy does: a path no
    rule matches is refused, whatever the key holds."""
    everything, _ = work.key("*")
    d = door()
    assert_deployerp_error(d.request("GET", "/instances", headers=bearer(everything)), "insufficient_permissions")


def test_policy_route_denies_a_missing_scope(door: Callable[..., Door], work: Work) -> None:
    value, _ = work.key("instances:read")
    d = door()
    resp = d.request("GET", "/v1/servers", headers=bearer(value))
    assert_deployerp_error(resp, "insufficient_permissions")
    assert "x-app" not in resp.headers


def test_jwt_subject_is_the_user(door: Callable[..., Door], work: Work) -> None:
    """With ``jwt.enabled``, a JWT (RFC 7519) is the credential where a key is not: ``request.user`` carries its
    subject, no key id, and the identity ``jwt:<subject>``."""
    secret = "jwt-secret-0123456789abcdef0123456789abcdef"
    settings = work.make(jwt={"enabled": True, "secret": secret})
    token = jwt.encode({"sub": "dana", "permissions": ["reports:read"], "exp": int(time.time()) + 300}, secret,
                       algorithm="HS256")
    d = door(settings=settings, unmatched="authenticate")
    resp = d.request("GET", "/me", headers=bearer(token))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"key_id": None, "subject": "dana", "name": "dana", "owner": None,
                           "identity": "jwt:dana", "environment": "live", "scopes": ["reports:read"]}
    expired = jwt.encode({"sub": "dana", "permissions": [], "exp": int(time.time()) - 10}, secret, algorithm="HS256")
    assert_deployerp_error(d.request("GET", "/me", headers=bearer(expired)), "expired_token")


def test_test_keys_are_refused_unless_allowed(door: Callable[..., Door], work: Work) -> None:
    """A test key never reaches live data: refused 403 ``environment_unavailable`` as the proxy refuses it
    without a test upstream; with ``allow_test_keys=True`` it passes and ``request.user.environment`` says
    ``test``."""
    value, _ = work.key("reports:read", environment="test")
    refused = door(unmatched="authenticate").request("GET", "/me", headers=bearer(value))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "environment_unavailable"
    allowed = door(unmatched="authenticate", allow_test_keys=True).request("GET", "/me", headers=bearer(value))
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["environment"] == "test"


# --- network, rate limits, revocation -------------------------------------------------------------------------


def test_ip_allowlist(door: Callable[..., Door], work: Work) -> None:
    """A key allowed only from 10.0.0.0/8 is refused from 127.0.0.1 (the socket peer over uvicorn) and
    accepted from 10.1.2.3 (the client ASGITransport declares)."""
    value, _ = work.key("servers:read", allowed_ips=["10.0.0.0/8"])
    local, _ = work.key("servers:read", allowed_ips=["127.0.0.0/8"], name="local")
    d = door()
    assert_deployerp_error(d.request("GET", "/v1/servers", headers=bearer(value)), "ip_restricted")
    assert d.request("GET", "/v1/servers", headers=bearer(local)).status_code == 200
    if d.kind == "asgi":
        far = door(client=("10.1.2.3", 40000))
        assert far.request("GET", "/v1/servers", headers=bearer(value)).status_code == 200
        assert_deployerp_error(far.request("GET", "/v1/servers", headers=bearer(local)), "ip_restricted")


def test_rate_limit_headers_on_the_apps_response_and_429(door: Callable[..., Door], work: Work) -> None:
    """The ``limited`` tier (10 a minute): each answer of the application carries the rate-limit headers next
    to its own; the 11th request is refused 429 with Retry-After (RFC 6585 4) before the application."""
    value, _ = work.key("servers:read", rate_limit_tier="limited")
    d = door()
    remaining = []
    for _ in range(10):
        resp = d.request("GET", "/v1/servers", headers=bearer(value))
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-app"] == "servers"
        assert resp.headers["x-ratelimit-limit"] == "10"
        remaining.append(int(resp.headers["x-ratelimit-remaining"]))
    assert remaining == list(range(9, -1, -1))
    over = d.request("GET", "/v1/servers", headers=bearer(value))
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(over.headers["retry-after"]) >= 1
    assert "x-app" not in over.headers


def test_debug_headers_when_asked(door: Callable[..., Door], work: Work) -> None:
    value, record = work.key("servers:read")
    d = door()
    resp = d.request("GET", "/v1/servers", headers={**bearer(value), "X-Debug-Auth": "true"})
    assert resp.status_code == 200
    assert resp.headers["x-auth-key-id"] == record.id
    assert resp.headers["x-auth-ip-check"] == "not_configured"
    assert "x-auth-key-id" not in d.request("GET", "/v1/servers", headers=bearer(value)).headers


def test_revoked_key_is_refused(door: Callable[..., Door], work: Work) -> None:
    """Revoked in the store (as ``gateway keys revoke`` does), the key is refused once the cache entry's TTL
    (0.2 s here) has run out."""
    value, record = work.key("servers:read")
    d = door()
    assert d.request("GET", "/v1/servers", headers=bearer(value)).status_code == 200
    work.revoke(record.id)
    time.sleep(0.3)
    assert_deployerp_error(d.request("GET", "/v1/servers", headers=bearer(value)), "invalid_token")


def test_body_over_the_route_limit_is_413(door: Callable[..., Door], work: Work) -> None:
    """A declared Content-Length over the route's limit is refused before the application runs; a chunked
    body is counted as the application reads it and refused once past the limit, with the gateway's JSON."""
    value, _ = work.key("servers:write")
    d = door(settings=work.make(limits={"body_bytes_per_route": {"/v1/servers/**": 10}}))
    auth = bearer(value)
    assert d.request("POST", "/v1/servers", headers=auth, content=b"12345").json() == {"bytes": 5}
    declared = d.request("POST", "/v1/servers", headers=auth, content=b"x" * 20)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "payload_too_large"
    assert d.request("POST", "/v1/servers", headers=auth, chunks=[b"123", b"45"]).json() == {"bytes": 5}
    chunked = d.request("POST", "/v1/servers", headers=auth, chunks=[b"x" * 8, b"x" * 8, b"x" * 8])
    assert chunked.status_code == 413, chunked.text
    assert chunked.json()["error"]["code"] == "payload_too_large"
    assert chunked.headers["connection"] == "close"


def test_deployally_error_format(door: Callable[..., Door], work: Work) -> None:
    """``error_format: deployally``: the gate's refusals and RequireScope's alike."""
    settings = work.make(error_format="deployally", key_format={"live": "da_", "test": "da_test_"})
    value, _ = work.key("servers:read", settings=settings)
    d = door(settings=settings, unmatched="authenticate")
    assert_deployally_error(d.request("GET", "/v1/servers"), 401)
    assert_deployally_error(d.request("GET", "/instances", headers=bearer(value)), 403)
    assert d.request("GET", "/v1/servers", headers=bearer(value)).status_code == 200


# --- lifespan -------------------------------------------------------------------------------------------------


def test_stop_flushes_usage_and_leaves_no_task(door: Callable[..., Door], work: Work) -> None:
    """The lifespan shutdown (uvicorn) or ``aclose()`` (ASGITransport) stops the gate's service: the usage
    recorder's last flush writes ``last_used_at`` (flush_seconds is an hour here, so only that flush can)
    and no task of it is left on the loop (checked by the fixture for every test)."""
    value, record = work.key("servers:read")
    d = door()
    assert d.request("GET", "/v1/servers", headers=bearer(value)).status_code == 200
    assert work.record(record.id).last_used_at is None
    d.close()
    assert not d.leftover, d.leftover
    used = work.record(record.id)
    assert used.last_used_at is not None and used.request_count == 1


def test_lifespan_starts_the_gate_before_the_app_and_stops_it_after(work: Work) -> None:
    """Driven message by message: the gate's service runs before the application hears of the startup and is
    stopped only when the application's shutdown has completed."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            seen.append(f"{message['type']} service={'on' if mw.service is not None else 'off'}")
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    mw = AuthMiddleware(app, settings=work.settings)

    async def run() -> list[str]:
        inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        sent: list[str] = []

        async def send(message: dict[str, str]) -> None:
            sent.append(f"{message['type']} service={'on' if mw.service is not None else 'off'}")

        await inbox.put({"type": "lifespan.startup"})
        await inbox.put({"type": "lifespan.shutdown"})
        await mw({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return sent

    sent = asyncio.run(run())
    assert seen == ["lifespan.startup service=on", "lifespan.shutdown service=on"]
    assert sent == ["lifespan.startup.complete service=on", "lifespan.shutdown.complete service=off"]


def test_requests_after_aclose_are_503(work: Work) -> None:
    """After ``aclose()`` the gate is stopped: a request is answered 503 ``shutting_down`` (not started again,
    which would leave a service nobody stops)."""
    value, _ = work.key("servers:read")
    d = ASGIDoor(AuthMiddleware(fastapi_app(), settings=work.settings))
    try:
        assert d.request("GET", "/v1/servers", headers=bearer(value)).status_code == 200
        d.loop.run_until_complete(d.mw.aclose())
        late = d.request("GET", "/v1/servers", headers=bearer(value))
        assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
        assert d.mw.service is None
    finally:
        d.close()
    assert not d.leftover


# --- WebSocket ------------------------------------------------------------------------------------------------


@pytest.fixture
def ws_door(work: Work) -> Iterator[UvicornDoor]:
    app = fastapi_app()
    app.add_middleware(AuthMiddleware, settings=work.settings)
    d = UvicornDoor(app)
    yield d
    d.close()


def test_websocket_handshake_is_authenticated(ws_door: UvicornDoor, work: Work) -> None:
    """The handshake (a GET, RFC 6455 4.1) goes through the gate like any request: refused with the gate's
    status and JSON body (the ASGI WebSocket denial response uvicorn supports), accepted with the key's
    identity in ``websocket.user`` and the rate-limit headers on the 101 answer."""
    value, record = work.key("servers:read")
    url = f"ws://127.0.0.1:{ws_door.port}/v1/servers/stream"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=10).close()
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body)["error"]["code"] == "authentication_required"
    with connect(url, additional_headers=bearer(value), open_timeout=10) as ws:
        assert ws.response is not None and ws.response.headers["x-ratelimit-limit"] == "100"
        assert json.loads(ws.recv(timeout=10)) == {"key_id": record.id}


# --- configuration --------------------------------------------------------------------------------------------


def test_config_file_with_environment_overrides(tmp_path: Path, work: Work) -> None:
    """``config=`` reads the file as ``gateway serve --config`` does: ``GATEWAY_*`` variables override it
    (here the error format), and ``from gateway import AuthMiddleware`` does not import the middleware until
    it is asked for."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in work.base.items()}))
    script = f"""
import sys, gateway
assert "gateway.doors.middleware" not in sys.modules and "gateway.app" not in sys.modules
import asyncio, httpx
from fastapi import FastAPI
from gateway import AuthMiddleware
mw = AuthMiddleware(FastAPI(), config={str(config)!r})
async def main():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://t") as c:
        r = await c.get("/v1/servers")
    await mw.aclose()
    print(r.status_code, r.text)
asyncio.run(main())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_ERROR_FORMAT"] = "deployally"
    out = subprocess.run([PYTHON, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    status, body = out.stdout.split(" ", 1)
    assert status == "401"
    assert json.loads(body)["success"] is False


def test_bad_configuration_is_refused_naming_the_field(work: Work, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**work.base, "error_format": "json"}))
    with pytest.raises(ConfigError, match="error_format"):
        AuthMiddleware(FastAPI(), config=str(config))
    with pytest.raises(ConfigError, match="not found"):
        AuthMiddleware(FastAPI(), config=str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="unmatched"):
        AuthMiddleware(FastAPI(), settings=work.settings, unmatched="allow")
    with pytest.raises(TypeError, match="config="):
        AuthMiddleware(FastAPI())
    with pytest.raises(ValueError, match="not a scope"):
        RequireScope("Servers Read")


# --- the documented example -----------------------------------------------------------------------------------


def _doc_files(doc: str) -> dict[str, str]:
    """The files of docs/middleware.md's complete example: each fenced block right after "`name`:"."""
    import re

    return dict(re.findall(r"`([\w.]+\.(?:py|yaml))`(?: \([^)]*\))?:\n\n```\w+\n(.*?)```", doc, re.S))


def test_the_documented_example_runs_as_written(tmp_path: Path) -> None:
    """docs/middleware.md's app.py, config.yaml and policy.yaml, written out as they are; the key made with the
    documented ``gateway keys create`` line; the app served by ``uvicorn app:app --lifespan on`` in a
    subprocess; then every request of the console session, with the answer the doc shows."""
    import re
    import shlex

    doc = (ROOT / "docs" / "middleware.md").read_text(encoding="utf-8")
    files = _doc_files(doc)
    assert set(files) == {"app.py", "config.yaml", "policy.yaml"}, set(files)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    (create,) = [line for line in re.findall(r"^gateway keys create .*$", doc, re.M)]
    out = subprocess.run([PYTHON, "-m", "gateway", *shlex.split(create)[1:], "--json"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    key = json.loads(out.stdout)
    port = free_port()
    (serve,) = re.findall(r"^uvicorn app:app .*$", doc, re.M)
    server = subprocess.Popen([PYTHON, "-m", *shlex.split(serve), "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        from tests.support.procs import wait_port

        wait_port(port, server)
        session = re.search(r"```console\n(.*?)```", doc, re.S)
        assert session is not None
        lines = session.group(1).splitlines()
        pairs = [(lines[i][2:], lines[i + 1]) for i in range(0, len(lines), 2)]
        assert len(pairs) >= 6
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for command, shown in pairs:
                method = "POST" if "-X POST" in command else "GET"
                path = re.search(r"localhost:8000(\S*)", command).group(1)  # type: ignore[union-attr]
                headers = bearer(key["value"]) if "$KEY" in command else {}
                resp = client.request(method, path, headers=headers)
                if "| grep -i " in command:
                    name = command.rsplit(" ", 1)[1]
                    assert resp.status_code == 200, (command, resp.text)
                    assert f"{name}: {resp.headers[name]}" == shown, command
                else:
                    assert resp.text == shown.replace("key_...", key["id"]), command
    finally:
        server.terminate()
        logs = server.communicate(timeout=20)[0].decode(errors="replace")
    assert "Application shutdown complete" in logs, logs
    assert key["value"] not in logs

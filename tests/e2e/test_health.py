"""/healthz and /readyz over real sockets: a real `gateway serve` process (or, where a test must reach inside
the running app, the real GatewayApp under a real uvicorn server in a thread), a real SQLite file and a real
redis-server. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

from gateway.app import GatewayApp, create_app
from gateway.config.settings import ConfigError, load_settings
from gateway.observability.health import Health, policy_check, store_check
from tests.support.metrics import scrape, value
from tests.support.procs import ROOT, SECRET, Gateway, RedisServer, Upstream, free_port, raw_request, status_of


def _get(gw: Gateway, path: str, method: str = "GET") -> httpx.Response:
    with gw.client() as c:
        return c.request(method, path)


def test_probes_need_no_credential_and_never_reach_upstream(gateway: Gateway, fresh_upstream: Upstream) -> None:
    live = _get(gateway, "/healthz")
    ready = _get(gateway, "/readyz")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"store": "ok", "policy": "ok"}}
    assert ready.headers["content-type"] == "application/json"
    assert ready.headers["cache-control"] == "no-store"
    head = _get(gateway, "/readyz", "HEAD")
    assert head.status_code == 200 and head.content == b""
    post = _get(gateway, "/healthz", "POST")
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD" and post.json()["status"] == "error"
    # only the exact paths are probes: anything else still meets the auth gate
    assert _get(gateway, "/healthz/x").status_code == 401
    assert _get(gateway, "/v1/healthz").status_code == 401
    # and a raw HTTP/1.0 probe (what a minimal health checker sends) works too
    raw = raw_request(gateway.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert status_of(raw) == 200 and raw.endswith(b'{"status":"ok"}')
    assert fresh_upstream.records() == []


def test_probe_paths_are_configurable(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings={"ops": {"healthz_path": "/-/live"}},
                      env={"GATEWAY_OPS__READYZ_PATH": "/-/ready"})
    assert _get(gw, "/-/live").json() == {"status": "ok"}
    assert _get(gw, "/-/ready").json()["status"] == "ready"
    # the defaults are ordinary paths again: the gate answers them
    assert _get(gw, "/healthz").status_code == 401
    assert _get(gw, "/readyz").status_code == 401


@pytest.mark.parametrize("ops, field", [
    ({"healthz_path": "healthz"}, "ops.healthz_path"),
    ({"readyz_path": "/ready?x=1"}, "ops.readyz_path"),
    ({"healthz_path": "/same", "readyz_path": "/same"}, "ops.readyz_path"),
    ({"readyz_timeout_seconds": 0}, "ops.readyz_timeout_seconds"),
    ({"livez": "/x"}, "ops.livez"),
])
def test_bad_probe_settings_name_the_field(tmp_path: Path, ops: dict[str, Any], field: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"ops": ops}))
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(config, environ={})


def test_readyz_503_when_the_sqlite_directory_is_removed(make_gateway: Callable[..., Gateway],
                                                        fresh_upstream: Upstream, tmp_path: Path) -> None:
    data = tmp_path / "data"
    gw = make_gateway(fresh_upstream.url, settings={"store": {"url": f"sqlite:///{data / 'keys.db'}"}})
    assert _get(gw, "/readyz").status_code == 200
    shutil.rmtree(data)
    # The open SQLite connection still answers (Linux keeps the unlinked file alive), which is exactly why
    # readiness must look at the file: every change now goes to a file no restart will find.
    gone = _get(gw, "/readyz")
    assert gone.status_code == 503
    assert gone.json()["status"] == "unavailable"
    assert gone.json()["checks"]["store"] == "the key store's database file is gone"
    assert str(data) not in gone.text  # no file system layout to unauthenticated callers
    assert _get(gw, "/healthz").status_code == 200  # alive all the same: a restart is not the cure here

    # A different file appearing at the same path (a restore under a running gateway) is not the same store.
    data.mkdir()
    sqlite3.connect(data / "keys.db").close()
    replaced = _get(gw, "/readyz")
    assert replaced.status_code == 503
    assert replaced.json()["checks"]["store"] == "the key store's database file was replaced"
    assert "not ready: store: the key store's database file" in gw.log()


def test_readyz_follows_the_rate_limiter_redis_as_on_store_error_says(
        make_gateway: Callable[..., Gateway], fresh_upstream: Upstream, own_redis: RedisServer) -> None:
    """Limits in a Redis the test stops and starts again, keys in SQLite. Readiness means "can serve": with
    ``on_store_error: deny`` the gateway refuses limited requests while Redis is away, so it is not ready
    (503); with ``allow`` or ``local`` it keeps serving, so it stays ready (200) and says ``degraded``, with
    the reason, in its body and in ``gateway_readiness``."""
    gws = {mode: make_gateway(fresh_upstream.url, name=mode,
                              settings={"rate_limits": {"url": own_redis.url, "on_store_error": mode}})
           for mode in ("deny", "allow", "local")}
    keys = {mode: gw.create_key(mode, "servers:read")["value"] for mode, gw in gws.items()}
    reason = "the rate limiter's Redis does not answer"
    for gw in gws.values():
        ok = _get(gw, "/readyz")
        assert (ok.status_code, ok.json()["status"], ok.json()["checks"]["rate_limiter"]) == (200, "ready", "ok")
        assert readiness_states(gw) == {"ready": 1, "degraded": 0, "unavailable": 0, "draining": 0}

    own_redis.stop()
    down = _get(gws["deny"], "/readyz")
    assert down.status_code == 503
    assert down.json() == {"status": "unavailable", "reason": f"rate_limiter: {reason}",
                           "checks": {"store": "ok", "policy": "ok", "rate_limiter": reason}}
    assert readiness_states(gws["deny"])["unavailable"] == 1
    for mode in ("allow", "local"):
        degraded = _get(gws[mode], "/readyz")
        assert degraded.status_code == 200, mode
        assert degraded.json() == {"status": "degraded", "reason": f"rate_limiter: {reason}",
                                   "checks": {"store": "ok", "policy": "ok", "rate_limiter": reason}}
        assert readiness_states(gws[mode]) == {"ready": 0, "degraded": 1, "unavailable": 0, "draining": 0}
        with gws[mode].client() as c:  # and it does serve
            assert c.get("/v1/servers", headers={"Authorization": f"Bearer {keys[mode]}"}).status_code == 200
    for gw in gws.values():
        assert _get(gw, "/healthz").status_code == 200

    own_redis.start()
    for gw in gws.values():
        deadline = time.monotonic() + 15
        while _get(gw, "/readyz").status_code != 200 or _get(gw, "/readyz").json()["status"] != "ready":
            assert time.monotonic() < deadline, "readyz did not recover after Redis came back"
            time.sleep(0.2)
        assert readiness_states(gw)["ready"] == 1
    assert "degraded: rate_limiter: " in gws["allow"].log() and "ready again" in gws["allow"].log()


def readiness_states(gw: Gateway) -> dict[str, float]:
    """``gateway_readiness{state=...}``: 1 for the state the gateway is in, 0 for the others."""
    samples = scrape(gw)
    return {state: value(samples, "gateway_readiness", state=state)
            for state in ("ready", "degraded", "unavailable", "draining")}


def test_healthz_never_waits_on_redis(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream,
                                      own_redis: RedisServer) -> None:
    """Keys and limits in a Redis that hangs (SIGSTOP) and then is gone: liveness answers at once, every
    time, because it asks nothing of Redis."""
    gw = make_gateway(fresh_upstream.url, settings={"store": {"url": own_redis.url},
                                                    "ops": {"readyz_timeout_seconds": 1.0}})
    own_redis.pause()
    try:
        for _ in range(5):
            started = time.monotonic()
            live = _get(gw, "/healthz")
            assert (live.status_code, live.json()) == (200, {"status": "ok"})
            assert time.monotonic() - started < 0.5
    finally:
        own_redis.resume()
    own_redis.stop()
    for _ in range(3):
        assert _get(gw, "/healthz").status_code == 200


@pytest.mark.parametrize("on_store_error", ["deny", "allow"])
def test_readyz_follows_a_redis_key_store(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream,
                                         own_redis: RedisServer, on_store_error: str) -> None:
    """A Redis key store away is not ready, whatever ``on_store_error`` says: a key not in the cache cannot be
    checked (503 ``store_unavailable``), so the gateway cannot do its job for new callers."""
    gw = make_gateway(fresh_upstream.url, settings={"store": {"url": own_redis.url},
                                                    "rate_limits": {"on_store_error": on_store_error}})
    ok = _get(gw, "/readyz")
    assert ok.status_code == 200 and ok.json()["checks"]["store"] == "ok"
    own_redis.stop()
    down = _get(gw, "/readyz")
    assert down.status_code == 503
    assert down.json()["status"] == "unavailable"
    assert down.json()["checks"]["store"] == "the key store does not answer"
    assert readiness_states(gw)["unavailable"] == 1
    assert _get(gw, "/healthz").status_code == 200


def test_readyz_bounded_when_redis_hangs(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream,
                                         own_redis: RedisServer) -> None:
    gw = make_gateway(fresh_upstream.url, settings={"rate_limits": {"url": own_redis.url},
                                                    "ops": {"readyz_timeout_seconds": 0.5}})
    assert _get(gw, "/readyz").status_code == 200
    own_redis.pause()  # SIGSTOP: the socket stays open, nothing answers
    try:
        started = time.monotonic()
        hung = _get(gw, "/readyz")
        took = time.monotonic() - started
    finally:
        own_redis.resume()
    assert hung.status_code == 503 and "rate_limiter" in hung.json()["reason"]
    assert took < 5, f"readyz took {took:.1f} s with a hung Redis"


# --- inside a running app: a closed store, draining -----------------------------------------------------------


class InProcess:
    """The real GatewayApp under a real uvicorn server in a thread, so a test can reach its parts."""

    def __init__(self, tmp_path: Path, upstream_url: str) -> None:
        self.port = free_port()
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "listen": {"host": "127.0.0.1", "port": self.port}, "upstream": {"url": upstream_url},
            "store": {"url": f"sqlite:///{tmp_path / 'keys.db'}"}, "secret": SECRET,
            "policies": str(ROOT / "policies" / "deployerp.yaml"),
        }))
        self.app: GatewayApp = create_app(load_settings(config, environ={}))
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, lifespan="on",
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "in-process gateway did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def inproc(tmp_path: Path, fresh_upstream: Upstream) -> Iterator[InProcess]:
    server = InProcess(tmp_path, fresh_upstream.url)
    yield server
    server.stop()


def test_readyz_503_when_the_store_is_closed(inproc: InProcess) -> None:
    assert inproc.get("/readyz").status_code == 200
    # What lifespan shutdown does to the store, done early: the connection is really closed.
    asyncio.run(inproc.app.components.store.close())
    closed = inproc.get("/readyz")
    assert closed.status_code == 503
    assert closed.json()["checks"]["store"] == "the key store does not answer"
    assert inproc.get("/healthz").status_code == 200


def test_readyz_503_while_draining(inproc: InProcess) -> None:
    assert inproc.get("/readyz").status_code == 200
    inproc.app.health.start_draining()
    draining = inproc.get("/readyz")
    assert (draining.status_code, draining.json()["status"]) == (503, "draining")
    assert inproc.get("/healthz").status_code == 200  # still alive while it drains


def test_lifespan_shutdown_starts_draining(tmp_path: Path, fresh_upstream: Upstream) -> None:
    """The ASGI lifespan, driven by hand: the moment shutdown begins, readiness says draining."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "upstream": {"url": fresh_upstream.url}, "store": {"url": f"sqlite:///{tmp_path / 'keys.db'}"},
        "secret": SECRET, "policies": str(ROOT / "policies" / "deployerp.yaml"),
    }))
    app = create_app(load_settings(config, environ={}))

    async def run() -> list[str]:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        sent: list[str] = []
        seen_draining: list[bool] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message["type"])
            if message["type"] == "lifespan.shutdown.complete":
                seen_draining.append(app.health.draining)

        await inbox.put({"type": "lifespan.startup"})
        await inbox.put({"type": "lifespan.shutdown"})
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
        assert seen_draining == [True]
        return sent

    assert not app.health.draining
    assert asyncio.run(asyncio.wait_for(run(), 20)) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_policy_check_and_a_raising_check() -> None:
    async def boom() -> str | None:
        raise RuntimeError("secret detail")

    class Closed:
        async def ping(self) -> None:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")

    health = Health("/h", "/r", {"policy": policy_check(lambda: None), "odd": boom, "store": store_check(Closed())})
    status, doc = asyncio.run(health.readiness())
    assert status == 503
    assert doc["checks"] == {"policy": "no policy is loaded", "odd": "check failed",
                             "store": "the key store does not answer"}
    assert "secret detail" not in str(doc)

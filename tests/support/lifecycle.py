"""Helpers for the key-lifecycle tests (management API, rotation, audit, environments, JWT).

Everything works on real processes from tests/support/procs.py; these only save repetition: a module-scoped
gateway with an admin key, a small client for the management API, and a tiny real HTTP receiver for the
rotation webhook.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import httpx

from tests.support.procs import Gateway


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


class Served(Protocol):
    """A gateway process (procs.Gateway) or an in-process one (ThreadedGateway)."""

    def client(self) -> httpx.Client: ...


@dataclass
class KeysAPI:
    """A client of one gateway's management API, calling as the key ``value``."""

    gateway: Served
    value: str
    prefix: str = "/v1"
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = self.gateway.client()

    def close(self) -> None:
        self.client.close()

    @property
    def created_by(self) -> str:
        """The caller's key id, as the audit trail and ``created_by`` name it."""
        resp = self.call("GET", "/auth/test")
        assert resp.status_code == 200, resp.text
        return resp.json()["key_id"]  # type: ignore[no-any-return]

    def as_key(self, value: str) -> KeysAPI:
        return KeysAPI(self.gateway, value, self.prefix)

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             params: dict[str, Any] | None = None) -> httpx.Response:
        headers = bearer(self.value)
        content: bytes | None = raw
        if body is not None:
            content = json.dumps(body).encode()
        if content is not None:
            headers["Content-Type"] = "application/json"
        return self.client.request(method, self.prefix + path, headers=headers, content=content, params=params)

    def create(self, body: dict[str, Any]) -> httpx.Response:
        return self.call("POST", "/api-keys", body)

    def created(self, **body: Any) -> dict[str, Any]:
        """Create a key and return the answer's document (asserting 201)."""
        body.setdefault("name", "k")
        body.setdefault("permissions", ["servers:read"])
        resp = self.create(body)
        assert resp.status_code == 201, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def get(self, key_id: str) -> httpx.Response:
        return self.call("GET", f"/api-keys/{key_id}")

    def list(self, **params: Any) -> httpx.Response:
        return self.call("GET", "/api-keys", params=params or None)

    def patch(self, key_id: str, body: Any, raw: bytes | None = None) -> httpx.Response:
        return self.call("PATCH", f"/api-keys/{key_id}", body, raw)

    def delete(self, key_id: str) -> httpx.Response:
        return self.call("DELETE", f"/api-keys/{key_id}")

    def rotate(self, key_id: str, body: Any = None) -> httpx.Response:
        return self.call("POST", f"/api-keys/{key_id}/rotate", body)

    def all_ids(self) -> list[str]:
        """Every key id visible to the caller, walking every page."""
        ids: list[str] = []
        offset: int | None = 0
        while offset is not None:
            resp = self.list(limit=500, offset=offset)
            assert resp.status_code == 200, resp.text
            doc = resp.json()
            ids += [r["id"] for r in doc["data"]]
            offset = doc["pagination"]["next_offset"]
        return ids


def use(gateway: Served, value: str, path: str = "/v1/servers", **headers: str) -> httpx.Response:
    with gateway.client() as c:
        return c.get(path, headers={**bearer(value), **headers})


def wait_for(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy (bounded in time)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        time.sleep(interval)


class Receiver:
    """A tiny real HTTP server on a free loopback port that records every POST body (the rotation webhook)."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[Any] = []
        self.status = status
        self.fail_for: set[str] = set()  # answer 500 to notices about these key ids
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                body = json.loads(raw) if raw else None
                outer.bodies.append(body)
                failing = isinstance(body, dict) and body.get("key_id") in outer.fail_for
                self.send_response(500 if failing else outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/rotation"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.stop()


def admin_gateway(work: Path, upstream_url: str, settings: dict[str, Any] | None = None,
                  permissions: str = "*") -> tuple[Gateway, str]:
    """A real gateway process with one admin key made by the CLI (the bootstrap path)."""
    # The failed-authentication cool-down is off: these tests make many refused calls on purpose.
    gw = Gateway(work, upstream_url, {"limits": {"auth_failures_per_minute": 0}, **(settings or {})})
    # Unlimited tier: the tests make many management calls with this key, and rate limits are not the point.
    admin = gw.create_key("admin", permissions, "--tier", "unlimited")
    return gw, admin["value"]


class FakeClock:
    """A clock the test moves by hand (seconds since the epoch), injected into the gateway's ``clock``."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def set(self, when: datetime) -> None:
        self.now = when.timestamp()


class ThreadedGateway:
    """The gateway ASGI app served by a real uvicorn server in a thread of the test process (as httpx's own
    tests do), so the test can reach into it: here, to inject a :class:`FakeClock`. Store, upstream and
    sockets are real."""

    def __init__(self, config: Path, env: dict[str, str], clock: Callable[[], float]) -> None:
        import uvicorn

        from gateway.app import create_app
        from gateway.config.settings import load_settings

        self.settings = load_settings(config, environ=env, required=True)
        self.app = create_app(self.settings)
        self.app.gate.clock = clock
        if self.app.gateway.management is not None:
            self.app.gateway.management.clock = clock
        self.port = self.settings.listen.port
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, lifespan="on", access_log=False,
                             log_level="warning")
        self.server = uvicorn.Server(cfg)
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._thread.start()
        wait_for(lambda: self.server.started or not self._thread.is_alive(), timeout=20)
        if not self.server.started:
            raise RuntimeError("the in-process gateway did not start")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(15)

"""Graceful shutdown with a real `gateway serve` process: SIGTERM while a slow request and a long stream are
in flight, the drain window, the shutdown timeout, the usage flush and the exit status.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.procs import Gateway, Upstream


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def in_background(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - reported by the test's assertion
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t, out


def wait_upstream(up: Upstream, suffix: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r["path"].endswith(suffix) for r in up.records()):
            return
        time.sleep(0.05)
    raise AssertionError(f"the upstream never saw {suffix}")


def test_sigterm_lets_in_flight_requests_finish_and_exits_0(make_gateway: Callable[..., Gateway],
                                                            fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings={"usage": {"flush_seconds": 3600}})
    key = gw.create_key("reader", "servers:read")
    auth = {"Authorization": f"Bearer {key['value']}"}
    size = 8 * 1024 * 1024

    def slow() -> int:
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            return c.get("/v1/servers/__slow?seconds=2", headers=auth).status_code

    def stream() -> tuple[int, int]:
        # A client that reads slowly: the stream is still flowing well after SIGTERM.
        got = 0
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            with c.stream("GET", f"/v1/servers/__download?bytes={size}", headers=auth) as r:
                for chunk in r.iter_raw(256 * 1024):
                    got += len(chunk)
                    time.sleep(0.05)
                return r.status_code, got

    t1, slow_out = in_background(slow)
    t2, stream_out = in_background(stream)
    wait_upstream(fresh_upstream, "/__slow")
    wait_upstream(fresh_upstream, "/__download")
    assert gw.proc is not None
    proc = gw.proc
    proc.send_signal(signal.SIGTERM)
    # the listener closes at once (ops.drain_seconds is 0): new connections are refused
    deadline = time.monotonic() + 5
    while not refused(gw.port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert refused(gw.port)
    assert proc.poll() is None  # still finishing the two requests
    t1.join(30)
    t2.join(30)
    assert slow_out == {"value": 200}
    assert stream_out == {"value": (200, size)}
    assert proc.wait(30) == 0
    log = gw.log()
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any("draining" in e.get("message", "") for e in events)
    assert "Traceback" not in log
    # the batched usage writes were flushed on the way out (flush_seconds is an hour)
    listed = json.loads(gw.cli("keys", "list", "--json").stdout)
    [row] = [k for k in listed if k["id"] == key["id"]]
    assert row["last_used_at"] is not None


def test_drain_keeps_serving_with_readiness_503(make_gateway: Callable[..., Gateway],
                                                fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings={"ops": {"drain_seconds": 2.0}})
    assert gw.proc is not None
    with gw.client() as c:
        assert c.get("/readyz").status_code == 200
    gw.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    time.sleep(0.4)
    with gw.client() as c:  # a new connection, during the drain
        ready = c.get("/readyz")
        gated = c.get("/v1/servers")
    assert time.monotonic() - sent < 2.0
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert gated.status_code == 401  # still serving
    assert gw.proc.wait(20) == 0
    assert time.monotonic() - sent >= 1.5


def test_shutdown_timeout_bounds_the_wait(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings={"ops": {"shutdown_timeout_seconds": 1.0}})
    key = gw.create_key("reader", "servers:read")

    def slow() -> int:
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            return c.get("/v1/servers/__slow?seconds=15", headers={"Authorization": f"Bearer {key['value']}"}
                         ).status_code

    t, out = in_background(slow)
    wait_upstream(fresh_upstream, "/__slow")
    assert gw.proc is not None
    sent = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(15) == 0
    assert time.monotonic() - sent < 8  # not the 15 s the upstream would take
    t.join(15)
    # nothing had been sent yet: a JSON 503 (never a 500), with the connection closed
    assert out == {"value": 503}
    assert "Traceback" not in gw.log() and "Exception in ASGI application" not in gw.log()
    # the upstream is still sleeping on the abandoned request: end it now rather than wait out its 15 s
    fresh_upstream.proc.kill()
    fresh_upstream.proc.wait(5)


@pytest.mark.parametrize("value", ["-1", "0"])
def test_bad_shutdown_settings_are_refused(value: str, tmp_path: Any) -> None:
    from tests.support.procs import run_cli

    (tmp_path / "config.yaml").write_text(f"ops:\n  shutdown_timeout_seconds: {value}\n")
    r = run_cli("serve", "--config", str(tmp_path / "config.yaml"), check=False)
    assert r.returncode == 2 and "ops.shutdown_timeout_seconds" in r.stderr

"""WebSocket pass-through on the reverse proxy: a real ``gateway serve`` in front of a real WebSocket upstream
(tests/support/ws_upstream.py, the ``websockets`` library's server in its own process).

The opening handshake is an HTTP GET (RFC 6455 4.1) and goes through the gate like any request; once both
handshakes are done, frames are relayed both ways until one side closes (RFC 6455 5.6 data frames, 7 closing).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.support.core import bearer
from tests.support.metrics import scrape
from tests.support.metrics import value as sample
from tests.support.procs import PYTHON, ROOT, Gateway, _stop, free_port, wait_port


class WsUpstream:
    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.records_path = work / "ws-records.jsonl"
        self._log = open(work / "ws-upstream.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [PYTHON, str(ROOT / "tests" / "support" / "ws_upstream.py"), "--port", str(self.port),
             "--records", str(self.records_path)], stdout=self._log, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc)

    def records(self) -> list[dict[str, Any]]:
        if not self.records_path.exists():
            return []
        return [json.loads(line) for line in self.records_path.read_text().splitlines() if line]

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in self.records():
                if pred(rec):
                    return rec
            time.sleep(0.05)
        raise AssertionError(f"no matching upstream record in {self.records()}")

    def stop(self) -> None:
        _stop(self.proc)
        self._log.close()


@pytest.fixture
def ws_upstream(tmp_path: Path) -> Iterator[WsUpstream]:
    up = WsUpstream(tmp_path)
    yield up
    up.stop()


@pytest.fixture
def gw(make_gateway: Callable[..., Gateway], ws_upstream: WsUpstream) -> Gateway:
    return make_gateway(ws_upstream.url, settings={"limits": {"websocket_idle_seconds": 30}})


def ws_url(g: Gateway, path: str) -> str:
    return f"ws://127.0.0.1:{g.port}{path}"


def raw_handshake(g: Gateway, path: str, extra: str = "") -> tuple[int, dict[str, str], bytes]:
    """One opening handshake (RFC 6455 4.1) over a plain socket; the status, headers and body answered."""
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{g.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + extra + "\r\n")
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
        s.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, body


def test_handshake_without_a_key_is_refused_401_json(gw: Gateway, ws_upstream: WsUpstream) -> None:
    """A handshake the gate refuses gets an HTTP answer other than 101 (RFC 6455 4.1: the client fails the
    connection, 4.2.2: the server may answer any HTTP status): here the gate's 401 and its JSON body; the
    upstream never sees it."""
    status, headers, body = raw_handshake(gw, "/v1/servers/echo")
    assert status == 401
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "authentication_required"
    assert ws_upstream.records() == []


def test_handshake_without_the_scope_is_refused_403(gw: Gateway, ws_upstream: WsUpstream) -> None:
    """A key that lacks the route's scope is refused 403 at the handshake (RFC 6455 4.2.2), never relayed."""
    key = gw.create_key("writer", "servers:write")
    status, _, body = raw_handshake(gw, "/v1/servers/echo", f"Authorization: Bearer {key['value']}\r\n")
    assert status == 403
    assert json.loads(body)["error"]["code"] == "insufficient_permissions"
    assert ws_upstream.records() == []


def test_echo_text_and_binary_with_identity_headers_and_subprotocol(gw: Gateway, ws_upstream: WsUpstream) -> None:
    """Text and binary data frames (RFC 6455 5.6) are relayed both ways as they came; the upstream's
    handshake carries the key's identity headers and the forwarding headers but never the client's
    Authorization; the subprotocol the upstream chose from the client's list (RFC 6455 4.1, 4.2.2
    Sec-WebSocket-Protocol) is the one the client gets."""
    key = gw.create_key("reader", "servers:read")
    forged = {**bearer(key["value"]), "X-Auth-Key-ID": "forged", "X-Auth-Permissions": "*"}
    with connect(ws_url(gw, "/v1/servers/echo?tail=1"), additional_headers=forged,
                 subprotocols=["logs.v2", "logs.v1"], open_timeout=10) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "logs.v1"
        assert ws.response is not None and ws.response.headers.get("x-request-id")
        ws.send("hello ünïcode")
        assert ws.recv(timeout=10) == "hello ünïcode"
        blob = bytes(range(256)) * 100
        ws.send(blob)
        assert ws.recv(timeout=10) == blob
    rec = ws_upstream.wait_for(lambda r: "headers" in r)
    assert rec["path"] == "/v1/servers/echo?tail=1"
    assert rec["subprotocol"] == "logs.v1"
    headers: dict[str, list[str]] = {}
    for name, value in rec["headers"]:
        headers.setdefault(name, []).append(value)
    assert headers["x-auth-key-id"] == [key["id"]]
    assert headers["x-auth-permissions"] == ["servers:read"]
    assert "authorization" not in headers
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-request-id"] == [ws.response.headers["x-request-id"]]
    assert "logs.v1" in headers["sec-websocket-protocol"][0]


def test_close_codes_propagate_both_ways(gw: Gateway, ws_upstream: WsUpstream) -> None:
    """A Close frame's status code and reason (RFC 6455 5.5.1, 7.4) reach the other side: the client's close
    is passed to the upstream, the upstream's to the client."""
    key = gw.create_key("reader", "servers:read")
    with connect(ws_url(gw, "/v1/servers/echo"), additional_headers=bearer(key["value"]), open_timeout=10) as ws:
        ws.send("ping")
        assert ws.recv(timeout=10) == "ping"
        ws.close(4001, "client done")
    rec = ws_upstream.wait_for(lambda r: "closed" in r)
    assert (rec["closed"], rec["reason"]) == (4001, "client done")

    with connect(ws_url(gw, "/v1/servers/close"), additional_headers=bearer(key["value"]), open_timeout=10) as ws:
        ws.send("4002 upstream done")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 4002
        assert ws.close_reason == "upstream done"


def test_idle_connection_is_closed(make_gateway: Callable[..., Gateway], ws_upstream: WsUpstream) -> None:
    """No data frame either way for ``limits.websocket_idle_seconds``: the gateway closes both sides with 1001
    (going away, RFC 6455 7.4.1)."""
    g = make_gateway(ws_upstream.url, settings={"limits": {"websocket_idle_seconds": 1}})
    key = g.create_key("reader", "servers:read")
    started = time.monotonic()
    with connect(ws_url(g, "/v1/servers/quiet"), additional_headers=bearer(key["value"]), open_timeout=10) as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 1001
    assert 0.9 < time.monotonic() - started < 8
    rec = ws_upstream.wait_for(lambda r: "closed" in r)
    assert rec["closed"] == 1001


def test_one_rate_limit_spend_per_handshake(gw: Gateway, ws_upstream: WsUpstream) -> None:
    """Each handshake is one request for the rate limit, whatever the frames that follow: the ``limited`` tier's
    burst of 10 per minute admits ten connections (each sending messages), the eleventh handshake is answered
    429 (RFC 6455 4.2.2, RFC 6585 4)."""
    key = gw.create_key("limited", "servers:read", "--tier", "limited")
    for i in range(10):
        with connect(ws_url(gw, "/v1/servers/echo"), additional_headers=bearer(key["value"]),
                     open_timeout=10) as ws:
            for _ in range(3):
                ws.send(f"m{i}")
                assert ws.recv(timeout=10) == f"m{i}"
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(gw, "/v1/servers/echo"), additional_headers=bearer(key["value"]), open_timeout=10).close()
    assert refused.value.response.status_code == 429
    assert json.loads(refused.value.response.body)["error"]["code"] == "rate_limit_exceeded"


def test_access_log_line_and_metrics_when_the_socket_closes(gw: Gateway, ws_upstream: WsUpstream) -> None:
    """One access-log line per WebSocket, written when it closes, with the 101 of the handshake (RFC 6455
    4.2.2) and the bytes relayed; counted once in ``gateway_requests_total`` with status 101, and a refused
    handshake with its denial's status."""
    key = gw.create_key("reader", "servers:read")
    before = scrape(gw)
    assert raw_handshake(gw, "/v1/servers/echo")[0] == 401
    with connect(ws_url(gw, "/v1/servers/echo"), additional_headers=bearer(key["value"]), open_timeout=10) as ws:
        ws.send("x" * 100)
        assert ws.recv(timeout=10) == "x" * 100
    deadline = time.monotonic() + 10
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not lines:
        lines = [d for d in (_json(ln) for ln in gw.log().splitlines()) if d and d.get("status") == 101]
        time.sleep(0.05)
    assert len(lines) == 1, gw.log()
    line = lines[0]
    assert line["path"] == "/v1/servers/echo"
    assert line["bytes_in"] == 100 and line["bytes_out"] == 100
    after = scrape(gw)
    for status in ("101", "401"):
        labels = {"route": "/v1/servers/**", "method": "GET", "status": status}
        assert sample(after, "gateway_requests_total", **labels) - sample(before, "gateway_requests_total",
                                                                          **labels) == 1


def _json(line: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def test_a_key_revoked_while_its_socket_is_open_closes_it(make_gateway: Callable[..., Gateway],
                                                           ws_upstream: WsUpstream) -> None:
    """A key revoked elsewhere is refused within ``cache.ttl_seconds`` on every request; an open WebSocket is
    held to the same bound: both sides are closed with 1008, policy violation (RFC 6455 7.4.1)."""
    g = make_gateway(ws_upstream.url, settings={"cache": {"ttl_seconds": 1}})
    key = g.create_key("reader", "servers:read")
    with connect(ws_url(g, "/v1/servers/echo"), additional_headers=bearer(key["value"]), open_timeout=10) as ws:
        ws.send("before")
        assert ws.recv(timeout=10) == "before"
        g.cli("keys", "revoke", key["id"])
        revoked = time.monotonic()
        with pytest.raises(ConnectionClosed):
            while time.monotonic() - revoked < 10:
                ws.send("still here?")
                ws.recv(timeout=10)
                time.sleep(0.2)
        assert ws.close_code == 1008
    assert time.monotonic() - revoked < 6
    rec = ws_upstream.wait_for(lambda r: "closed" in r)
    assert rec["closed"] == 1008


def test_unreachable_upstream_refuses_the_handshake_502(make_gateway: Callable[..., Gateway]) -> None:
    """When the upstream's handshake cannot be made, the client's is answered with an HTTP error instead of 101
    (RFC 6455 4.2.2): 502 ``upstream_unavailable``, as for any request."""
    g = make_gateway(f"http://127.0.0.1:{free_port()}")
    key = g.create_key("reader", "servers:read")
    status, _, body = raw_handshake(g, "/v1/servers/echo", f"Authorization: Bearer {key['value']}\r\n")
    assert status == 502
    assert json.loads(body)["error"]["code"] == "upstream_unavailable"


def test_credentials_in_the_upstream_url_authenticate_the_upstream_handshake(
        make_gateway: Callable[..., Gateway], ws_upstream: WsUpstream) -> None:
    """An upstream URL with credentials (``http://user:password@host``) sends them as Basic authentication
    (RFC 7617) on the upstream's WebSocket handshake, as on its HTTP requests, and never in the target; the
    password stays out of the gateway's log."""
    g = make_gateway(ws_upstream.url.replace("http://", "http://svc:pa%3Ass@"))
    key = g.create_key("reader", "servers:read")
    with connect(ws_url(g, "/v1/servers/echo"), additional_headers=bearer(key["value"]), open_timeout=10) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "hi"
    rec = ws_upstream.wait_for(lambda r: "headers" in r)
    assert rec["path"] == "/v1/servers/echo"
    assert [v for n, v in rec["headers"] if n == "authorization"] == ["Basic c3ZjOnBhOnNz"]  # svc:pa:ss
    assert "pa:ss" not in g.log() and "pa%3Ass" not in g.log()

"""Core behaviour, end to end: what reaches the upstream, streaming both ways with flat memory, 502 and 504.

A real `gateway serve` process in front of the real recording upstream process (tests/support/upstream.py),
which answers every request with what it received on the wire: method, raw target, raw headers, body size.

Clients pass ``verify=False``: everything is plain HTTP on loopback, and it spares loading the CA bundle for
every client (about 0.1 s each on a busy machine).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.core import (
    RSSSampler,
    assert_deployally_error,
    assert_deployerp_error,
    assert_no_secret,
    bearer,
    header,
    rss_kb,
    store_key,
)
from tests.support.procs import Gateway, Upstream, body_json, free_port, raw_request, status_of

VALUES: list[str] = []
MB = 1024 * 1024


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    up = Upstream(tmp_path_factory.mktemp("core-fwd-up"))
    yield up
    up.stop()


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store shared by the module's gateways, so one key can be tried through each of them."""
    return f"sqlite:///{tmp_path_factory.mktemp('core-fwd-store') / 'keys.db'}"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, store_url: str) -> Iterator[Gateway]:
    """Default settings: no trusted proxies, Authorization not forwarded."""
    g = Gateway(tmp_path_factory.mktemp("core-fwd-gw"), upstream.url, {"store": {"url": store_url}})
    yield g
    g.stop()
    assert_no_secret(g.log(), VALUES)
    assert "Traceback" not in g.log()


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, store_url: str) -> Iterator[Gateway]:
    """A gateway that trusts 127.0.0.1 as a proxy and forwards Authorization."""
    g = Gateway(tmp_path_factory.mktemp("core-fwd-proxy"), upstream.url, {
        "store": {"url": store_url}, "trusted_proxies": ["127.0.0.1/32"], "forward_authorization": True,
    })
    yield g
    g.stop()
    assert_no_secret(g.log(), VALUES)
    assert "Traceback" not in g.log()


@pytest.fixture(scope="module")
def admin(gw: Gateway) -> dict[str, str]:
    made = store_key(gw, "fwd-admin", "*")
    VALUES.append(made["value"])
    return made


def auth_line(made: dict[str, str]) -> bytes:
    return b"Authorization: Bearer " + made["value"].encode() + b"\r\n"


# --- what the upstream receives ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/servers/a%20b?x=1&y=%2F",
        b"/v1/servers?q=%E2%82%AC&empty=&flag&a=1&a=2&plus=a+b&semi=x;y",
        b"/v1/servers/%7Eme/disks?sort=-size&filter[name]=a%26b",
        b"/v1/servers/",
    ],
)
def test_raw_path_and_query_reach_upstream_byte_for_byte(
    gw: Gateway, upstream: Upstream, admin: dict[str, str], target: bytes
) -> None:
    upstream.clear()
    raw = raw_request(gw.port, b"GET " + target + b" HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n"
                      + auth_line(admin) + b"\r\n")
    assert status_of(raw) == 200, raw[:300]
    (rec,) = upstream.records()
    assert rec["target"].encode("latin-1") == target
    assert body_json(raw)["target"].encode("latin-1") == target


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
def test_method_reaches_upstream(gw: Gateway, upstream: Upstream, admin: dict[str, str], method: str) -> None:
    upstream.clear()
    with gw.client(verify=False) as c:
        resp = c.request(method, "/v1/servers/s-1", headers=bearer(admin["value"]),
                         content=b"{}" if method in ("POST", "PUT", "PATCH") else None)
    assert resp.status_code == 200
    (rec,) = upstream.records()
    assert rec["method"] == method
    if method == "HEAD":
        assert resp.content == b""


def test_request_headers_hygiene(gw: Gateway, upstream: Upstream) -> None:
    made = store_key(gw, "hyg", "servers:read,instances:*")
    VALUES.append(made["value"])
    upstream.clear()
    request = (
        b"GET /v1/servers HTTP/1.1\r\n"
        b"Host: api.example:8443\r\n"
        + auth_line(made)
        + b"Connection: keep-alive, X-Hop-Custom, x-other-hop\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"X-Hop-Custom: drop me\r\n"
        b"X-Other-Hop: drop me too\r\n"
        b"TE: trailers\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"
        b"X-Auth-Key-ID: key_forged00000\r\n"
        b"x-auth-permissions: *\r\n"
        b"X-AUTH-ENVIRONMENT: test\r\n"
        b"X-Auth-Anything: forged\r\n"
        b"X_Auth_Key_ID: key_underscore0\r\n"
        b"X-Forwarded-For: 198.51.100.1\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: evil.example\r\n"
        b"X-Debug-Auth: false\r\n"
        b"Accept: application/json\r\n"
        b"X-Request-ID: abc-123\r\n"
        b"X-Custom: kept\r\n"
        b"X-Custom: twice\r\n"
        b"\r\n"
    )
    # Keep-alive on the client side: the request is complete, the gateway answers, then we close.
    raw = raw_request(gw.port, request, timeout=3, read_all=False)
    assert status_of(raw) == 200, raw[:300]
    (rec,) = upstream.records()
    names = [k.lower() for k, _ in rec["headers"]]
    for gone in ("connection", "keep-alive", "x-hop-custom", "x-other-hop", "te", "trailer", "proxy-connection",
                 "proxy-authorization", "authorization", "x-debug-auth", "x_auth_key_id", "x-auth-anything"):
        assert gone not in names, gone
    # Exactly the gateway's identity headers, with the key's real values.
    assert sorted(n for n in names if n.startswith(("x-auth", "x_auth"))) == [
        "x-auth-environment", "x-auth-key-id", "x-auth-permissions"]
    assert header(rec, "x-auth-key-id") == [made["id"]]
    assert header(rec, "x-auth-permissions") == ["servers:read,instances:*"]
    assert header(rec, "x-auth-environment") == ["live"]
    # No trusted proxies: the client's X-Forwarded-* are replaced, not believed.
    assert header(rec, "x-forwarded-for") == ["127.0.0.1"]
    assert header(rec, "x-forwarded-proto") == ["http"]
    assert header(rec, "x-forwarded-host") == ["api.example:8443"]
    # Ordinary end-to-end headers pass untouched, repeated ones too.
    assert header(rec, "accept") == ["application/json"]
    assert header(rec, "x-request-id") == ["abc-123"]
    assert header(rec, "x-custom") == ["kept", "twice"] or header(rec, "x-custom") == ["kept, twice"]


def test_authorization_forwarded_only_when_configured(
    gw: Gateway, behind_proxy: Gateway, upstream: Upstream, admin: dict[str, str]
) -> None:
    upstream.clear()
    for g in (gw, behind_proxy):
        with g.client(verify=False) as c:
            assert c.get("/v1/servers", headers=bearer(admin["value"])).status_code == 200
    default, forwarding = upstream.records()
    assert header(default, "authorization") == []
    assert header(forwarding, "authorization") == [f"Bearer {admin['value']}"]


def test_x_forwarded_for_only_from_trusted_peer(gw: Gateway, behind_proxy: Gateway, upstream: Upstream) -> None:
    made = store_key(gw, "office", "servers:read", "--allow-ip", "203.0.113.0/24")
    VALUES.append(made["value"])
    xff = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example"}
    upstream.clear()
    with behind_proxy.client(verify=False) as c:
        trusted = c.get("/v1/servers", headers={**bearer(made["value"]), **xff})
        # Trusted hops on the right are skipped: the client is the first untrusted address from the right.
        hops = c.get("/v1/servers", headers={**bearer(made["value"]),
                                             "X-Forwarded-For": "10.9.9.9, 203.0.113.8, 127.0.0.1"})
        # An untrusted address rightmost is the client, whatever is said further left.
        spoof = c.get("/v1/servers", headers={**bearer(made["value"]),
                                              "X-Forwarded-For": "203.0.113.9, 198.51.100.1"})
        garbage = c.get("/v1/servers", headers={**bearer(made["value"]), "X-Forwarded-For": "203.0.113.9:80"})
        # X-Real-IP and Forwarded are never believed.
        real_ip = c.get("/v1/servers", headers={**bearer(made["value"]), "X-Real-IP": "203.0.113.9",
                                                "Forwarded": "for=203.0.113.9"})
    with gw.client(verify=False) as c:
        untrusted = c.get("/v1/servers", headers={**bearer(made["value"]), **xff})
    assert trusted.status_code == 200, trusted.text
    assert hops.status_code == 200, hops.text
    assert_deployerp_error(spoof, "ip_restricted")
    assert_deployerp_error(garbage, "ip_restricted")
    assert_deployerp_error(real_ip, "ip_restricted")
    assert_deployerp_error(untrusted, "ip_restricted")
    first, second = upstream.records()
    # Behind a trusted proxy the chain is extended with the peer and the proxy's proto/host are kept.
    assert header(first, "x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
    assert header(first, "x-forwarded-proto") == ["https"]
    assert header(first, "x-forwarded-host") == ["api.example"]
    assert header(second, "x-forwarded-for") == ["10.9.9.9, 203.0.113.8, 127.0.0.1, 127.0.0.1"]


def test_small_bodies_both_framings(gw: Gateway, upstream: Upstream, admin: dict[str, str]) -> None:
    upstream.clear()
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 100_000):
            yield payload[i:i + 100_000]

    with gw.client(verify=False) as c:
        fixed = c.post("/v1/servers", headers=bearer(admin["value"]), content=payload)
        chunked = c.post("/v1/servers", headers=bearer(admin["value"]), content=chunks())
        empty = c.post("/v1/servers", headers=bearer(admin["value"]))
    assert [r.status_code for r in (fixed, chunked, empty)] == [200, 200, 200]
    assert [r["body_bytes"] for r in upstream.records()] == [len(payload), len(payload), 0]


# --- streaming with flat memory ------------------------------------------------------------------------------


SIZE = 200 * MB
GROWTH_LIMIT_KB = 60 * 1024


def test_200mb_upload_streams_with_flat_memory(gw: Gateway, upstream: Upstream, admin: dict[str, str]) -> None:
    assert gw.proc is not None
    block = b"u" * (1 * MB)
    with gw.client(timeout=60, verify=False) as c:
        assert c.post("/v1/servers/warm", headers=bearer(admin["value"]), content=block).status_code == 200
        upstream.clear()
        before = rss_kb(gw.proc.pid)

        def body() -> Iterator[bytes]:
            for _ in range(SIZE // len(block)):
                yield block

        started = time.monotonic()
        with RSSSampler(gw.proc.pid) as rss:
            resp = c.post("/v1/servers/upload", content=body(),
                          headers={**bearer(admin["value"]), "Content-Length": str(SIZE)})
        took = time.monotonic() - started
    assert resp.status_code == 200, resp.text
    (rec,) = upstream.records()
    assert rec["body_bytes"] == SIZE
    assert header(rec, "content-length") == [str(SIZE)]
    growth = rss.peak - before
    print(f"upload 200 MB: {took:.1f} s, gateway RSS {before} KiB -> peak {rss.peak} KiB (+{growth} KiB)")
    assert growth < GROWTH_LIMIT_KB, f"gateway RSS grew by {growth} KiB while streaming 200 MB up"


def test_200mb_download_streams_with_flat_memory(gw: Gateway, admin: dict[str, str]) -> None:
    assert gw.proc is not None
    with gw.client(timeout=60, verify=False) as c:
        assert c.get("/v1/servers/__download?bytes=1048576", headers=bearer(admin["value"])).status_code == 200
        before = rss_kb(gw.proc.pid)
        got = 0
        started = time.monotonic()
        with RSSSampler(gw.proc.pid) as rss, c.stream(
            "GET", f"/v1/servers/__download?bytes={SIZE}", headers=bearer(admin["value"])
        ) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-length"] == str(SIZE)
            for chunk in resp.iter_raw():
                got += len(chunk)
        took = time.monotonic() - started
    assert got == SIZE
    growth = rss.peak - before
    print(f"download 200 MB: {took:.1f} s, gateway RSS {before} KiB -> peak {rss.peak} KiB (+{growth} KiB)")
    assert growth < GROWTH_LIMIT_KB, f"gateway RSS grew by {growth} KiB while streaming 200 MB down"


def test_slow_reader_does_not_make_the_gateway_buffer(gw: Gateway, admin: dict[str, str]) -> None:
    """A client that reads slowly: the gateway must apply backpressure, not read the upstream ahead into RAM."""
    assert gw.proc is not None
    with gw.client(timeout=60, verify=False) as c:
        before = rss_kb(gw.proc.pid)
        with c.stream("GET", f"/v1/servers/__download?bytes={SIZE}", headers=bearer(admin["value"])) as resp:
            assert resp.status_code == 200
            stream = resp.iter_raw(65536)
            next(stream)
            time.sleep(1.5)  # the upstream could send all 200 MB in this time if nothing held it back
            held = rss_kb(gw.proc.pid) - before
    assert held < GROWTH_LIMIT_KB, f"gateway buffered {held} KiB for a client that was not reading"


# --- upstream failures ---------------------------------------------------------------------------------------


def test_upstream_unavailable_is_502_json(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    g = Gateway(tmp_path / "dead", dead, {"upstream": {"connect_timeout": 2}})
    ally = Gateway(tmp_path / "dead-ally", dead, {"error_format": "deployally"})
    try:
        made = store_key(g, "k", "servers:read")
        VALUES.append(made["value"])
        with g.client(verify=False) as c:
            resp = c.get("/v1/servers", headers=bearer(made["value"]))
        assert_deployerp_error(resp, "upstream_unavailable")
        # Unauthenticated requests are still refused first: the upstream's state is not revealed to them.
        with g.client(verify=False) as c:
            assert_deployerp_error(c.get("/v1/servers"), "authentication_required")
        made2 = store_key(ally, "k", "servers:read")
        VALUES.append(made2["value"])
        with ally.client(verify=False) as c:
            resp2 = c.get("/v1/servers", headers=bearer(made2["value"]))
        assert resp2.status_code == 502
        assert resp2.json()["success"] is False and resp2.json()["error"]["code"] == "BAD_GATEWAY"
        with ally.client(verify=False) as c:
            assert_deployally_error(c.get("/v1/servers"), 401)
    finally:
        g.stop()
        ally.stop()
    for log in (g.log(), ally.log()):
        assert "Traceback" not in log
        assert_no_secret(log, VALUES)


def test_upstream_timeout_is_504_json(tmp_path: Path, upstream: Upstream) -> None:
    g = Gateway(tmp_path / "slow", upstream.url, {"upstream": {"read_timeout": 1}})
    try:
        made = store_key(g, "k", "servers:read")
        VALUES.append(made["value"])
        with g.client(timeout=20) as c:
            started = time.monotonic()
            resp = c.get("/v1/servers/__slow?seconds=3", headers=bearer(made["value"]))
            took = time.monotonic() - started
            assert_deployerp_error(resp, "upstream_timeout")
            assert took < 2.9, f"504 after {took:.1f} s with read_timeout 1"
            # A fast answer on the same gateway still works afterwards.
            assert c.get("/v1/servers/__slow?seconds=0.1", headers=bearer(made["value"])).status_code == 200
    finally:
        g.stop()
    assert "Traceback" not in g.log()
    assert_no_secret(g.log(), VALUES)


def read_head(conn: socket.socket) -> bytes:
    """What arrives on ``conn`` up to the end of a request head (less, if the peer closes first)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class _LoopbackServer:
    """A tiny HTTP/1.1 server of this process on a real loopback socket: an accept loop in a thread, each
    connection handed to :meth:`_handle` (the subclass's answer)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


class RawUpstream(_LoopbackServer):
    """Answers every request with fixed bytes: the recording upstream cannot send arbitrary hop-by-hop response
    headers, this one can."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            read_head(conn)
            conn.sendall(self.response)


def test_response_hop_by_hop_headers_removed(tmp_path: Path) -> None:
    raw = RawUpstream(
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: 11\r\n"
        b"Connection: close, X-Hop-Resp\r\n"
        b"X-Hop-Resp: named in Connection\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Proxy-Authenticate: Basic realm=x\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"X-Kept: yes\r\n"
        b"Set-Cookie: a=1\r\n"
        b"\r\n"
        b'{"ok":true}'
    )
    g = Gateway(tmp_path / "raw", raw.url)
    try:
        made = store_key(g, "k", "servers:read")
        VALUES.append(made["value"])
        with g.client(verify=False) as c:
            resp = c.get("/v1/servers", headers=bearer(made["value"]))
        assert resp.status_code == 200
        assert resp.json() == {"ok": True}
        for gone in ("x-hop-resp", "keep-alive", "proxy-authenticate", "proxy-connection"):
            assert gone not in resp.headers, gone
        assert resp.headers["x-kept"] == "yes"
        assert resp.headers["set-cookie"] == "a=1"
    finally:
        g.stop()
        raw.close()
    assert_no_secret(g.log(), VALUES)


class OneAnswerUpstream(_LoopbackServer):
    """An upstream whose keep-alive runs out just as the next request arrives: on every connection it answers the
    first request (keep-alive, nothing says the connection will close), then reads the next request and closes
    without answering. The gateway's pooled connection is then dead exactly when it is used, which aiohttp's
    session answered by sending an idempotent request once more on a new connection; the forwarder does too."""

    ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'

    def __init__(self) -> None:
        self.unanswered = 0  # requests that reached a connection after its one answer
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                if not read_head(conn):
                    return
                conn.sendall(self.ANSWER)
                if conn.recv(65536):  # the next request: close instead of answering
                    self.unanswered += 1
            except OSError:
                return


def test_pooled_connection_closed_by_upstream_is_retried_once_for_idempotent_methods(tmp_path: Path) -> None:
    up = OneAnswerUpstream()
    g = Gateway(tmp_path / "stale", up.url, {"upstream": {"pool_size": 1}})
    try:
        made = store_key(g, "k", "servers:*")
        VALUES.append(made["value"])
        with g.client(verify=False) as c:
            for _ in range(3):
                resp = c.get("/v1/servers", headers=bearer(made["value"]))
                assert resp.status_code == 200, resp.text
                assert resp.json() == {"ok": True}
            # Each GET after the first met the closed pooled connection and went out again on a new one.
            assert up.unanswered == 2 and up.connections == 3
            # A POST is not idempotent: it is never sent twice, and the client is told the upstream failed.
            resp = c.post("/v1/servers", headers=bearer(made["value"]))
            assert resp.status_code == 502
            assert resp.json()["error"]["code"] == "upstream_unavailable"
            assert up.unanswered == 3 and up.connections == 3
    finally:
        g.stop()
        up.close()
    assert "Traceback" not in g.log()
    assert_no_secret(g.log(), VALUES)

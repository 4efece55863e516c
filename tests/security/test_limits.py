"""What one request or one client may cost: header size and count (431), target length (414),
body size per route (413, before reading and while streaming), the head deadline (slowloris), the keep-alive
idle limit, the per-process concurrency cap, and unauthenticated bodies never read.

The shared gateway has the default limits (16 KiB / 100 headers, 8 KiB target) and 1000 bytes on
``/v1/backups/**``. A second gateway of this module has short timeouts and a cap of 3 concurrent requests.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.security.conftest import BACKUP_LIMIT, Env
from tests.support.attack import connect, exchange, read_all, request, responses
from tests.support.procs import Gateway, Upstream


def test_header_block_over_the_limit_is_431(env: Env) -> None:
    ex = exchange(env.port, request("GET", "/v1/servers", env.auth(), b"X-Big: " + b"a" * 17_000))
    assert ex.status == 431
    assert ex.first.json()["error"]["code"] == "headers_too_large"
    assert ex.closed
    assert env.seen() == []


def test_too_many_headers_is_431(env: Env) -> None:
    ex = exchange(env.port, request("GET", "/v1/servers", env.auth(), *[b"X-H%d: 1" % i for i in range(101)]))
    assert ex.status == 431
    assert ex.closed
    assert env.seen() == []


def test_headers_under_the_limits_pass(env: Env) -> None:
    """The control for both: 95 headers, 15 KB in all, are fine."""
    lines = [b"X-H%d: %s" % (i, b"v" * 150) for i in range(95)]
    ex = exchange(env.port, request("GET", "/v1/servers", env.auth(), *lines))
    assert ex.status == 200, ex.raw[:200]
    assert len(env.seen()) == 1


def test_never_ending_header_line_is_cut_off(env: Env) -> None:
    """One header line that never ends: the parser would buffer it all; the gateway stops at its limit."""
    with connect(env.port) as s:
        start = time.monotonic()
        s.sendall(b"GET /v1/servers HTTP/1.1\r\nHost: x\r\n" + env.auth() + b"\r\nX-Endless: ")
        sent = 0
        try:
            while sent < 8 * 1024 * 1024:
                s.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        ex = read_all(s, start, 5.0)
    assert sent < 8 * 1024 * 1024, "the gateway kept reading an endless header"
    assert ex.status in (0, 431)  # the answer may be lost to the reset of the bytes still in flight
    assert env.seen() == []


def test_target_over_the_limit_is_414(env: Env) -> None:
    ex = exchange(env.port, request("GET", "/v1/servers?q=" + "a" * 8200, env.auth()))
    assert ex.status == 414
    assert ex.first.json()["error"]["code"] == "uri_too_long"
    assert ex.closed
    ok = exchange(env.port, request("GET", "/v1/servers?q=" + "a" * 8000, env.auth()))
    assert ok.status == 200
    assert len(env.seen()) == 1


def test_body_over_the_route_limit_is_refused_before_it_is_sent(env: Env) -> None:
    """413 on Content-Length alone: the answer comes although not a byte of the body was sent."""
    head = request("POST", "/v1/backups", env.auth(env.writer), b"Content-Length: %d" % (BACKUP_LIMIT + 1))
    ex = exchange(env.port, head)
    assert ex.status == 413
    assert ex.first.json()["error"]["code"] == "payload_too_large"
    assert ex.closed
    assert env.seen() == []


def test_chunked_body_over_the_route_limit_is_cut_off(env: Env) -> None:
    chunks = b"".join(b"258\r\n" + b"x" * 600 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    ex = exchange(env.port, request("POST", "/v1/backups", env.auth(env.writer), b"Transfer-Encoding: chunked",
                                    body=chunks))
    assert ex.status == 413, ex.raw[:300]
    assert ex.closed
    assert env.seen() == []  # the upstream got a broken-off request, never a complete one


def test_bodies_within_the_limits_pass(env: Env) -> None:
    """The control: 900 bytes chunked to the limited route, 5000 bytes to an unlimited one."""
    chunked = b"384\r\n" + b"x" * 900 + b"\r\n0\r\n\r\n"
    a = exchange(env.port, request("POST", "/v1/backups", env.auth(env.writer), b"Transfer-Encoding: chunked",
                                   body=chunked))
    b = exchange(env.port, request("POST", "/v1/servers", env.auth(env.writer), b"Content-Length: 5000",
                                   body=b"y" * 5000))
    assert (a.status, b.status) == (200, 200)
    assert [r["body_bytes"] for r in env.seen()] == [900, 5000]


def test_unauthenticated_body_is_never_read(env: Env) -> None:
    """100 MB announced, no key: 401 at once and the connection closed, not drained; nothing forwarded."""
    with connect(env.port) as s:
        start = time.monotonic()
        s.sendall(b"POST /v1/servers HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n" + b"z" * 65536)
        ex = read_all(s, start, 5.0)
        assert ex.status == 401
        assert ex.closed
        assert ex.seconds < 2.0
        with pytest.raises(OSError):  # noqa: PT012 - the peer is gone: sending the rest fails
            for _ in range(400):
                s.sendall(b"z" * 262144)
    assert env.seen() == []


def test_expect_continue_without_a_key_gets_no_100(env: Env) -> None:
    ex = exchange(env.port, request("POST", "/v1/servers", b"Content-Length: 1000000", b"Expect: 100-continue"))
    assert ex.status == 401
    assert b"100 Continue" not in ex.raw
    assert env.seen() == []


# --- a gateway with short timeouts and a small concurrency cap ------------------------------------------------


class Tight:
    def __init__(self, upstream: Upstream, gateway: Gateway, key: str) -> None:
        self.upstream, self.gateway, self.key = upstream, gateway, key

    def auth(self) -> bytes:
        return b"Authorization: Bearer " + self.key.encode()


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tight]:
    work = tmp_path_factory.mktemp("tight")
    up = Upstream(work)
    gw = Gateway(work / "gw", up.url, settings={"limits": {
        "header_timeout_seconds": 1.5, "keep_alive_seconds": 1.0, "max_connections": 3, "body_timeout_seconds": 1.0,
    }})
    try:
        yield Tight(up, gw, gw.create_key("reader", "servers:read")["value"])
    finally:
        gw.stop()
        up.stop()


def test_slowloris_head_is_cut_off(tight: Tight) -> None:
    """One byte every 0.2 s: the head never completes, and the gateway ends it at its deadline (408)."""
    head = b"GET /v1/servers HTTP/1.1\r\nHost: x\r\n" + tight.auth() + b"\r\nX-Slow: " + b"s" * 200
    with connect(tight.gateway.port, timeout=10) as s:
        start = time.monotonic()
        closed_after = None
        for byte in head:
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - start
                break
            time.sleep(0.2)
            if time.monotonic() - start > 8:
                break
        ex = read_all(s, time.monotonic(), 3.0)
    took = closed_after if closed_after is not None else time.monotonic() - start
    assert ex.status in (0, 408)
    assert ex.closed or closed_after is not None
    assert 1.0 < took < 6.0, took
    assert [r for r in tight.upstream.records() if r["path"] == "/v1/servers"] == []


def test_trickled_body_is_cut_off(tight: Tight) -> None:
    """A body that stops arriving: after limits.body_timeout_seconds without a byte the gateway answers 408 and
    closes; the upstream never gets a complete request. A body that keeps coming, slowly, is not cut off."""
    writer = tight.gateway.create_key("writer", "servers:write")["value"]
    auth = b"Authorization: Bearer " + writer.encode()
    head = request("POST", "/v1/servers/stalled", auth, b"Content-Length: 100", b"Content-Type: text/plain")
    with connect(tight.gateway.port, timeout=10) as s:
        start = time.monotonic()
        s.sendall(head + b"x" * 10)
        ex = read_all(s, start, 6.0)
        took = time.monotonic() - start
    assert ex.status == 408, ex.raw[:300]
    assert ex.first.json()["error"]["code"] == "request_timeout"
    assert "body" in ex.first.json()["error"]["message"]
    assert ex.closed and 0.8 < took < 4.0, took
    # The recording upstream records a request once its whole body has arrived: a broken-off one never is.
    assert [r for r in tight.upstream.records() if r["path"] == "/v1/servers/stalled"] == []

    head = request("POST", "/v1/servers/slow", auth, b"Content-Length: 12", b"Content-Type: text/plain")
    with connect(tight.gateway.port, timeout=10) as s:
        s.sendall(head)
        for part in (b"abcd", b"efgh", b"ijkl"):  # 0.6 s apart: each under the 1 s limit, 1.8 s in all
            time.sleep(0.6)
            s.sendall(part)
        ex = read_all(s, time.monotonic(), 5.0)
    assert ex.status == 200, ex.raw[:300]
    assert [r["body_bytes"] for r in tight.upstream.records() if r["path"] == "/v1/servers/slow"] == [12]


def test_idle_connection_is_closed_silently(tight: Tight) -> None:
    with connect(tight.gateway.port, timeout=10) as s:
        ex = read_all(s, time.monotonic(), 6.0)
    assert ex.closed and ex.raw == b""
    assert 1.0 < ex.seconds < 5.0


def test_idle_keep_alive_connection_is_closed(tight: Tight) -> None:
    with connect(tight.gateway.port, timeout=10) as s:
        start = time.monotonic()
        s.sendall(request("GET", "/v1/servers", tight.auth()))
        ex = read_all(s, start, 6.0, want=2)  # wait for the close, not just the answer
    assert ex.status == 200
    assert ex.closed and 0.8 < ex.seconds < 4.5


def test_concurrency_cap_answers_503_json(tight: Tight) -> None:
    """Three slow requests hold the cap; a fourth is refused at once with the JSON 503, then all is well."""
    results: list[int] = []

    def slow() -> None:
        results.append(exchange(tight.gateway.port, request("GET", "/v1/servers/__slow?seconds=2.5", tight.auth()),
                                timeout=10).status)

    threads = [threading.Thread(target=slow) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(tight.upstream.records()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    over = exchange(tight.gateway.port, request("GET", "/v1/servers", tight.auth()))
    for t in threads:
        t.join()
    assert over.status == 503, over.raw[:300]
    assert over.first.json()["error"]["code"] == "service_unavailable"
    assert over.closed
    assert sorted(results) == [200, 200, 200]
    after = exchange(tight.gateway.port, request("GET", "/v1/servers", tight.auth()))
    assert after.status == 200


def test_refused_connections_do_not_leak(tight: Tight) -> None:
    """After many refused and abandoned connections the gateway still serves (the cap counts live ones)."""
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", tight.gateway.port)) as s:
            s.sendall(b"GET /v1/servers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")
    for _ in range(10):
        socket.create_connection(("127.0.0.1", tight.gateway.port)).close()
    ex = exchange(tight.gateway.port, request("GET", "/v1/servers", tight.auth()))
    assert ex.status == 200
    assert len(responses(ex.raw)) == 1

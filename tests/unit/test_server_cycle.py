"""The gateway's response writer (gateway.doors.proxy.protocol.JoinedHeadCycle) against uvicorn's own, byte for byte.

Two real uvicorn servers on loopback run the same ASGI app: one with uvicorn's httptools protocol, one with the
gateway's. Every case is sent as raw bytes on a socket to both, and what comes back must be identical: the
gateway's writer changes how many writes a response takes, never what the client receives. A last test checks
the one timing promise: a head whose body is late is not held back with it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from gateway.config.settings import Settings
from gateway.doors.proxy.protocol import http_protocol


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]

    async def start(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers or []})

    async def body(data: bytes, more: bool = False) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": more})

    cl = b"content-length"
    if path == "/cl":
        await start(200, [(cl, b"5"), (b"Content-Type", b"text/plain")])
        await body(b"hello")
    elif path == "/cl-two":
        await start(200, [(cl, b"10")])
        await body(b"hello", True)
        await body(b"world")
    elif path == "/cl-empty-end":
        await start(200, [(cl, b"3")])
        await body(b"abc", True)
        await body(b"")
    elif path == "/chunked":
        await start(200, [(b"x-a", b"1")])
        await body(b"ab", True)
        await body(b"cd", True)
        await body(b"")
    elif path == "/big":
        await start(200, [(cl, b"100000")])
        await body(b"x" * 100000)
    elif path == "/204":
        await start(204)
        await body(b"")
    elif path == "/304":
        await start(304, [(b"etag", b'"x"')])
        await body(b"")
    elif path == "/close":
        await start(200, [(cl, b"2"), (b"Connection", b"keep-alive, Close")])
        await body(b"ok")
    elif path == "/bad-value":
        await start(200, [(b"x-bad", b"a\nb")])
        await body(b"")
    elif path == "/bad-name":
        await start(200, [(b"x bad", b"1")])
        await body(b"")
    elif path == "/cl-twice":  # the first Content-Length decides
        await start(200, [(cl, b"5"), (b"Content-Length", b"7")])
        await body(b"hello")
    elif path == "/te-then-cl":  # chunked wins over a Content-Length, in either order
        await start(200, [(b"Transfer-Encoding", b"chunked"), (cl, b"5")])
        await body(b"hello")
    elif path == "/cl-then-te":
        await start(200, [(cl, b"5"), (b"transfer-encoding", b"Chunked")])
        await body(b"hello")
    elif path == "/te-other":  # a coding other than chunked leaves the Content-Length in charge
        await start(200, [(b"transfer-encoding", b"gzip"), (cl, b"5")])
        await body(b"hello")
    elif path.startswith("/value/"):  # /value/<hex of the value>: one header with that value
        await start(200, [(cl, b"2"), (b"x-v", bytes.fromhex(path[7:]))])
        await body(b"ok")
    elif path.startswith("/name/"):  # /name/<hex of the name>
        await start(200, [(cl, b"2"), (bytes.fromhex(path[6:]), b"1")])
        await body(b"ok")
    elif path == "/longer":
        await start(200, [(cl, b"3")])
        await body(b"hello")
    elif path == "/shorter":
        await start(200, [(cl, b"9")])
        await body(b"hello")
    elif path.startswith("/scope"):  # what the server put in the scope, as the body
        seen = repr([scope[k] for k in ("method", "path", "raw_path", "query_string", "http_version", "root_path",
                                        "scheme", "type")]).encode()
        await start(200, [(cl, str(len(seen)).encode())])
        await body(seen)
    elif path == "/echo":  # the request body, as received
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        data = b"".join(parts)
        await start(200, [(cl, str(len(data)).encode())])
        await body(data)
    elif path == "/late":
        await start(200, [(cl, b"4")])
        await asyncio.sleep(0.5)
        await body(b"late")
    else:
        await start(404, [(cl, b"0")])
        await body(b"")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(http: Any) -> Iterator[int]:
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=http, lifespan="on", access_log=False,
                            server_header=False, date_header=False, log_level="critical")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def plain() -> Iterator[int]:
    yield from _serve("httptools")


@pytest.fixture(scope="module")
def ours() -> Iterator[int]:
    yield from _serve(http_protocol(Settings()))


def _exchange(port: int, data: bytes, wait: float = 0.3) -> bytes:
    """Send ``data``, then read until the server closes or is quiet for ``wait`` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return out
            if not chunk:
                return out
            out += chunk


# Request line -> what uvicorn is expected to send (so that each case is known to test something).
CASES = {
    "GET /cl HTTP/1.1": b"hello", "GET /cl-two HTTP/1.1": b"helloworld", "GET /cl-empty-end HTTP/1.1": b"abc",
    "GET /chunked HTTP/1.1": b"2\r\nab\r\n", "GET /big HTTP/1.1": b"x" * 1000, "GET /204 HTTP/1.1": b" 204 ",
    "GET /304 HTTP/1.1": b" 304 ", "HEAD /cl HTTP/1.1": b"content-length: 5", "HEAD /chunked HTTP/1.1": b"x-a: 1",
    "GET /close HTTP/1.1": b"Close", "GET /cl HTTP/1.0": b"connection: close", "GET /chunked HTTP/1.0": b"0\r\n",
    "GET /longer HTTP/1.1": b"content-length: 3", "GET /shorter HTTP/1.1": b"hello",
    "GET /cl-twice HTTP/1.1": b"content-length: 7", "GET /te-then-cl HTTP/1.1": b"5\r\nhello\r\n",
    "GET /cl-then-te HTTP/1.1": b"5\r\nhello\r\n", "GET /te-other HTTP/1.1": b"gzip",
    # The scope the server builds for the application (the protocol makes the cycle itself on the usual path).
    "GET /scope/a%20b/%2F?x=1&y=%2F HTTP/1.1": b"'/scope/a b//', b'/scope/a%20b/%2F', b'x=1&y=%2F', '1.1'",
    "GET /scope HTTP/1.0": b"'GET', '/scope', b'/scope', b'', '1.0'", "OPTIONS /scope? HTTP/1.1": b"'OPTIONS'",
    "DELETE /scope/%E2%82%AC HTTP/1.1": "'/scope/\u20ac'".encode(),
    # A bad header: uvicorn sends nothing and closes the connection.
    "GET /bad-value HTTP/1.1": b"", "GET /bad-name HTTP/1.1": b"",
    # Each value byte class: a lone CR or LF, NUL, other controls and DEL are refused; tab, space, obs-text pass.
    **{f"GET /value/{v.hex()} HTTP/1.1": b"x-v: " + v if ok else b""
       for v, ok in [(b"a\rb", False), (b"a\nb", False), (b"a\r\nx-i: 1", False), (b"a\x00b", False),
                     (b"\x01", False), (b"a\x1fb", False), (b"a\x7fb", False), (b"a\tb", True), (b"a b", True),
                     (b"caf\xe9", True), (b"~!#$%&'()*+,-./:;<=>?@[]^_`{|}", True)]},
    # Names: separators, space, tab and controls are refused.
    **{f"GET /name/{n.hex()} HTTP/1.1": b"x-ok: 1" if n == b"X-Ok" else b""
       for n in [b"X-Ok", b"x:y", b"x y", b"x\ty", b"x\x00", b"x(y", b'x"y', b"x\ry"]},
}


@pytest.mark.parametrize("line", list(CASES))
def test_same_bytes_as_uvicorn(plain: int, ours: int, line: str) -> None:
    request = f"{line}\r\nHost: x\r\n\r\n".encode()
    expected = _exchange(plain, request)
    assert CASES[line] in expected and (expected or not CASES[line])
    assert _exchange(ours, request) == expected


def test_same_bytes_for_pipelined_keep_alive_requests(plain: int, ours: int) -> None:
    request = b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in ("/cl", "/chunked", "/204", "/cl-two"))
    expected = _exchange(plain, request)
    assert expected.count(b"HTTP/1.1 ") == 4
    assert _exchange(ours, request) == expected


@pytest.mark.parametrize("body", [
    b"Content-Length: 5\r\n\r\nhello",
    b"Transfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
    b"Content-Length: 100000\r\n\r\n" + b"y" * 100000,
])
def test_same_bytes_for_a_request_body(plain: int, ours: int, body: bytes) -> None:
    request = b"POST /echo HTTP/1.1\r\nHost: x\r\n" + body
    expected = _exchange(plain, request)
    assert expected.startswith(b"HTTP/1.1 200 ") and (expected.endswith(b"hello") or expected.endswith(b"y" * 1000))
    assert _exchange(ours, request) == expected


def test_a_late_body_does_not_hold_its_head_back(ours: int) -> None:
    with socket.create_connection(("127.0.0.1", ours), timeout=5) as s:
        s.sendall(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.monotonic()
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(65536)
        head_at = time.monotonic() - t0
        rest = head.split(b"\r\n\r\n", 1)[1]
        while len(rest) < 4:
            rest += s.recv(65536)
        body_at = time.monotonic() - t0
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert head_at < 0.3, f"the head waited for the body ({head_at:.2f} s)"
    assert rest == b"late" and body_at >= 0.45

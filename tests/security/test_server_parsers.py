"""What uvicorn's two HTTP/1.1 parsers accept on their own: the findings behind docs/security.md, kept true.

Each parser runs in a real uvicorn server (in a thread, as httpx's own tests do) in front of an ASGI app that
answers with what it was handed. "accepted" means the app was called; "refused" means uvicorn answered 400
itself. The gateway runs httptools with gateway.doors.proxy.protocol's protocol and the pipeline's framing checks: the
last test sends every case that either parser lets through to a real ``gateway serve`` and expects a refusal, but
for the well-framed ones in FORWARDED, which tests/security/test_framing.py follows to the upstream.
If a uvicorn, h11 or httptools upgrade changes a row, this test says which, and docs/security.md needs the
same change.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from tests.security.conftest import Env
from tests.support.attack import exchange
from tests.support.procs import free_port

A, R = "accepted", "refused"
POST = b"POST / HTTP/1.1\r\nHost: a\r\n"
GET = b"GET / HTTP/1.1\r\nHost: a\r\n"

# name: (request, h11, httptools)
CASES: dict[str, tuple[bytes, str, str]] = {
    "cl-and-te": (POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", A, R),
    "two-cl-differ": (POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", R, R),
    "two-cl-same": (POST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", A, R),
    "cl-list": (POST + b"Content-Length: 5, 5\r\n\r\nhello", A, R),
    "cl-plus": (POST + b"Content-Length: +5\r\n\r\nhello", R, R),
    "cl-trailing-space": (POST + b"Content-Length: 5 \r\n\r\nhello", A, A),
    "te-gzip": (POST + b"Transfer-Encoding: gzip\r\n\r\nhello", R, R),
    "te-gzip-chunked": (POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", R, A),
    "te-chunked-chunked": (POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", R, R),
    "te-xchunked": (POST + b"Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", R, R),
    "te-on-http10": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", A, A),
    "obs-fold": (GET + b"X-A: b\r\n c\r\n\r\n", A, R),
    "bare-lf": (b"GET / HTTP/1.1\nHost: a\nX-A: b\n\n", A, R),
    "ctl-in-value": (GET + b"X-A: b\x01c\r\n\r\n", A, R),
    "chunk-size-space": (POST + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", A, R),
    "no-host": (b"GET / HTTP/1.1\r\n\r\n", R, A),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", R, A),
    "http-0.9": (b"GET /\r\n\r\n", R, A),
    "lowercase-method": (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", A, R),
    "unknown-method": (b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", A, R),
    "absolute-form": (b"GET http://evil.example/x HTTP/1.1\r\nHost: a\r\n\r\n", A, A),
    "fragment": (b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", A, A),
}
# What the application is shown of these targets: h11 passes the raw target, httptools only its path.
TARGET_SEEN = {"absolute-form": ("http://evil.example/x", "/x"), "fragment": ("/a#b", "/a")}
# The Content-Length values the application is handed. llhttp keeps trailing OWS; uvicorn's httptools protocol
# passed it on until 0.54 and strips it (as RFC 9110 5.5 says) from 0.55. Either way llhttp framed 5 bytes.
_UVICORN = tuple(int(p) for p in uvicorn.__version__.split(".")[:2])
LENGTH_SEEN = {"cl-trailing-space": (["5"], ["5 "] if _UVICORN < (0, 55) else ["5"])}
# Valid messages (RFC 9110 5.5: "5 " is "5") that the gateway forwards, normalised, rather than refuses.
FORWARDED = {"cl-trailing-space"}


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    lengths = [v.decode("latin-1") for n, v in scope["headers"] if n == b"content-length"]
    doc = json.dumps({"target": scope["raw_path"].decode("latin-1"), "body": body.decode("latin-1"),
                      "content_length": lengths}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(doc))]})
    await send({"type": "http.response.body", "body": doc})


@pytest.fixture(scope="module", params=["h11", "httptools"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    port = free_port()
    config = uvicorn.Config(echo, host="127.0.0.1", port=port, http=request.param, lifespan="off",
                            log_level="critical")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started
    yield request.param, port
    srv.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("case", sorted(CASES))
def test_parser_findings(server: tuple[str, int], case: str) -> None:
    impl, port = server
    raw, h11, httptools = CASES[case]
    expected = h11 if impl == "h11" else httptools
    ex = exchange(port, raw, timeout=3)
    got = A if ex.status == 200 else R if ex.status == 400 else f"status {ex.status}"
    assert got == expected, f"{impl} {case}: documented {expected}, now {got}"
    if case in TARGET_SEEN and got == A:
        assert ex.first.json()["target"] == TARGET_SEEN[case][0 if impl == "h11" else 1]
    if case in LENGTH_SEEN:
        assert ex.first.json()["content_length"] == LENGTH_SEEN[case][0 if impl == "h11" else 1]
        assert ex.first.json()["body"] == "hello"


@pytest.mark.parametrize("case", sorted(n for n, (_, h, t) in CASES.items() if A in (h, t) and n not in FORWARDED))
def test_the_gateway_refuses_what_either_parser_lets_through(env: Env, case: str) -> None:
    raw = CASES[case][0]
    # The same request with a valid key: only its framing (or method, or target) can be why it is refused.
    head, sep, rest = raw.partition(b"\r\n")
    raw = head + sep + env.auth(env.writer) + b"\r\n" + rest if sep else raw
    ex = exchange(env.port, raw)
    assert ex.status in (400, 405), ex.raw[:300]
    assert ex.first.json()["error"]["code"] in ("invalid_request", "method_not_allowed")
    assert env.seen() == []

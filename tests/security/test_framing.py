"""Message framing that two parsers could read differently is refused and the connection closed.

Each request carries a valid key for ``POST /v1/servers`` so only its framing can be the reason for a refusal.
Expected: 400 with the JSON error body, the connection closed by the gateway, and nothing at the upstream
(not the request, not a request smuggled inside its body). docs/security.md records which of these uvicorn's
two HTTP parsers (h11, httptools) accept on their own; the gateway runs httptools with the checks it lacks.
Whitespace around a framing value is not ambiguity (RFC 9110 5.5): those messages are forwarded, normalised,
with the same answer whichever uvicorn version is installed (OWS_FRAMING below).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.app import create_app
from gateway.config.settings import load_settings
from tests.security.conftest import Env
from tests.support.attack import exchange, responses
from tests.support.procs import SECRET

# The smuggled request: if any part of the chain reads the outer body as a new request, it hits the upstream.
SMUGGLED = b"GET /v1/invoices HTTP/1.1\r\nHost: x\r\n\r\n"

AMBIGUOUS = {
    "cl-and-te": b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "te-and-cl": b"Transfer-Encoding: chunked\r\nContent-Length: 44\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "two-cl-differ": b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "two-cl-same": b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "cl-list": b"Content-Length: 5, 5\r\n\r\nhello",
    "cl-plus": b"Content-Length: +5\r\n\r\nhello",
    "cl-inner-space": b"Content-Length: 5 5\r\n\r\nhello",
    "cl-vertical-tab": b"Content-Length: 5\x0b\r\n\r\nhello",
    "cl-hex": b"Content-Length: 0x5\r\n\r\nhello",
    "cl-negative": b"Content-Length: -1\r\n\r\nhello",
    "cl-decimal": b"Content-Length: 5.0\r\n\r\nhello",
    "cl-empty": b"Content-Length: \r\n\r\nhello",
    "cl-huge": b"Content-Length: 99999999999999999999999\r\n\r\nhello",
    "cl-non-ascii-digit": "Content-Length: \u0665\r\n\r\nhello".encode(),
    "te-gzip": b"Transfer-Encoding: gzip\r\n\r\nhello",
    "te-gzip-chunked": b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-chunked-chunked": b"Transfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-chunked-identity": b"Transfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-identity": b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello",
    "te-xchunked": b"Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-chunked-param": b"Transfer-Encoding: chunked;q=1\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-twice": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-vertical-tab": b"Transfer-Encoding: \x0bchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-space-before-colon": b"Transfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-obs-fold": b"Transfer-Encoding: gzip\r\n ,chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "obs-fold": b"Content-Length: 5\r\nX-Folded: a\r\n b\r\n\r\nhello",
    "bare-lf-headers": b"Content-Length: 5\nX-A: b\n\nhello",
    "bare-cr": b"Content-Length: 5\rX-A: b\r\n\r\nhello",
    "chunk-size-junk": b"Transfer-Encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n",
    "chunk-size-hex-prefix": b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-negative": b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-overflow": b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
    "chunk-bare-lf": b"Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
    "nul-in-header": b"Content-Length: 5\r\nX-A: b\x00c\r\n\r\nhello",
    "space-in-name": b"Content-Length: 5\r\nX A: b\r\n\r\nhello",
}


def _post(env: Env, framing: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    return (b"POST /v1/servers " + version + b"\r\nHost: gateway.test\r\n" + env.auth(env.writer) + b"\r\n"
            + framing)


def test_control_chunked_body_is_forwarded(env: Env) -> None:
    """A single final chunked coding is fine (any case): the body arrives whole, once."""
    for te in (b"chunked", b"Chunked"):
        ex = exchange(env.port, _post(env, b"Transfer-Encoding: " + te + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
        assert ex.status == 200, ex.raw[:300]
    assert [r["body_bytes"] for r in env.seen()] == [5, 5]


@pytest.mark.parametrize("name", sorted(AMBIGUOUS))
def test_ambiguous_framing_is_refused_and_closed(env: Env, name: str) -> None:
    ex = exchange(env.port, _post(env, AMBIGUOUS[name]))
    assert ex.status == 400, ex.raw[:300]
    assert ex.first.json()["error"]["code"] == "invalid_request"
    assert ex.closed, "the connection must be closed after a framing error"
    assert len(responses(ex.raw)) == 1
    assert env.seen() == []


# Whitespace around a field value is not part of it (RFC 9110 5.5): these are well-framed messages, read by llhttp
# as a 5-byte body whatever uvicorn hands the application (0.54 passes "5 " on, 0.55 strips trailing OWS).
OWS_FRAMING = {
    "cl-trailing-space": b"Content-Length: 5 \r\n",
    "cl-leading-space": b"Content-Length:  5\r\n",
    "cl-both-ows": b"Content-Length: \t5 \t \r\n",
    "te-trailing-space": b"Transfer-Encoding: chunked \r\n",
}


@pytest.mark.parametrize("name", sorted(OWS_FRAMING))
def test_whitespace_around_a_framing_value_is_not_part_of_it(env: Env, name: str) -> None:
    """RFC 9110 5.5: a field value excludes its leading and trailing whitespace (OWS), so ``Content-Length: 5 ``
    is ``Content-Length: 5``. RFC 9112 6.3: a proxy must not frame a message differently from the server behind
    it. The gateway forwards it with exactly one ``Content-Length`` of the digits alone (or, for chunked, the
    body it read), on every uvicorn version, and a request pipelined after the body is read where llhttp ends
    the first: the upstream receives both, each whole."""
    chunked = name.startswith("te-")
    body = b"5\r\nhello\r\n0\r\n\r\n" if chunked else b"hello"
    first = _post(env, OWS_FRAMING[name] + b"\r\n" + body)
    second = b"GET /v1/servers/2 HTTP/1.1\r\nHost: gateway.test\r\n" + env.auth() + b"\r\n\r\n"
    ex = exchange(env.port, first + second, want=2)
    assert [r.status for r in responses(ex.raw)] == [200, 200], ex.raw[:300]
    post, get = env.seen()
    assert (post["method"], post["body_bytes"], get["target"]) == ("POST", 5, "/v1/servers/2")
    lengths = [v for k, v in post["headers"] if k.lower() == "content-length"]
    if chunked:
        assert lengths == []
    else:
        assert lengths == ["5"]
        assert not any(k.lower() == "transfer-encoding" for k, _ in post["headers"])


def _through_the_gate(env: Env, headers: list[tuple[bytes, bytes]], body: bytes) -> list[int]:
    """The statuses of ``POST /v1/servers`` with ``headers`` as an ASGI server hands them over, each sent to
    the shared gateway's own app (its config, key store and upstream) built in this process: the server in front
    is left out, so the pipeline alone decides."""
    settings = load_settings(env.gateway.config, environ={"GATEWAY_SECRET": SECRET})
    auth = b"Bearer " + env.writer["value"].encode()

    async def one(app: Any, header: tuple[bytes, bytes]) -> int:
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/v1/servers", "raw_path": b"/v1/servers", "query_string": b"",
            "root_path": "", "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", env.port),
            "headers": [(b"host", b"gateway.test"), (b"authorization", auth), header],
        }
        await app(scope, receive, send)
        return int(sent[0]["status"])

    async def run() -> list[int]:
        app = create_app(settings)
        forwarder = app.forwarders["live"]
        assert forwarder is not None
        await forwarder.start()
        try:
            return [await one(app, header) for header in headers]
        finally:
            await forwarder.close()
            await app.components.store.close()

    return asyncio.run(run())


def test_the_gate_frames_alike_whatever_the_server_strips(env: Env) -> None:
    """RFC 9110 5.5 and RFC 9112 6.3, under any ASGI server: uvicorn 0.54 hands the application llhttp's value
    with its trailing whitespace (``5 ``), 0.55 strips it, h11 strips both ends. The gateway's answer and what
    the upstream receives are the same for every spelling."""
    spellings = [
        (b"content-length", b"5"), (b"content-length", b"5 "), (b"content-length", b" 5\t"),
        (b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked "),
        (b"transfer-encoding", b"\tChunked "),
    ]
    assert _through_the_gate(env, spellings, b"hello") == [200] * len(spellings)
    seen = env.seen()
    assert [r["body_bytes"] for r in seen] == [5] * len(spellings)
    lengths = [[v for k, v in r["headers"] if k.lower() == "content-length"] for r in seen]
    assert lengths == [["5"]] * 3 + [[]] * 3


def test_transfer_encoding_on_http10_is_refused(env: Env) -> None:
    ex = exchange(env.port, _post(env, b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b"HTTP/1.0"))
    assert ex.status == 400
    assert ex.closed
    assert env.seen() == []


@pytest.mark.parametrize("host", [b"", b"Host: a\r\nHost: b\r\n"], ids=["none", "two"])
def test_http11_needs_exactly_one_host(env: Env, host: bytes) -> None:
    raw = b"GET /v1/servers HTTP/1.1\r\n" + host + env.auth() + b"\r\n\r\n"
    ex = exchange(env.port, raw)
    assert ex.status == 400
    assert env.seen() == []


def test_underscore_twin_of_a_framing_header_never_reaches_the_upstream(env: Env) -> None:
    """``Transfer_Encoding`` is not framing to llhttp, but a CGI-style upstream reads it as Transfer-Encoding."""
    ex = exchange(env.port, _post(env, b"Content-Length: 5\r\nTransfer_Encoding: chunked\r\nContent_Length: 0\r\n"
                                       b"\r\nhello"))
    assert ex.status == 200
    (rec,) = env.seen()
    assert rec["body_bytes"] == 5
    assert not any("_" in k for k, _ in rec["headers"])


# --- pipelining -----------------------------------------------------------------------------------------------


def test_pipelined_request_is_not_authorised_by_the_first_ones_key(env: Env) -> None:
    first = b"GET /v1/servers/1 HTTP/1.1\r\nHost: gateway.test\r\n" + env.auth() + b"\r\n\r\n"
    second = b"GET /v1/servers/2 HTTP/1.1\r\nHost: gateway.test\r\n\r\n"
    ex = exchange(env.port, first + second, want=2)
    assert [r.status for r in responses(ex.raw)] == [200, 401]
    assert [r["target"] for r in env.seen()] == ["/v1/servers/1"]


def test_pipelined_after_a_body_is_a_request_of_its_own(env: Env) -> None:
    """Bytes after the declared Content-Length are a new request: without a key it gets 401, and the
    upstream receives exactly the declared body."""
    first = _post(env, b"Content-Length: 5\r\n\r\nhello")
    second = b"GET /v1/servers/2 HTTP/1.1\r\nHost: gateway.test\r\n\r\n"
    ex = exchange(env.port, first + second, want=2)
    assert [r.status for r in responses(ex.raw)] == [200, 401]
    (rec,) = env.seen()
    assert rec["body_bytes"] == 5 and rec["method"] == "POST"


def test_pipelined_keyless_then_keyed(env: Env) -> None:
    first = b"GET /v1/servers/1 HTTP/1.1\r\nHost: gateway.test\r\n\r\n"
    second = b"GET /v1/servers/2 HTTP/1.1\r\nHost: gateway.test\r\n" + env.auth() + b"\r\n\r\n"
    ex = exchange(env.port, first + second, want=2)
    assert [r.status for r in responses(ex.raw)] == [401, 200]
    assert [r["target"] for r in env.seen()] == ["/v1/servers/2"]


def test_body_smuggled_after_a_keyless_request_never_reaches_the_upstream(env: Env) -> None:
    """A refused request with a body closes the connection: what follows is never parsed as a request."""
    first = b"POST /v1/servers HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 5\r\n\r\nhello"
    second = b"GET /v1/servers/2 HTTP/1.1\r\nHost: gateway.test\r\n" + env.auth() + b"\r\n\r\n"
    ex = exchange(env.port, first + second, want=2)
    assert [r.status for r in responses(ex.raw)] == [401]
    assert ex.closed
    assert env.seen() == []

"""Defence 4 of docs/security.md: message framing that two parsers could read differently is refused and the
connection closed.

Each request carries a valid key for ``POST /v1/servers`` so only its framing can be the reason for a refusal.
Expected: 400 with the JSON error body, the connection closed by the gateway, and nothing at the upstream
(not the request, not a request smuggled inside its body). docs/security.md records which of these uvicorn's
two HTTP parsers (h11, httptools) accept on their own; the gateway runs httptools with the checks it lacks.
"""

from __future__ import annotations

import pytest

from tests.security.conftest import Env
from tests.support.attack import exchange, responses

# The smuggled request: if any part of the chain reads the outer body as a new request, it hits the upstream.
SMUGGLED = b"GET /v1/invoices HTTP/1.1\r\nHost: x\r\n\r\n"

AMBIGUOUS = {
    "cl-and-te": b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "te-and-cl": b"Transfer-Encoding: chunked\r\nContent-Length: 44\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "two-cl-differ": b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "two-cl-same": b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "cl-list": b"Content-Length: 5, 5\r\n\r\nhello",
    "cl-plus": b"Content-Length: +5\r\n\r\nhello",
    "cl-trailing-space": b"Content-Length: 5 \r\n\r\nhello",
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

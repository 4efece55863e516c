"""The upstream leg: :class:`Forwarder` speaks HTTP/1.1 to the upstream itself, on the pooled asyncio
connections of :mod:`gateway.doors.proxy.upstream` (:mod:`gateway.doors.proxy.pool`; httptools' llhttp parses
the answers).

Little lies between the two sockets: the request head is one string formatted from the forwarded header pairs
and written at once, the response head reaches the client as the raw pairs llhttp saw, and a small answer is
sent in the loop pass that completed it. Nothing is buffered: the request body is read from ASGI ``receive``
only as fast as the upstream takes it (uvicorn stops reading the socket while its buffer is full), and the
response body is sent chunk by chunk as it arrives (each ``send`` waits while the client's socket is full). The
target is sent as the client wrote it, so the raw path and query reach the upstream byte for byte.

Bodies are streamed both ways with backpressure (``Content-Length`` bodies as they are, others chunked); an
idempotent request without a body is sent once more when its pooled connection turns out closed before any
answer (RFC 9110 9.2.2); the connect timeout answers 504, the read timeout 504 before the head and a truncated
answer after it; llhttp's response framing checks answer 502 (an unasked 101, a broken chunked body:
tests/security/test_upstream_responses.py); a bodiless request whose method implies a body says
``Content-Length: 0``; the request body is cut off past the route's limit (413) or after
``limits.body_timeout_seconds`` of silence (408).

WebSockets do not come this way: their handshake and relay are :mod:`gateway.doors.proxy.websocket`'s.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Sequence
from time import perf_counter
from typing import Protocol
from urllib.parse import SplitResult, unquote, urlsplit

from starlette.types import Receive, Send
from yarl import URL

from gateway.doors.proxy.pool import Pool
from gateway.doors.proxy.upstream import Connection, Disconnected, Malformed
from gateway.errors import BodyTimeout, GatewayError, PayloadTooLarge, UpstreamTimeout, UpstreamUnavailable

log = logging.getLogger("gateway.proxy")

Header = tuple[bytes, bytes]

# Response headers that describe the upstream connection, not the message (RFC 9110 7.6.1).
RESPONSE_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade",
     b"proxy-authenticate"}
)

# Not passed on either: the gateway sends its own X-Request-ID (the one it sent upstream) to the client.
_NOT_PASSED = RESPONSE_HOP_BY_HOP | {b"x-request-id"}
# Connection options that are not header names, or name headers that are dropped anyway.
_CONNECTION_OPTIONS = _NOT_PASSED | {b"close", b""}

# Methods sent once more when a pooled connection turns out to be closed (RFC 9110 9.2.2).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Methods whose request without a body does not say so; the others get Content-Length: 0 (as aiohttp sent it).
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_LAST_CHUNK = b"0\r\n\r\n"


class ClientGone(Exception):
    """The client went away while its request body was being streamed."""


class BadHeader(Exception):
    """A forwarded header name or value holds CR or LF: it would split the request head."""


class Tally(Protocol):
    """Where :meth:`Forwarder.forward` notes what it sent (the pipeline's per-request record)."""

    status: int
    t_head: float
    bytes_out: int


def basic_auth(parts: SplitResult) -> str | None:
    """The ``Authorization`` value (Basic, RFC 7617) for the credentials in an upstream URL, if it has any."""
    if parts.username is None:
        return None
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode("latin-1")
    return f"Basic {base64.b64encode(pair).decode()}"


class Forwarder:
    """The upstream of one environment: its connection pool, and the exchange of one request on it."""

    def __init__(self, url: str, *, connect_timeout: float, read_timeout: float, pool_size: int,
                 body_timeout: float | None = None, drop_response: frozenset[bytes] = frozenset()) -> None:
        parts = urlsplit(url)
        # Response headers never passed on: the hop-by-hop ones, and those the gateway sets itself (the CORS
        # headers, when it answers for CORS).
        self._not_passed = _NOT_PASSED | drop_response
        self._body_timeout = body_timeout
        self._base_path = parts.path.rstrip("/")
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._pool_size = pool_size
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._tls else 80)
        self._host_line = f"Host: {URL(url).host_port_subcomponent}\r\n"
        # Credentials in the upstream URL become Basic authentication, unless the request has its own.
        auth = basic_auth(parts)
        self._url_auth = f"Authorization: {auth}\r\n" if auth else ""
        self._pool: Pool | None = None

    async def start(self) -> None:
        self._pool = Pool(self._host, self._port, self._tls, self._host, self._pool_size, self._connect_timeout)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _head(self, method: str, raw_path: bytes, query: bytes, headers: Sequence[tuple[str, str]],
              chunked: bool, empty: bool) -> bytes:
        target = self._base_path + raw_path.decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        fields = "".join([f"{name}: {value}\r\n" for name, value in headers])
        # Every CR and LF must be one of the line ends just added: nothing the client or a key's metadata holds
        # may start a header line of its own (the server's parser refuses them already; this is the last check).
        lines = len(headers)
        if fields.count("\n") != lines or fields.count("\r") != lines or "\r\n" in target or " " in target:
            raise BadHeader()
        head = f"{method} {target} HTTP/1.1\r\n{self._host_line}{fields}"
        if self._url_auth and not any(name.lower() == "authorization" for name, _ in headers):
            head += self._url_auth
        if chunked:
            head += "Transfer-Encoding: chunked\r\n\r\n"
        elif empty:
            head += "Content-Length: 0\r\n\r\n"
        else:
            head += "\r\n"
        try:
            return head.encode("latin-1")  # the client's bytes, as they came (they were decoded as latin-1)
        except UnicodeEncodeError:
            return head.encode("utf-8")  # a key's metadata beyond latin-1: aiohttp's encoding of every header

    async def forward(
        self,
        method: str,
        raw_path: bytes,
        query: bytes,
        headers: Sequence[tuple[str, str]],
        has_body: bool,
        receive: Receive,
        send: Send,
        extra_response_headers: Sequence[Header] = (),
        body_limit: int | None = None,
        tally: Tally | None = None,
    ) -> int:
        """Forward one request and stream the answer to ``send``. Returns the status sent to the client.

        ``tally`` (when given) gets the status and the time of the response head as it is sent, and the
        number of body bytes sent. A body longer than ``body_limit`` bytes is cut off (the upstream sees an
        incomplete request) and answered 413. Raises :class:`GatewayError` (413/502/504) only while nothing
        has been sent yet."""
        pool = self._pool
        assert pool is not None, "Forwarder.start() was not awaited"
        chunked = empty = False
        if has_body:
            chunked = not any(name == "content-length" for name, _ in headers)
        elif method not in _BODILESS:
            empty = not any(name == "content-length" for name, _ in headers)
        try:
            head = self._head(method, raw_path, query, headers, chunked, empty)
        except BadHeader:
            log.warning("upstream request not sent: a header holds a line break")
            raise UpstreamUnavailable() from None
        retry = not has_body and method in _IDEMPOTENT
        read_timeout = self._read_timeout
        while True:
            try:
                conn = pool.idle_one() or await pool.acquire()
            except TimeoutError:
                raise UpstreamTimeout() from None
            except OSError as exc:
                log.warning("upstream request failed: %s", exc.__class__.__name__)
                raise UpstreamUnavailable() from None
            writer: asyncio.Task[None] | None = None
            try:
                conn.begin(method == "HEAD")
                conn.write(head)
                if has_body:
                    writer = asyncio.ensure_future(self._send_body(conn, receive, body_limit, chunked))
                await conn.head(None if has_body else read_timeout)
            except Disconnected as exc:
                _stop(conn, writer)
                if retry:
                    retry = False
                    continue
                log.warning("upstream request failed: %s", exc.__class__.__name__)
                raise UpstreamUnavailable() from None
            except ClientGone:
                _stop(conn, writer)
                return 499
            except GatewayError:
                _stop(conn, writer)
                raise
            except Malformed as exc:
                _stop(conn, writer)
                log.warning("upstream response refused: %s", exc)
                raise UpstreamUnavailable() from None
            except BaseException:
                _stop(conn, writer)
                raise
            break
        return await self._respond(conn, writer, send, extra_response_headers, tally)

    async def _respond(self, conn: Connection, writer: asyncio.Task[None] | None, send: Send,
                       extra_response_headers: Sequence[Header], tally: Tally | None) -> int:
        status = conn.status
        sent = 0
        try:
            out = _response_headers(conn.headers, self._not_passed)
            out.extend(extra_response_headers)
            if tally is not None:
                tally.status = status
                tally.t_head = perf_counter()
            if conn.done:
                # The whole answer is here (a small one, the usual case): one message, flushed with the head
                # ("gateway.body_ready": gateway.doors.proxy.protocol.JoinedHeadCycle).
                chunk = conn.take()
                sent = len(chunk)
                await send({"type": "http.response.start", "status": status, "headers": out,
                            "gateway.body_ready": True})
                await send({"type": "http.response.body", "body": chunk, "more_body": False})
                return status
            await send({"type": "http.response.start", "status": status, "headers": out})
            read_timeout = self._read_timeout
            try:
                while chunk := await conn.read(read_timeout):
                    sent += len(chunk)
                    if conn.done and not conn.chunks:
                        await send({"type": "http.response.body", "body": chunk, "more_body": False})
                        return status
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (GatewayError, Disconnected, Malformed) as exc:
                # Too late for an error answer: end without completing the body, so the server closes the
                # connection and the client sees a truncated response instead of a silently short one.
                log.warning("upstream response broke off: %s", exc.__class__.__name__)
                return status
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return status
        finally:
            if tally is not None:
                tally.bytes_out = sent
            if writer is not None and not writer.done():
                _stop(conn, writer)  # the upstream answered before taking the whole body: not reusable
            else:
                conn.finish()

    async def _send_body(self, conn: Connection, receive: Receive, limit: int | None, chunked: bool) -> None:
        """Stream the request body to the upstream, then start the wait for the head. What stops it (413, 408,
        the client gone, the upstream gone) ends the exchange with that error."""
        timeout = self._read_timeout
        try:
            async for chunk in _body(receive, limit, self._body_timeout):
                if chunked:
                    conn.writelines([b"%x\r\n" % len(chunk), chunk, b"\r\n"])
                else:
                    conn.write(chunk)
                await conn.drain(timeout)
            if chunked:
                conn.write(_LAST_CHUNK)
        except asyncio.CancelledError:
            raise
        except (GatewayError, ClientGone, Disconnected, Malformed) as exc:
            conn.fail(exc)
            return
        except OSError as exc:
            conn.fail(Disconnected(exc.__class__.__name__))
            return
        conn.arm(timeout)


def _stop(conn: Connection, writer: asyncio.Task[None] | None) -> None:
    """End an exchange that cannot finish: its body writer stopped, its connection closed."""
    if writer is not None and not writer.done():
        writer.cancel()
    conn.busy = False
    conn.close()


async def _body(receive: Receive, limit: int | None = None, timeout: float | None = None) -> AsyncIterator[bytes]:
    """The request body, piece by piece. Cut off with 413 past ``limit`` bytes, and with 408 when the next piece
    takes longer than ``timeout`` seconds (a client trickling its body would otherwise hold a connection here
    and one to the upstream for as long as it likes)."""
    left = limit
    while True:
        if timeout is None:
            message = await receive()
        else:
            try:
                async with asyncio.timeout(timeout):
                    message = await receive()
            except TimeoutError:
                log.info("request body: nothing for %.0f s, cut off (limits.body_timeout_seconds)", timeout)
                raise BodyTimeout() from None
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            if left is not None:
                left -= len(chunk)
                if left < 0:
                    raise PayloadTooLarge()
            yield chunk
        if not message.get("more_body", False):
            return


def _response_headers(raw: Sequence[tuple[bytes, bytes]], not_passed: frozenset[bytes] = _NOT_PASSED) -> list[Header]:
    """The upstream's headers less the hop-by-hop ones, and less those its ``Connection`` header names. The
    names in ``raw`` are in lower case already (:meth:`Connection.on_header` lowers them)."""
    out: list[Header] = []
    named: set[bytes] | None = None
    for header in raw:
        low = header[0]
        if low in not_passed:
            if low == b"connection" and header[1].lower() not in _CONNECTION_OPTIONS:
                # Anything but "Connection: keep-alive" (or close), the usual values, may name more to drop.
                tokens = {t.strip().lower() for t in header[1].split(b",")} - _CONNECTION_OPTIONS
                if tokens:
                    named = tokens if named is None else named | tokens
            continue
        out.append(header)
    if named:
        out = [h for h in out if h[0] not in named]
    return out

"""The upstream leg: one pooled aiohttp session per process, bodies streamed both ways.

Nothing is buffered: the request body is handed to aiohttp as an async generator over ASGI ``receive``
(uvicorn stops reading the socket while its buffer is full), and the response body is sent chunk by chunk as
it arrives (each ``send`` waits while the client's socket is full). The target is passed to aiohttp already
encoded, so the raw path and query reach the upstream byte for byte.

A request goes through aiohttp's own pieces (its connection pool, ``ClientRequest``, ``ClientResponse``) but
not through ``ClientSession.request``: that method is general (redirects, cookies, proxies from the
environment, tracing, client middlewares, a timer per request), none of which a proxy with fixed settings
uses, and it cost about 68,000 CPU instructions a request, a quarter of the upstream leg (callgrind,
loadtests/RESULTS.md). :meth:`Forwarder._exchange` is the part of it that applies here, including its one
retry of an idempotent request on a pooled connection the upstream had already closed. Those pieces are
aiohttp's internal interface, so ``pyproject.toml`` pins aiohttp to the minor versions the forwarding tests
(tests/e2e/test_core_forwarding.py) were run against: 3.11 to 3.14.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from time import perf_counter
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp.helpers import TimerNoop
from multidict import CIMultiDict
from starlette.types import Receive, Send
from yarl import URL

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


class ClientGone(Exception):
    """The client went away while its request body was being streamed."""


class Tally(Protocol):
    """Where :meth:`Forwarder.forward` notes what it sent (the pipeline's per-request record)."""

    status: int
    t_head: float
    bytes_out: int


# Only a body's own Content-Type is never invented (aiohttp would add application/octet-stream).
_NO_CONTENT_TYPE: CIMultiDict[None] = CIMultiDict({"Content-Type": None})


class _ProxyRequest(aiohttp.ClientRequest):
    """aiohttp's request without its default headers: the upstream sees ``Accept``, ``Accept-Encoding`` and
    ``User-Agent`` only when the client sent them (an invented Accept-Encoding would let the upstream compress
    for a client that cannot read it). Replaces ``skip_auto_headers``, which copies the header set per request."""

    def update_auto_headers(self, skip_auto_headers: Any) -> None:
        self._skip_auto_headers = _NO_CONTENT_TYPE

    def update_headers(self, headers: Any) -> None:
        # aiohttp's adds the forwarded headers one at a time, each tested against the spellings of Host; the
        # pipeline never forwards a Host header (the client's is consumed), so the set is built in one C call,
        # Host first, as aiohttp's own sends it (never None: the upstream URL is absolute).
        self.headers = CIMultiDict((("Host", self.url.host_port_subcomponent),))  # type: ignore[arg-type]
        if headers:
            self.headers.extend(headers)


# Methods aiohttp's session retries once when a pooled connection turns out to be closed (RFC 9110 9.2.2).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_NO_TIMER = TimerNoop()  # no whole-request deadline: the connect and read timeouts bound each wait
# What a closed pooled connection raises (a connection refused is a ClientConnectorError, and not retried).
_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
_READ_BUFSIZE = 2**18  # how far aiohttp reads a response body ahead: its session's default in 3.14 (64 KiB before)
_WS_MAX_MESSAGE = 2**24  # an upstream WebSocket message: uvicorn's default limit for the client's (16 MiB)
_MAX_URLS = 1024  # request URLs remembered per forwarder (most traffic is a few targets)


class Forwarder:
    def __init__(self, url: str, *, connect_timeout: float, read_timeout: float, pool_size: int,
                 body_timeout: float | None = None, drop_response: frozenset[bytes] = frozenset()) -> None:
        parts = urlsplit(url)
        # Response headers never passed on: the hop-by-hop ones, and those the gateway sets itself (the CORS
        # headers, when it answers for CORS).
        self._not_passed = _NOT_PASSED | drop_response
        self._body_timeout = body_timeout
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._base_path = parts.path.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._read_timeout = read_timeout
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None
        self._ws_session: aiohttp.ClientSession | None = None  # made at the first WebSocket
        self._connector: aiohttp.TCPConnector | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._urls: dict[tuple[bytes, bytes], URL] = {}  # (raw path, query) -> the upstream URL

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._connector = aiohttp.TCPConnector(limit=self._pool_size, ttl_dns_cache=60)
        # The session owns the connector (closing it closes the pool) and is what aiohttp's request and response
        # objects expect to belong to; requests do not go through its request() (see the module docstring).
        self._session = aiohttp.ClientSession(
            connector=self._connector,
            timeout=self._timeout,
            auto_decompress=False,
            request_class=_ProxyRequest,  # never adds what the client did not send
            cookie_jar=aiohttp.DummyCookieJar(),  # never keeps cookies between different clients' requests
        )

    async def websocket(self, raw_path: bytes, query: bytes, headers: Sequence[tuple[str, str]],
                        protocols: Sequence[str]) -> aiohttp.ClientWebSocketResponse:
        """Open a WebSocket to the upstream at the same target (``ws_connect`` on a session of its own: aiohttp's
        handshake, with the client's subprotocols offered). Raises :class:`GatewayError` (502/504) when the
        upstream cannot be reached or does not accept."""
        session = self._ws_session
        if session is None:
            session = self._ws_session = aiohttp.ClientSession(
                timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
        try:
            return await session.ws_connect(
                self._url(raw_path, query), headers=list(headers), protocols=tuple(protocols), autoping=True,
                max_msg_size=_WS_MAX_MESSAGE, compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self._read_timeout))
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout() from None
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("upstream websocket handshake failed: %s", exc.__class__.__name__)
            raise UpstreamUnavailable() from None

    async def close(self) -> None:
        if self._ws_session is not None:
            await self._ws_session.close()
            self._ws_session = None
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._connector = None

    def _url(self, raw_path: bytes, query: bytes) -> URL:
        """The upstream URL of a request target, built once per target (yarl parses the whole string)."""
        url = self._urls.get((raw_path, query))
        if url is None:
            target = self._base_path + raw_path.decode("latin-1")
            if query:
                target += "?" + query.decode("latin-1")
            url = URL(self._origin + target, encoded=True)
            if len(self._urls) >= _MAX_URLS:
                self._urls.clear()
            self._urls[(raw_path, query)] = url
        return url

    async def _exchange(self, method: str, url: URL, headers: Sequence[tuple[str, str]],
                        data: Any) -> aiohttp.ClientResponse:
        """Send one request and read the response head: what ``ClientSession._request`` does for it.

        A request without a body whose method is idempotent is sent once more, on a new or other pooled
        connection, when the first one turns out to be closed by the upstream (its keep-alive ran out as the
        request went out), as aiohttp's session does. A request with a body is not: its body streams from the
        client and cannot be sent twice (the session retries a body only while none of it was read). Raises
        what aiohttp raises."""
        connector, session = self._connector, self._session
        assert connector is not None and session is not None, "Forwarder.start() was not awaited"
        retry = data is None and method in _IDEMPOTENT
        while True:
            req = _ProxyRequest(method, url, headers=headers, data=data, loop=self._loop, session=session,
                                timer=_NO_TIMER, traces=[])
            conn = await connector.connect(req, [], self._timeout)
            protocol = conn.protocol
            assert protocol is not None
            protocol.set_response_params(
                timer=_NO_TIMER, skip_payload=method == "HEAD", read_until_eof=True, auto_decompress=False,
                read_timeout=self._read_timeout, read_bufsize=_READ_BUFSIZE,
            )  # line, field and header-count limits: aiohttp's defaults, as its session passes them
            try:
                resp = await req.send(conn)
                try:
                    await resp.start(conn)
                except BaseException:
                    resp.close()
                    raise
            except BaseException as exc:
                conn.close()
                if retry and isinstance(exc, _STALE) and not isinstance(exc, aiohttp.ClientConnectorError):
                    retry = False
                    continue
                raise
            return resp

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
        url = self._url(raw_path, query)
        data = _body(receive, body_limit, self._body_timeout) if has_body else None
        try:
            resp = await self._exchange(method, url, headers, data)
        except ClientGone:
            return 499
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout() from None
        except (aiohttp.ClientError, OSError) as exc:
            # aiohttp wraps what the body generator raised; the cause says whose fault it was.
            if isinstance(exc.__cause__, GatewayError):
                raise exc.__cause__ from None
            if isinstance(exc.__cause__, ClientGone):
                return 499
            log.warning("upstream request failed: %s", exc.__class__.__name__)
            raise UpstreamUnavailable() from None
        status = resp.status
        sent = 0
        try:
            out = _response_headers(resp.raw_headers, self._not_passed)
            out.extend(extra_response_headers)
            if tally is not None:
                tally.status = status
                tally.t_head = perf_counter()
            content = resp.content
            if content.is_eof():
                # The whole body is already here (a small answer, the usual case): sent in this loop pass as one
                # message, so the server need not arrange to flush the head on its own ("gateway.body_ready",
                # read by gateway.doors.proxy.protocol.JoinedHeadCycle; other servers ignore it).
                try:
                    chunk = content.read_nowait()
                except (TimeoutError, aiohttp.ClientError) as exc:  # it ended with an error: nothing sent yet
                    log.warning("upstream response broke off: %s", exc.__class__.__name__)
                    raise UpstreamUnavailable() from None
                sent = len(chunk)
                await send({"type": "http.response.start", "status": status, "headers": out,
                            "gateway.body_ready": True})
                await send({"type": "http.response.body", "body": chunk, "more_body": False})
                return status
            await send({"type": "http.response.start", "status": status, "headers": out})
            try:
                while chunk := await content.readany():
                    sent += len(chunk)
                    if content.at_eof():
                        # The last bytes (for a small answer, usually the only ones): end the body with them
                        # rather than with one more, empty message.
                        await send({"type": "http.response.body", "body": chunk, "more_body": False})
                        return status
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (TimeoutError, aiohttp.ClientError) as exc:
                # Too late for an error answer: end without completing the body, so the server closes the
                # connection and the client sees a truncated response instead of a silently short one.
                log.warning("upstream response broke off: %s", exc.__class__.__name__)
                return status
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return status
        finally:
            if tally is not None:
                tally.bytes_out = sent
            resp.release()


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
    """The upstream's headers less the hop-by-hop ones, and less those its ``Connection`` header names."""
    out: list[Header] = []
    named: set[bytes] | None = None
    for header in raw:
        low = header[0].lower()
        if low in not_passed:
            if low == b"connection" and header[1].lower() not in _CONNECTION_OPTIONS:
                # Anything but "Connection: keep-alive" (or close), the usual values, may name more to drop.
                tokens = {t.strip().lower() for t in header[1].split(b",")} - _CONNECTION_OPTIONS
                if tokens:
                    named = tokens if named is None else named | tokens
            continue
        out.append(header)
    if named:
        out = [h for h in out if h[0].lower() not in named]
    return out

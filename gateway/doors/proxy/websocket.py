"""WebSockets through the gateway: the refusal of a handshake, and the relay of an accepted one.

A handshake the gate refuses is answered with the denial's HTTP status and body when the server offers the ASGI
``websocket.http.response`` extension (uvicorn does), else closed with 1008 (policy violation, RFC 6455 7.4.1),
which servers answer 403. Both front doors refuse this way (the reverse proxy and the ASGI middleware).

An accepted one is relayed by :func:`relay`: text and binary messages both ways, each send awaited (a slow reader
slows the writer down, nothing piles up here), until either side closes; its close code and reason are passed
to the other side. No message either way for ``idle`` seconds closes both sides with 1001 (going away); a key
revoked while its socket is open closes both with 1008 once the key's cache entry runs out (``cache.ttl_seconds``).

The upstream side of an accepted one is opened by :class:`UpstreamWebSockets`: aiohttp's client handshake
(``ws_connect``) and its WebSocket framing. This is the gateway's only use of aiohttp's client (HTTP requests go
through :class:`~gateway.doors.proxy.forwarder.Forwarder`, its own HTTP/1.1 client).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from starlette.types import Receive, Scope, Send
from yarl import URL

from gateway.doors.proxy.forwarder import basic_auth
from gateway.errors import UpstreamTimeout, UpstreamUnavailable

log = logging.getLogger("gateway.doors.proxy.websocket")

Header = tuple[bytes, bytes]

DENIAL_EXTENSION = "websocket.http.response"
POLICY_VIOLATION = 1008  # RFC 6455 7.4.1: the close code for a refused handshake without a denial response
_NORMAL, _GOING_AWAY, _INTERNAL_ERROR = 1000, 1001, 1011
_NO_STATUS, _ABNORMAL = 1005, 1006  # RFC 6455 7.4.1: reported, never sent in a Close frame
_MAX_MESSAGE = 2**24  # an upstream WebSocket message: uvicorn's default limit for the client's (16 MiB)


class UpstreamWebSockets:
    """WebSockets to one environment's upstream: aiohttp's ``ws_connect`` on a session of its own, made at the
    first WebSocket and closed with the application (:meth:`close`)."""

    def __init__(self, url: str, *, connect_timeout: float, read_timeout: float) -> None:
        parts = urlsplit(url)
        # The credentials of the upstream URL go in an Authorization header (as on the HTTP leg), not the URL:
        # aiohttp refuses a URL with credentials beside a forwarded Authorization header.
        self._origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        self._base_path = parts.path.rstrip("/")
        self._auth = basic_auth(parts)
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._read_timeout = read_timeout
        self._session: aiohttp.ClientSession | None = None

    async def connect(self, raw_path: bytes, query: bytes, headers: Sequence[tuple[str, str]],
                      protocols: Sequence[str]) -> aiohttp.ClientWebSocketResponse:
        """Open a WebSocket to the upstream at the same target (aiohttp's handshake, with the client's
        subprotocols offered). Raises :class:`GatewayError` (502/504) when the upstream cannot be reached or
        does not accept."""
        session = self._session
        if session is None:
            session = self._session = aiohttp.ClientSession(
                timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
        target = self._base_path + raw_path.decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        sent = list(headers)
        if self._auth is not None and not any(name.lower() == "authorization" for name, _ in sent):
            sent.append(("authorization", self._auth))
        try:
            # Already encoded: the raw path and query reach the upstream byte for byte.
            return await session.ws_connect(
                URL(self._origin + target, encoded=True), headers=sent, protocols=tuple(protocols),
                autoping=True, max_msg_size=_MAX_MESSAGE, compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self._read_timeout))
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout() from None
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("upstream websocket handshake failed: %s", exc.__class__.__name__)
            raise UpstreamUnavailable() from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def refuse_handshake(scope: Scope, send: Send, status: int, headers: list[Header], body: bytes) -> int:
    """Refuse a WebSocket handshake with ``status``, ``headers`` and ``body`` where the server can send an HTTP
    answer, else with a 1008 close. Returns the status the client gets (403 for the close)."""
    if DENIAL_EXTENSION in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return status
    await send({"type": "websocket.close", "code": POLICY_VIOLATION})
    return 403


class Tally(Protocol):
    bytes_in: int
    bytes_out: int


def _sendable(code: int | None, abnormal: int) -> int:
    """A close code that may go in a Close frame (RFC 6455 7.4.1, 7.4.2): 1005 (none given) becomes 1000, a
    connection that broke off (1006, or none) becomes ``abnormal``."""
    if code is None or code == _ABNORMAL:
        return abnormal
    if code == _NO_STATUS:
        return _NORMAL
    if 1000 <= code <= 1014 and code != 1004 or 3000 <= code <= 4999:
        return code
    return abnormal


async def relay(receive: Receive, send: Send, upstream: aiohttp.ClientWebSocketResponse, idle: float,
                tally: Tally, still_valid: Callable[[], Awaitable[bool]] | None = None,
                check_every: float = 5.0) -> str:
    """Relay messages between the accepted client (ASGI ``receive``/``send``) and ``upstream`` until one side
    closes or both are idle for ``idle`` seconds. ``still_valid`` (when given) is asked every ``check_every``
    seconds whether the credential still holds (a revoked key): when it does not, both sides are closed with
    1008 (policy violation). Returns who ended it: ``"client"``, ``"upstream"``, ``"idle"`` or ``"revoked"``."""
    loop = asyncio.get_running_loop()
    last = loop.time()
    next_check = last + check_every if still_valid is not None else float("inf")

    async def from_client() -> tuple[int, str]:
        nonlocal last
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                last = loop.time()
                text = message.get("text")
                if text is not None:
                    tally.bytes_in += len(text.encode())
                    await upstream.send_str(text)
                else:
                    data = message.get("bytes") or b""
                    tally.bytes_in += len(data)
                    await upstream.send_bytes(data)
            elif kind == "websocket.disconnect":
                return message.get("code", _NO_STATUS), message.get("reason") or ""

    async def from_upstream() -> tuple[int, str]:
        nonlocal last
        while True:
            msg = await upstream.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                last = loop.time()
                tally.bytes_out += len(msg.data.encode())
                await send({"type": "websocket.send", "text": msg.data})
            elif msg.type is aiohttp.WSMsgType.BINARY:
                last = loop.time()
                tally.bytes_out += len(msg.data)
                await send({"type": "websocket.send", "bytes": msg.data})
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                return _sendable(msg.data, _INTERNAL_ERROR), msg.extra or ""
            else:  # CLOSING, CLOSED, ERROR: it broke off
                return _sendable(upstream.close_code, _INTERNAL_ERROR), ""

    client = asyncio.create_task(from_client())
    server = asyncio.create_task(from_upstream())
    ended = "idle"
    try:
        while True:
            wake = min(last + idle, next_check)
            done, _ = await asyncio.wait((client, server), timeout=max(0.0, wake - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if done or loop.time() - last >= idle:
                break
            if still_valid is not None and loop.time() >= next_check:
                if not await still_valid():
                    ended = "revoked"
                    break
                next_check = loop.time() + check_every
    finally:
        for task in (client, server):
            task.cancel()
        await asyncio.gather(client, server, return_exceptions=True)
    if client.done() and not client.cancelled() and client.exception() is None:
        ended = "client"
        code, reason = client.result()
        await upstream.close(code=_sendable(code, _GOING_AWAY), message=reason.encode())
        return ended
    if server.done() and not server.cancelled() and server.exception() is None:
        ended = "upstream"
        code, reason = server.result()
        await _close_client(send, code, reason)
        await upstream.close()
        return ended
    failed = next((t.exception() for t in (client, server) if t.done() and not t.cancelled() and t.exception()), None)
    if failed is not None:
        ended = "client" if client.exception() is not None else "upstream"  # whose send failed: the other side
        log.info("websocket relay ended: %s", failed.__class__.__name__)
        await upstream.close(code=_GOING_AWAY)
        await _close_client(send, _INTERNAL_ERROR, "")
        return ended
    if ended == "revoked":
        await upstream.close(code=POLICY_VIOLATION, message=b"credential revoked")
        await _close_client(send, POLICY_VIOLATION, "credential revoked")
        return ended
    await upstream.close(code=_GOING_AWAY, message=b"idle timeout")
    await _close_client(send, _GOING_AWAY, "idle timeout")
    return ended


async def _close_client(send: Send, code: int, reason: str) -> None:
    message: dict[str, Any] = {"type": "websocket.close", "code": code, "reason": reason}
    try:
        await send(message)
    except Exception as exc:  # the client is gone already
        log.debug("websocket close not sent: %s", exc.__class__.__name__)

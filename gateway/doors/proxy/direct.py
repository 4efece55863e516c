"""The upstream leg without aiohttp: :class:`DirectForwarder` speaks HTTP/1.1 to the upstream itself, on the
pooled asyncio connections of :mod:`gateway.doors.proxy.upstream` (:mod:`gateway.doors.proxy.pool`).

Same interface and behaviour as :class:`~gateway.doors.proxy.forwarder.Forwarder` (which it extends: its
WebSocket handshake and relay still go through aiohttp's ``ws_connect``), with less between the two sockets:
the request head is one string formatted from the forwarded header pairs and written at once, the response head
reaches the client as the raw pairs llhttp saw (no multidict, no ``ClientResponse``, no ``StreamReader``), and
a small answer is sent in the loop pass that completed it.

Kept from the aiohttp path: bodies streamed both ways with backpressure (``Content-Length`` bodies as they are,
others chunked), an idempotent request without a body sent once more when its connection turns out closed
before any answer (RFC 9110 9.2.2), the connect timeout (504), the read timeout (504 before the head; after it,
a truncated answer), llhttp's response framing checks (502), ``Content-Length: 0`` on a bodiless request whose
method implies a body, and the request body cut off past the route's limit (413) or after
``limits.body_timeout_seconds`` of silence (408).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence
from time import perf_counter
from typing import Any
from urllib.parse import unquote, urlsplit

from starlette.types import Receive, Send
from yarl import URL

from gateway.doors.proxy.forwarder import (
    _IDEMPOTENT,
    ClientGone,
    Forwarder,
    Header,
    Tally,
    _body,
    _response_headers,
)
from gateway.doors.proxy.pool import Pool
from gateway.doors.proxy.upstream import Connection, Disconnected, Malformed
from gateway.errors import GatewayError, UpstreamTimeout, UpstreamUnavailable

log = logging.getLogger("gateway.proxy")

# Methods whose request without a body still says so (aiohttp's ClientRequest sends Content-Length: 0 for them).
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_LAST_CHUNK = b"0\r\n\r\n"


class BadHeader(Exception):
    """A forwarded header name or value holds CR or LF: it would split the request head."""


class DirectForwarder(Forwarder):
    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        parts = urlsplit(url)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._tls else 80)
        self._host_line = f"Host: {URL(self._origin).host_port_subcomponent}\r\n"
        # Credentials in the upstream URL become Basic authentication, as aiohttp sends them.
        self._url_auth = ""
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode("latin-1")
            self._url_auth = f"Authorization: Basic {base64.b64encode(pair).decode()}\r\n"
            self._origin = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        self._pool: Pool | None = None

    async def start(self) -> None:
        await super().start()  # the aiohttp session stays for WebSockets (Forwarder.websocket)
        self._pool = Pool(self._host, self._port, self._tls, self._host, self._pool_size,
                          self._timeout.sock_connect or 5.0)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        await super().close()

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
        """See :meth:`Forwarder.forward`."""
        pool = self._pool
        assert pool is not None, "DirectForwarder.start() was not awaited"
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

"""The upstream leg on asyncio protocols: kept-alive HTTP/1.1 connections read by httptools (llhttp).

One :class:`Connection` carries one exchange at a time. Its response is parsed by llhttp as it arrives: the head
(status and raw header pairs, bytes as received) wakes the reader once; body bytes are queued, and reading from
the socket pauses while more than :data:`READ_AHEAD` bytes wait for a slow client (backpressure down), as
writing the request body waits while the socket's buffer is full (``pause_writing``: backpressure up).

Framing is llhttp's, which refuses what RFC 9112 6.3 calls an invalid response (Content-Length beside a
Transfer-Encoding, a bad Content-Length or chunk size, bytes that are not HTTP): the exchange fails as
:class:`Malformed` and the connection is closed. A body without either header ends with the connection (RFC 9112
6.3, item 8). Interim 1xx answers are skipped; a ``101`` (never asked for: ``Upgrade`` is not forwarded) is
malformed. A connection goes back to the pool only after a complete response that keeps it alive, to a request
sent whole; bytes arriving on an idle connection close it.
The connections are held by :class:`gateway.doors.proxy.pool.Pool`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from gateway.errors import UpstreamTimeout

if TYPE_CHECKING:
    from gateway.doors.proxy.pool import Pool

Header = tuple[bytes, bytes]

READ_AHEAD = 2**18  # bytes of response body read ahead of the client (aiohttp's read_bufsize in 3.14)
_NO_BODY = frozenset({204, 304})
# The response head's limits: aiohttp's client defaults (a field's name or value, the number of fields), and a
# bound on everything read before the head is complete (llhttp holds a field until its end, however long).
MAX_FIELD = 8190
MAX_HEADERS = 128
MAX_HEAD = 2**20


class Disconnected(Exception):
    """The upstream closed the connection (or it broke) before the response was complete."""


class Malformed(Exception):
    """The upstream's bytes are not a valid HTTP/1.1 response (llhttp's verdict)."""


class Connection(asyncio.Protocol):
    """One upstream connection and the state of its current exchange (see the module docstring)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.used = False  # has carried an exchange before
        self.idle_since = 0.0
        self.busy = False
        self.head_only = False
        self.status = 0
        self.headers: list[Header] = []
        self.framed = False  # the response has a Content-Length or Transfer-Encoding
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.done = False  # the response is complete
        self.keep_alive = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.head_timer: asyncio.TimerHandle | None = None
        self.head_bytes = 0

    # -- asyncio.Protocol ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self.close()  # nothing was asked: whatever this is, the connection cannot be trusted any more
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(Malformed("101 to a request that asked for no upgrade"))
        except httptools.HttpParserError as exc:
            self.fail(Malformed(str(exc)))
        else:
            if not self.status:
                self.head_bytes += len(data)
                if self.head_bytes > MAX_HEAD:
                    self.fail(Malformed("response head too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if not self.busy or self.done:
            self._wake_drain(Disconnected("closed"))
            return
        if self.status and not self.framed and not self.head_only and self.status not in _NO_BODY:
            # A body delimited by the end of the connection (RFC 9112 6.3, item 8) ends here.
            self.done = True
            self.keep_alive = False
            self._wake()
            self._wake_drain(Disconnected("closed"))
        else:
            self.fail(Disconnected("the upstream closed the connection" if exc is None else exc.__class__.__name__))

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_drain(None)

    # -- httptools callbacks -------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.status:
            raise Malformed("bytes after the response")  # stops llhttp: the connection is not reused
        self.headers = []
        self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(value) > MAX_FIELD or len(name) > MAX_FIELD or len(self.headers) >= MAX_HEADERS:
            raise Malformed("response header over the limits")  # stops llhttp
        # Names are kept in lower case (field names are case-insensitive, RFC 9110 5.1): lowered once here, not
        # again by every reader (the forwarder's filter, the server's head).
        low = name.lower()
        self.headers.append((low, value))
        if not self.framed:
            self.framed = low == b"content-length" or low == b"transfer-encoding"

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim answer (103 Early Hints...): the final one follows
        self.status = status
        if self.head_only:
            # The answer to HEAD has no body whatever its headers say; llhttp cannot be told so, and would read
            # the next response as this one's body: the connection is not reused.
            self.done = True
            self.keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > READ_AHEAD and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        if self.waiter is not None:
            self._wake()

    def on_message_complete(self) -> None:
        if not self.status or self.head_only:
            return  # the end of an interim answer
        self.done = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # -- the exchange --------------------------------------------------------------------------------------------

    def begin(self, head_only: bool) -> None:
        """Start an exchange on this (idle) connection. Raises :class:`Disconnected` when it has closed."""
        if self.closed:
            raise Disconnected("closed before use")
        self.busy = True
        self.head_bytes = 0
        self.used = True
        self.head_only = head_only
        self.status = 0
        self.done = False
        self.keep_alive = False
        self.error = None

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        if self.error is not None:
            raise self.error
        assert self.transport is not None
        self.transport.writelines(data)

    async def drain(self, timeout: float) -> None:
        """Wait while the socket's send buffer is full: for at most ``timeout`` seconds (an upstream that takes
        nothing for that long is as stuck as one that sends nothing)."""
        if self.error is not None:
            raise self.error
        if not self.writing_paused:
            return
        waiter = self.drain_waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, _time_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.drain_waiter = None

    async def head(self, timeout: float | None) -> None:
        """Wait for the response head (``status``, ``headers``). With ``timeout`` None it waits unbounded: the
        caller arms :meth:`arm` when the request is written. Raises what broke the exchange."""
        if not self.status and self.error is None:
            # _wait(), inline: one coroutine less on every request.
            waiter = self.waiter = self.loop.create_future()
            if timeout is not None:
                self.head_timer = self.loop.call_later(timeout, _time_out, waiter)
            try:
                await waiter
            finally:
                self.waiter = None
                if self.head_timer is not None:
                    self.head_timer.cancel()
                    self.head_timer = None
        if self.error is not None and not self.status:
            raise self.error

    def arm(self, timeout: float) -> None:
        """Bound the wait for the head from now on (the request body is written)."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.head_timer = self.loop.call_later(timeout, _time_out, waiter)

    def take(self) -> bytes:
        """The body bytes received so far (b"" when none)."""
        chunks = self.chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        return data

    async def read(self, timeout: float) -> bytes:
        """The next piece of the body; b"" at its end. Waits at most ``timeout`` seconds for a byte."""
        while not self.chunks:
            if self.done:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait(timeout)
        return self.take()

    def fail(self, error: BaseException) -> None:
        """End the exchange with ``error`` (given to whoever waits) and close the connection."""
        if self.error is None:
            self.error = error
        self._wake()
        self._wake_drain(error)
        self.close()

    def close(self) -> None:
        # abort(), not close(): a close would first flush what is buffered, and a connection is closed only when
        # nothing more on it matters (an upstream that reads nothing would keep it open for ever).
        if self.transport is not None:
            self.transport.abort()
        self.closed = True
        self.pool.forget(self)

    @property
    def reusable(self) -> bool:
        return self.done and self.keep_alive and not self.closed and self.error is None and not self.chunks

    def finish(self) -> None:
        """The exchange is over: back to the pool when the connection can carry another one, else closed."""
        self.busy = False
        if self.reusable:
            self.pool.put(self)
        else:
            self.close()

    # -- waiting -------------------------------------------------------------------------------------------------

    async def _wait(self, timeout: float | None) -> None:
        waiter = self.waiter = self.loop.create_future()
        timer = None if timeout is None else self.loop.call_later(timeout, _time_out, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self.waiter = None

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self.error is not None and not self.done:
                waiter.set_exception(self.error)
            else:
                waiter.set_result(None)

    def _wake_drain(self, error: BaseException | None) -> None:
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout())

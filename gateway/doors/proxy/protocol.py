"""Defences in front of the pipeline: the HTTP server's protocol, request limits and failed-login counting.

``gateway serve`` runs uvicorn with :func:`http_protocol`, a subclass of uvicorn's httptools (llhttp)
protocol. llhttp already refuses most ambiguous framing (``Content-Length`` with ``Transfer-Encoding``,
differing or repeated ``Content-Length``, obfuscated chunked codings, obs-fold, bare LF, lower-case or unknown
method tokens); docs/security.md lists what it and h11 accept. The subclass adds what the ASGI application
cannot do because uvicorn hides it or because it must happen before the head is complete:

* request targets that are not origin-form (absolute-form, authority-form, ``*``) and fragments: uvicorn
  hands the application only the path of ``http://evil/x``, so the check has to look at the raw target;
  ``CONNECT`` gets 405;
* versions other than HTTP/1.0 and 1.1 (llhttp parses ``GET /`` as HTTP/0.9);
* the size of the request target (414), of the header block and the number of header lines (431), checked
  when the head is complete, while the bytes of an unfinished head are counted per read so a client cannot
  make the parser buffer an endless header;
* a deadline for the whole request head (slowloris: 408, or a silent close if nothing arrived at all);
* JSON error bodies in the configured format and ``Connection: close`` for everything refused here.

The remaining framing checks (a single final ``chunked``, digits-only ``Content-Length``, no
``Transfer-Encoding`` on HTTP/1.0, one ``Host``) sit in the pipeline's single pass over the headers, so they
hold under any ASGI server.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE as _BAD_NAME,
)
from uvicorn.protocols.http.httptools_impl import (
    HEADER_VALUE_RE as _BAD_VALUE,
)
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from gateway.config.settings import LimitsSettings, Settings
from gateway.errors import (
    ConnectNotAllowed,
    ErrorFormat,
    GatewayError,
    Header,
    HeadersTooLarge,
    HTTPVersionNotSupported,
    NotHTTP,
    Overloaded,
    RequestTimeout,
    TargetNotOriginForm,
    URITooLong,
    error_format,
)

log = logging.getLogger("gateway.security")

CLOSE: Header = (b"connection", b"close")


# --- the HTTP server protocol ---------------------------------------------------------------------------------


class _Refused(Exception):
    """Raised inside an llhttp callback to stop parsing; the error to answer with is on the protocol."""


# The header checks of uvicorn's send, done more cheaply (JoinedHeadCycle._start): a name must not hold a byte
# of uvicorn's HEADER_RE (controls, separators, space); a value must not hold one of HEADER_VALUE_RE (controls
# other than tab), CR and LF included.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_GOOD_NAMES: set[bytes] = set()  # lower-case names that passed, so most heads check no name at all (bounded)
# Every byte a value may not hold (CR and LF among them) made LF, every other byte left as it is.
_MARK_BAD = bytes(10 if _BAD_VALUE.match(bytes([b])) else b for b in range(256))


def _name_ok(name: bytes) -> bool:
    if _BAD_NAME.search(name):
        return False
    if len(_GOOD_NAMES) < 1024:
        _GOOD_NAMES.add(name)
    return True


def _head_ok(head: bytes, lines: int) -> bool:
    """Whether the status line and header lines in ``head`` hold no byte a header value may not: no control
    character but tab, and CR and LF only as the CRLF ending each of the ``lines`` lines. With every such byte
    made LF, the head then holds exactly two per line (one translate and one count, in C)."""
    return head.translate(_MARK_BAD).count(b"\n") == 2 * lines


class JoinedHeadCycle(RequestResponseCycle):
    """uvicorn's request/response cycle with a leaner ``send`` (the server's side of every response).

    Same ASGI semantics and the same framing decisions as uvicorn's own ``send`` (Content-Length or chunked,
    ``Connection: close``, HEAD/204/304 without a body, the same errors for bad headers and wrong body sizes),
    with two differences in how it writes:

    * the response head is written together with the first body bytes: a small answer costs one write to the
      socket instead of two (on loopback each write also runs the peer's receive path). The head is held at
      most until the end of the current event-loop pass: a body that is not there by then (a slow or streaming
      upstream) finds the head already sent on its own;
    * header values are checked once over the whole head, in C (:func:`_head_ok`), rather than with a regular
      expression per header; a header name is checked the first time it is seen (:func:`_name_ok`).
    """

    # Every field is set on the instance when the cycle is made (GuardedHttpToolsProtocol.on_headers_complete)
    # and none is read from a class default: Python 3.11 specialises an attribute read (a few instructions
    # instead of a few hundred) only when the instance itself holds the attribute.
    _held: bytes | None
    _flush: Any
    loop: Any  # the protocol's loop (get_running_loop costs a getpid())

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{message['type']}'.")
            self._start(message)
        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{message['type']}'.")
            self._body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}' sent, after response already completed.")

    def _start(self, message: Any) -> None:
        self.response_started = True
        self.waiting_for_100_continue = False
        status = message["status"]
        if self.access_log:  # uvicorn's own access line (off under `gateway serve`, which writes its own)
            self.access_logger.info('%s - "%s %s HTTP/%s" %d', get_client_addr(self.scope), self.scope["method"],
                                    get_path_with_query_string(self.scope), self.scope["http_version"], status)
        headers = message.get("headers", ())
        if self.default_headers or type(headers) is not list:  # any iterable will do, and is read twice
            headers = [*self.default_headers, *headers]
        out = [STATUS_LINE[status]]
        close = False
        for name, value in headers:
            if name not in _GOOD_NAMES:  # a name seen before is in lower case already: no lower() for it
                name = name.lower()
                if name not in _GOOD_NAMES and not _name_ok(name):
                    raise RuntimeError("Invalid HTTP header name.")
            if name in _FRAMING:
                if name == b"content-length":
                    if self.chunked_encoding is None:
                        self.expected_content_length = int(value.decode())
                        self.chunked_encoding = False
                elif name == b"transfer-encoding":
                    if value.lower() == b"chunked":
                        self.expected_content_length = 0
                        self.chunked_encoding = True
                elif b"close" in [t.strip() for t in value.lower().split(b",")]:
                    self.keep_alive = False
                    close = True
            out += (name, b": ", value, b"\r\n")
        head = b"".join(out)
        if not _head_ok(head, len(headers) + 1):
            raise RuntimeError("Invalid HTTP header value.")
        out = [head]
        if not self.keep_alive and not close:
            out.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status not in (204, 304):
            self.chunked_encoding = True
            out.append(b"transfer-encoding: chunked\r\n")
        out.append(b"\r\n")
        self._held = b"".join(out)
        if not message.get("gateway.body_ready"):
            self._flush = (self.loop or asyncio.get_running_loop()).call_soon(self._send_held)

    def _body(self, body: bytes, more_body: bool) -> None:
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
            data = b""
        elif self.chunked_encoding:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more_body:
                data += b"0\r\n\r\n"
        else:
            if len(body) > self.expected_content_length:
                self._send_held()  # as uvicorn: the head went out, the body does not
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            data = body
        held = self._held
        if held is not None:
            self._held = None
            if self._flush is not None:
                self._flush.cancel()
            if len(data) < 16384:
                self.transport.write(held + data)
            else:
                self.transport.writelines((held, data))
        elif data:
            self.transport.write(data)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    # Request body: uvicorn appends each piece to a bytearray and copies that into bytes for receive() (two
    # copies of every uploaded byte). Here the pieces the parser hands over are kept as they are and given out
    # whole (a single piece, the usual case per read, is not copied at all). Set up by the protocol.
    chunks: list[bytes]
    pending: int

    async def receive(self) -> Any:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.pending = 0
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    def _send_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            if self._flush is not None:
                self._flush.cancel()
            if not self.transport.is_closing():
                self.transport.write(held)


_new_cycle = JoinedHeadCycle.__new__


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with limits, a head deadline, origin-form targets and JSON refusals.

    Configured by :func:`http_protocol`, which sets the class attributes below from the settings."""

    limits: LimitsSettings = LimitsSettings()
    errors: ErrorFormat = error_format("deployerp")
    # The most bytes a head may take on the wire (target + headers + slack for the request line and line
    # ends). Counted per read while a head is incomplete, so a never-ending header line cannot grow in memory.
    raw_head_limit: int = 0
    # The limits again as plain class attributes: read on every request, one lookup each, never through the
    # settings model (the defaults' values: a pydantic model's class has no attribute per field).
    max_target: int = limits.max_target_bytes
    max_headers: int = limits.max_headers
    max_header_bytes: int = limits.max_header_bytes
    max_connections: int = limits.max_connections
    header_timeout: float = limits.header_timeout_seconds  # per connection and per timer check

    # Per request the work is a few attribute writes and, when the head is complete, a handful of length
    # checks: the exact header-size sum runs only when the reads that carried the head were large, and the
    # head deadline is one timer per connection, firing every header_timeout_seconds: a head still unfinished
    # at two checks in a row (the same one: the message count has not moved) is cut off. So a head gets
    # between one and two timeouts, and a busy keep-alive connection costs no timer work per request.

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refusal: GatewayError | None = None
        self._head_timer: Any = None
        self._in_head = True  # a request head is incomplete (or, before any byte, not begun)
        self._checked = -1  # the message count at the last timer check
        self._read = 0  # size of the read being parsed
        self._head_seen = 0  # bytes read since the current head began: an upper bound of its size
        self._raw_head = 0  # bytes of reads that were head from start to end: a lower bound of its size
        self._messages = 0
        # Read on every request, so held by the instance (see JoinedHeadCycle): the limits, and the bound
        # methods a cycle is given (a bound method read is never specialised in Python 3.11).
        self._limits = (self.max_target, self.max_headers, self.max_header_bytes, self.max_connections)
        self._on_response = self.on_response_complete
        self._task_done = self.tasks.discard

    # connection life

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._checked = 0  # a connection that sends nothing is cut off at the first check
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_check)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._read = size = len(data)
        counting = self._in_head
        messages = self._messages
        if counting:
            self._head_seen += size
        super().data_received(data)
        # Still inside the same unfinished head: every byte of this read was head. The parser buffers a
        # header line until it ends, so this is what bounds its memory.
        if counting and self._in_head and messages == self._messages and not self.transport.is_closing():
            self._raw_head += size
            if self._raw_head > self.raw_head_limit:
                self._refuse(HeadersTooLarge())

    def _head_check(self) -> None:
        """The connection's one timer: cuts off a head unfinished at two checks in a row, else re-arms."""
        self._head_timer = None
        if self.transport.is_closing():
            return
        timeout = self.header_timeout
        if not self._in_head or self._messages != self._checked:
            self._checked = self._messages
            self._head_timer = self.loop.call_later(timeout, self._head_check)
        elif self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head is dawdling behind a request still being answered: end after that answer.
            self.cycle.keep_alive = False
        elif self._messages:
            log.info("request head not complete after %.0f s: connection closed", timeout)
            self._refuse(RequestTimeout())
        else:
            self.transport.close()  # connected and never said a word: nothing to answer

    # parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._messages += 1
        self._in_head = True
        self._head_seen = self._read
        self._raw_head = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        url = self.url
        max_target, max_headers, max_header_bytes, cap = self._limits
        if len(url) > max_target:
            self._stop(URITooLong())
        headers = self.headers
        if len(headers) > max_headers:
            self._stop(HeadersTooLarge())
        if self._head_seen > max_header_bytes:  # only then can the headers be over it: count exactly
            if sum(len(n) + len(v) + 4 for n, v in headers) > max_header_bytes:
                self._stop(HeadersTooLarge())
        if url[:1] != b"/" or b"#" in url:
            if self.parser.get_method() == b"CONNECT":
                self._stop(ConnectNotAllowed())
            self._stop(TargetNotOriginForm())
        version = self.parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._stop(HTTPVersionNotSupported())
        if len(self.connections) > cap or len(self.tasks) >= cap:
            # uvicorn's limit_concurrency does the same, but answers in plain text and counts the connection
            # asking (limit_concurrency=1 refuses everything); this is that check, in the gateway's format.
            log.warning("connection limit reached (limits.max_connections=%d): 503", cap)
            self._stop(Overloaded())
        parser = self.parser
        if self.limit_concurrency is not None or parser.should_upgrade() or self.config.reset_contextvars:
            # The rare cases (an Upgrade header, uvicorn's own concurrency limit, fresh contexts): uvicorn's
            # code as it is, its cycle then made a JoinedHeadCycle.
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle.__class__ is RequestResponseCycle:
                # Made by uvicorn just now, its task not yet run: the subclass only changes how send() writes.
                cycle.__class__ = JoinedHeadCycle
                cycle.loop = self.loop  # type: ignore[attr-defined]
                cycle.chunks = []  # type: ignore[attr-defined]
                cycle.pending = 0  # type: ignore[attr-defined]
                cycle._held = cycle._flush = None  # type: ignore[attr-defined]
            return
        # Every other request: what uvicorn's on_headers_complete does on that path, with the cycle made
        # directly (no keyword call, no class swap).
        scope = self.scope
        scope["method"] = parser.get_method().decode("ascii")
        if version != "1.1":
            scope["http_version"] = version
        parsed = httptools.parse_url(url)
        raw_path = parsed.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        root = self.root_path
        scope["path"] = root + path
        scope["raw_path"] = root.encode("ascii") + raw_path
        scope["query_string"] = parsed.query or b""
        existing = self.cycle
        cycle = self.cycle = _new_cycle(JoinedHeadCycle)
        cycle.scope = scope
        cycle.transport = self.transport
        cycle.flow = self.flow
        cycle.logger = self.logger
        cycle.access_logger = self.access_logger
        cycle.access_log = self.access_log
        cycle.default_headers = self.server_state.default_headers
        cycle.message_event = asyncio.Event()
        cycle.on_response = self._on_response
        cycle.waiting_for_100_continue = self.expect_100_continue
        cycle.keep_alive = version != "1.0" and parser.should_keep_alive()
        cycle.disconnected = False
        cycle.more_body = True
        cycle.response_started = False
        cycle.response_complete = False
        cycle.chunked_encoding = None
        cycle.expected_content_length = 0
        cycle.loop = self.loop
        cycle.chunks = []
        cycle.pending = 0
        cycle._held = cycle._flush = None
        if existing is None or existing.response_complete:
            task = self.loop.create_task(cycle.run_asgi(self.app))
            task.add_done_callback(self._task_done)
            self.tasks.add(task)
        else:
            # Pipelined requests wait for the one before (uvicorn's on_response_complete starts them).
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle.__class__ is not JoinedHeadCycle:
            super().on_body(body)
            return
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.chunks.append(body)
        cycle.pending += len(body)
        if cycle.pending > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    # refusals

    def _stop(self, error: GatewayError) -> None:
        self._refusal = error
        raise _Refused()

    def send_400_response(self, msg: str) -> None:
        # Every parser error ends here (llhttp's own and the _Refused raised by the callbacks above).
        error, self._refusal = self._refusal, None
        self._refuse(error or NotHTTP())

    def _refuse(self, error: GatewayError) -> None:
        """Answer ``error`` as JSON and close the connection: the rest of the stream cannot be trusted."""
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.more_body and not cycle.response_started:
                # The fault is in this request's own body (a bad chunk): the application sees the client
                # gone (the upstream gets a broken-off request, never a complete one) and the client the error.
                cycle.disconnected = True
                cycle.message_event.set()
            else:
                # The fault is in a pipelined request behind one still being answered: writing now would
                # interleave the answers. Let that one finish, then close; the refused one gets no answer.
                cycle.keep_alive = False
                self.flow.pause_reading()
                return
        status, headers, body = self.errors.render(error, (CLOSE,))
        out = [STATUS_LINE[status]]
        for name, value in headers:
            out += [name, b": ", value, b"\r\n"]
        out += [b"\r\n", body]
        self.transport.write(b"".join(out))
        self.transport.close()


def http_protocol(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The uvicorn ``http`` protocol class for these settings."""
    lim = settings.limits
    attrs = {
        "limits": lim,
        "errors": error_format(settings.error_format, settings.messages),
        "raw_head_limit": lim.max_header_bytes + lim.max_target_bytes + 2 * lim.max_headers + 1024,
        "max_target": lim.max_target_bytes,
        "max_headers": lim.max_headers,
        "max_header_bytes": lim.max_header_bytes,
        "max_connections": lim.max_connections,
        "header_timeout": lim.header_timeout_seconds,
    }
    return type("GatewayHttpProtocol", (GuardedHttpToolsProtocol,), attrs)


# Make sure an llhttp callback error is what send_400_response sees (httptools wraps it; uvicorn catches it).
assert issubclass(httptools.HttpParserCallbackError, httptools.HttpParserError)

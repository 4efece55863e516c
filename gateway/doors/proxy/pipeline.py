"""Front door 1, the reverse proxy: one pure-ASGI callable on the hot path.

For every HTTP request, in this order:

1. read the headers once (credential, forwarding headers, debug flag, framing) and refuse ambiguous framing
   (400, connection closed);
2. ask the gate (:class:`gateway.gate.Gate`): method, path, credential, client network, policy, body size and
   rate limit decide between an :class:`~gateway.gate.Allow` and a :class:`~gateway.gate.Deny`, which is
   answered here in the configured error format;
3. an allowed call to the gateway's own endpoints (``{prefix}/auth/test``, ``{prefix}/api-keys``) goes to the
   management API; anything else is forwarded to the upstream of the key's environment, with the client's
   ``X-Auth-*`` headers removed and the gateway's identity and forwarding headers added.

Per-request state lives in locals only; everything else was compiled when the app was built.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config.settings import Settings
from gateway.doors.cors import ORIGIN, REQUEST_HEADERS, REQUEST_METHOD, Cors
from gateway.doors.proxy.forwarder import Forwarder
from gateway.doors.proxy.protocol import CLOSE
from gateway.doors.proxy.websocket import UpstreamWebSockets, refuse_handshake, relay
from gateway.errors import (
    EnvironmentUnavailable,
    ErrorFormat,
    FramingError,
    GatewayError,
    InvalidToken,
    MethodNotAllowed,
    ServiceUnavailable,
    error_format,
)
from gateway.gate import Allow, Deny, Gate
from gateway.gate.bearer import OWS
from gateway.keys.cache import AuthKey
from gateway.network import IPAddress, address_text, parse_address
from gateway.observability.logging import AccessLog, new_request_id, valid_request_id
from gateway.observability.metrics import UNMATCHED, Metrics
from gateway.observability.tracing import TRACEPARENT, TRACESTATE, propagate

if TYPE_CHECKING:
    from gateway.observability.otel import Tracing  # imported by the app only when tracing is on

log = logging.getLogger("gateway.doors.proxy.pipeline")

Header = tuple[bytes, bytes]

# Request headers the gateway consumes or replaces: never forwarded as the client sent them.
_CONSUMED = frozenset(
    {
        b"authorization", b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
        b"trailer", b"upgrade", b"proxy-authorization", b"host", b"expect", b"x-forwarded-for",
        b"x-forwarded-proto", b"x-forwarded-host", b"x-debug-auth",
        # Client-address headers anyone can send: the gateway's X-Forwarded-For is the only one it vouches for.
        b"forwarded", b"x-real-ip", b"true-client-ip", b"cf-connecting-ip", b"x-client-ip", b"x-cluster-client-ip",
        b"fastly-client-ip",
        b"x-request-id",  # checked, then forwarded (or replaced by a generated one)
        b"traceparent", b"tracestate",  # continued or replaced (W3C Trace Context: gateway.observability.tracing)
        b"origin", b"access-control-request-method", b"access-control-request-headers",  # read, then forwarded
    }
)
# Every spelling of the identity-header prefix a server might hand over (names arrive lower-cased).
_IDENTITY_PREFIXES = frozenset({b"x-auth-", b"x_auth_", b"x-auth_", b"x_auth-"})


class ShuttingDown(ServiceUnavailable):
    code = "shutting_down"


_REQUEST_ID = b"x-request-id"
_ALLOWED = ("allowed", "ok")  # the authentication decision (result, reason) of a request let through


class Exchange:
    """One request as its observers see it (metrics, access log): filled in by the pipeline, read at the end.

    Its :meth:`send` adds ``X-Request-ID`` to the response head and counts the body bytes sent; its
    :meth:`receive` (used only when the request has a body) counts the bytes read. A forwarded answer, the
    common case, is sent on ``raw_send`` instead: the forwarder adds the header and keeps the tally itself
    (``status``, ``t_head``, ``bytes_out``), one coroutine less per message."""

    __slots__ = ("raw_send", "_receive", "request_id", "status", "bytes_in", "bytes_out", "route", "principal",
                 "deny", "gated", "authorized", "rate", "t_forward", "t_head", "client", "trace_id", "cors",
                 "span")

    def __init__(self, send: Send, receive: Receive) -> None:
        self.raw_send = send
        self._receive = receive
        self.request_id = ""
        self.trace_id = ""
        self.cors: tuple[Header, ...] = ()  # the CORS headers of the answer (gateway.doors.cors)
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.route: str | None = None
        self.principal: Any = None
        self.deny: str | None = None
        self.gated = False  # the request needed a credential
        self.authorized = False  # ... and passed authentication, network and policy
        self.rate: str | None = None
        self.t_forward = 0.0
        self.t_head = 0.0
        self.client: IPAddress | None = None
        self.span: Any = None  # the OpenTelemetry server span, when tracing is on (gateway.observability.otel)

    def note(self, decision: Allow | Deny) -> None:
        """What the gate decided, for the metrics and the access line."""
        route = decision.route
        if route is not None:
            self.route = route.template
        self.principal = decision.principal
        self.client = decision.client
        self.rate = decision.rate
        if isinstance(decision, Deny):
            self.gated = decision.gated
            self.authorized = decision.authorized
            self.deny = decision.error.code
        elif decision.principal is not None:
            self.gated = self.authorized = True

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.t_head = perf_counter()
            headers = message["headers"]
            rid = (_REQUEST_ID, self.request_id.encode())
            if type(headers) is list:
                headers.append(rid)
                if self.cors:
                    headers += self.cors
            else:
                message["headers"] = [*headers, rid, *self.cors]
        else:
            self.bytes_out += len(message.get("body", b""))
        await self.raw_send(message)

    async def receive(self) -> Any:
        message = await self._receive()
        self.bytes_in += len(message.get("body", b""))
        return message


class Gateway:
    """The ASGI callable that authenticates, authorises and forwards every request."""

    def __init__(
        self,
        settings: Settings,
        gate: Gate,
        forwarders: Mapping[str, Forwarder | None],
        websockets: Mapping[str, UpstreamWebSockets | None],
        management: ASGIApp | None = None,
        metrics: Metrics | None = None,
        access_log: AccessLog | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.gate = gate
        self.tracing = tracing
        self.metrics = metrics
        self.access_log = access_log
        self.forwarders = forwarders
        self.websockets = websockets
        self.management = management
        self._format = error_format(settings.error_format, settings.messages)
        self._forward_authorization = settings.forward_authorization
        self._cors = Cors(settings.cors, settings.error_format) if settings.cors.allow_origins else None
        self._websocket_idle = settings.limits.websocket_idle_seconds
        self._websocket_check = max(settings.cache.ttl_seconds, 1.0)  # how often an open socket's key is checked

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            return
        ex = Exchange(send, receive)
        start = perf_counter()
        try:
            await self._serve(scope, receive, ex.send, ex)
        except asyncio.CancelledError:
            # uvicorn cancels requests still running past ops.shutdown_timeout_seconds. Before a byte was sent,
            # answer a JSON 503 and end normally (else uvicorn logs a traceback and sends a plain-text 500);
            # a response already under way can only be cut off.
            if ex.status:
                raise
            ex.deny = ShuttingDown.code
            await _send_error(ex.send, ShuttingDown(), self._format, [CLOSE])
        except Exception:
            if not ex.status:
                ex.status = 500  # uvicorn answers 500 when nothing was sent yet
            raise
        finally:
            self._finish(scope, ex, perf_counter() - start)

    def _finish(self, scope: Scope, ex: Exchange, duration: float) -> None:
        """Count and log one finished request: once, at its end, from what the pipeline noted."""
        status = ex.status or 499  # nothing was sent: the client went away first
        upstream = ex.t_head - ex.t_forward if ex.t_forward and ex.t_head else None
        principal = ex.principal
        key_id = principal.record.id if isinstance(principal, AuthKey) else None
        route = ex.route or UNMATCHED
        method = scope.get("method", "GET")  # a WebSocket handshake is a GET (RFC 6455 4.1)
        span = ex.span
        if span is not None:
            forwarded = time.time_ns() - int((perf_counter() - ex.t_forward) * 1e9) if ex.t_forward else 0
            self.tracing.finish(span, status, ex.deny, forwarded, method)  # type: ignore[union-attr]
        m = self.metrics
        if m is not None:
            auth = (_ALLOWED if ex.authorized else ("denied", ex.deny or "error")) if ex.gated else None
            m.request(route, method, status, duration, upstream, key_id, auth, ex.rate)
        if self.access_log is not None:
            client = address_text(ex.client) if ex.client is not None else _peer(scope)
            raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
            self.access_log.write(time.time(), ex.request_id, ex.trace_id, method, ex.route,
                                  raw_path.decode("latin-1"), status, duration, upstream, key_id, client, ex.bytes_in,
                                  ex.bytes_out, ex.deny)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, ex: Exchange) -> None:
        # 1. One pass over the headers.
        request_id: bytes | None = None
        authorization: list[bytes] = []
        connection: list[bytes] = []
        forwarded_for: list[bytes] = []
        host: bytes | None = None
        forwarded_proto: bytes | None = None
        forwarded_host: bytes | None = None
        debug = False
        length = -1  # Content-Length, when sent
        chunked = False
        bad_frame = False  # framing the HTTP server let through but two parsers could read differently
        forward: list[tuple[str, str]] = []
        traceparent: bytes | None = None  # b"": more than one
        tracestate: list[bytes] | None = None
        origin: bytes | None = None
        preflight: bytes | None = None  # Access-Control-Request-Method
        preflight_headers: list[bytes] | None = None
        for name, value in scope["headers"]:
            if name in _CONSUMED:
                if name == b"authorization":
                    authorization.append(value)
                    if self._forward_authorization:
                        forward.append(("authorization", value.decode("latin-1")))
                elif name == b"x-forwarded-for":
                    forwarded_for.append(value)
                elif name == b"connection":
                    connection.append(value)
                elif name == b"host":
                    bad_frame |= host is not None
                    host = value
                elif name == b"x-forwarded-proto":
                    forwarded_proto = value
                elif name == b"x-forwarded-host":
                    forwarded_host = value
                elif name == b"x-debug-auth":
                    debug = value.strip().lower() == b"true"
                elif name == _REQUEST_ID:
                    if valid_request_id(value):
                        request_id = value
                elif name == b"transfer-encoding":
                    # Only one, final "chunked" (RFC 9112 6.1); llhttp passes "gzip, chunked" on. Whitespace
                    # around a value is not part of it (RFC 9110 5.5): llhttp keeps trailing OWS, uvicorn strips
                    # it from 0.55 on; both are read alike here.
                    bad_frame |= chunked or length >= 0 or value.strip(OWS).lower() != b"chunked"
                    chunked = True
                elif name == TRACEPARENT:
                    traceparent = value if traceparent is None else b""
                elif name == TRACESTATE:
                    tracestate = [value] if tracestate is None else [*tracestate, value]
                # Origin and a CORS preflight's own headers: read, and the upstream sees them too.
                elif name == ORIGIN:
                    origin = value if origin is None else b""  # two: no origin the gateway allows
                    forward.append(("origin", value.decode("latin-1")))
                elif name == REQUEST_METHOD:
                    preflight = value
                    forward.append(("access-control-request-method", value.decode("latin-1")))
                elif name == REQUEST_HEADERS:
                    preflight_headers = [value] if preflight_headers is None else [*preflight_headers, value]
                    forward.append(("access-control-request-headers", value.decode("latin-1")))
                continue
            if name[:7] in _IDENTITY_PREFIXES or b"_" in name:
                # Names with "_" are dropped (nginx's default): CGI-style upstreams read Transfer_Encoding or
                # X_Auth_Key_Id as the dashed header the gateway vouches for.
                continue
            if name == b"content-length":
                # Digits only, once (RFC 9110 8.6). Surrounding whitespace is not part of the value (RFC 9110
                # 5.5) and llhttp frames "5 " as 5 bytes, so the upstream is sent the digits alone: the same
                # framing (RFC 9112 6.3) whether the server stripped them (uvicorn 0.55, h11) or not (0.54).
                if not value.isdigit():
                    value = value.strip(OWS)
                if length >= 0 or chunked or not value.isdigit() or len(value) > 18:
                    bad_frame = True
                else:
                    length = int(value)
            forward.append((name.decode("latin-1"), value.decode("latin-1")))
        has_body = chunked or length > 0
        ex.request_id = rid = request_id.decode() if request_id is not None else new_request_id()
        ex.trace_id, parent, state = propagate(traceparent, tracestate)
        tracing = self.tracing
        if tracing is not None:
            # One span per request whose ids are the forwarded traceparent's (gateway.observability.otel).
            ex.span = tracing.start(scope["method"], scope["path"], _peer(scope), traceparent, parent)
            parent = tracing.traceparent(ex.span)
            gate_start = time.time_ns()
        if has_body:
            receive = ex.receive
        if chunked or host is None:
            # Transfer-Encoding means nothing to HTTP/1.0 (RFC 9112 6.1); HTTP/1.1 requires one Host (3.2).
            version = scope["http_version"]
            bad_frame |= chunked and version == "1.0" or host is None and version == "1.1"

        method = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        cors = self._cors
        if cors is not None:
            ex.cors = cors.actual(origin)
        if bad_frame:
            ex.deny = FramingError.code
            await _send_error(send, FramingError(), self._format, [CLOSE])
            return
        if preflight is not None and origin is not None and cors is not None and method == "OPTIONS":
            # A CORS preflight: answered here, without a key (gateway.doors.cors).
            ex.cors = ()
            allowed = cors.preflight(origin, preflight, preflight_headers or [])
            if allowed is None:
                ex.deny = "cors_preflight_refused"
                status, headers, body = cors.refused
                headers = [*headers, CLOSE] if has_body else [*headers]
            else:
                status, headers, body = 204, [*allowed, CLOSE] if has_body else allowed, b""
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        peer = _peer(scope)
        decision = await self.gate.decide(method, raw_path, authorization, peer, forwarded_for, debug,
                                          length if has_body else -1)
        ex.note(decision)
        route = decision.route
        principal = decision.principal
        if tracing is not None:
            reason = decision.error.code if isinstance(decision, Deny) else None
            tracing.gate(ex.span, gate_start, reason is None, reason,
                         principal.record.id if isinstance(principal, AuthKey) else None, method, ex.route)
        if isinstance(decision, Deny):
            extra: list[Header] = []
            if has_body or decision.error.__class__ is MethodNotAllowed:
                # The body was not read: close rather than let the server drain it (or misread it). After a
                # CONNECT head llhttp reads what follows as tunnel bytes: close too.
                extra.append(CLOSE)
            status, headers, body = decision.render(self._format, extra)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        allow: Allow = decision
        if principal is not None:
            if route is not None and route.internal and self.management is not None:
                limits = self.gate.limits
                limit_doc = None
                if limits is not None and limits.enabled:
                    tier = limits.tier_of(principal)
                    limit_doc = (allow.applied.public(tier) if allow.applied is not None else
                                 {"limit": None, "remaining": None, "reset": None, "tier": tier})
                # What the gate decided, for the management API (gateway.admin.api); it raises what it refuses.
                scope["gateway.principal"] = principal
                scope["gateway.rate_limit"] = limit_doc
                scope["gateway.headers"] = allow.response_headers
                try:
                    await self.management(scope, receive, send)
                except GatewayError as exc:
                    await self._refuse(send, ex, exc, allow, has_body)
                return
        # Test keys go to the test upstream and never to the live one.
        forwarder = self.forwarders.get(principal.environment if principal is not None else "live")
        if forwarder is None:
            await self._refuse(send, ex, EnvironmentUnavailable(), allow, has_body)
            return

        # 6. Forward.
        if connection:
            named = {t.strip().lower().decode("latin-1") for t in b",".join(connection).split(b",")}
            forward = [h for h in forward if h[0] not in named]
        peer = peer or ""
        proto: str = scope["scheme"]
        if forwarded_for and self.gate.resolver.is_trusted(parse_address(peer)):
            # Behind a trusted proxy: extend its chain and keep what it says of the original request.
            chain = b", ".join(forwarded_for).decode("latin-1") + ", " + peer
            if forwarded_proto:
                proto = forwarded_proto.decode("latin-1")
            host = forwarded_host or host
        else:
            chain = peer
        forward += (("x-forwarded-for", chain), ("x-forwarded-proto", proto), ("x-request-id", rid),
                    ("traceparent", parent))
        if state is not None:
            forward.append(("tracestate", state))
        if host is not None:
            forward.append(("x-forwarded-host", host.decode("latin-1")))
        if principal is not None:
            forward += principal.upstream_headers
        extra = [*allow.response_headers, *ex.cors, (_REQUEST_ID, rid.encode())]
        ex.t_forward = perf_counter()
        try:
            await forwarder.forward(
                method, raw_path, scope["query_string"], forward, has_body, receive, ex.raw_send, extra,
                body_limit=allow.body_limit, tally=ex,
            )
        except GatewayError as exc:
            ex.deny = exc.code
            extra = [*allow.response_headers]  # ex.send adds the request id and the CORS headers
            await _send_error(send, exc, self._format, [*extra, CLOSE] if has_body else extra)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket: its handshake asked of the gate like a GET (one rate-limit spend), refused with the
        denial's answer, or relayed to the same target on the key's upstream until either side closes. Counted
        and logged once, when it ends (status 101 for a relayed one)."""
        ex = Exchange(send, receive)
        start = perf_counter()
        try:
            await self._serve_websocket(scope, receive, send, ex)
        finally:
            self._finish(scope, ex, perf_counter() - start)

    async def _serve_websocket(self, scope: Scope, receive: Receive, send: Send, ex: Exchange) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return  # gone before the handshake was answered
        request_id: bytes | None = None
        authorization: list[bytes] = []
        forwarded_for: list[bytes] = []
        forwarded_proto: bytes | None = None
        debug = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization.append(value)
            elif name == b"x-forwarded-for":
                forwarded_for.append(value)
            elif name == b"x-forwarded-proto":
                forwarded_proto = value
            elif name == b"x-debug-auth":
                debug = value.strip().lower() == b"true"
            elif name == _REQUEST_ID and valid_request_id(value):
                request_id = value
        ex.request_id = rid = request_id.decode() if request_id is not None else new_request_id()
        rid_header = (_REQUEST_ID, rid.encode())
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        peer = _peer(scope)
        decision = await self.gate.decide("GET", raw_path, authorization, peer, forwarded_for, debug, -1)
        ex.note(decision)
        route = decision.route
        principal = decision.principal
        if isinstance(decision, Deny):
            ex.status = await refuse_handshake(scope, send, *decision.render(self._format, [rid_header]))
            return
        allow: Allow = decision
        upstreams = self.websockets.get(principal.environment if principal is not None else "live")
        if upstreams is None or route is not None and route.internal:
            # The management API has no WebSocket endpoints.
            error: GatewayError = EnvironmentUnavailable() if upstreams is None else MethodNotAllowed()
            ex.deny = error.code
            ex.status = await refuse_handshake(
                scope, send, *self._format.render(error, [*allow.response_headers, rid_header]))
            return
        peer = peer or ""
        # The scheme of the handshake's HTTP request (uvicorn reports ws/wss).
        proto = "https" if scope["scheme"] in ("wss", "https") else "http"
        if forwarded_for and self.gate.resolver.is_trusted(parse_address(peer)):
            chain = b", ".join(forwarded_for).decode("latin-1") + ", " + peer
            if forwarded_proto:
                proto = forwarded_proto.decode("latin-1")
        else:
            chain = peer
        headers: list[tuple[str, str]] = [("x-forwarded-for", chain), ("x-forwarded-proto", proto),
                                          ("x-request-id", rid)]
        if self._forward_authorization:
            headers += (("authorization", v.decode("latin-1")) for v in authorization)
        if principal is not None:
            headers += principal.upstream_headers
        ex.t_forward = perf_counter()
        try:
            upstream = await upstreams.connect(raw_path, scope["query_string"], headers,
                                               scope.get("subprotocols") or ())
        except GatewayError as exc:
            ex.deny = exc.code
            ex.status = await refuse_handshake(
                scope, send, *self._format.render(exc, [*allow.response_headers, rid_header]))
            return
        try:
            await send({"type": "websocket.accept", "subprotocol": upstream.protocol,
                        "headers": [*allow.response_headers, rid_header]})
            ex.status = 101
            ex.t_head = perf_counter()
            still_valid = self._key_check(authorization) if isinstance(principal, AuthKey) else None
            await relay(receive, send, upstream, self._websocket_idle, ex, still_valid, self._websocket_check)
        finally:
            if not upstream.closed:
                await upstream.close()

    def _key_check(self, authorization: list[bytes]) -> Callable[[], Awaitable[bool]]:
        """Whether an open WebSocket's key still holds, as the gate sees it now: a revoked or expired key is
        refused once its cache entry runs out (``cache.ttl_seconds``, the revocation bound of every request). A
        store that cannot answer closes nothing."""
        gate = self.gate

        async def still_valid() -> bool:
            try:
                found = gate.authenticate_now(authorization, None)
                if found.__class__ is not AuthKey:
                    await gate.load_key(found.key_hash)
            except InvalidToken:
                return False
            except GatewayError:
                return True
            return True

        return still_valid

    async def _refuse(self, send: Send, ex: Exchange, error: GatewayError, allow: Allow, has_body: bool) -> None:
        """Answer ``error`` for a request the gate let through (its rate-limit and debug headers kept); a body
        not read means the connection closes."""
        ex.deny = error.code
        headers = allow.response_headers
        await _send_error(send, error, self._format, [*headers, CLOSE] if has_body else headers)

    async def authorize(self, scope: Scope, needed: str) -> Any:
        """Authenticate a request the policy does not route (``/metrics`` with ``ops.metrics_scope``) and check
        that its credential holds ``needed``: :meth:`gateway.gate.Gate.authorize`. Raises GatewayError."""
        authorization = [v for n, v in scope["headers"] if n == b"authorization"]
        forwarded_for = [v for n, v in scope["headers"] if n == b"x-forwarded-for"]
        return await self.gate.authorize(authorization, _peer(scope), forwarded_for, needed)


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


async def _send_error(send: Send, error: GatewayError, errors: ErrorFormat, extra: list[Header] | tuple[()]) -> None:
    status, headers, body = errors.render(error, extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

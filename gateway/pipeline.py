"""The auth gate: one pure-ASGI callable on the hot path.

For every HTTP request, in this order:

1. read the headers once (credential, forwarding headers, debug flag, framing) and refuse ambiguous framing
   (400, connection closed), methods outside the policy's set (405) and ambiguous paths (400);
2. find the policy route; a public route is forwarded without a credential;
3. authenticate: ``Authorization: Bearer <key>`` (read as RFC 9110 11 has it, see gateway.bearer), format and
   checksum first, then the keyed hash through the cache (401 ``authentication_required`` / ``invalid_token`` /
   ``expired_token``); an address with too many failed attempts cools down first (429
   ``too_many_failed_attempts``, see gateway.guard);
4. check the client network against the key's allowlist (403 ``ip_restricted``);
5. check the policy: the route must exist and the key must hold its scopes (403 ``insufficient_permissions``);
   then spend one request of the key's rate limit (429 ``rate_limit_exceeded``; ``/auth/test`` only looks);
6. forward, with the client's ``X-Auth-*`` headers removed and the gateway's identity headers added.

Per-request state lives in locals only; everything else was compiled when the app was built.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from time import perf_counter
from typing import Any, Protocol

from starlette.types import Receive, Scope, Send

from gateway.admin.api import Call, ManagementAPI
from gateway.bearer import MAX_CREDENTIAL, OWS, PREFIX, bearer_token, token_error
from gateway.errors import (
    APIKeyRefused,
    AuthenticationRequired,
    EnvironmentUnavailable,
    ExpiredToken,
    GatewayError,
    InsufficientPermissions,
    InvalidToken,
    IPRestricted,
    JWTRefused,
    ServiceUnavailable,
    StoreUnavailable,
    TwoAuthorizations,
    render,
)
from gateway.guard import CLOSE, FailureGuard, FramingError, MethodNotAllowed, PayloadTooLarge, TooManyFailures
from gateway.keys.cache import UNKNOWN as _UNKNOWN
from gateway.keys.cache import AuthKey, KeyCache
from gateway.keys.format import KeyParser, checksum_ok
from gateway.keys.hashing import Pepper
from gateway.keys.store import StoreError
from gateway.keys.usage import UsageRecorder
from gateway.network import ClientResolver, IPAddress, address_text, in_networks, parse_address
from gateway.ops.logging import AccessLog, new_request_id, valid_request_id
from gateway.ops.metrics import UNMATCHED, Metrics
from gateway.policies import KNOWN_METHODS, Policy, Route, grants
from gateway.proxy.forwarder import Forwarder
from gateway.ratelimit.stage import UNLIMITED_DEBUG, Applied, RateLimits
from gateway.settings import Settings

log = logging.getLogger("gateway.pipeline")

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
    }
)
# Every spelling of the identity-header prefix a server might hand over (names arrive lower-cased).
_IDENTITY_PREFIXES = frozenset({b"x-auth-", b"x_auth_", b"x-auth_", b"x_auth-"})


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments, the first a JSON header (``eyJ`` is ``{"`` encoded)."""
    try:
        from gateway.jwtauth import looks_like_jwt as shape
    except ImportError:  # pragma: no cover - JWT support not installed
        return False
    return shape(token)


class ShuttingDown(ServiceUnavailable):
    code = "shutting_down"
    message = "The gateway is shutting down; retry"


class _Load:
    """What authentication returns when the key cache does not know a (well-formed) key: read the store."""

    __slots__ = ("key_hash",)

    def __init__(self, key_hash: str) -> None:
        self.key_hash = key_hash


class Verifier(Protocol):
    """What the pipeline needs of the JWT verifier (gateway.jwtauth.JWTVerifier)."""

    def verify(self, token: str, now: float | None = None) -> Any: ...


_REQUEST_ID = b"x-request-id"
_ALLOWED = ("allowed", "ok")  # the authentication decision (result, reason) of a request let through
# Deny reasons that are the rate limiter's, not the gate's: the credential and the policy had passed.
_RATE_REASONS = {"rate_limit_exceeded": "limited", "rate_limit_unavailable": "unavailable"}


class Exchange:
    """One request as its observers see it (metrics, access log): filled in by the pipeline, read at the end.

    Its :meth:`send` adds ``X-Request-ID`` to the response head and counts the body bytes sent; its
    :meth:`receive` (used only when the request has a body) counts the bytes read. A forwarded answer, the
    common case, is sent on ``raw_send`` instead: the forwarder adds the header and keeps the tally itself
    (``status``, ``t_head``, ``bytes_out``), one coroutine less per message."""

    __slots__ = ("raw_send", "_receive", "request_id", "status", "bytes_in", "bytes_out", "route", "principal",
                 "deny", "gated", "authorized", "rate", "t_forward", "t_head", "client")

    def __init__(self, send: Send, receive: Receive) -> None:
        self.raw_send = send
        self._receive = receive
        self.request_id = ""
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

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.t_head = perf_counter()
            headers = message["headers"]
            rid = (_REQUEST_ID, self.request_id.encode())
            if type(headers) is list:
                headers.append(rid)
            else:
                message["headers"] = [*headers, rid]
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
        policy: Policy,
        cache: KeyCache,
        pepper: Pepper,
        forwarders: Mapping[str, Forwarder | None],
        management: ManagementAPI | None = None,
        usage: UsageRecorder | None = None,
        jwt: Verifier | None = None,
        clock: Callable[[], float] = time.time,
        limits: RateLimits | None = None,
        metrics: Metrics | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.policy = policy  # replaced whole on reload; a request reads it once (gateway/ops/reload.py)
        self.metrics = metrics
        self.access_log = access_log
        self.cache = cache
        self.forwarders = forwarders
        self.management = management
        self.usage = usage
        self.clock = clock
        self._jwt = jwt
        self._pepper = pepper
        self._parser = KeyParser(settings.key_format)
        self._resolver = ClientResolver(settings.trusted_proxies)
        self._format = settings.error_format
        self._debug_allowed = settings.debug_headers
        self._forward_authorization = settings.forward_authorization
        lim = settings.limits
        self._max_body = lim.max_body_bytes
        self._body_limits = dict(lim.body_bytes_per_route)
        # Failed authentications per client address; its counters are read by the metrics endpoint.
        self.auth_failures = FailureGuard(
            lim.auth_failures_per_minute, lim.auth_failures_cooldown_seconds, lim.auth_failures_global_per_minute,
            lim.max_tracked_clients,
        )
        self.limits = limits
        prefix = "" if settings.management.prefix == "/" else settings.management.prefix
        self._auth_test = f"{prefix}/auth/test"  # answered without spending a request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
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
        method = scope["method"]
        m = self.metrics
        if m is not None:
            auth = (_ALLOWED if ex.authorized else ("denied", ex.deny or "error")) if ex.gated else None
            m.request(route, method, status, duration, upstream, key_id, auth, ex.rate)
        if self.access_log is not None:
            client = address_text(ex.client) if ex.client is not None else _peer(scope)
            raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
            self.access_log.write(time.time(), ex.request_id, method, ex.route, raw_path.decode("latin-1"),
                                  status, duration, upstream, key_id, client, ex.bytes_in, ex.bytes_out, ex.deny)

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
                    debug = self._debug_allowed and value.strip().lower() == b"true"
                elif name == _REQUEST_ID:
                    if valid_request_id(value):
                        request_id = value
                elif name == b"transfer-encoding":
                    # Only one, final "chunked" (RFC 9112 6.1); llhttp passes "gzip, chunked" on. Whitespace
                    # around a value is not part of it (RFC 9110 5.5): llhttp keeps trailing OWS, uvicorn strips
                    # it from 0.55 on; both are read alike here.
                    bad_frame |= chunked or length >= 0 or value.strip(OWS).lower() != b"chunked"
                    chunked = True
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
        if has_body:
            receive = ex.receive
        if chunked or host is None:
            # Transfer-Encoding means nothing to HTTP/1.0 (RFC 9112 6.1); HTTP/1.1 requires one Host (3.2).
            version = scope["http_version"]
            bad_frame |= chunked and version == "1.0" or host is None and version == "1.1"

        principal: Any = None
        ip_check = "not_configured"
        client: IPAddress | None = None
        method = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        forwarder: Forwarder | None = None
        applied: Applied | None = None
        rate_headers: list[Header] | tuple[()] = ()
        body_limit = self._max_body
        try:
            if bad_frame:
                raise FramingError()
            if method not in KNOWN_METHODS:
                # llhttp refuses unknown tokens; this catches the ones it knows (TRACE, PROPFIND, ...).
                raise MethodNotAllowed()
            # 2. The route decides whether a credential is needed, and which kinds.
            segments, route = self.policy.match_path(method, raw_path)
            if route is not None:
                ex.route = route.template
            if route is None or not route.public:
                ex.gated = True
                # 3. Authenticate, unless this address is cooling down after too many failures.
                if self.auth_failures.blocked:
                    wait = self.auth_failures.retry_after(self._client_key(scope, forwarded_for), self.clock())
                    if wait is not None:
                        raise TooManyFailures(wait)
                principal = self._authenticate_now(authorization, route)
                if principal.__class__ is _Load:
                    principal = await self._load_key(principal.key_hash)
                ex.principal = principal
                # 4. Client network.
                if principal.networks:
                    client = self._resolver.resolve(_peer(scope), forwarded_for)
                    if not in_networks(client, principal.networks):
                        ip_check = "failed"
                        raise IPRestricted()
                    ip_check = "passed"
                # 5. Policy.
                if route is None:
                    raise InsufficientPermissions("No policy rule allows this method and path")
                perms = principal.permissions
                for needed in route.scopes:
                    if not grants(perms, needed):
                        raise InsufficientPermissions()
                ex.authorized = True
                if has_body:
                    # Refused on Content-Length before a byte is read; chunked bodies are counted as they stream.
                    body_limit = self._body_limits.get(route.template, body_limit)
                    if length > body_limit:
                        raise PayloadTooLarge()
                if self.usage is not None and isinstance(principal, AuthKey):
                    if client is None:
                        client = self._resolver.resolve(_peer(scope), forwarded_for)
                    self.usage.note(principal.record.id, client)
                # 6. Rate limit.
                limits = self.limits
                if limits is not None:
                    if limits.local and route.template != self._auth_test:
                        applied = limits.spend_now(principal)
                    else:
                        applied = await limits.check(principal, route.template != self._auth_test)
                    if applied is not None:
                        rate_headers = applied.headers
                    if limits.enabled:
                        ex.rate = "allowed" if applied is not None else "unlimited"
                if route.internal and self.management is not None:
                    extra = await self._debug_headers(principal, ip_check, applied) if debug else []
                    extra.extend(rate_headers)
                    limit_doc = None
                    if self.limits is not None and self.limits.enabled:
                        tier = self.limits.tier_of(principal)
                        limit_doc = (applied.public(tier) if applied is not None else
                                     {"limit": None, "remaining": None, "reset": None, "tier": tier})
                    call = Call(method, route, segments, scope["query_string"], principal, receive, limit_doc)
                    await self.management.handle(call, send, extra)
                    return
            elif has_body:
                body_limit = self._body_limits.get(route.template, body_limit)
                if length > body_limit:
                    raise PayloadTooLarge()
            # Test keys go to the test upstream and never to the live one.
            forwarder = self.forwarders.get(principal.environment if principal is not None else "live")
            if forwarder is None:
                raise EnvironmentUnavailable()
        except GatewayError as exc:
            ex.deny = exc.code
            ex.client = client
            if exc.code in _RATE_REASONS:
                ex.rate = _RATE_REASONS[exc.code]
            if isinstance(exc, InvalidToken):
                self.auth_failures.failure(self._client_key(scope, forwarded_for), self.clock())
            extra = await self._debug_headers(principal, ip_check, applied) if debug else []
            extra.extend(rate_headers)
            if has_body or bad_frame or exc.__class__ is MethodNotAllowed:
                # The body was not read: close rather than let the server drain it (or misread it). After a
                # CONNECT head llhttp reads what follows as tunnel bytes: close too.
                extra.append(CLOSE)
            await _send_error(send, exc, self._format, extra)
            return

        # 6. Forward.
        if connection:
            named = {t.strip().lower().decode("latin-1") for t in b",".join(connection).split(b",")}
            forward = [h for h in forward if h[0] not in named]
        peer = scope.get("client")
        peer = peer[0] if peer else ""
        proto: str = scope["scheme"]
        if forwarded_for and self._resolver.is_trusted(parse_address(peer)):
            # Behind a trusted proxy: extend its chain and keep what it says of the original request.
            chain = b", ".join(forwarded_for).decode("latin-1") + ", " + peer
            if forwarded_proto:
                proto = forwarded_proto.decode("latin-1")
            host = forwarded_host or host
        else:
            chain = peer
        forward += (("x-forwarded-for", chain), ("x-forwarded-proto", proto), ("x-request-id", rid))
        if host is not None:
            forward.append(("x-forwarded-host", host.decode("latin-1")))
        if principal is not None:
            forward += principal.upstream_headers
        extra = [*await self._debug_headers(principal, ip_check, applied), *rate_headers] if debug else [*rate_headers]
        extra.append((_REQUEST_ID, rid.encode()))
        ex.client = client
        ex.t_forward = perf_counter()
        try:
            await forwarder.forward(
                method, raw_path, scope["query_string"], forward, has_body, receive, ex.raw_send, extra,
                body_limit=body_limit, tally=ex,
            )
        except GatewayError as exc:
            ex.deny = exc.code
            extra.pop()  # the request id: ex.send adds it to an error answer
            await _send_error(send, exc, self._format, [*extra, CLOSE] if has_body else extra)

    async def authorize(self, scope: Scope, needed: str) -> Any:
        """Authenticate a request the gate does not route (``/metrics`` with ``ops.metrics_scope``) and check
        that its credential holds ``needed``, with the same rules as the gate. Raises GatewayError."""
        authorization = [v for n, v in scope["headers"] if n == b"authorization"]
        forwarded_for = [v for n, v in scope["headers"] if n == b"x-forwarded-for"]
        if self.auth_failures.blocked:
            wait = self.auth_failures.retry_after(self._client_key(scope, forwarded_for), self.clock())
            if wait is not None:
                raise TooManyFailures(wait)
        try:
            principal = await self._authenticate(authorization, None)
        except InvalidToken:
            self.auth_failures.failure(self._client_key(scope, forwarded_for), self.clock())
            raise
        if principal.networks:
            client = self._resolver.resolve(_peer(scope), forwarded_for)
            if not in_networks(client, principal.networks):
                raise IPRestricted()
        if not grants(principal.permissions, needed):
            raise InsufficientPermissions()
        return principal

    def _client_key(self, scope: Scope, forwarded_for: list[bytes]) -> str:
        """The address failed authentications are counted against (the peer when XFF is unusable)."""
        client = self._resolver.resolve(_peer(scope), forwarded_for)
        return str(client) if client is not None else _peer(scope) or "unknown"

    async def _authenticate(self, authorization: list[bytes], route: Route | None) -> Any:
        principal = self._authenticate_now(authorization, route)
        if principal.__class__ is _Load:
            principal = await self._load_key(principal.key_hash)
        return principal

    def _authenticate_now(self, authorization: list[bytes], route: Route | None) -> Any:
        """The principal, or a :class:`_Load` when only the store can tell (a cache miss). Raises GatewayError.
        Synchronous, so a cache hit costs no coroutine."""
        if not authorization:
            raise AuthenticationRequired()
        if len(authorization) > 1:
            raise TwoAuthorizations()
        # Whitespace around a field value is not part of it (RFC 9110 5.5); llhttp leaves trailing OWS on.
        value = authorization[0].rstrip(OWS)
        # The usual spelling by one compare; another (the scheme in another case: RFC 9110 11.1) or a malformed
        # value through the general parse, which says what is wrong (gateway.bearer).
        if value[:7] == PREFIX and len(value) <= MAX_CREDENTIAL:
            raw = value[7:]
        else:
            raw = bearer_token(value)
        try:
            token = raw.decode("ascii")
        except UnicodeDecodeError:
            raise token_error(raw) from None
        if self._parser.shape(token) is None:
            if token[:1] == " ":
                # "Bearer" and more spaces (1*SP, RFC 9110 11.4): rare, so looked for only once the key has failed
                # its shape check. Read again without them (once: what follows the spaces is not a space).
                return self._authenticate_now([PREFIX + raw.lstrip(b" ")], route)
            # Not an API key. A JWT is told apart by its shape, never by trying one after the other.
            if self._jwt is not None and looks_like_jwt(token):
                if route is not None and "jwt" not in route.credentials:
                    raise JWTRefused()
                return self._jwt.verify(token, self.clock())
            raise token_error(raw)
        if route is not None and "api_key" not in route.credentials:
            raise APIKeyRefused()
        key_hash = self._pepper.hash(token)
        # The checksum is checked only when the cache does not know the hash: a hit (valid, revoked or unknown)
        # was a real key, or was refused, already. So a mistyped or made-up key still never reaches the store,
        # and a known one skips the check.
        key = self.cache.peek(key_hash)
        if key is _UNKNOWN:
            if not checksum_ok(token):
                raise InvalidToken()
            return _Load(key_hash)
        return self._usable(key, key_hash)  # type: ignore[arg-type]

    async def _load_key(self, key_hash: str) -> AuthKey:
        try:
            key = await self.cache.lookup(key_hash)
        except StoreError as exc:
            log.error("key store lookup failed: %s", exc)
            if self.metrics is not None:
                self.metrics.store_errors += 1
            raise StoreUnavailable() from None
        return self._usable(key, key_hash)

    def _usable(self, key: AuthKey | None, key_hash: str) -> AuthKey:
        if key is None or key.revoked or not Pepper.same(key.record.key_hash, key_hash):
            raise InvalidToken()
        if key.expires_ts is not None and key.expires_ts <= self.clock():
            raise ExpiredToken()
        return key

    async def _debug_headers(self, principal: Any, ip_check: str, applied: Applied | None) -> list[Header]:
        out: list[Header] = []
        if isinstance(principal, AuthKey):
            out.append((b"x-auth-key-id", principal.id_header))
            out.append((b"x-auth-permissions", principal.permissions_header))
            if principal.record.rotated_to is not None:
                out.append((b"x-auth-key-status", b"grace_period"))
            elif principal.rotation_due_ts is not None and principal.rotation_due_ts <= self.clock():
                out.append((b"x-auth-key-status", b"rotation_due"))
        elif principal is not None:
            out.append((b"x-auth-subject", principal.subject_header))
            out.append((b"x-auth-permissions", principal.permissions_header))
        out.append((b"x-auth-ip-check", ip_check.encode()))
        if principal is not None:
            out.append((b"x-auth-rate-limit", await self._rate_debug(principal, applied)))
        return out

    async def _rate_debug(self, principal: Any, applied: Applied | None) -> bytes:
        """``remaining/limit`` for X-Auth-Rate-Limit; a denial before the rate-limit stage only looks."""
        if applied is None and self.limits is not None:
            try:
                applied = await self.limits.check(principal, spend=False)
            except GatewayError:
                return b"unavailable"
        return applied.debug_value if applied is not None else UNLIMITED_DEBUG


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


async def _send_error(send: Send, error: GatewayError, error_format: str, extra: list[Header] | tuple[()]) -> None:
    status, headers, body = render(error, error_format, extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""The gate: what the gateway decides about one request, with no transport.

A front door (the reverse proxy in :mod:`gateway.doors.proxy.pipeline`, the ASGI middleware in
:mod:`gateway.doors.middleware`, the forward-auth endpoint in :mod:`gateway.doors.forward_auth`) turns its
transport into a few values (method, raw path, the ``Authorization`` values, the socket peer and any
``X-Forwarded-For`` values) and asks :meth:`Gate.decide`. The answer is an :class:`Allow` (the principal, the
headers for the upstream and for the client) or a :class:`Deny` (an error, rendered in the configured format,
and the headers it carries). The front door turns that back into its transport.

For a request, in this order:

0. refuse a method outside the set any policy can name (405);
1. find the policy route (a public route needs no credential; an ambiguous path is refused, 400);
2. unless the client address is cooling down after too many failed authentications (429), authenticate:
   ``Authorization: Bearer <key>`` (read as RFC 9110 11 has it, see gateway.gate.bearer), format and checksum
   first, then the keyed hash through the cache (401 ``authentication_required`` / ``invalid_token`` /
   ``expired_token``), or a JWT where the route takes one;
3. check the client network against the key's allowlist (403 ``ip_restricted``);
4. check the policy: the route must exist and the principal must hold its scopes (403). A path no rule
   matches is refused, unless the gate was built with ``unmatched="authenticate"`` (the ASGI middleware's
   option for applications that check scopes in their own code): then the credential is all it needs;
5. check the declared body size against the route's limit (413), before anything is spent;
6. spend one request of the principal's rate limit (429; ``{prefix}/auth/test`` only looks).

Nothing here reads a socket or an ASGI message: unit tests drive it directly. Per-request state lives in
locals; everything else was compiled when the gate was built. A cache hit is decided without awaiting the
store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from gateway.config.settings import Settings
from gateway.errors import (
    APIKeyNotAccepted,
    AuthenticationRequired,
    ErrorFormat,
    ExpiredToken,
    GatewayError,
    InsufficientPermissions,
    InvalidToken,
    IPRestricted,
    JWTLacksScope,
    JWTNoKey,
    JWTNotAccepted,
    MethodNotAllowed,
    NoPolicyRule,
    PayloadTooLarge,
    RevokedKey,
    StoreUnavailable,
    TooManyFailures,
    TwoAuthorizations,
    render,
)
from gateway.gate.bearer import MAX_CREDENTIAL, OWS, PREFIX, bearer_token, token_error
from gateway.gate.failures import FailureGuard
from gateway.keys.cache import UNKNOWN as _UNKNOWN
from gateway.keys.cache import AuthKey, KeyCache
from gateway.keys.format import KeyParser, checksum_ok
from gateway.keys.hashing import Pepper
from gateway.keys.store import StoreError
from gateway.keys.usage import UsageRecorder
from gateway.network import ClientResolver, IPAddress, in_networks
from gateway.observability.metrics import Metrics
from gateway.policy.rules import KNOWN_METHODS, Policy, Route, grants
from gateway.ratelimit.stage import UNLIMITED_DEBUG, Applied, RateLimits

log = logging.getLogger("gateway.gate")

Header = tuple[bytes, bytes]



def looks_like_jwt(token: str) -> bool:
    """Three base64url segments, the first a JSON header (``eyJ`` is ``{"`` encoded)."""
    try:
        from gateway.gate.jwt import looks_like_jwt as shape
    except ImportError:  # pragma: no cover - JWT support not installed
        return False
    return shape(token)


class VerifyLater(Exception):
    """Raised by a JWT verifier's ``verify`` when it cannot answer without an await (a key set to fetch again, a
    user's standing to read from the store): the gate then awaits ``verify_refreshed`` for that request alone, as
    it awaits the store on a key-cache miss."""


class KeyIdUnknown(JWTNoKey, VerifyLater):
    """A JWT naming a ``kid`` the JWKS URL's key set does not hold (yet): the gate fetches the set again (at
    most once per ``jwt.jwks_min_refresh_seconds``) and tries once more; still unknown, the client gets the
    answer of :class:`~gateway.errors.JWTNoKey`."""


class Verifier(Protocol):
    """What the gate needs of a JWT verifier (gateway.gate.jwt.JWTVerifier; with accounts on, the combined one of
    gateway.accounts.tokens): ``verify`` answers at once or raises :class:`VerifyLater`."""

    def verify(self, token: str, now: float | None = None) -> Any: ...

    async def verify_refreshed(self, token: str, now: float | None = None) -> Any: ...


class _Load:
    """What authentication returns when only an await can tell: the key cache does not know a (well-formed) key
    (read the store), or a JWT names a key id not fetched yet (``token``: fetch the JWKS URL again)."""

    __slots__ = ("key_hash", "token")

    def __init__(self, key_hash: str, token: str | None = None) -> None:
        self.key_hash = key_hash
        self.token = token


class Allow:
    """The request may go on.

    ``principal`` is the :class:`~gateway.keys.cache.AuthKey` or JWT principal (None on a public route);
    ``upstream_headers`` what the upstream is told about it (``x-auth-key-id``, ``x-auth-permissions``, ...);
    ``response_headers`` what the client is told (rate-limit headers, and the ``X-Auth-*`` debug headers when
    asked for); ``route`` the policy rule (its ``template`` names it in metrics and logs)."""

    __slots__ = ("principal", "route", "segments", "client", "applied", "response_headers", "body_limit",
                 "ip_check", "rate")

    def __init__(self, principal: Any, route: Route | None, segments: list[str], client: IPAddress | None,
                 applied: Applied | None, response_headers: list[Header], body_limit: int, ip_check: str,
                 rate: str | None) -> None:
        self.principal = principal
        self.route = route
        self.segments = segments
        self.client = client
        self.applied = applied
        self.response_headers = response_headers
        self.body_limit = body_limit
        self.ip_check = ip_check
        self.rate = rate  # "allowed", "unlimited", or None when no limit applies (a public route)

    allowed = True

    @property
    def gated(self) -> bool:
        """Whether a credential was needed."""
        return self.principal is not None

    @property
    def upstream_headers(self) -> tuple[tuple[str, str], ...]:
        return self.principal.upstream_headers if self.principal is not None else ()


class Deny:
    """The request is refused with ``error``; ``headers`` are the extra headers its answer carries (rate-limit
    and debug headers). :meth:`render` gives the status, headers and JSON body in an error format."""

    __slots__ = ("error", "headers", "principal", "route", "client", "gated", "authorized", "rate")

    allowed = False

    def __init__(self, error: GatewayError, headers: list[Header], principal: Any, route: Route | None,
                 client: IPAddress | None, gated: bool, authorized: bool, rate: str | None) -> None:
        self.error = error
        self.headers = headers
        self.principal = principal
        self.route = route
        self.client = client
        self.gated = gated  # a credential was needed
        self.authorized = authorized  # ... and passed: refused by the body size or the rate limit
        self.rate = rate

    @property
    def status(self) -> int:
        return self.error.status

    @property
    def code(self) -> str:
        return self.error.code

    def render(self, error_format: ErrorFormat | str, extra: Iterable[Header] = ()) -> tuple[int, list[Header], bytes]:
        return render(self.error, error_format, [*self.headers, *extra])


# What the gate does with a path no policy rule matches: refuse it (403), or only authenticate the caller.
UNMATCHED = ("deny", "authenticate")

# Deny reasons that are the rate limiter's, not the gate's: the credential and the policy had passed.
RATE_REASONS = {"rate_limit_exceeded": "limited", "rate_limit_unavailable": "unavailable"}


class Gate:
    """Authentication, network, policy, body size and rate limit for one request: :meth:`decide`."""

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        cache: KeyCache,
        pepper: Pepper,
        usage: UsageRecorder | None = None,
        jwt: Verifier | None = None,
        clock: Callable[[], float] = time.time,
        limits: RateLimits | None = None,
        metrics: Metrics | None = None,
        unmatched: str = "deny",
    ) -> None:
        if unmatched not in UNMATCHED:
            raise ValueError(f"unmatched must be one of {', '.join(map(repr, UNMATCHED))} (got {unmatched!r})")
        self.policy = policy  # replaced whole on reload; a request reads it once (gateway/serving/reload.py)
        self.cache = cache
        self.usage = usage
        self.clock = clock
        self.limits = limits
        self.metrics = metrics
        self.debug_allowed = settings.debug_headers
        self.authenticate_unmatched = unmatched == "authenticate"
        self._jwt = jwt
        self._pepper = pepper
        self._parser = KeyParser(settings.key_format)
        self.resolver = ClientResolver(settings.trusted_proxies)
        lim = settings.limits
        self._max_body = lim.max_body_bytes
        self._body_limits = dict(lim.body_bytes_per_route)
        # Failed authentications per client address; its counters are read by the metrics endpoint.
        self.auth_failures = FailureGuard(
            lim.auth_failures_per_minute, lim.auth_failures_cooldown_seconds, lim.auth_failures_global_per_minute,
            lim.max_tracked_clients,
        )
        prefix = "" if settings.management.prefix == "/" else settings.management.prefix
        # The management API's key check, answered without spending a request (a policy file's own route of
        # that name, with the management API off, is an ordinary route).
        self.auth_test = f"{prefix}/auth/test" if settings.management.enabled else None

    async def decide(
        self,
        method: str,
        raw_path: bytes,
        authorization: list[bytes],
        peer: str | None,
        forwarded_for: list[bytes],
        debug: bool = False,
        body_length: int = -1,
    ) -> Allow | Deny:
        """The decision for one request.

        ``raw_path`` is the path as sent (percent-encoded, no query); ``authorization`` every value of the
        ``Authorization`` header in order; ``peer`` the socket peer's address; ``forwarded_for`` every value of
        ``X-Forwarded-For`` (believed only from ``trusted_proxies``); ``debug`` whether the client asked for the
        ``X-Auth-*`` headers (``X-Debug-Auth: true``; honoured when ``debug_headers`` is on); ``body_length``
        the declared body size (``Content-Length``), -1 when none was declared (a chunked body is counted by
        the front door against ``Allow.body_limit`` as it streams)."""
        debug = debug and self.debug_allowed
        principal: Any = None
        route: Route | None = None
        client: IPAddress | None = None
        ip_check = "not_configured"
        applied: Applied | None = None
        rate: str | None = None
        gated = authorized = False
        try:
            if method not in KNOWN_METHODS:
                # llhttp refuses unknown tokens; this catches the ones it knows (TRACE, PROPFIND, ...).
                raise MethodNotAllowed()
            segments, route = self.policy.match_path(method, raw_path)
            body_limit = self._max_body if route is None else self._body_limits.get(route.template, self._max_body)
            if route is not None and route.public:
                if body_length > body_limit:
                    raise PayloadTooLarge()
                return Allow(None, route, segments, None, None, [], body_limit, ip_check, None)
            gated = True
            if self.auth_failures.blocked:
                wait = self.auth_failures.retry_after(self.client_key(peer, forwarded_for), self.clock())
                if wait is not None:
                    raise TooManyFailures(wait)
            principal = self.authenticate_now(authorization, route)
            if principal.__class__ is _Load:
                principal = await self.load(principal)
            if principal.networks:
                client = self.resolver.resolve(peer, forwarded_for)
                if not in_networks(client, principal.networks):
                    ip_check = "failed"
                    raise IPRestricted()
                ip_check = "passed"
            if route is not None:
                perms = principal.permissions
                for needed in route.scopes:
                    if not grants(perms, needed):
                        raise InsufficientPermissions() if principal.__class__ is AuthKey else JWTLacksScope()
            elif not self.authenticate_unmatched:
                raise NoPolicyRule()
            authorized = True
            if body_length > body_limit:
                # Refused on Content-Length before a byte is read (or a request is spent).
                raise PayloadTooLarge()
            if self.usage is not None and principal.__class__ is AuthKey:
                if client is None:
                    client = self.resolver.resolve(peer, forwarded_for)
                self.usage.note(principal.record.id, client)
            limits = self.limits
            headers: list[Header] = []
            if limits is not None:
                spend = route is None or route.template != self.auth_test
                if limits.local and spend:
                    applied = limits.spend_now(principal)
                else:
                    applied = await limits.check(principal, spend)
                if applied is not None:
                    headers = applied.headers
                if limits.enabled:
                    rate = "allowed" if applied is not None else "unlimited"
            if debug:
                headers = [*await self.debug_headers(principal, ip_check, applied), *headers]
            return Allow(principal, route, segments, client, applied, headers, body_limit, ip_check, rate)
        except GatewayError as exc:
            rate = RATE_REASONS.get(exc.code, rate)
            if isinstance(exc, InvalidToken):
                self.auth_failures.failure(self.client_key(peer, forwarded_for), self.clock())
            extra = await self.debug_headers(principal, ip_check, applied) if debug else []
            if applied is not None:
                extra.extend(applied.headers)
            return Deny(exc, extra, principal, route, client, gated, authorized, rate)

    async def authorize(self, authorization: list[bytes], peer: str | None, forwarded_for: list[bytes],
                        needed: str) -> Any:
        """Authenticate a request the policy does not route (``/metrics`` with ``ops.metrics_scope``) and check
        that its credential holds ``needed``, with the same rules as :meth:`decide`. Raises GatewayError."""
        if self.auth_failures.blocked:
            wait = self.auth_failures.retry_after(self.client_key(peer, forwarded_for), self.clock())
            if wait is not None:
                raise TooManyFailures(wait)
        try:
            principal = self.authenticate_now(authorization, None)
            if principal.__class__ is _Load:
                principal = await self.load(principal)
        except InvalidToken:
            self.auth_failures.failure(self.client_key(peer, forwarded_for), self.clock())
            raise
        if principal.networks:
            client = self.resolver.resolve(peer, forwarded_for)
            if not in_networks(client, principal.networks):
                raise IPRestricted()
        if not grants(principal.permissions, needed):
            raise InsufficientPermissions() if principal.__class__ is AuthKey else JWTLacksScope()
        return principal

    def client_key(self, peer: str | None, forwarded_for: list[bytes]) -> str:
        """The address failed authentications are counted against (the peer when XFF is unusable)."""
        client = self.resolver.resolve(peer, forwarded_for)
        return str(client) if client is not None else peer or "unknown"

    def authenticate_now(self, authorization: list[bytes], route: Route | None) -> Any:
        """The principal, or a :class:`_Load` when only the store can tell (a cache miss). Raises GatewayError.
        Synchronous, so a cache hit costs no coroutine."""
        if not authorization:
            raise AuthenticationRequired()
        if len(authorization) > 1:
            raise TwoAuthorizations()
        # Whitespace around a field value is not part of it (RFC 9110 5.5); llhttp leaves trailing OWS on.
        value = authorization[0].rstrip(OWS)
        # The usual spelling by one compare; another (the scheme in another case: RFC 9110 11.1) or a malformed
        # value through the general parse, which says what is wrong (gateway.gate.bearer).
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
                return self.authenticate_now([PREFIX + raw.lstrip(b" ")], route)
            # Not an API key. A JWT is told apart by its shape, never by trying one after the other.
            if self._jwt is not None and looks_like_jwt(token):
                if route is not None and "jwt" not in route.credentials:
                    raise JWTNotAccepted()
                try:
                    return self._jwt.verify(token, self.clock())
                except VerifyLater:
                    return _Load("", token)
            raise token_error(raw)
        if route is not None and "api_key" not in route.credentials:
            raise APIKeyNotAccepted()
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

    async def load(self, pending: _Load) -> Any:
        """The principal :meth:`authenticate_now` could not give without an await."""
        if pending.token is not None and self._jwt is not None:
            return await self._jwt.verify_refreshed(pending.token, self.clock())
        return await self.load_key(pending.key_hash)

    @property
    def jwt(self) -> Verifier | None:
        return self._jwt

    @jwt.setter
    def jwt(self, verifier: Verifier | None) -> None:
        """Replaced whole on a reload that changed the ``jwt`` settings (gateway/serving/reload.py)."""
        self._jwt = verifier

    async def load_key(self, key_hash: str) -> AuthKey:
        try:
            key = await self.cache.lookup(key_hash)
        except StoreError as exc:
            log.error("key store lookup failed: %s", exc)
            if self.metrics is not None:
                self.metrics.store_errors += 1
            raise StoreUnavailable() from None
        return self._usable(key, key_hash)

    def _usable(self, key: AuthKey | None, key_hash: str) -> AuthKey:
        if key is None or not Pepper.same(key.record.key_hash, key_hash):
            raise InvalidToken()
        if key.revoked:
            raise RevokedKey()
        if key.expires_ts is not None and key.expires_ts <= self.clock():
            raise ExpiredToken()
        return key

    async def debug_headers(self, principal: Any, ip_check: str, applied: Applied | None) -> list[Header]:
        """The ``X-Auth-*`` headers a client asking with ``X-Debug-Auth: true`` gets (docs/troubleshooting.md)."""
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
            reported, burst = await self._rate_debug(principal, applied)
            out.append((b"x-auth-rate-limit", reported))
            if burst is not None:
                out.append((b"x-auth-rate-limit-burst", burst))
        return out

    async def _rate_debug(self, principal: Any, applied: Applied | None) -> tuple[bytes, bytes | None]:
        """``remaining/limit`` of the tier's window for X-Auth-Rate-Limit, and of its per-minute burst for
        X-Auth-Rate-Limit-Burst (see :class:`Applied`); a denial before the rate-limit stage only looks."""
        if applied is None and self.limits is not None:
            try:
                applied = await self.limits.check(principal, spend=False)
            except GatewayError:
                return b"unavailable", None
        return applied.debug_values() if applied is not None else (UNLIMITED_DEBUG, None)

"""Front door 3, forward-auth: the gateway as the auth service of an nginx, Traefik or Envoy already in place.

The proxy asks before it forwards; the gateway decides (:class:`gateway.gate.Gate`, exactly as for a request it
proxies itself) and answers; the proxy forwards or refuses. The original request is read from:

* nginx ``auth_request``: ``X-Original-Method`` and ``X-Original-URI`` (set by the configuration in
  docs/forward-auth.md; the subrequest itself is always a GET);
* Traefik ForwardAuth: ``X-Forwarded-Method`` and ``X-Forwarded-Uri`` (``-Proto`` and ``-Host`` are not needed:
  a policy rule names a method and a path);
* Envoy ``ext_authz`` (HTTP service, ``path_prefix`` = ``forward_auth.path``): the request's own method and the
  path below the endpoint.

The client address is resolved from ``X-Forwarded-For`` with the ``trusted_proxies`` rules of proxy mode, and the
policy matches the original path (query stripped) with the same path rules. The answer:

* allowed: 200, no body, the identity headers for the upstream (``X-Auth-Key-Id``, ``X-Auth-Permissions``,
  ``X-Auth-Environment``; ``X-Auth-Subject`` for a JWT), the rate-limit headers, and for Envoy
  ``x-envoy-auth-headers-to-remove`` naming the identity headers not set (Envoy sets before it removes) and
  ``authorization`` unless ``forward_authorization`` is on;
* refused: the denial's status, JSON body and headers (``WWW-Authenticate``, ``Retry-After``, rate limits), as
  in proxy mode. nginx reads only the head of the answer, so to a request in nginx's form the body is repeated
  in ``X-Gateway-Error-Body``, which the documented configuration returns.

Who may ask: only a peer in ``trusted_proxies``. Only such a peer's ``X-Forwarded-For`` is believed; a proxy left
out would have every client checked as the proxy's own address (its network's allowlists passing for anyone, the
failed-authentication cool-down locking everyone out), so an untrusted peer gets 403 ``forward_auth_untrusted``
naming the setting (not 5xx: Envoy with ``failure_mode_allow`` lets a request through on one).
Naming the original request both ways (nginx's and Traefik's headers: each proxy passes the client's own
headers on, so a client could add the other's) or a header twice is 400 ``forward_auth_malformed``.
"""

from __future__ import annotations

import json
import time
from time import perf_counter

from starlette.types import Receive, Scope, Send

from gateway.doors.proxy.protocol import CLOSE
from gateway.errors import BadRequest, EnvironmentUnavailable, ErrorFormat, GatewayError, render
from gateway.gate import Allow, Gate
from gateway.keys.cache import AuthKey
from gateway.network import address_text, parse_address
from gateway.observability.logging import AccessLog, new_request_id, valid_request_id
from gateway.observability.metrics import UNMATCHED, Metrics
from gateway.observability.tracing import TRACEPARENT, trace_id_of
from gateway.policy.paths import PathError
from gateway.policy.rules import KNOWN_METHODS

Header = tuple[bytes, bytes]

# The identity headers a principal can carry (gateway/keys/cache.py, gateway/gate/jwt.py).
IDENTITY_HEADERS = ("x-auth-key-id", "x-auth-permissions", "x-auth-environment", "x-auth-subject")
ERROR_BODY_HEADER = b"x-gateway-error-body"
_REMOVE = b"x-envoy-auth-headers-to-remove"
_NGINX = (b"x-original-method", b"x-original-uri")
_TRAEFIK = (b"x-forwarded-method", b"x-forwarded-uri")
_READ = frozenset({*_NGINX, *_TRAEFIK, b"authorization", b"x-forwarded-for", b"x-request-id", b"content-length",
                   b"transfer-encoding", TRACEPARENT})
_ALLOWED = ("allowed", "ok")
_EMPTY_OK: tuple[Header, ...] = ((b"content-length", b"0"), (b"cache-control", b"no-store"))


class ForwardAuthUntrusted(GatewayError):
    status, code, ally_code = 403, "forward_auth_untrusted", "FORBIDDEN"


class ForwardAuthMalformed(BadRequest):
    code = "forward_auth_malformed"


class ForwardAuth:
    """The pure-ASGI forward-auth endpoint: ``path`` itself (nginx, Traefik) and every path below it (Envoy)."""

    def __init__(self, gate: Gate, path: str, error_format: ErrorFormat | str, *, test_keys: bool = False,
                 forward_authorization: bool = False, metrics: Metrics | None = None,
                 access_log: AccessLog | None = None) -> None:
        self.gate = gate
        self.path = path
        self.under = path.encode("ascii") + b"/"  # Envoy: path_prefix + the original path
        self._format = error_format
        self._test_keys = test_keys
        self._keep = () if forward_authorization else ("authorization",)
        self.metrics = metrics
        self.access_log = access_log
        # The x-envoy-auth-headers-to-remove value per set of identity headers an answer sets (a handful).
        self._removals: dict[tuple[str, ...], Header] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        start = perf_counter()
        seen: dict[bytes, list[bytes]] = {}
        authorization: list[bytes] = []
        forwarded_for: list[bytes] = []
        for name, value in scope["headers"]:
            if name in _READ:
                if name == b"authorization":
                    authorization.append(value)
                elif name == b"x-forwarded-for":
                    forwarded_for.append(value)
                else:
                    seen.setdefault(name, []).append(value)
        rid = seen.get(b"x-request-id")
        request_id = rid[0].decode() if rid and valid_request_id(rid[0]) else new_request_id()
        # The trace of the request the proxy asks about (W3C Trace Context), for the access line.
        trace_id = trace_id_of(seen.get(TRACEPARENT))
        # Envoy's with_request_body, Traefik's forwardBody: the body is never read, so the connection closes.
        has_body = b"transfer-encoding" in seen or any(v != b"0" for v in seen.get(b"content-length", ()))
        nginx = b"x-original-uri" in seen or b"x-original-method" in seen
        client = scope.get("client")
        peer: str | None = client[0] if client else None
        raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        method: str = scope["method"]
        path = raw
        envoy = raw.startswith(self.under)
        try:
            if not self.gate.resolver.is_trusted(parse_address(peer) if peer else None):
                raise ForwardAuthUntrusted()
            if envoy:
                path = raw[len(self.under) - 1:]  # the path decides; any forwarded header is ignored
            else:
                method, path = _original(seen)
        except GatewayError as exc:
            status, headers, body = render(exc, self._format)
            await self._answer(send, status, headers, body, nginx, has_body, request_id)
            self._finish(method, None, path, status, start, None, peer, request_id, trace_id, exc.code, None,
                         len(body))
            return

        decision = await self.gate.decide(method, path, authorization, peer, forwarded_for)
        principal = decision.principal
        route = decision.route.template if decision.route is not None else None
        client_ip = address_text(decision.client) if decision.client is not None else peer
        if isinstance(decision, Allow):
            if principal is not None and principal.environment == "test" and not self._test_keys:
                status, headers, body = render(EnvironmentUnavailable(), self._format, decision.response_headers)
                await self._answer(send, status, headers, body, nginx, has_body, request_id)
                self._finish(method, route, path, status, start, principal, client_ip, request_id, trace_id,
                             EnvironmentUnavailable.code, decision.rate, len(body))
                return
            headers = [*_EMPTY_OK]
            names: tuple[str, ...] = ()
            if principal is not None:
                names = tuple(n for n, _ in principal.upstream_headers)
                headers += [(n.encode(), v.encode()) for n, v in principal.upstream_headers]
            headers += decision.response_headers
            if envoy:
                headers.append(self._removal(names))
            await self._answer(send, 200, headers, b"", False, has_body, request_id)
            self._finish(method, route, path, 200, start, principal, client_ip, request_id, trace_id, None,
                         decision.rate, 0, auth=_ALLOWED if principal is not None else None)
            return
        status, headers, body = decision.render(self._format)
        await self._answer(send, status, headers, body, nginx, has_body, request_id)
        auth = (_ALLOWED if decision.authorized else ("denied", decision.error.code)) if decision.gated else None
        self._finish(method, route, path, status, start, principal, client_ip, request_id, trace_id,
                     decision.error.code, decision.rate, len(body), auth=auth)

    def _removal(self, names: tuple[str, ...]) -> Header:
        header = self._removals.get(names)
        if header is None:
            gone = [n for n in IDENTITY_HEADERS if n not in names] + list(self._keep)
            header = self._removals[names] = (_REMOVE, ", ".join(gone).encode())
        return header

    async def _answer(self, send: Send, status: int, headers: list[Header], body: bytes, nginx: bool,
                      has_body: bool, request_id: str) -> None:
        if nginx and body:
            # The same JSON in ASCII (a header is no place for UTF-8): nginx returns it as the body.
            copy = body if body.isascii() else json.dumps(json.loads(body), separators=(",", ":")).encode()
            headers.append((ERROR_BODY_HEADER, copy))
        headers.append((b"x-request-id", request_id.encode()))
        if has_body:
            headers.append(CLOSE)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _finish(self, method: str, route: str | None, path: bytes, status: int, start: float, principal: object,
                client: str | None, request_id: str, trace_id: str, deny: str | None, rate: str | None, bytes_out: int,
                auth: tuple[str, str] | None = None) -> None:
        """Count and log the decision as the request it was about (its method, path and route)."""
        duration = perf_counter() - start
        key_id = principal.record.id if isinstance(principal, AuthKey) else None
        # The method came from a header, not from the HTTP parser's fixed set: one label for any other.
        if method not in KNOWN_METHODS:
            method = "OTHER"
        if self.metrics is not None:
            self.metrics.request(route or UNMATCHED, method, status, duration, None, key_id, auth, rate)
        if self.access_log is not None:
            self.access_log.write(time.time(), request_id, trace_id, method, route, path.decode("latin-1"), status,
                                  duration, None, key_id, client, 0, bytes_out, deny)


def _original(seen: dict[bytes, list[bytes]]) -> tuple[str, bytes]:
    """The method and raw path (query stripped) named by nginx's or Traefik's headers. Raises GatewayError."""
    pair = _NGINX if _NGINX[0] in seen or _NGINX[1] in seen else _TRAEFIK
    other = _TRAEFIK if pair is _NGINX else _NGINX
    if other[0] in seen or other[1] in seen:
        raise ForwardAuthMalformed()
    methods, uris = seen.get(pair[0], ()), seen.get(pair[1], ())
    if len(methods) != 1 or len(uris) != 1:
        raise ForwardAuthMalformed()
    target = uris[0].split(b"?", 1)[0]
    if target[:1] != b"/":
        raise PathError()  # origin-form only (RFC 9112 3.2.1): both proxies send the path and query
    return methods[0].decode("latin-1"), target

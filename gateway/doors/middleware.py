"""Front door 2, the ASGI middleware: the gate inside a Starlette, FastAPI or any other ASGI application.

::

    app.add_middleware(AuthMiddleware, config="config.yaml")   # Starlette / FastAPI
    app = AuthMiddleware(any_asgi_app, config="config.yaml")    # any ASGI app

For every HTTP request and every WebSocket handshake (a GET, RFC 6455 4.1), in this order:

1. read the headers once (``Authorization``, ``X-Forwarded-For``, ``X-Debug-Auth``, ``Content-Length``,
   ``Transfer-Encoding``);
2. ask the gate (:class:`gateway.gate.Gate`) with the path as sent (``scope["raw_path"]``) and the client
   address the server gives (``scope["client"]``);
3. a :class:`~gateway.gate.Deny` is answered here, in the configured ``error_format``, and the application is
   not called (a refused handshake gets the same status and JSON body where the server supports the ASGI
   WebSocket denial response, else a close with code 1008, which the server turns into a 403);
4. an :class:`~gateway.gate.Allow` fills the scope the way Starlette's ``AuthenticationMiddleware`` does:
   ``scope["auth"]`` is an ``AuthCredentials`` and ``scope["user"]`` a :class:`GatewayUser` (on a public route
   ``AuthCredentials([])`` and ``UnauthenticatedUser()``), so ``request.user``, ``request.auth`` and
   ``@requires(...)`` work as usual; ``scope["gateway.principal"]`` holds the key (``AuthKey``) or JWT
   principal and ``scope["gateway.decision"]`` the whole decision. The rate-limit headers (and the ``X-Auth-*``
   debug headers when asked for) are added to the application's own response start (or WebSocket accept).

A declared ``Content-Length`` over the route's body limit is refused by the gate (413); a chunked body is
counted as the application reads it, and past the limit the middleware answers 413 itself and hands the
application a disconnect.

A :class:`~gateway.errors.GatewayError` the application raises before its response starts (from
:class:`RequireScope`, or the application's own) is answered in the gateway's error format:
by this middleware when the error reaches it, and through an exception handler it registers on a Starlette
or FastAPI application it wraps directly (whose own error middleware would otherwise answer 500).

The gate and what it runs on (:class:`gateway.doors.assembly.GateService`: key cache, usage recorder, rate limits) start
with the application's lifespan, before the application hears of the startup, and stop after its shutdown
completes. A server or test transport that sends no lifespan (httpx's ``ASGITransport``) gets them started on
its first request; :meth:`AuthMiddleware.aclose` stops them then.

The key-management API is not served here (``management.*`` is ignored): manage keys with ``gateway keys``
or a ``gateway serve`` on the same store.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, BaseUser, UnauthenticatedUser
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway.config.settings import Settings, load_settings
from gateway.doors.assembly import Components, GateService, build_components
from gateway.doors.proxy.pipeline import ShuttingDown
from gateway.doors.proxy.protocol import CLOSE
from gateway.doors.proxy.websocket import refuse_handshake
from gateway.errors import (
    AuthenticationRequired,
    EnvironmentUnavailable,
    GatewayError,
    InsufficientPermissions,
    PayloadTooLarge,
    error_format,
    render,
)
from gateway.gate import UNMATCHED, Deny
from gateway.keys.cache import AuthKey
from gateway.policy.rules import grants, valid_scope

__all__ = ["AuthMiddleware", "GatewayUser", "RequireScope"]

log = logging.getLogger("gateway.doors.middleware")

Header = tuple[bytes, bytes]

_HANDLED = frozenset({"http", "websocket", "lifespan"})
_READ = frozenset({b"authorization", b"x-forwarded-for", b"x-debug-auth", b"content-length", b"transfer-encoding"})
_SCOPES_MEMO = 4096


class GatewayUser(BaseUser):
    """The caller the gate let through, as ``request.user``: an API key, or a JWT's subject.

    ``key_id``, ``name``, ``owner`` (who created the key; also ``created_by``), ``environment`` and
    ``permissions`` (the scopes the key holds, wildcards as written) come from the key's record; for a JWT
    ``key_id`` and ``owner`` are None and ``name`` is the subject. ``identity`` is the key id, or
    ``jwt:<subject>``; ``principal`` is the gate's own object (``AuthKey`` or ``JWTPrincipal``)."""

    __slots__ = ("principal", "key_id", "name", "owner", "environment", "permissions", "subject")

    def __init__(self, principal: Any) -> None:
        self.principal = principal
        self.permissions: frozenset[str] = principal.permissions
        self.environment: str = principal.environment
        if isinstance(principal, AuthKey):
            record = principal.record
            self.key_id: str | None = record.id
            self.name: str = record.name
            self.owner: str | None = record.created_by
            self.subject: str | None = None
        else:
            self.key_id = None
            self.subject = principal.subject
            self.name = principal.subject
            self.owner = None

    @property
    def created_by(self) -> str | None:
        return self.owner

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.name

    @property
    def identity(self) -> str:
        return str(self.principal.actor)

    def __repr__(self) -> str:
        return f"GatewayUser(identity={self.identity!r}, name={self.name!r})"


class RequireScope:
    """A FastAPI dependency that needs every one of ``scopes``, with the gateway's wildcard rules
    (``instances:*`` covers ``instances:read``, ``*`` covers all)::

        @app.get("/reports", dependencies=[Depends(RequireScope("reports:read"))])
        async def reports(user: GatewayUser = Security(RequireScope("reports:read"))): ...

    It returns the :class:`GatewayUser`. A caller without a credential (a public route) gets 401
    ``authentication_required``, one without the scope 403 ``insufficient_permissions``, in the configured
    error format: it raises the gateway's error, which :class:`AuthMiddleware` answers. Any framework that
    calls ``dependency(request)`` can use it; FastAPI is not imported."""

    __slots__ = ("scopes",)

    def __init__(self, *scopes: str) -> None:
        if not scopes:
            raise ValueError("RequireScope needs at least one scope, e.g. RequireScope('servers:read')")
        for scope in scopes:
            if not isinstance(scope, str) or not valid_scope(scope):
                raise ValueError(f"{scope!r} is not a scope (e.g. servers:read, instances:*)")
        self.scopes = scopes

    async def __call__(self, request: HTTPConnection) -> GatewayUser:
        scope = request.scope
        if "gateway.decision" not in scope:
            raise RuntimeError("RequireScope needs gateway.AuthMiddleware in front of the application")
        user = scope["user"]
        if not isinstance(user, GatewayUser):
            raise AuthenticationRequired()
        held = user.permissions
        for needed in self.scopes:
            if not grants(held, needed):
                raise InsufficientPermissions()
        return user

    def __repr__(self) -> str:
        return f"RequireScope({', '.join(map(repr, self.scopes))})"


class _StartupFailed(Exception):
    """The gate's service did not start: already reported to the server as ``lifespan.startup.failed``."""


class AuthMiddleware:
    """The gate in front of an ASGI application: see the module docstring.

    ``config`` is the path of a configuration file (read as ``gateway serve --config`` reads it, environment
    overrides included); ``settings`` a :class:`~gateway.config.settings.Settings` instead (tests). ``unmatched`` says
    what happens to a path no policy rule matches: ``"deny"`` (403, as the reverse proxy does) or
    ``"authenticate"`` (any valid credential passes; the application checks scopes itself, e.g. with
    :class:`RequireScope`). Test keys are refused (403 ``environment_unavailable``), as the proxy refuses them
    without a test upstream, unless ``allow_test_keys`` (then ``request.user.environment`` tells them apart).
    A bad configuration raises :class:`~gateway.config.settings.ConfigError` naming the
    field, here, before anything is served."""

    def __init__(self, app: ASGIApp, config: str | os.PathLike[str] | None = None, *, settings: Settings | None = None,
                 unmatched: str = "deny", allow_test_keys: bool = False) -> None:
        if (config is None) == (settings is None):
            raise TypeError("AuthMiddleware takes config= (the path of a configuration file) or settings=")
        if unmatched not in UNMATCHED:
            raise ValueError(f"unmatched must be one of {', '.join(map(repr, UNMATCHED))} (got {unmatched!r})")
        if settings is None:
            settings = load_settings(config, required=True)
        # The management API belongs to `gateway serve`: its routes are not added to the policy here.
        settings = settings.model_copy(update={"management": settings.management.model_copy(update={"enabled": False})})
        self.app = app
        self.settings = settings
        self.unmatched = unmatched
        self.allow_test_keys = allow_test_keys
        self._format = error_format(settings.error_format, settings.messages)
        self._components: Components | None = build_components(settings)
        if self._components.pepper_created:
            log.warning("created a new server secret in %s (mode 600): keep it and back it up, keys cannot be"
                        " checked without it", self._components.pepper.source)
        self._known_scopes = self._components.policy.known_scopes
        self._scopes_memo: dict[frozenset[str], tuple[str, ...]] = {}
        self._service: GateService | None = None
        self._closed = False
        self._lock = asyncio.Lock()
        if isinstance(app, Starlette) and GatewayError not in app.exception_handlers:
            # Wrapped directly, the application's own error middleware sits between it and us and would answer
            # an error raised by RequireScope with a 500: its exception middleware answers it instead.
            # One handler for both shapes Starlette calls (request -> response, websocket -> None).
            app.add_exception_handler(GatewayError, self.error_handler)  # type: ignore[arg-type]

    @property
    def service(self) -> GateService | None:
        """The running gate and what it runs on, or None before the start (and after :meth:`aclose`)."""
        return self._service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in _HANDLED:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        service = self._service
        if service is None:
            if self._closed:
                await self._answer(scope, send, *render(ShuttingDown(), self._format))
                return
            service = await self._start()

        # 1. One pass over the headers.
        authorization: list[bytes] = []
        forwarded_for: list[bytes] = []
        debug = False
        length = -1
        chunked = False
        for name, value in scope["headers"]:
            if name in _READ:
                if name == b"authorization":
                    authorization.append(value)
                elif name == b"x-forwarded-for":
                    forwarded_for.append(value)
                elif name == b"x-debug-auth":
                    debug = value.strip().lower() == b"true"
                elif name == b"content-length":
                    length = int(value) if value.isdigit() and len(value) <= 18 else -1
                else:
                    chunked = True

        # 2. The gate. A WebSocket handshake is a GET (RFC 6455 4.1).
        http = scope["type"] == "http"
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        client = scope.get("client")
        decision = await service.gate.decide(scope["method"] if http else "GET", raw_path, authorization,
                                             client[0] if client else None, forwarded_for, debug, length)

        # 3. Refused: answered here. A body is not read: close rather than let the server drain it.
        close: tuple[Header, ...] = (CLOSE,) if http and (chunked or length > 0) else ()
        if isinstance(decision, Deny):
            await self._answer(scope, send, *decision.render(self._format, close))
            return

        # 4. Let through: the scope as Starlette's AuthenticationMiddleware leaves it.
        principal = decision.principal
        added = decision.response_headers
        if principal is None:
            scope["auth"] = AuthCredentials()
            scope["user"] = UnauthenticatedUser()
        else:
            if principal.environment != "live" and not self.allow_test_keys:
                # Test keys never reach live data: one application here, no test upstream to send them to.
                await self._answer(scope, send, *render(EnvironmentUnavailable(), self._format, [*added, *close]))
                return
            scope["auth"] = AuthCredentials(self._scopes(principal.permissions))
            scope["user"] = GatewayUser(principal)
        scope["gateway.principal"] = principal
        scope["gateway.decision"] = decision

        head = "http.response.start" if http else "websocket.accept"
        started = answered = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the gateway has answered (413): what the application sends after it is dropped
            started = True
            if added and message["type"] == head:
                # A new list: the application may send the same header list again (a shared Response).
                message["headers"] = [*message.get("headers", ()), *added]
            await send(message)

        if chunked and http:
            # A chunked body is counted against the route's limit as the application reads it. Past the limit
            # the gateway answers 413 itself (whatever the framework would make of an error raised in its
            # body parser; a response already under way is left to end) and the application is told the
            # client went away.
            limit = decision.body_limit
            seen = 0
            over = False
            server_receive = receive

            async def receive_counted() -> Message:
                nonlocal seen, over, answered
                if over:
                    return {"type": "http.disconnect"}
                message = await server_receive()
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    if not started:
                        await self._answer(scope, send, *render(PayloadTooLarge(), self._format, [*added, CLOSE]))
                        answered = True
                    return {"type": "http.disconnect"}
                return message

            receive = receive_counted
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if answered:
                log.debug("after the 413, the application ended with %s", exc.__class__.__name__)
                return
            if started or not isinstance(exc, GatewayError):
                raise
            # From RequireScope (or the application's own raise) before its response started.
            await self._answer(scope, send_wrapper, *render(exc, self._format, close))

    def _scopes(self, permissions: frozenset[str]) -> tuple[str, ...]:
        """The key's scopes for ``AuthCredentials``, sorted, plus every scope the policy names that one of its
        wildcards grants (``servers:*`` adds ``servers:read``...): Starlette's ``@requires`` compares exactly.
        Made once per permission set (keys share them)."""
        found = self._scopes_memo.get(permissions)
        if found is None:
            granted = {s for s in self._known_scopes if grants(permissions, s)}
            found = tuple(sorted(permissions | granted))
            if len(self._scopes_memo) >= _SCOPES_MEMO:
                self._scopes_memo.clear()
            self._scopes_memo[permissions] = found
        return found

    async def _answer(self, scope: Scope, send: Send, status: int, headers: list[Header], body: bytes) -> None:
        """An answer of the gateway's own: an HTTP response, or the refusal of a WebSocket handshake."""
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        else:
            await refuse_handshake(scope, send, status, headers, body)

    async def error_handler(self, conn: HTTPConnection, exc: Exception) -> Response | None:
        """A Starlette exception handler answering a :class:`~gateway.errors.GatewayError` in the gateway's
        format (registered on a Starlette or FastAPI application this middleware wraps directly)."""
        assert isinstance(exc, GatewayError)
        status, headers, body = render(exc, self._format)
        if isinstance(conn, WebSocket):
            await self._answer(conn.scope, conn.send, status, headers, body)
            return None
        response = Response(body, status)
        response.raw_headers = headers
        return response

    # --- start and stop --------------------------------------------------------------------------------------

    async def _start(self) -> GateService:
        """Start the gate's service once (a lifespan startup, or the first request when there was none)."""
        async with self._lock:
            service = self._service
            if service is None:
                components, self._components = self._components, None
                if components is None:  # started again after a stop: the store was closed
                    components = build_components(self.settings)
                service = GateService(self.settings, components, unmatched=self.unmatched)
                try:
                    await service.start()
                except BaseException:
                    await service.stop()
                    raise
                self._service = service
                self._closed = False
        return service

    async def aclose(self) -> None:
        """Stop the gate's service: flush key usage, close the limiter and the store. The lifespan shutdown
        does it; call it yourself when the server sent no lifespan (httpx's ``ASGITransport``). Requests after
        it are answered 503 until a lifespan startup starts the service again."""
        self._closed = True
        service, self._service = self._service, None
        self._lock = asyncio.Lock()  # a new lock for the next loop to start in (test clients run several)
        if service is not None:
            await service.stop()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The application's lifespan, with the gate's service started before its startup and stopped after
        its shutdown completes."""
        failed = False

        async def lifespan_receive() -> Message:
            nonlocal failed
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._start()
                except Exception as exc:  # reported to the server, which exits
                    failed = True
                    await send({"type": "lifespan.startup.failed", "message": f"gateway: {exc}"})
                    raise _StartupFailed() from None
            elif message["type"] == "lifespan.shutdown":
                self._closed = True  # a request from now on is not a reason to start again
            return message

        async def lifespan_send(message: Message) -> None:
            if failed:
                return
            if message["type"] != "lifespan.startup.complete":  # failed, or the shutdown is over
                await self.aclose()
            await send(message)

        try:
            await self.app(scope, lifespan_receive, lifespan_send)
        except _StartupFailed:
            return
        except BaseException:
            # An application without lifespan support: the server serves on, and the first request starts the
            # gate again.
            await self.aclose()
            self._closed = False
            raise

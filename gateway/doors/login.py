"""The gateway's own dashboard login (gateway.accounts) over HTTP, answered before the gate like the probes:

    POST {prefix}/auth/login     {"email", "password"}  -> token, expires_at, refresh_token
    POST {prefix}/auth/refresh   {"refresh_token"}      -> a new token and the next refresh token
    POST {prefix}/auth/logout    {"refresh_token"}      -> 204; the login's refresh tokens are revoked
    GET  /.well-known/jwks.json                         -> the public keys the JWTs verify with (RFC 7517)

In the DeployAlly format an answer is ``{"success": true, "data": {...}}``, as its guide shows; in deployERP's
the object itself, as its key API answers. Refusals are the configured error format's, with stable codes:
401 ``invalid_credentials`` (wrong password, unknown address, disabled account: one answer), 401
``invalid_token`` (a refresh token that is not live), 429 ``too_many_failed_attempts`` with ``Retry-After``,
422 ``validation_error``. Every answer carrying a token has ``Cache-Control: no-store`` (RFC 6749 5.1).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.accounts import Accounts, Session
from gateway.accounts.models import LoginBody, RefreshBody
from gateway.admin.models import problem
from gateway.errors import ClientGone, ErrorFormat, GatewayError, PostOnlyEndpoint, ReadOnlyEndpoint, ValidationFailed
from gateway.keys.record import to_iso
from gateway.network import ClientResolver, IPAddress

MAX_BODY = 16 * 1024
JWKS_PATH = "/.well-known/jwks.json"
M = TypeVar("M", bound=BaseModel)
_NO_STORE = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]


class AccountEndpoints:
    """The four endpoints as ASGI apps, by exact path (:meth:`routes`), for gateway.app's probe table."""

    def __init__(self, accounts: Accounts, prefix: str, errors: ErrorFormat, resolver: ClientResolver) -> None:
        self.accounts = accounts
        self.errors = errors
        self.resolver = resolver
        self.envelope = errors.ally
        self.prefix = "" if prefix == "/" else prefix
        self._jwks = json.dumps(accounts.issuer.keys.jwks(), separators=(",", ":")).encode()

    def routes(self) -> dict[str, ASGIApp]:
        p = self.prefix
        return {p + "/auth/login": self._post(self.login), p + "/auth/refresh": self._post(self.refresh),
                p + "/auth/logout": self._post(self.logout), JWKS_PATH: self.jwks}

    def _post(self, handler: Callable[[Scope, bytes], Awaitable[tuple[int, bytes]]]) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                if scope["method"] != "POST":
                    raise PostOnlyEndpoint()
                status, body = await handler(scope, await _read(receive))
            except GatewayError as exc:
                code, headers, payload = self.errors.render(exc)
                await _send(send, code, headers, payload)
                return
            headers = [*_NO_STORE]
            if body:
                headers.append((b"content-type", b"application/json"))
            headers.append((b"content-length", str(len(body)).encode()))
            await _send(send, status, headers, body)

        return app

    def _client(self, scope: Scope) -> IPAddress | None:
        peer = scope.get("client")
        forwarded = [v for k, v in scope.get("headers", ()) if k == b"x-forwarded-for"]
        return self.resolver.resolve(peer[0] if peer else None, forwarded)

    def _answer(self, session: Session) -> bytes:
        data = {"token": session.token, "expires_at": to_iso(session.expires_at),
                "refresh_token": session.refresh_token}
        doc = {"success": True, "data": data} if self.envelope else data
        return json.dumps(doc, separators=(",", ":")).encode()

    async def login(self, scope: Scope, raw: bytes) -> tuple[int, bytes]:
        body = _parse(raw, LoginBody)
        session = await self.accounts.login(body.email, body.password, self._client(scope))
        return 200, self._answer(session)

    async def refresh(self, scope: Scope, raw: bytes) -> tuple[int, bytes]:
        body = _parse(raw, RefreshBody)
        session = await self.accounts.refresh(body.refresh_token, self._client(scope))
        return 200, self._answer(session)

    async def logout(self, scope: Scope, raw: bytes) -> tuple[int, bytes]:
        await self.accounts.logout(_parse(raw, RefreshBody).refresh_token)
        return 204, b""

    async def jwks(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            code, headers, payload = self.errors.render(ReadOnlyEndpoint())
            await _send(send, code, headers, payload)
            return
        headers = [(b"content-type", b"application/jwk-set+json"), (b"cache-control", b"public, max-age=300"),
                   (b"content-length", str(len(self._jwks)).encode())]
        await _send(send, 200, headers, b"" if scope["method"] == "HEAD" else self._jwks)


async def _read(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise ValidationFailed("validation_error.body_too_large", field="body", where="body", limit=MAX_BODY)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _parse(raw: bytes, model: type[M]) -> M:
    try:
        return model.model_validate_json(raw if raw.strip() else b"{}")
    except ValidationError as exc:
        found = problem(exc, model)
        raise ValidationFailed(found.message_id, field=found.field, **found.values) from None


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

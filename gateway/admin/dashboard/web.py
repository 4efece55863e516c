"""What every dashboard answer shares: its security headers, its cookies, the CSRF token of its forms and the
reading of a posted form.

Cookies (all HttpOnly, ``SameSite=Strict``, ``Path`` the dashboard's, ``Secure`` when the browser reached the
gateway over TLS, itself or through a trusted proxy that says so in ``X-Forwarded-Proto``):

    gateway_session   the user's access token (a gateway-signed JWT)
    gateway_refresh   the refresh token that renews it
    gateway_csrf      a random value, the other half of every form's CSRF token

A form's token is the keyed hash (the server secret's HMAC) of the ``gateway_csrf`` cookie: OWASP's "signed
double-submit cookie". Another site can make a browser post a form, but can neither read the cookie nor compute
its hash, and ``SameSite=Strict`` keeps the cookies off its requests besides. No state is kept on the server,
so every worker process checks every token.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from ipaddress import IPv4Address
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ClientGone, FormNotVerified, ValidationFailed
from gateway.keys.hashing import Pepper
from gateway.network import ClientResolver, IPAddress, parse_address

SESSION, REFRESH, CSRF = "gateway_session", "gateway_refresh", "gateway_csrf"
MAX_FORM = 64 * 1024  # bytes: the largest form (a long allowlist) is a few kilobytes
MAX_FIELDS = 400

# Every page: scripts, styles and images only from the gateway itself, no plugin, no frame around it (RFC 7034's
# X-Frame-Options for browsers without CSP's frame-ancestors), no referrer leaving it, nothing cached.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'none'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
PAGE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
NO_STORE = (b"cache-control", b"no-store")
_UNKNOWN = IPv4Address("0.0.0.0")


class Headers:
    """Pure ASGI: every answer of ``app`` gets :data:`PAGE_HEADERS`, and ``Cache-Control: no-store`` unless it
    set its own (the static assets)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name == b"cache-control" for name, _ in headers):
                    headers.append(NO_STORE)
                message["headers"] = [*headers, *PAGE_HEADERS]
            await send(message)

        await self.app(scope, receive, send_headers)


class Browser:
    """How one request's browser is seen: whether it came over TLS, its address, its cookies."""

    def __init__(self, resolver: ClientResolver, path: str) -> None:
        self.resolver = resolver
        self.path = path

    def secure(self, request: Request) -> bool:
        if request.url.scheme == "https":
            return True
        peer = request.client.host if request.client else None
        proto = request.headers.get("x-forwarded-proto", "").strip().lower()
        return proto == "https" and self.resolver.is_trusted(parse_address(peer or ""))

    def client(self, request: Request) -> IPAddress:
        """The client's address (the first untrusted hop of ``X-Forwarded-For`` behind trusted proxies)."""
        peer = request.client.host if request.client else None
        forwarded = [v.encode("latin-1") for k, v in request.headers.items() if k == "x-forwarded-for"]
        found = self.resolver.resolve(peer, forwarded)
        return found if found is not None else _UNKNOWN  # a Unix socket's peer has no address

    def set(self, request: Request, response: Response, name: str, value: str) -> None:
        response.set_cookie(name, value, path=self.path, secure=self.secure(request), httponly=True,
                            samesite="strict")

    def clear(self, request: Request, response: Response, *names: str) -> None:
        for name in names:
            response.delete_cookie(name, path=self.path, secure=self.secure(request), httponly=True,
                                   samesite="strict")


class Csrf:
    """The signed double-submit token of the forms (module docstring)."""

    def __init__(self, pepper: Pepper) -> None:
        self._pepper = pepper

    def token(self, cookie: str) -> str:
        return self._pepper.hash("dashboard-csrf\0" + cookie)

    @staticmethod
    def new_cookie() -> str:
        return secrets.token_urlsafe(32)

    def check(self, request: Request, form: Mapping[str, list[str]]) -> None:
        """Raise FormNotVerified unless the form's ``csrf_token`` is the token of this browser's cookie."""
        cookie = request.cookies.get(CSRF, "")
        sent = form.get("csrf_token", [""])
        # Compared as bytes: compare_digest refuses a str with a non-ASCII character (TypeError, a 500).
        if not cookie or len(sent) != 1 or not hmac.compare_digest(sent[0].encode(), self.token(cookie).encode()):
            raise FormNotVerified()


async def read_form(request: Request) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body (every form of the dashboard is one), read up to
    :data:`MAX_FORM` bytes: name -> values in order (checkboxes send one value each)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_FORM:
                raise ValidationFailed("validation_error.body_too_large", field="body", where="body", limit=MAX_FORM)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone() from None
    try:
        pairs = parse_qsl(b"".join(chunks).decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS,
                          errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise ValidationFailed("validation_error.invalid", field="body", where="body") from None
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    return form


def first(form: Mapping[str, list[str]], name: str) -> str:
    """The first value of ``name`` in ``form`` (empty when absent)."""
    values = form.get(name)
    return values[0] if values else ""

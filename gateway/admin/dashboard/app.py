"""The dashboard's pages, one ASGI app on Starlette routing under ``dashboard.path`` (default ``/dashboard``):

    GET  {path}/login                 the login form          POST {path}/login    log in (cookies set)
    POST {path}/logout                log out (the refresh token revoked, the cookies cleared)
    GET  {path}/keys                  Settings -> API Keys    POST {path}/keys     create a key: its value, once
    GET  {path}/keys/new              the creation form
    GET  {path}/keys/{id}             a key: its fields, usage chart, audit trail, rotate and revoke
    GET  {path}/keys/{id}/revoke      "revoke this key?"      POST ...             revoke it
    POST {path}/keys/{id}/rotate      rotate it: the successor's value, once
    GET  {path}/static/...            the stylesheet and the one script (copy button), served by the gateway

The pages act through the same key service as the management API (:mod:`gateway.keys.service`) and validate
what a form sends with the same models (:mod:`gateway.admin.models`): each form field is named as the API's
field, the form is turned into the API's JSON body and validated by the API's model, so both refuse the same
things with the same words. A user acts with its role's scopes: it sees keys with ``api-keys:read``, changes them
with ``api-keys:write``, and never grants a scope it does not hold. A new key's value is in the answer to the POST
that made it and nowhere else: never in a redirect, a URL, a cookie or a log line.

    app.py     this app: routing, the answers to what no page serves, log in and out
    site.py    what every page is made with: words, templates, the user, the answers and their cookies
    keys.py    Settings -> API Keys: list, create, a key's page, rotate, revoke
    web.py     security headers, cookies, CSRF tokens, the posted form;  chart.py: the usage chart
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from gateway.admin.dashboard.keys import KeyPages
from gateway.admin.dashboard.sessions import Accounts, UsageByDay
from gateway.admin.dashboard.site import LoginNeeded, Site
from gateway.admin.dashboard.web import CSRF, REFRESH, SESSION, Csrf, Headers, first
from gateway.config.settings import Settings
from gateway.errors import GatewayError, MethodNotAllowed, NotFound, StoreUnavailable
from gateway.keys.hashing import Pepper
from gateway.keys.store import KeyStore, StoreError
from gateway.network import ClientResolver
from gateway.policy.rules import Policy

log = logging.getLogger("gateway.admin.dashboard")


class Dashboard:
    """The dashboard as one ASGI app (module docstring). ``policy`` gives the policy served now (its scopes are
    the checkboxes), ``invalidate`` drops a key hash from this process's key cache (a revoked key is refused at
    once here, and within ``cache.ttl_seconds`` by other processes), ``usage_by_day`` reads the usage chart's
    counts, ``resolver`` finds the client's address behind trusted proxies (for the login throttle)."""

    def __init__(self, settings: Settings, store: KeyStore, pepper: Pepper, accounts: Accounts,
                 policy: Callable[[], Policy], invalidate: Callable[[str], None], usage_by_day: UsageByDay,
                 resolver: ClientResolver) -> None:
        self.path = p = settings.dashboard.path
        self.site = site = Site(settings, pepper, accounts, resolver)
        keys = KeyPages(site, settings, store, pepper, policy, invalidate, usage_by_day)
        self._router = Router([
            Route(p, self.home, methods=["GET"]),
            Route(p + "/", self.home, methods=["GET"]),
            Route(p + "/login", self.login_form, methods=["GET"]),
            Route(p + "/login", self.login, methods=["POST"]),
            Route(p + "/logout", self.logout, methods=["POST"]),
            Route(p + "/keys", keys.list_keys, methods=["GET"]),
            Route(p + "/keys", keys.create, methods=["POST"]),
            Route(p + "/keys/new", keys.new_key, methods=["GET"]),
            Route(p + "/keys/{id}", keys.detail, methods=["GET"]),
            Route(p + "/keys/{id}/revoke", keys.revoke_form, methods=["GET"]),
            Route(p + "/keys/{id}/revoke", keys.revoke, methods=["POST"]),
            Route(p + "/keys/{id}/rotate", keys.rotate, methods=["POST"]),
            Mount(p + "/static", StaticFiles(packages=[("gateway.admin.dashboard", "static")])),
        ], redirect_slashes=False, default=self._not_found)
        self._app = Headers(self._dispatch)

    def owns(self, path: str) -> bool:
        """Whether ``path`` is the dashboard's: its path or one below it."""
        return path == self.path or path.startswith(self.path + "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await self._app(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        # With "app" in the scope, Starlette's routes and StaticFiles raise HTTPException for a path or method they
        # do not serve, rather than answer in plain text: the page below says it in the configured words.
        scope = {**scope, "app": self}
        try:
            await self._router(scope, receive, send)
        except HTTPException as exc:
            error: GatewayError = MethodNotAllowed() if exc.status_code == 405 else NotFound()
            response = self.site.error(Request(scope), error)
            if exc.headers and "Allow" in exc.headers:
                response.headers["allow"] = exc.headers["Allow"]
            await response(scope, receive, send)
        except LoginNeeded:
            request = Request(scope)
            response = RedirectResponse(self.path + "/login", 303)
            self.site.browser.clear(request, response, SESSION, REFRESH)
            await response(scope, receive, send)
        except (GatewayError, StoreError) as exc:
            if isinstance(exc, StoreError):
                log.error("key store unavailable for the dashboard's %s %s: %s", scope["method"], scope["path"], exc)
                exc = StoreUnavailable()
            await self.site.error(Request(scope), exc)(scope, receive, send)

    async def _not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.site.error(Request(scope), NotFound())(scope, receive, send)

    # --- log in and out --------------------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return RedirectResponse(self.path + "/keys", 303)

    async def login_form(self, request: Request) -> Response:
        return self.site.page(request, "login.html", email="", message=None)

    async def login(self, request: Request) -> Response:
        site = self.site
        form = await site.form(request)
        email = first(form, "email")
        try:
            session = await site.accounts.login(email, first(form, "password"), site.browser.client(request))
        except GatewayError as exc:  # wrong password, too many attempts (429 with Retry-After)
            return site.error(request, exc, "login.html", email=email)
        response = RedirectResponse(self.path + "/keys", 303)
        site.browser.set(request, response, SESSION, session.token)
        site.browser.set(request, response, REFRESH, session.refresh_token)
        # A new CSRF cookie with the new session: one planted before the login (fixation) signs nothing after it.
        site.browser.set(request, response, CSRF, Csrf.new_cookie())
        return response

    async def logout(self, request: Request) -> Response:
        await self.site.form(request)
        refresh = request.cookies.get(REFRESH)
        if refresh:
            try:
                await self.site.accounts.logout(refresh)
            except GatewayError:
                pass  # already revoked or expired: the cookies go either way
        response = RedirectResponse(self.path + "/login", 303)
        self.site.browser.clear(request, response, SESSION, REFRESH)
        return response

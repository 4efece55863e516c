"""What every dashboard page is made with: its words, its templates, the logged-in user and the answers (a page,
an error page, a redirect), each carrying the cookies a renewed session or a new browser needs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from gateway.admin.api import READ
from gateway.admin.dashboard.sessions import Accounts, User
from gateway.admin.dashboard.web import CSRF, REFRESH, SESSION, Browser, Csrf, read_form
from gateway.admin.models import ApiKey
from gateway.config.settings import Settings
from gateway.errors import GatewayError, UserLacksScope, error_format
from gateway.keys.hashing import Pepper
from gateway.messages import fill, page_texts
from gateway.network import ClientResolver
from gateway.policy.rules import grants


class LoginNeeded(Exception):
    """No valid session: the browser is sent to the login page."""


class Site:
    """The dashboard's shared parts, made once: the texts of the configured language (``error_format``), the error
    catalogue with the operator's ``messages``, the templates, the cookies and the CSRF tokens."""

    def __init__(self, settings: Settings, pepper: Pepper, accounts: Accounts, resolver: ClientResolver) -> None:
        self.path = settings.dashboard.path
        self.accounts = accounts
        self.errors = error_format(settings.error_format, settings.messages)
        self.texts = page_texts(settings.error_format)
        # The words as attributes (``t.copy``): on the mapping itself, Jinja would find the method of that name.
        self._t = SimpleNamespace(**self.texts)
        self.browser = Browser(resolver, self.path)
        self.csrf = Csrf(pepper)
        self._prefix: Callable[[str], str] = settings.key_format.prefix
        env = jinja2.Environment(loader=jinja2.PackageLoader("gateway.admin.dashboard", "templates"),
                                 autoescape=True, undefined=jinja2.StrictUndefined)
        env.filters["when"] = self.when
        env.filters["day"] = lambda d: d.isoformat() if isinstance(d, date) else ""
        env.globals["fill"] = fill
        self._templates = Jinja2Templates(env=env)

    def when(self, moment: datetime | None) -> str:
        """A time as the pages show it (UTC, to the minute), or "never"."""
        if moment is None:
            return self.texts["never"]
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")

    def key_prefix(self, key: ApiKey) -> str:
        return self._prefix(key.environment)

    # --- answers -------------------------------------------------------------------------------------------------

    def page(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        """``template`` rendered with the texts, the user and the CSRF token of this browser (its cookie set now
        when it has none), and any cookies a renewed session left to set."""
        cookie = request.cookies.get(CSRF)
        fresh = None
        if not cookie:
            cookie = fresh = Csrf.new_cookie()
        context.setdefault("user", None)
        response = self._templates.TemplateResponse(request, template, {
            "t": self._t, "base": self.path, "csrf": self.csrf.token(cookie), "prefix": self.key_prefix, **context,
        }, status_code=status)
        if fresh is not None:
            self.browser.set(request, response, CSRF, fresh)
        self._renewed(request, response)
        return response

    def error(self, request: Request, error: GatewayError, template: str = "error.html", **context: Any) -> Response:
        """``error`` on ``template`` (the error page, or a form shown again): its status, its words in the configured
        language, and its headers (``Retry-After``, ``Allow``)."""
        context.setdefault("error", error)
        response = self.page(request, template, error.status, message=self.errors.text(error), **context)
        for name, value in error.extra_headers:
            response.headers[name.decode("latin-1")] = value.decode("latin-1")
        return response

    def redirect(self, request: Request, to: str) -> Response:
        """303 to ``to`` below the dashboard's path (a fixed path: never a value a client sent)."""
        response = RedirectResponse(self.path + to, 303)
        self._renewed(request, response)
        return response

    def _renewed(self, request: Request, response: Response) -> None:
        session = getattr(request.state, "renewed", None)
        if session is not None:
            self.browser.set(request, response, SESSION, session.token)
            self.browser.set(request, response, REFRESH, session.refresh_token)

    # --- the request's user and form -----------------------------------------------------------------------------

    async def user(self, request: Request, needs: str | None = READ) -> User:
        """The logged-in user (its session renewed with the refresh token when the access token ran out), holding
        ``needs``. Raises LoginNeeded, or UserLacksScope."""
        token = request.cookies.get(SESSION)
        user = await self.accounts.principal(token) if token else None
        if user is None:
            refresh = request.cookies.get(REFRESH)
            if not refresh:
                raise LoginNeeded()
            try:
                session = await self.accounts.refresh(refresh, self.browser.client(request))
            except GatewayError:
                raise LoginNeeded() from None
            user = await self.accounts.principal(session.token)
            if user is None:
                raise LoginNeeded()
            request.state.renewed = session
        if needs is not None and not grants(user.scopes, needs):
            raise UserLacksScope(needs)
        return user

    async def form(self, request: Request) -> dict[str, list[str]]:
        """The posted form, once its CSRF token is checked (FormNotVerified otherwise)."""
        form = await read_form(request)
        self.csrf.check(request, form)
        return form

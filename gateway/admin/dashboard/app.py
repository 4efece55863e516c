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
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any

import jinja2
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Receive, Scope, Send

from gateway.admin.api import READ, WRITE, refusal
from gateway.admin.dashboard.chart import chart
from gateway.admin.dashboard.sessions import Accounts, UsageByDay, User
from gateway.admin.dashboard.web import (
    CSRF,
    REFRESH,
    SESSION,
    Browser,
    Csrf,
    Headers,
    first,
    read_form,
)
from gateway.admin.models import ApiKey, KeyRotate, ip_field, models_for, problem
from gateway.config.settings import Settings
from gateway.errors import (
    GatewayError,
    KeyNotFound,
    MethodNotAllowed,
    NotFound,
    StoreUnavailable,
    UserLacksScope,
    ValidationFailed,
    error_format,
)
from gateway.keys.hashing import Pepper
from gateway.keys.record import KeyRecord
from gateway.keys.service import (
    KeyInputError,
    PermissionDenied,
    create_key,
    grace_for,
    revoke_key,
    rotate_key,
)
from gateway.keys.store import Conflict, KeyStore, StoreError
from gateway.messages import fill, page_texts
from gateway.network import ClientResolver
from gateway.policy.rules import Policy, grants

log = logging.getLogger("gateway.admin.dashboard")

PAGE = 50  # keys per page of the list
AUDIT_ROWS = 100
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class LoginNeeded(Exception):
    """No valid session: the browser is sent to the login page."""


class Dashboard:
    """The dashboard as one ASGI app (module docstring). ``policy`` gives the policy served now (its scopes are
    the checkboxes), ``invalidate`` drops a key hash from this process's key cache (a revoked key is refused at
    once here, and within ``cache.ttl_seconds`` by other processes), ``usage_by_day`` reads the usage chart's
    counts, ``resolver`` finds the client's address behind trusted proxies (for the login throttle)."""

    def __init__(self, settings: Settings, store: KeyStore, pepper: Pepper, accounts: Accounts,
                 policy: Callable[[], Policy], invalidate: Callable[[str], None], usage_by_day: UsageByDay,
                 resolver: ClientResolver) -> None:
        self.path = settings.dashboard.path
        self._settings = settings
        self._store = store
        self._pepper = pepper
        self._accounts = accounts
        self._policy = policy
        self._invalidate = invalidate
        self._usage = usage_by_day
        self._days = settings.dashboard.usage_days
        self._errors = error_format(settings.error_format, settings.messages)
        # The words as attributes (``t.copy``): on the mapping itself, Jinja would find the method of that name.
        self._t = SimpleNamespace(**page_texts(settings.error_format))
        self._texts = page_texts(settings.error_format)
        self._ip_field = ip_field(settings.error_format)
        self.models = models_for(settings)
        self._browser = Browser(resolver, self.path)
        self._csrf = Csrf(pepper)
        env = jinja2.Environment(loader=jinja2.PackageLoader("gateway.admin.dashboard", "templates"),
                                 autoescape=True, undefined=jinja2.StrictUndefined)
        env.filters["when"] = self._when
        env.filters["day"] = lambda d: d.isoformat() if isinstance(d, date) else ""
        env.globals["fill"] = fill
        self._templates = Jinja2Templates(env=env)
        p = self.path
        self._router = Router([
            Route(p, self.home, methods=["GET"]),
            Route(p + "/", self.home, methods=["GET"]),
            Route(p + "/login", self.login_form, methods=["GET"]),
            Route(p + "/login", self.login, methods=["POST"]),
            Route(p + "/logout", self.logout, methods=["POST"]),
            Route(p + "/keys", self.list_keys, methods=["GET"]),
            Route(p + "/keys", self.create, methods=["POST"]),
            Route(p + "/keys/new", self.new_key, methods=["GET"]),
            Route(p + "/keys/{id}", self.detail, methods=["GET"]),
            Route(p + "/keys/{id}/revoke", self.revoke_form, methods=["GET"]),
            Route(p + "/keys/{id}/revoke", self.revoke, methods=["POST"]),
            Route(p + "/keys/{id}/rotate", self.rotate, methods=["POST"]),
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
            response = self._error(Request(scope), error)
            if exc.headers and "Allow" in exc.headers:
                response.headers["allow"] = exc.headers["Allow"]
            await response(scope, receive, send)
        except LoginNeeded:
            request = Request(scope)
            response = RedirectResponse(self.path + "/login", 303)
            self._browser.clear(request, response, SESSION, REFRESH)
            await response(scope, receive, send)
        except (GatewayError, StoreError) as exc:
            request = Request(scope)
            if isinstance(exc, StoreError):
                log.error("key store unavailable for the dashboard's %s %s: %s", scope["method"], scope["path"], exc)
                exc = StoreUnavailable()
            await self._error(request, exc)(scope, receive, send)

    # --- pages and their parts -------------------------------------------------------------------------------

    def _when(self, moment: datetime | None) -> str:
        if moment is None:
            return self._texts["never"]
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")

    def _page(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        """``template`` rendered with the texts, the user and the CSRF token of this browser (its cookie set now
        when it has none), and any cookies a renewed session left to set."""
        cookie = request.cookies.get(CSRF)
        fresh = None
        if not cookie:
            cookie = fresh = Csrf.new_cookie()
        context.setdefault("user", None)
        response = self._templates.TemplateResponse(request, template, {
            "t": self._t, "base": self.path, "csrf": self._csrf.token(cookie), "prefix": self._prefix,
            **context,
        }, status_code=status)
        if fresh is not None:
            self._browser.set(request, response, CSRF, fresh)
        self._renewed(request, response)
        return response

    def _renewed(self, request: Request, response: Response) -> None:
        session = getattr(request.state, "renewed", None)
        if session is not None:
            self._browser.set(request, response, SESSION, session.token)
            self._browser.set(request, response, REFRESH, session.refresh_token)

    def _error(self, request: Request, error: GatewayError) -> Response:
        return self._page(request, "error.html", error.status, error=error, message=self._errors.text(error),
                          headers=dict((k.decode(), v.decode()) for k, v in error.extra_headers))

    def _redirect(self, request: Request, to: str) -> Response:
        response = RedirectResponse(self.path + to, 303)
        self._renewed(request, response)
        return response

    def _prefix(self, key: ApiKey) -> str:
        return self._settings.key_format.prefix(key.environment)

    async def _user(self, request: Request, needs: str | None = READ) -> User:
        """The logged-in user (its session renewed with the refresh token when the access token ran out), holding
        ``needs``. Raises LoginNeeded, or UserLacksScope."""
        token = request.cookies.get(SESSION)
        user = self._accounts.principal(token) if token else None
        if user is None:
            refresh = request.cookies.get(REFRESH)
            if not refresh:
                raise LoginNeeded()
            try:
                session = await self._accounts.refresh(refresh, self._browser.client(request))
            except GatewayError:
                raise LoginNeeded() from None
            user = self._accounts.principal(session.token)
            if user is None:
                raise LoginNeeded()
            request.state.renewed = session
        if needs is not None and not grants(user.scopes, needs):
            raise UserLacksScope(needs)
        return user

    async def _form(self, request: Request) -> dict[str, list[str]]:
        form = await read_form(request)
        self._csrf.check(request, form)
        return form

    async def _record(self, request: Request) -> KeyRecord:
        record = await self._store.get(request.path_params["id"])
        if record is None:
            raise KeyNotFound()
        return record

    def _grantable(self, user: User) -> list[str]:
        """The policy's scopes the user holds: the checkboxes of the creation form."""
        return sorted(s for s in self._policy().known_scopes if grants(user.scopes, s))

    @staticmethod
    def _actor(user: User) -> str:
        return f"user:{user.user_id}"

    @staticmethod
    def _now() -> datetime:
        return datetime.now(UTC).replace(microsecond=0)

    async def _not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._error(Request(scope), NotFound())(scope, receive, send)

    # --- log in and out --------------------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return RedirectResponse(self.path + "/keys", 303)

    async def login_form(self, request: Request) -> Response:
        return self._page(request, "login.html", email="", message=None)

    async def login(self, request: Request) -> Response:
        form = await self._form(request)
        email = first(form, "email")
        try:
            session = await self._accounts.login(email, first(form, "password"), self._browser.client(request))
        except GatewayError as exc:
            response = self._page(request, "login.html", exc.status, email=email, message=self._errors.text(exc))
            for name, value in exc.extra_headers:
                response.headers[name.decode()] = value.decode()
            return response
        response = RedirectResponse(self.path + "/keys", 303)
        self._browser.set(request, response, SESSION, session.token)
        self._browser.set(request, response, REFRESH, session.refresh_token)
        # A new CSRF cookie with the new session: one planted before the login (fixation) signs nothing after it.
        self._browser.set(request, response, CSRF, Csrf.new_cookie())
        return response

    async def logout(self, request: Request) -> Response:
        await self._form(request)
        refresh = request.cookies.get(REFRESH)
        if refresh:
            try:
                await self._accounts.logout(refresh)
            except GatewayError:
                pass  # already revoked or expired: the cookies go either way
        response = RedirectResponse(self.path + "/login", 303)
        self._browser.clear(request, response, SESSION, REFRESH)
        return response

    # --- keys --------------------------------------------------------------------------------------------------

    async def list_keys(self, request: Request) -> Response:
        user = await self._user(request)
        try:
            offset = min(max(int(request.query_params.get("offset", "0")), 0), 10**9)
        except ValueError:
            offset = 0
        now = self._now()
        records = await self._store.list(now=now, limit=PAGE + 1, offset=offset)
        keys = [self.models.key.of(r, now) for r in records[:PAGE]]
        return self._page(request, "keys.html", user=user, keys=keys,
                          next_offset=offset + PAGE if len(records) > PAGE else None,
                          can_write=grants(user.scopes, WRITE))

    def _form_page(self, request: Request, user: User, values: dict[str, Any], message: str | None = None,
                   field: str | None = None, status: int = 200) -> Response:
        return self._page(request, "new.html", status, user=user, scopes=self._grantable(user),
                          tiers=list(self._settings.rate_limits.tiers), ip_name=self._ip_field, values=values,
                          message=message, field=field)

    async def new_key(self, request: Request) -> Response:
        user = await self._user(request, WRITE)
        values: dict[str, Any] = dict.fromkeys(self._form_fields(), "")
        values.update(permissions=[], environment="live")
        return self._form_page(request, user, values)

    def _form_fields(self) -> tuple[str, ...]:
        """The creation form's fields besides ``permissions``, named as the API's."""
        return "name", "expires_at", self._ip_field, "rate_limit_tier", "environment", "description"

    def _create_body(self, form: dict[str, list[str]]) -> dict[str, Any]:
        """The form as the API's JSON body (POST /api-keys): the same names; empty optional fields left out."""
        body: dict[str, Any] = {"name": first(form, "name"), "permissions": form.get("permissions", [])}
        expires = first(form, "expires_at").strip()
        if expires:
            body["expires_at"] = expires + "T00:00:00Z" if _DATE.match(expires) else expires
        ips = [ip for ip in re.split(r"[\s,]+", first(form, self._ip_field)) if ip]
        if ips:
            body[self._ip_field] = ips
        for name in ("rate_limit_tier", "environment", "description"):
            value = first(form, name).strip()
            if value:
                body[name] = value
        return body

    async def create(self, request: Request) -> Response:
        user = await self._user(request, WRITE)
        form = await self._form(request)
        values: dict[str, Any] = {name: first(form, name) for name in self._form_fields()}
        values["permissions"] = form.get("permissions", [])
        body = self._create_body(form)
        model = self.models.create
        try:
            fields = model.model_validate_json(json.dumps(body)).model_dump(exclude_unset=True)
            environment = fields.pop("environment", "live")
            value, record = await create_key(
                self._store, self._pepper, self._settings.key_format, **fields, environment=environment,
                policy=self._policy(), created_by=self._actor(user), caller_permissions=user.scopes)
        except ValidationError as exc:
            found = problem(exc, model)
            error: GatewayError = ValidationFailed(found.message_id, field=found.field, **found.values)
        except (KeyInputError, PermissionDenied, Conflict) as exc:
            error = refusal(exc, user=True)
        else:
            key = self.models.key.of(record, self._now())
            return self._page(request, "created.html", 201, user=user, key=key, value=value, rotated_from=None)
        return self._form_page(request, user, values, self._errors.text(error), error.field, error.status)

    async def detail(self, request: Request) -> Response:
        user = await self._user(request)
        record = await self._record(request)
        now = self._now()
        counts = await self._usage(record.id, self._days)
        events = await self._store.audit_log(record.id, limit=AUDIT_ROWS)
        events.sort(key=lambda e: e.at, reverse=True)
        notice = self._texts["revoked_notice"] if request.query_params.get("notice") == "revoked" else None
        return self._page(request, "key.html", user=user, key=self.models.key.of(record, now),
                          chart=chart(counts, self._days, now.date()), days=self._days, events=events,
                          can_write=grants(user.scopes, WRITE), notice=notice, message=None)

    async def revoke_form(self, request: Request) -> Response:
        user = await self._user(request, WRITE)
        record = await self._record(request)
        return self._page(request, "revoke.html", user=user, key=self.models.key.of(record, self._now()))

    async def revoke(self, request: Request) -> Response:
        user = await self._user(request, WRITE)
        await self._form(request)
        record = await self._record(request)
        try:
            revoked = await revoke_key(self._store, record.id, actor=self._actor(user), caller_permissions=user.scopes)
        except PermissionDenied as exc:
            raise refusal(exc, user=True) from None
        if revoked is None:
            raise KeyNotFound()
        self._invalidate(record.key_hash)
        return self._redirect(request, f"/keys/{record.id}?notice=revoked")

    async def rotate(self, request: Request) -> Response:
        user = await self._user(request, WRITE)
        form = await self._form(request)
        record = await self._record(request)
        text = first(form, "grace_period").strip()
        try:
            if text:
                grace: str | int = KeyRotate.model_validate_json(
                    json.dumps({"grace_period": int(text) if text.isdigit() else text})).grace_period
            else:
                grace = grace_for(record, self._settings.rotation.grace_period)
            result = await rotate_key(self._store, self._pepper, self._settings.key_format, record.id,
                                      grace_period=grace, actor=self._actor(user), caller_permissions=user.scopes)
        except ValidationError as exc:
            found = problem(exc, KeyRotate)
            error: GatewayError = ValidationFailed(found.message_id, field=found.field, **found.values)
        except (KeyInputError, PermissionDenied, Conflict) as exc:
            error = refusal(exc, user=True)
        else:
            if result is None:
                raise KeyNotFound()
            old, value, new = result
            self._invalidate(record.key_hash)
            now = self._now()
            return self._page(request, "created.html", 201, user=user, key=self.models.key.of(new, now), value=value,
                              rotated_from=self.models.key.of(old, now))
        now = self._now()
        counts = await self._usage(record.id, self._days)
        events = await self._store.audit_log(record.id, limit=AUDIT_ROWS)
        events.sort(key=lambda e: e.at, reverse=True)
        return self._page(request, "key.html", error.status, user=user, key=self.models.key.of(record, now),
                          chart=chart(counts, self._days, now.date()), days=self._days, events=events,
                          can_write=True, notice=None, message=self._errors.text(error))

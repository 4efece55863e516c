"""Settings -> API Keys: the list, the creation form, a key's page (usage chart, audit trail), rotation and
revocation. Every change goes through the key service (:mod:`gateway.keys.service`) with the user's role scopes as
the caller's permissions, and every form is validated by the management API's own models."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from gateway.admin.api import WRITE, keys_owner, owns, refusal
from gateway.admin.dashboard.chart import chart
from gateway.admin.dashboard.sessions import UsageByDay, User
from gateway.admin.dashboard.site import Site
from gateway.admin.dashboard.web import first
from gateway.admin.models import KeyRotate, ip_field, models_for, problem
from gateway.config.settings import Settings
from gateway.errors import GatewayError, KeyNotFound, ValidationFailed
from gateway.keys.hashing import Pepper
from gateway.keys.record import KeyRecord
from gateway.keys.service import KeyInputError, PermissionDenied, create_key, grace_for, revoke_key, rotate_key
from gateway.keys.store import Conflict, KeyStore
from gateway.policy.rules import Policy, grants

PAGE = 50  # keys per page of the list
AUDIT_ROWS = 100
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class KeyPages:
    """The key pages' handlers. ``policy`` gives the policy served now (its scopes are the checkboxes),
    ``invalidate`` drops a key hash from this process's key cache, ``usage_by_day`` reads the chart's counts."""

    def __init__(self, site: Site, settings: Settings, store: KeyStore, pepper: Pepper, policy: Callable[[], Policy],
                 invalidate: Callable[[str], None], usage_by_day: UsageByDay) -> None:
        self.site = site
        self._store = store
        self._pepper = pepper
        self._policy = policy
        self._invalidate = invalidate
        self._usage = usage_by_day
        self._key_format = settings.key_format
        self._grace = settings.rotation.grace_period
        self._tiers = list(settings.rate_limits.tiers)
        self._days = settings.dashboard.usage_days
        self._ip_field = ip_field(settings.error_format)
        self.models = models_for(settings)

    @staticmethod
    def _now() -> datetime:
        return datetime.now(UTC).replace(microsecond=0)

    @staticmethod
    def _actor(user: User) -> str:
        return f"user:{user.user_id}"

    async def _record(self, request: Request, user: User) -> KeyRecord:
        """The key of the path, if ``user`` may see it: a user who is not an admin sees only the keys the user made
        (another's is "not found", so ids do not leak)."""
        record = await self._store.get(request.path_params["id"])
        if record is None or not owns(user, record):
            raise KeyNotFound()
        return record

    # --- the list ------------------------------------------------------------------------------------------------

    async def list_keys(self, request: Request) -> Response:
        user = await self.site.user(request)
        try:
            offset = min(max(int(request.query_params.get("offset", "0")), 0), 10**9)
        except ValueError:
            offset = 0
        now = self._now()
        records = await self._store.list(now=now, limit=PAGE + 1, offset=offset, created_by=keys_owner(user))
        keys = [self.models.key.of(r, now) for r in records[:PAGE]]
        return self.site.page(request, "keys.html", user=user, keys=keys,
                              next_offset=offset + PAGE if len(records) > PAGE else None,
                              can_write=grants(user.scopes, WRITE))

    # --- creation ------------------------------------------------------------------------------------------------

    def _form_fields(self) -> tuple[str, ...]:
        """The creation form's fields besides ``permissions``, named as the API's."""
        return "name", "expires_at", self._ip_field, "rate_limit_tier", "environment", "description"

    def _form_context(self, user: User, values: dict[str, Any]) -> dict[str, Any]:
        # The checkboxes: the policy's scopes the user holds.
        scopes = sorted(s for s in self._policy().known_scopes if grants(user.scopes, s))
        return {"user": user, "scopes": scopes, "tiers": self._tiers, "ip_name": self._ip_field, "values": values}

    async def new_key(self, request: Request) -> Response:
        user = await self.site.user(request, WRITE)
        values: dict[str, Any] = dict.fromkeys(self._form_fields(), "")
        values.update(permissions=[], environment="live")
        return self.site.page(request, "new.html", **self._form_context(user, values), message=None, field=None)

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
        user = await self.site.user(request, WRITE)
        form = await self.site.form(request)
        model = self.models.create
        try:
            fields = model.model_validate_json(json.dumps(self._create_body(form))).model_dump(exclude_unset=True)
            environment = fields.pop("environment", "live")
            value, record = await create_key(
                self._store, self._pepper, self._key_format, **fields, environment=environment,
                policy=self._policy(), created_by=self._actor(user), caller_permissions=user.scopes)
        except ValidationError as exc:
            found = problem(exc, model)
            error: GatewayError = ValidationFailed(found.message_id, field=found.field, **found.values)
        except (KeyInputError, PermissionDenied, Conflict) as exc:
            error = refusal(exc, user=True)
        else:
            key = self.models.key.of(record, self._now())
            return self.site.page(request, "created.html", 201, user=user, key=key, value=value, rotated_from=None)
        # The form again, as it was filled in, with what is wrong.
        values: dict[str, Any] = {name: first(form, name) for name in self._form_fields()}
        values["permissions"] = form.get("permissions", [])
        return self.site.error(request, error, "new.html", **self._form_context(user, values), field=error.field)

    # --- one key -------------------------------------------------------------------------------------------------

    async def _key_page(self, request: Request, user: User, record: KeyRecord, error: GatewayError | None = None,
                        notice: str | None = None) -> Response:
        now = self._now()
        counts = await self._usage(record.id, self._days)
        events = await self._store.audit_log(record.id, limit=AUDIT_ROWS)
        events.sort(key=lambda e: e.at, reverse=True)
        context: dict[str, Any] = {
            "user": user, "key": self.models.key.of(record, now), "chart": chart(counts, self._days, now.date()),
            "days": self._days, "events": events, "can_write": grants(user.scopes, WRITE), "notice": notice}
        if error is not None:
            return self.site.error(request, error, "key.html", **context)
        return self.site.page(request, "key.html", **context, message=None)

    async def detail(self, request: Request) -> Response:
        user = await self.site.user(request)
        record = await self._record(request, user)
        revoked = request.query_params.get("notice") == "revoked"
        notice = self.site.texts["revoked_notice"] if revoked else None
        return await self._key_page(request, user, record, notice=notice)

    async def revoke_form(self, request: Request) -> Response:
        user = await self.site.user(request, WRITE)
        record = await self._record(request, user)
        return self.site.page(request, "revoke.html", user=user, key=self.models.key.of(record, self._now()))

    async def revoke(self, request: Request) -> Response:
        user = await self.site.user(request, WRITE)
        await self.site.form(request)
        record = await self._record(request, user)
        try:
            revoked = await revoke_key(self._store, record.id, actor=self._actor(user), caller_permissions=user.scopes)
        except PermissionDenied as exc:
            raise refusal(exc, user=True) from None
        if revoked is None:
            raise KeyNotFound()
        self._invalidate(record.key_hash)  # refused by this process at once
        return self.site.redirect(request, f"/keys/{record.id}?notice=revoked")

    async def rotate(self, request: Request) -> Response:
        user = await self.site.user(request, WRITE)
        form = await self.site.form(request)
        record = await self._record(request, user)
        text = first(form, "grace_period").strip()
        try:
            if text:  # the API's grace_period: a duration, or whole seconds
                grace: str | int = KeyRotate.model_validate_json(
                    json.dumps({"grace_period": int(text) if text.isdigit() else text})).grace_period
            else:
                grace = grace_for(record, self._grace)
            result = await rotate_key(self._store, self._pepper, self._key_format, record.id, grace_period=grace,
                                      actor=self._actor(user), caller_permissions=user.scopes)
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
            return self.site.page(request, "created.html", 201, user=user, key=self.models.key.of(new, now),
                                  value=value, rotated_from=self.models.key.of(old, now))
        return await self._key_page(request, user, record, error)

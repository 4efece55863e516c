"""The gateway's own endpoints: ``/v1/auth/test`` and the key-management API (``/v1/api-keys``).

They are declared as *internal* policy routes (see :func:`internal_routes`), so every call has already passed
the same gate as any other request (credential, allowlist, scopes) before it reaches a handler here. Handlers
only validate input, enforce "no key may grant more than it holds", and talk to the store through
:mod:`gateway.keys.service`. A store that fails (:class:`gateway.keys.store.StoreError`) is turned into a 503
``store_unavailable`` in one place, :meth:`ManagementAPI.handle`, for every endpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from starlette.types import Receive, Send

from gateway.errors import (
    BadRequest,
    ConflictError,
    InsufficientPermissions,
    NotFound,
    StoreUnavailable,
    ValidationFailed,
)
from gateway.keys.cache import KeyCache
from gateway.keys.hashing import Pepper
from gateway.keys.record import KeyRecord, to_iso
from gateway.keys.service import (
    DEFAULT_TIERS,
    KeyInputError,
    PermissionDenied,
    create_key,
    revoke_key,
    rotate_key,
    update_key,
)
from gateway.keys.store import Conflict, KeyStore, StoreError
from gateway.policies import Policy, Route, load_policy, policy_path
from gateway.settings import ManagementSettings, Settings

log = logging.getLogger("gateway.admin")

MAX_BODY = 64 * 1024
READ, WRITE = "api-keys:read", "api-keys:write"


def internal_routes(prefix: str, allow_jwt: bool = False) -> list[Route]:
    """The gateway's own endpoints as policy routes. The key-management API takes API keys, and dashboard
    JWTs too only with ``allow_jwt`` (``management.allow_jwt``); ``auth/test`` takes either credential."""
    p = "" if prefix == "/" else prefix
    keys, one = f"{p}/api-keys", f"{p}/api-keys/{{id}}"
    anything = frozenset({"api_key", "jwt"})
    managing = anything if allow_jwt else frozenset({"api_key"})

    def r(template: str, methods: set[str], *scopes: str) -> Route:
        return Route(template=template, methods=frozenset(methods), scopes=scopes, internal=True,
                     credentials=managing)

    return [
        Route(template=f"{p}/auth/test", methods=frozenset({"GET"}), internal=True, credentials=anything),
        r(keys, {"GET"}, READ),
        r(keys, {"POST"}, WRITE),
        r(one, {"GET"}, READ),
        r(one, {"PATCH", "DELETE"}, WRITE),
        r(f"{one}/rotate", {"POST"}, WRITE),
    ]


@dataclass(frozen=True, slots=True)
class Call:
    """One call to an internal endpoint, after the gate."""

    method: str
    route: Route
    segments: list[str]
    query: bytes
    principal: Any  # AuthKey or JwtPrincipal
    receive: Receive
    rate_limit: Mapping[str, Any] | None = None


_CREATE_FIELDS = {"name", "permissions", "expires_at", "ip_whitelist", "allowed_ips", "rate_limit_tier",
                  "environment", "auto_rotate", "rotation_enabled", "rotation_period", "description"}
_UPDATE_FIELDS = {"name", "permissions", "expires_at", "ip_whitelist", "allowed_ips", "rate_limit_tier",
                  "auto_rotate", "rotation_enabled", "rotation_period", "description"}
_ALIASES = {"ip_whitelist": "allowed_ips", "rotation_enabled": "auto_rotate"}
_STATUSES = ("active", "expired", "revoked")


class ManagementAPI:
    """The handlers of the internal routes. ``clock`` (seconds since the epoch) is the gateway's clock, so
    what these answers say of a key (status, grace period, rotation due) agrees with what the gate decides."""

    def __init__(self, settings: Settings, store: KeyStore, cache: KeyCache, pepper: Pepper, policy: Policy,
                 tiers: tuple[str, ...] = DEFAULT_TIERS, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._settings = settings
        self._store = store
        self._cache = cache
        self._pepper = pepper
        self._policy = policy
        self._tiers = tiers
        self._format = settings.error_format
        self._ip_field = "allowed_ips" if settings.error_format == "deployally" else "ip_whitelist"
        prefix = "" if settings.management.prefix == "/" else settings.management.prefix
        keys, one = f"{prefix}/api-keys", f"{prefix}/api-keys/{{id}}"
        self._handlers: dict[tuple[str, str], Callable[[Call], Awaitable[tuple[int, Any]]]] = {
            ("GET", f"{prefix}/auth/test"): self.auth_test,
            ("GET", keys): self.list_keys,
            ("POST", keys): self.create,
            ("GET", one): self.get,
            ("PATCH", one): self.update,
            ("DELETE", one): self.revoke,
            ("POST", f"{one}/rotate"): self.rotate,
        }

    async def handle(self, call: Call, send: Send, extra_headers: list[tuple[bytes, bytes]]) -> int:
        handler = self._handlers[(call.method, call.route.template)]
        try:
            status, doc = await handler(call)
        except KeyInputError as exc:
            raise ValidationFailed(f"{exc.field}: {exc.problem}", field=_public_field(exc.field)) from None
        except PermissionDenied as exc:
            raise InsufficientPermissions(str(exc)) from None
        except Conflict as exc:
            raise ConflictError(str(exc)) from None
        except StoreError as exc:
            # Every endpoint's store calls end here, so none can answer 500. A StoreError's message names the
            # store (redacted URL or file) and what failed, never a key; the client gets only the fixed text.
            log.error("key store unavailable for %s %s: %s", call.method, call.route.template, exc)
            raise StoreUnavailable() from None
        if self._format == "deployally" and handler != self.auth_test:
            doc = {"success": True, "data": doc}
        body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store"), *extra_headers]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return status

    # --- helpers ---------------------------------------------------------------------------------------------

    @staticmethod
    def _caller(call: Call) -> tuple[str, frozenset[str], str]:
        """(actor for the audit trail, permissions, environment) of the calling principal."""
        p = call.principal
        record = getattr(p, "record", None)
        if record is not None:
            return record.id, p.permissions, record.environment
        return f"jwt:{p.subject}", p.permissions, "live"

    async def _record(self, call: Call) -> KeyRecord:
        key_id = call.segments[-2] if call.route.template.endswith("/rotate") else call.segments[-1]
        record = await self._store.get(key_id)
        _, _, env = self._caller(call)
        # A test key never sees or touches live keys; to it they do not exist.
        if record is None or (env == "test" and record.environment != "test"):
            raise NotFound("No API key with this id")
        return record

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC).replace(microsecond=0)

    def _show(self, record: KeyRecord) -> dict[str, Any]:
        return record.public(self._now(), ip_field=self._ip_field)

    async def _body(self, call: Call, allowed: set[str]) -> dict[str, Any]:
        chunks, size = [], 0
        while True:
            message = await call.receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("The client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                raise ValidationFailed(f"The body is larger than {MAX_BODY} bytes", field="body")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        if not raw.strip():
            return {}
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ValidationFailed("The body is not valid JSON", field="body") from None
        if not isinstance(doc, dict):
            raise ValidationFailed("The body must be a JSON object", field="body")
        unknown = sorted(set(doc) - allowed)
        if unknown:
            raise ValidationFailed(f"{unknown[0]}: unknown field", field=unknown[0])
        if "ip_whitelist" in doc and "allowed_ips" in doc:
            raise ValidationFailed("give ip_whitelist or allowed_ips, not both", field="ip_whitelist")
        out: dict[str, Any] = {}
        for k, v in doc.items():
            out[_ALIASES.get(k) or k] = v  # JSON keys are str
        _check_types(out)
        return out

    def _invalidate(self, *records: KeyRecord) -> None:
        for r in records:
            self._cache.invalidate(r.key_hash)

    # --- endpoints -------------------------------------------------------------------------------------------

    async def auth_test(self, call: Call) -> tuple[int, Any]:
        p = call.principal
        record: KeyRecord | None = getattr(p, "record", None)
        now = self._now()
        doc: dict[str, Any] = {"authenticated": True}
        if record is not None:
            doc.update({
                "key_id": record.id,
                "name": record.name,
                "permissions": list(record.permissions),
                "environment": record.environment,
                "expires_at": to_iso(record.expires_at),
                "rotation": {
                    "status": record.rotation_state(now),
                    "rotation_due_at": to_iso(record.rotation_due_at),
                    "replaced_by": record.rotated_to,
                },
            })
        else:
            doc.update({"key_id": None, "subject": p.subject, "permissions": list(p.permissions_list),
                        "credential": "jwt", "expires_at": to_iso(datetime.fromtimestamp(p.expires_ts, UTC))})
        doc["rate_limit"] = dict(call.rate_limit) if call.rate_limit is not None else None
        return 200, doc

    async def list_keys(self, call: Call) -> tuple[int, Any]:
        q = {k: v[-1] for k, v in parse_qs(call.query.decode("latin-1"), keep_blank_values=True).items()}
        unknown = sorted(set(q) - {"limit", "offset", "environment", "status"})
        if unknown:
            raise ValidationFailed(f"{unknown[0]}: unknown query parameter", field=unknown[0])
        limit = _int_param(q, "limit", 50, 1, 500)
        offset = _int_param(q, "offset", 0, 0, 10**9)
        env = q.get("environment")
        if env is not None and env not in ("live", "test"):
            raise ValidationFailed("environment: must be live or test", field="environment")
        status = q.get("status")
        if status is not None and status not in _STATUSES:
            raise ValidationFailed(f"status: must be one of {', '.join(_STATUSES)}", field="status")
        _, _, caller_env = self._caller(call)
        if caller_env == "test":
            if env == "live":
                return 200, {"data": [], "pagination": {"limit": limit, "offset": offset, "next_offset": None}}
            env = "test"
        records = await self._store.list(environment=env, status=status, now=self._now(), limit=limit + 1,
                                         offset=offset)
        more = len(records) > limit
        return 200, {
            "data": [self._show(r) for r in records[:limit]],
            "pagination": {"limit": limit, "offset": offset, "next_offset": offset + limit if more else None},
        }

    async def get(self, call: Call) -> tuple[int, Any]:
        return 200, self._show(await self._record(call))

    async def create(self, call: Call) -> tuple[int, Any]:
        body = await self._body(call, _CREATE_FIELDS)
        actor, perms, caller_env = self._caller(call)
        if "name" not in body:
            raise ValidationFailed("name: is required", field="name")
        env = body.get("environment", caller_env)
        if caller_env == "test" and env != "test":
            raise InsufficientPermissions("A test key can only create test keys")
        value, record = await create_key(
            self._store, self._pepper, self._settings.key_format,
            name=body["name"],
            permissions=body.get("permissions", sorted(perms)),
            allowed_ips=body.get("allowed_ips", []),
            expires_at=body.get("expires_at"),
            environment=env,
            description=body.get("description"),
            rate_limit_tier=body.get("rate_limit_tier"),
            auto_rotate=body.get("auto_rotate", False),
            rotation_period=body.get("rotation_period"),
            policy=self._policy, tiers=self._tiers, created_by=actor, caller_permissions=perms,
        )
        return 201, {**self._show(record), "value": value}

    async def update(self, call: Call) -> tuple[int, Any]:
        record = await self._record(call)
        body = await self._body(call, _UPDATE_FIELDS)
        actor, perms, _ = self._caller(call)
        updated = await update_key(self._store, record.id, body, policy=self._policy, tiers=self._tiers,
                                   actor=actor, caller_permissions=perms)
        if updated is None:
            raise NotFound("No API key with this id")
        self._invalidate(record)
        return 200, self._show(updated)

    async def revoke(self, call: Call) -> tuple[int, Any]:
        record = await self._record(call)
        actor, perms, _ = self._caller(call)
        revoked = await revoke_key(self._store, record.id, actor=actor, caller_permissions=perms)
        if revoked is None:
            raise NotFound("No API key with this id")
        self._invalidate(record)
        return 200, self._show(revoked)

    async def rotate(self, call: Call) -> tuple[int, Any]:
        record = await self._record(call)
        body = await self._body(call, {"grace_period"})
        actor, perms, _ = self._caller(call)
        grace = body.get("grace_period", self._settings.rotation.grace_period)
        if not isinstance(grace, str | int) or isinstance(grace, bool):
            raise ValidationFailed("grace_period: must be a duration like 7d, 12h or 0", field="grace_period")
        result = await rotate_key(self._store, self._pepper, self._settings.key_format, record.id,
                                  grace_period=grace, actor=actor, caller_permissions=perms)
        if result is None:
            raise NotFound("No API key with this id")
        old, value, new = result
        self._invalidate(record)
        return 200, {
            "old_key": {"id": old.id, "expires_at": to_iso(old.expires_at)},
            "new_key": {"id": new.id, "value": value, "created_at": to_iso(new.created_at)},
        }


def _public_field(field: str) -> str:
    return {"allowed_ips": "ip_whitelist"}.get(field, field)


def _int_param(q: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = q.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ValidationFailed(f"{name}: must be a whole number from {low} to {high}", field=name)
    return int(raw)


def _check_types(body: Mapping[str, Any]) -> None:
    def need(field: str, ok: bool, what: str) -> None:
        if not ok:
            raise ValidationFailed(f"{_public_field(field)}: must be {what}", field=_public_field(field))

    for field, value in body.items():
        if field in ("name", "environment"):
            need(field, isinstance(value, str), "a string")
        elif field in ("permissions", "allowed_ips"):
            need(field, isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of strings")
        elif field in ("expires_at", "description", "rate_limit_tier", "rotation_period"):
            need(field, value is None or isinstance(value, str), "a string or null")
        elif field == "auto_rotate":
            need(field, isinstance(value, bool), "true or false")


def build_policy(settings: Settings, management: ManagementSettings | None = None) -> Policy:
    """The policy as the gateway serves it: the file's routes plus, when enabled, the management API's.

    ``management`` is the section the running process started with (default: ``settings``'): it waits for a
    restart, so a reload must add the same management routes the pipeline and its handlers were built for."""
    m = settings.management if management is None else management
    policy = load_policy(policy_path(settings))
    if m.enabled:
        policy = policy.with_routes(internal_routes(m.prefix, m.allow_jwt))
    return policy

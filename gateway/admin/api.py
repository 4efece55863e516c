"""The gateway's own endpoints: ``/v1/auth/test`` and the key-management API (``/v1/api-keys``).

They are declared as *internal* policy routes (:func:`internal_routes`), so a call has already passed the same
gate as any other request (credential, allowlist, scopes) when the proxy hands it to :class:`ManagementAPI`, a
plain ASGI app, with what the gate decided in the scope:

    scope["gateway.principal"]   the caller: an AuthKey (API key) or a JWTPrincipal (dashboard JWT)
    scope["gateway.rate_limit"]  the caller's rate limit as ``auth/test`` reports it (None: limits are off)
    scope["gateway.headers"]     headers every answer carries (the rate-limit and debug headers of the call)

Starlette's router picks the handler, on the path the gate matched. Handlers validate what they are sent with
the models of :mod:`gateway.admin.models` (which also serialise every answer), enforce "no key may grant more
than it holds" and talk to the store through :mod:`gateway.keys.service`. A refusal is raised as a
:class:`gateway.errors.GatewayError` for the proxy to answer in the configured format; what the key service and
the store raise is translated in one place, :meth:`ManagementAPI.__call__`, so that a store that fails
(:class:`gateway.keys.store.StoreError`) is a 503 ``store_unavailable`` for every endpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as StarletteRoute
from starlette.routing import Router
from starlette.types import Message, Receive, Scope, Send

from gateway.accounts import Principal
from gateway.admin.models import (
    AuthTest,
    KeyPage,
    KeyQuery,
    KeyRotate,
    NewKey,
    Pagination,
    RateLimit,
    RetiredKey,
    Rotation,
    models_for,
    problem,
)
from gateway.config.settings import ManagementSettings, Settings
from gateway.errors import (
    CannotGrant,
    ClientGone,
    ConflictError,
    GatewayError,
    KeyNotFound,
    LiveKeyFromTestKey,
    NotFound,
    RoleCannotGrant,
    StoreUnavailable,
    ValidationFailed,
    ValueNotHeld,
)
from gateway.keys.cache import KeyCache
from gateway.keys.hashing import Pepper
from gateway.keys.record import KeyRecord
from gateway.keys.sealing import SealError
from gateway.keys.service import (
    KeyInputError,
    NothingHeld,
    PermissionDenied,
    create_key,
    grace_for,
    reveal_value,
    revoke_key,
    rotate_key,
    update_key,
)
from gateway.keys.store import Conflict, KeyStore, StoreError
from gateway.policy.paths import split_path
from gateway.policy.rules import Policy, Route, load_policy, policy_path

log = logging.getLogger("gateway.admin")

MAX_BODY = 64 * 1024
READ, WRITE = "api-keys:read", "api-keys:write"

# Every endpoint: (path below management.prefix, method, the scope it needs (None: any valid credential),
# handler). The gate's policy routes (internal_routes), the router below and the OpenAPI document
# (gateway/admin/openapi.py) are all made from this table.
ENDPOINTS: tuple[tuple[str, str, str | None, str], ...] = (
    ("/auth/test", "GET", None, "auth_test"),
    ("/api-keys", "GET", READ, "list_keys"),
    ("/api-keys", "POST", WRITE, "create"),
    ("/api-keys/{id}", "GET", READ, "get"),
    ("/api-keys/{id}", "PATCH", WRITE, "update"),
    ("/api-keys/{id}", "DELETE", WRITE, "revoke"),
    ("/api-keys/{id}/rotate", "POST", WRITE, "rotate"),
    ("/api-keys/{id}/reveal", "POST", WRITE, "reveal"),
)

_NO_STORE = {"cache-control": "no-store"}
M = TypeVar("M", bound=BaseModel)


def _under(prefix: str) -> str:
    return "" if prefix == "/" else prefix


def internal_routes(prefix: str, allow_jwt: bool = False) -> list[Route]:
    """The gateway's own endpoints as policy routes. The key-management API takes API keys, and dashboard
    JWTs too only with ``allow_jwt`` (``management.allow_jwt``); ``auth/test`` takes either credential."""
    p = _under(prefix)
    anything = frozenset({"api_key", "jwt"})
    managing = anything if allow_jwt else frozenset({"api_key"})
    methods: dict[tuple[str, str | None], set[str]] = {}  # one route per path and scope
    for path, method, scope, _ in ENDPOINTS:
        methods.setdefault((path, scope), set()).add(method)
    return [
        Route(template=p + path, methods=frozenset(m), scopes=(scope,) if scope else (), internal=True,
              credentials=managing if scope else anything)
        for (path, scope), m in methods.items()
    ]


class ManagementAPI:
    """The handlers of the internal routes, as one ASGI app. ``policy`` gives the policy the gate serves now
    (a reload swaps it), whose scopes a key may be given. ``clock`` (seconds since the epoch) is the gateway's
    clock, so what these answers say of a key (status, grace period, rotation due) agrees with what the gate
    decides."""

    def __init__(self, settings: Settings, store: KeyStore, cache: KeyCache, pepper: Pepper,
                 policy: Callable[[], Policy], clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._settings = settings
        self._store = store
        self._cache = cache
        self._pepper = pepper
        self._policy = policy
        self._envelope = settings.error_format == "deployally"  # DeployAlly wraps answers in {"success": true, ...}
        self.models = models_for(settings)
        p = _under(settings.management.prefix)
        self._router = Router(
            [StarletteRoute(p + path, getattr(self, handler), methods=[method])
             for path, method, _, handler in ENDPOINTS],
            redirect_slashes=False, default=_not_found,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Route on the path the gate matched (percent-decoded, one trailing slash ignored): the router then
        # reaches exactly the handler of the policy route the gate allowed.
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        inner = {**scope, "path": "/" + "/".join(split_path(raw_path)), "root_path": ""}
        extra: Collection[tuple[bytes, bytes]] = scope.get("gateway.headers", ())

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and extra:
                message["headers"] = [*message["headers"], *extra]
            await send(message)

        try:
            await self._router(inner, receive, send_with_headers)
        except (KeyInputError, PermissionDenied, Conflict) as exc:
            # A dashboard user holds its role's scopes: a refusal to grant names the role, not a key.
            raise refusal(exc, user=isinstance(scope.get("gateway.principal"), Principal)) from None
        except StoreError as exc:
            # Every endpoint's store calls end here, so none can answer 500. A StoreError's message names the
            # store (redacted URL or file) and what failed, never a key; the client gets only the fixed text.
            route = inner.get("route")
            log.error("key store unavailable for %s %s: %s", scope["method"],
                      route.path if isinstance(route, StarletteRoute) else inner["path"], exc)
            raise StoreUnavailable() from None

    # --- helpers ---------------------------------------------------------------------------------------------

    @staticmethod
    def _caller(request: Request) -> tuple[str, frozenset[str], str]:
        """(actor for the audit trail, permissions, environment) of the calling principal."""
        p = request.scope["gateway.principal"]
        return p.actor, p.permissions, p.environment

    async def _record(self, request: Request) -> KeyRecord:
        record = await self._store.get(request.path_params["id"])
        _, _, env = self._caller(request)
        # A test key never sees or touches live keys; to it they do not exist. Nor does a user's key to another
        # user who is not an admin (404, not 403: ids do not leak).
        if (record is None or (env == "test" and record.environment != "test")
                or not owns(request.scope["gateway.principal"], record)):
            raise KeyNotFound()
        return record

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC).replace(microsecond=0)

    def _answer(self, model: BaseModel, status: int = 200) -> Response:
        """``model`` as the JSON answer. Fields a model leaves unset (what only a key, or only a JWT, has) are left
        out. In the DeployAlly format every answer is ``{"success": true, "data": ...}``; a page of keys is
        ``{"success": true, "data": [keys...], "meta": {"pagination": {...}}}`` (the list itself is ``data``)."""
        doc: Any = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
        if self._envelope:
            if isinstance(model, KeyPage):
                doc = {"success": True, "data": doc["data"], "meta": {"pagination": doc["pagination"]}}
            else:
                doc = {"success": True, "data": doc}
        return JSONResponse(doc, status, headers=_NO_STORE)

    async def _body(self, request: Request, model: type[M]) -> M:
        """The body, read up to :data:`MAX_BODY` bytes and validated by ``model``; an empty body is ``{}``."""
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY:
                    raise ValidationFailed("validation_error.body_too_large", field="body", where="body",
                                           limit=MAX_BODY)
                chunks.append(chunk)
        except ClientDisconnect:
            raise ClientGone() from None
        raw = b"".join(chunks)
        try:
            return model.model_validate_json(raw if raw.strip() else b"{}")
        except ValidationError as exc:
            found = problem(exc, model)
            raise ValidationFailed(found.message_id, field=found.field, **found.values) from None

    def _invalidate(self, *records: KeyRecord) -> None:
        for r in records:
            self._cache.invalidate(r.key_hash)

    # --- endpoints -------------------------------------------------------------------------------------------

    async def auth_test(self, request: Request) -> Response:
        p = request.scope["gateway.principal"]
        limit = request.scope.get("gateway.rate_limit")
        rate = RateLimit.model_validate(limit) if limit is not None else None
        record: KeyRecord | None = getattr(p, "record", None)
        if record is not None:
            doc = AuthTest.model_validate({
                "authenticated": True, "key_id": record.id, "name": record.name,
                "permissions": list(record.permissions), "environment": record.environment,
                "expires_at": record.expires_at, "rate_limit": rate,
                "rotation": {"status": record.rotation_state(self._now()), "rotation_due_at": record.rotation_due_at,
                             "replaced_by": record.rotated_to},
            })
        else:
            doc = AuthTest(authenticated=True, key_id=None, subject=p.subject, permissions=list(p.permissions_list),
                           credential="jwt", expires_at=datetime.fromtimestamp(p.expires_ts, UTC), rate_limit=rate)
        return self._answer(doc)

    async def list_keys(self, request: Request) -> Response:
        try:
            query = KeyQuery.model_validate(dict(request.query_params))
        except ValidationError as exc:
            found = problem(exc, KeyQuery, unknown="validation_error.unknown_query")
            raise ValidationFailed(found.message_id, field=found.field, **found.values) from None
        limit, offset = query.limit, query.offset
        env = query.environment if "environment" in query.model_fields_set else None
        status = query.status if "status" in query.model_fields_set else None
        _, _, caller_env = self._caller(request)
        page = self.models.page
        if caller_env == "test":
            if env == "live":
                return self._answer(page(data=[], pagination=Pagination(limit=limit, offset=offset, next_offset=None)))
            env = "test"
        now = self._now()
        records = await self._store.list(environment=env, status=status, now=now, limit=limit + 1, offset=offset,
                                         created_by=keys_owner(request.scope["gateway.principal"]))
        more = len(records) > limit
        return self._answer(page(
            data=[self.models.key.of(r, now) for r in records[:limit]],
            pagination=Pagination(limit=limit, offset=offset, next_offset=offset + limit if more else None),
        ))

    async def get(self, request: Request) -> Response:
        return self._answer(self.models.key.of(await self._record(request), self._now()))

    async def create(self, request: Request) -> Response:
        body = await self._body(request, self.models.create)
        actor, perms, caller_env = self._caller(request)
        fields = body.model_dump(exclude_unset=True)
        env = fields.pop("environment", caller_env)
        if caller_env == "test" and env != "test":
            raise LiveKeyFromTestKey()
        value, record = await create_key(
            self._store, self._pepper, self._settings.key_format,
            **{"permissions": sorted(perms), **fields}, environment=env,
            policy=self._policy(), created_by=actor, caller_permissions=perms,
        )
        key = self.models.key.of(record, self._now())
        return self._answer(self.models.created(**dict(key), value=value), 201)

    async def update(self, request: Request) -> Response:
        record = await self._record(request)
        body = await self._body(request, self.models.update)
        actor, perms, _ = self._caller(request)
        updated = await update_key(self._store, record.id, body.model_dump(exclude_unset=True), policy=self._policy(),
                                   actor=actor, caller_permissions=perms)
        if updated is None:
            raise KeyNotFound()
        self._invalidate(record)
        return self._answer(self.models.key.of(updated, self._now()))

    async def revoke(self, request: Request) -> Response:
        record = await self._record(request)
        actor, perms, _ = self._caller(request)
        revoked = await revoke_key(self._store, record.id, actor=actor, caller_permissions=perms)
        if revoked is None:
            raise KeyNotFound()
        self._invalidate(record)
        return self._answer(self.models.key.of(revoked, self._now()))

    async def rotate(self, request: Request) -> Response:
        record = await self._record(request)
        body = await self._body(request, KeyRotate)
        actor, perms, _ = self._caller(request)
        grace = (body.grace_period if "grace_period" in body.model_fields_set
                 else grace_for(record, self._settings.rotation.grace_period))
        result = await rotate_key(self._store, self._pepper, self._settings.key_format, record.id,
                                  grace_period=grace, actor=actor, caller_permissions=perms)
        if result is None:
            raise KeyNotFound()
        old, value, new = result
        self._invalidate(record)
        return self._answer(Rotation(old_key=RetiredKey(id=old.id, expires_at=old.expires_at),
                                     new_key=NewKey(id=new.id, value=value, created_at=new.created_at)))


    async def reveal(self, request: Request) -> Response:
        """The value an automatic rotation held for this key, once: then it is erased."""
        record = await self._record(request)
        actor, perms, _ = self._caller(request)
        try:
            result = await reveal_value(self._store, self._pepper, record.id, actor=actor, caller_permissions=perms)
        except (NothingHeld, SealError) as exc:
            if isinstance(exc, SealError):
                log.error("held value of %s could not be opened (erased): %s", record.id, exc)
            raise ValueNotHeld() from None
        if result is None:
            raise KeyNotFound()
        revealed, value = result
        return self._answer(NewKey(id=revealed.id, value=value, created_at=revealed.created_at))


ADMIN_ROLE = "admin"


def keys_owner(principal: object) -> str | None:
    """Whose keys ``principal`` may list and manage, as a key's ``created_by``: a dashboard user whose role is not
    ``admin`` only the keys the user made (``user:<id>``); anyone else (an admin, an API key, an external
    issuer's JWT) every key, None. Used by the management API and the dashboard alike."""
    if isinstance(principal, Principal) and principal.role != ADMIN_ROLE:
        return principal.actor
    return None


def owns(principal: object, record: KeyRecord) -> bool:
    """Whether ``principal`` may see and manage ``record`` (:func:`keys_owner`)."""
    owner = keys_owner(principal)
    return owner is None or record.created_by == owner


def refusal(exc: KeyInputError | PermissionDenied | Conflict, user: bool = False) -> GatewayError:
    """What the key service refused, as the answer the API gives: a field it refuses (``validation_error``), a
    scope the caller cannot grant (``insufficient_permissions``: a key's, or with ``user`` a dashboard user's
    role's), a key whose state forbids the change (``conflict``). The dashboard shows the same words."""
    if isinstance(exc, KeyInputError):
        return ValidationFailed(exc.message_id, field=exc.field, where=exc.field, **exc.params)
    if isinstance(exc, PermissionDenied):
        return RoleCannotGrant(exc.scope) if user else CannotGrant(exc.scope)
    return ConflictError(exc.message_id, **exc.params)


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    # Not reached: the gate lets only the routes of ENDPOINTS through, and the router has each of them.
    raise NotFound()


def build_policy(settings: Settings, management: ManagementSettings | None = None) -> Policy:
    """The policy as the gateway serves it: the file's routes plus, when enabled, the management API's.

    ``management`` is the section the running process started with (default: ``settings``'): it waits for a
    restart, so a reload must add the same management routes the pipeline and its handlers were built for."""
    m = settings.management if management is None else management
    policy = load_policy(policy_path(settings))
    if m.enabled:
        policy = policy.with_routes(internal_routes(m.prefix, m.allow_jwt))
    return policy

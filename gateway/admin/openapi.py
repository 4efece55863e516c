"""The management API described as OpenAPI 3.1, and a docs page rendered from it.

``GET {ops.openapi_path}`` (default ``/openapi.json``) and ``GET {ops.docs_path}`` (default ``/docs``) are
answered before the auth gate, without a credential, like the probes; ``ops.openapi_enabled: false`` turns
both off. The document follows the running configuration: paths under ``management.prefix``, the error
shape of ``error_format`` (deployERP ``{"error": {...}}`` or DeployAlly ``{"success": false, ...}``, whose
successful answers are all wrapped in ``{"success": true, "data": ...}``, a page of keys as
``{"success": true, "data": [...], "meta": {"pagination": ...}}``), the name of the IP allowlist
field and the rate-limit tiers a key may be given. Both bodies are built once, when the app is built.

Every schema in it is the JSON Schema of a model of :mod:`gateway.admin.models` (pydantic writes JSON Schema
2020-12, the dialect of OpenAPI 3.1), the models the API validates requests with and serialises answers
through: what is written here is what the API does. This module adds only what is about HTTP: paths,
operations, parameters, statuses and the DeployAlly envelope.

With ``accounts.enabled`` the document also has the dashboard users' login, refresh and logout
(gateway.doors.login), described from their models in :mod:`gateway.accounts.models`; they take no credential.

The docs page is plain HTML made on the server from the same document: no script, no stylesheet or font from
a CDN, so it works offline and under a strict Content-Security-Policy.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import __version__
from gateway.accounts.models import LoginBody, RefreshBody, SessionTokens
from gateway.admin.api import ENDPOINTS
from gateway.admin.models import (
    AllyError,
    AuthTest,
    Error,
    KeyId,
    KeyQuery,
    KeyRotate,
    NewKey,
    PageMeta,
    Rotation,
    models_for,
)
from gateway.config.settings import Settings
from gateway.errors import ErrorFormat, ReadOnlyEndpoint, error_format

REF = "#/components/schemas/{model}"

_ERROR_STATUSES = {
    "400": "The request could not be read (ambiguous path or framing, the client went away)",
    "401": "No credential, or one that is invalid, revoked or expired (`WWW-Authenticate: Bearer`)",
    "403": "The credential lacks the scope, the client address is not allowed, or no rule allows the call",
    "404": "No API key with this id (test keys never see live keys)",
    "409": "The change conflicts with the key's state (for example rotating a revoked key)",
    "410": "No value is held for this key: revealed already (once only), delivered to the rotation webhook, or "
           "returned when the key was made (`value_not_held`)",
    "413": "The body is larger than allowed",
    "422": "A field is missing, unknown or not what it may hold, or the body is not a JSON object (or not JSON at "
           "all): `error.field` names the field (`body` for the body as a whole)",
    "429": "Too many requests for this key (`Retry-After`), or too many failed attempts from this address",
    "503": "The key store or the rate limiter is unavailable, or the gateway is shutting down",
}

# The login endpoints (gateway.doors.login): path under the prefix, operation id, summary, body, the success
# answer (status, description, model or None for no content), and their refusals.
_ACCOUNT_OPERATIONS: tuple[tuple[str, str, str, str, tuple[str, str, str | None], dict[str, str]], ...] = (
    ("/auth/login", "login", "Log a dashboard user in: a JWT (24 hours at most) and a refresh token", "LoginBody",
     ("200", "Logged in", "SessionTokens"), {
         "401": "Wrong password, unknown address or disabled account: one answer (`invalid_credentials`)",
         "429": "Too many failed logins from this address or for this account (`Retry-After`)"}),
    ("/auth/refresh", "refreshSession", "A new JWT and the next refresh token for a refresh token (spent by it)",
     "RefreshBody", ("200", "A new JWT and the next refresh token", "SessionTokens"), {
         "401": "A refresh token that is unknown, spent, expired or revoked (`invalid_token`); presenting a spent "
                "one revokes its whole login"}),
    ("/auth/logout", "logout", "Log out: every refresh token of the login is revoked", "RefreshBody",
     ("204", "Logged out (also for a token that is unknown or revoked already)", None), {}),
)
_ACCOUNT_ERRORS = {
    "400": "The request could not be read (the client went away)",
    "422": "A field is missing or not a string, or the body is not a JSON object (`validation_error`)",
    "503": "The user store is unavailable, or the gateway is shutting down",
}


@dataclass(frozen=True, slots=True)
class _Operation:
    """What the document says of one handler of :data:`gateway.admin.api.ENDPOINTS`."""

    operation_id: str
    summary: str
    answer: tuple[str, str, str]  # status, description, the model (in components) of the success answer
    errors: tuple[str, ...] = ()  # error statuses particular to it
    body: str | None = None  # the model of the request body
    body_required: bool = False
    query: type[BaseModel] | None = None
    tag: str = "api-keys"
    description: str | None = None


_OPERATIONS = {
    "auth_test": _Operation(
        "authTest", "Who am I: the calling key (or JWT), its scopes and rate limit",
        ("200", "The credential is valid", "AuthTest"), tag="auth",
        description="Checks the credential without spending a request: a key's id, scopes, environment, expiry "
                    "and rotation state (or a JWT's subject), and its rate limit: the hourly window "
                    "(`rate_limit.limit`, `remaining`, `reset`; `999/1000` after one request of a standard key) "
                    "with the per-minute burst in `rate_limit.burst`. Takes an API key or, when `jwt.enabled`, a "
                    "dashboard JWT."),
    "list_keys": _Operation("listApiKeys", "List keys (never their values)", ("200", "One page of keys", "KeyPage"),
                            ("422",), query=KeyQuery),
    "create": _Operation("createApiKey", "Create a key; its value is in this answer only",
                         ("201", "Created", "KeyCreated"), ("409", "422"), body="KeyCreate", body_required=True),
    "get": _Operation("getApiKey", "One key", ("200", "The key", "ApiKey"), ("404",)),
    "update": _Operation("updateApiKey", "Change a key's name, scopes, allowlist, expiry...",
                         ("200", "The updated key", "ApiKey"), ("404", "409", "422"), body="KeyUpdate"),
    "revoke": _Operation("revokeApiKey", "Revoke a key (refused by every gateway within cache.ttl_seconds)",
                         ("200", "The revoked key", "ApiKey"), ("404", "409")),
    "rotate": _Operation("rotateApiKey", "Issue a replacement; the old key keeps working for the grace period",
                         ("200", "The old key's end and the new key (its value only here)", "Rotation"),
                         ("404", "409", "422"), body="KeyRotate"),
    "reveal": _Operation(
        "revealApiKey", "Reveal, once, the value an automatic rotation made for this key",
        ("200", "The key's value: shown in this answer only, then erased", "NewKey"), ("404", "410"),
        description="An automatic rotation (`auto_rotate`) makes a new key whose value nobody was there to "
                    "receive: the gateway holds it encrypted (`revealable: true`) until it is revealed here, "
                    "once. The caller needs `api-keys:write` and every permission of the key (it could rotate "
                    "it). A second call is 410 `value_not_held`."),
}


class _Schema(GenerateJsonSchema):
    """pydantic's JSON Schema, without a title on every property (the property's name says it)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def schemas(settings: Settings) -> dict[str, Any]:
    """``components.schemas``: every model the API reads or answers with under this configuration, the error
    body of its format as ``Error``."""
    m = models_for(settings)
    error = AllyError if settings.error_format == "deployally" else Error
    targets: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (m.create, "validation"), (m.update, "validation"), (KeyRotate, "validation"),
        (m.key, "serialization"), (m.created, "serialization"), (m.page, "serialization"),
        (Rotation, "serialization"), (NewKey, "serialization"), (AuthTest, "serialization"),
        (error, "serialization"),
    ]
    if settings.error_format == "deployally":
        targets.append((PageMeta, "serialization"))
    if settings.accounts.enabled:
        targets += [(LoginBody, "validation"), (RefreshBody, "validation"), (SessionTokens, "serialization")]
    _, top = models_json_schema(targets, ref_template=REF, schema_generator=_Schema)
    defs: dict[str, Any] = top["$defs"]
    defs["Error"] = defs.pop(error.__name__)
    return defs


def _query(model: type[BaseModel]) -> list[dict[str, Any]]:
    """One query parameter per field of ``model``."""
    out = []
    for name, schema in model.model_json_schema(schema_generator=_Schema)["properties"].items():
        param = {"name": name, "in": "query", "required": False, "schema": schema}
        if "description" in schema:
            param["description"] = schema.pop("description")
        out.append(param)
    return out


def build_openapi(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the management API under this configuration."""
    p = "" if settings.management.prefix == "/" else settings.management.prefix
    ally = settings.error_format == "deployally"
    error_ref = {"$ref": REF.format(model="Error")}

    def responses(op: _Operation) -> dict[str, Any]:
        status, description, model = op.answer
        schema: dict[str, Any] = {"$ref": REF.format(model=model)}
        if ally:
            success = {"type": "boolean", "enum": [True]}
            if model == "KeyPage":  # the list is `data` itself, its pagination beside it
                schema = {"type": "object", "required": ["success", "data", "meta"], "additionalProperties": False,
                          "properties": {"success": success, "data": {
                              "type": "array", "items": {"$ref": REF.format(model="ApiKey")}},
                              "meta": {"$ref": REF.format(model="PageMeta")}}}
            else:
                schema = {"type": "object", "required": ["success", "data"], "additionalProperties": False,
                          "properties": {"success": success, "data": schema}}
        out: dict[str, Any] = {status: {"description": description, "content": {"application/json": {
            "schema": schema}}}}
        for code in ("400", "401", "403", *op.errors, "413", "429", "503"):
            out[code] = {"description": _ERROR_STATUSES[code], "content": {"application/json": {"schema": error_ref}}}
        out["default"] = {"description": "Any other refusal (414, 431, 405, 502, ...), in the same shape",
                          "content": {"application/json": {"schema": error_ref}}}
        return out

    id_param = {"name": "id", "in": "path", "required": True, "schema": TypeAdapter(KeyId).json_schema(),
                "description": "the key's id (`key_...`), never its value"}
    paths: dict[str, Any] = {}
    for path, method, scope, handler in ENDPOINTS:
        meta = _OPERATIONS[handler]
        op: dict[str, Any] = {"operationId": meta.operation_id, "summary": meta.summary}
        if meta.description:
            op["description"] = meta.description
        op["security"] = [{"bearerAuth": [scope] if scope else []}]
        op["tags"] = [meta.tag]
        if meta.query is not None:
            op["parameters"] = _query(meta.query)
        if meta.body is not None:
            op["requestBody"] = {"required": meta.body_required, "content": {"application/json": {"schema": {
                "$ref": REF.format(model=meta.body)}}}}
        op["responses"] = responses(meta)
        item = paths.setdefault(p + path, {})
        if "{id}" in path:
            item["parameters"] = [id_param]
        item[method.lower()] = op
    if settings.accounts.enabled:
        paths.update(_account_paths(p, ally, error_ref))
    return {
        "openapi": "3.1.0",
        "info": {"title": "API-key gateway: management API", "version": __version__,
                 "description": "Keys are sent as `Authorization: Bearer <key>`. Every call passes the same gate "
                                "as proxied traffic: credential, IP allowlist, scopes, rate limit. " + (
                                    "The api-keys endpoints take API keys and dashboard JWTs "
                                    "(`management.allow_jwt`), a JWT no further than its own scopes."
                                    if settings.management.allow_jwt else
                                    "The api-keys endpoints take API keys only (`management.allow_jwt` is off): "
                                    "a JWT there is 401 `invalid_token`.")},
        "paths": paths,
        "components": {"schemas": schemas(settings), "securitySchemes": {"bearerAuth": {
            "type": "http", "scheme": "bearer", "bearerFormat": "API key (dep_live_...) or JWT"}}},
        "security": [{"bearerAuth": []}],
    }


def _account_paths(prefix: str, ally: bool, error_ref: dict[str, Any]) -> dict[str, Any]:
    """The login, refresh and logout operations (no credential: ``security: []``), in the format's envelope."""
    paths: dict[str, Any] = {}
    for path, operation_id, summary, body, (status, description, model), refusals in _ACCOUNT_OPERATIONS:
        answer: dict[str, Any] = {"description": description}
        if model is not None:
            schema: dict[str, Any] = {"$ref": REF.format(model=model)}
            if ally:
                schema = {"type": "object", "required": ["success", "data"], "additionalProperties": False,
                          "properties": {"success": {"type": "boolean", "enum": [True]}, "data": schema}}
            answer["content"] = {"application/json": {"schema": schema}}
        responses: dict[str, Any] = {status: answer}
        for code, text in sorted({**_ACCOUNT_ERRORS, **refusals}.items()):
            responses[code] = {"description": text, "content": {"application/json": {"schema": error_ref}}}
        responses["default"] = {"description": "Any other refusal (405 for another method, ...), in the same shape",
                                "content": {"application/json": {"schema": error_ref}}}
        paths[prefix + path] = {"post": {
            "operationId": operation_id, "summary": summary, "security": [], "tags": ["users"],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "$ref": REF.format(model=body)}}}},
            "responses": responses}}
    return paths


def docs_html(doc: dict[str, Any], spec_path: str) -> str:
    """A plain HTML rendering of ``doc``: every operation with its parameters, body and answers."""
    e = html.escape
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>", e(doc["info"]["title"]),
        "</title><style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "code,pre{background:#f4f4f4;padding:.1rem .3rem}pre{padding:.6rem;overflow:auto;font-size:13px}"
        "h3{margin-top:2rem;border-top:1px solid #ddd;padding-top:1rem}.m{font-weight:bold;color:#035}"
        "</style></head><body><h1>", e(doc["info"]["title"]), " <small>", e(doc["info"]["version"]),
        "</small></h1><p>", e(doc["info"]["description"]), "</p><p>Machine-readable: <a href=\"", e(spec_path),
        "\">", e(spec_path), "</a></p>",
    ]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            public = op.get("security") == []
            scopes = [s for req in op.get("security", []) for s in req.get("bearerAuth", [])]
            parts += ["<h3><span class=m>", method.upper(), "</span> <code>", e(path), "</code></h3><p>",
                      e(op["summary"]), "</p>"]
            if "description" in op:
                parts += ["<p>", e(op["description"]), "</p>"]
            parts += ["<p>Scope: ", e("none: no credential" if public else ", ".join(scopes) or "any valid credential"),
                      "</p>"]
            params = [*item.get("parameters", []), *op.get("parameters", [])]
            if params:
                parts.append("<p>Parameters:</p><ul>")
                for prm in params:
                    parts += ["<li><code>", e(prm["name"]), "</code> (", e(prm["in"]), ") <code>",
                              e(json.dumps(prm["schema"])), "</code></li>"]
                parts.append("</ul>")
            if "requestBody" in op:
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
                parts += ["<p>Body (JSON):</p><pre>", e(json.dumps(doc["components"]["schemas"][ref], indent=2)),
                          "</pre>"]
            parts.append("<p>Answers:</p><ul>")
            for status, resp in op["responses"].items():
                parts += ["<li><code>", e(status), "</code> ", e(resp["description"]), "</li>"]
            parts.append("</ul>")
    parts += ["<h3>Error shape</h3><pre>", e(json.dumps(doc["components"]["schemas"]["Error"], indent=2)),
              "</pre></body></html>"]
    return "".join(parts)


def _static(body: bytes, content_type: bytes, errors: ErrorFormat) -> ASGIApp:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-cache")]
    status, refused_headers, refused = errors.render(ReadOnlyEndpoint())

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await send({"type": "http.response.start", "status": status, "headers": refused_headers})
            await send({"type": "http.response.body", "body": refused})
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    return app


def openapi_routes(settings: Settings) -> dict[str, ASGIApp]:
    """``{openapi_path: the JSON document, docs_path: the HTML page}``, both built now."""
    doc = build_openapi(settings)
    ops = settings.ops
    spec = json.dumps(doc, separators=(",", ":")).encode()
    page = docs_html(doc, ops.openapi_path).encode()
    errors = error_format(settings.error_format, settings.messages)
    return {ops.openapi_path: _static(spec, b"application/json", errors),
            ops.docs_path: _static(page, b"text/html; charset=utf-8", errors)}

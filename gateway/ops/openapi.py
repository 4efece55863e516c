"""The management API described as OpenAPI 3.0, and a docs page rendered from it.

``GET {ops.openapi_path}`` (default ``/openapi.json``) and ``GET {ops.docs_path}`` (default ``/docs``) are
answered before the auth gate, without a credential, like the probes; ``ops.openapi_enabled: false`` turns
both off. The document follows the running configuration: paths under ``management.prefix``, the error
shape of ``error_format`` (deployERP ``{"error": {...}}`` or DeployAlly ``{"success": false, ...}``, whose
successful answers are also wrapped in ``{"success": true, "data": ...}``) and the name of the IP allowlist
field. Both bodies are built once, when the app is built.

The docs page is plain HTML made on the server from the same document: no script, no stylesheet or font from
a CDN, so it works offline and under a strict Content-Security-Policy.
"""

from __future__ import annotations

import html
import json
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import __version__
from gateway.policies import SCOPE_RE
from gateway.settings import Settings

_DATE = {"type": "string", "format": "date-time", "example": "2027-01-31T00:00:00Z"}
_NDATE = {**_DATE, "nullable": True}
_NSTR = {"type": "string", "nullable": True}
_STRINGS = {"type": "array", "items": {"type": "string"}}
# One window of a key's rate limit, as /auth/test reports it (gateway.ratelimit.stage.Applied.public).
_WINDOW_PROPS: dict[str, Any] = {
    "limit": {"type": "integer", "nullable": True, "description": "requests the window allows (null: unlimited)",
              "example": 1000},
    "remaining": {"type": "integer", "nullable": True, "description": "requests left in it now", "example": 999},
    "reset": {**_NDATE, "description": "when the window is full again"},
    "window": {"type": "string", "enum": ["hour", "minute"]},
}
_RATE_LIMIT = {
    "type": "object", "nullable": True, "required": ["limit", "remaining", "reset", "tier"],
    "description": "The key's rate limit (null when rate limits are off). `limit`, `remaining` and `reset` are "
                   "the tier's hourly window (its only window, for a tier that has one); `burst` is the "
                   "per-minute window beside it (null without one). Every field but `tier` is null for an "
                   "unlimited tier. Both windows are enforced; the answer's `X-RateLimit-*` headers describe "
                   "whichever has fewer requests left.",
    "properties": {
        **_WINDOW_PROPS, "tier": {"type": "string", "example": "standard"},
        "burst": {"type": "object", "nullable": True, "required": ["limit", "remaining", "reset", "window"],
                  "properties": _WINDOW_PROPS},
    },
}
_SCOPE = SCOPE_RE.pattern  # what a key may hold (gateway.policies.valid_scope)
_DURATION = r"^(0|[0-9]{1,10}[smhdw])$"  # gateway.settings.parse_duration
_ERROR_STATUSES = {
    "400": "The request could not be read (ambiguous path or framing, body not JSON, client went away)",
    "401": "No credential, or one that is invalid, revoked or expired (`WWW-Authenticate: Bearer`)",
    "403": "The credential lacks the scope, the client address is not allowed, or no rule allows the call",
    "404": "No API key with this id (test keys never see live keys)",
    "409": "The change conflicts with the key's state (for example rotating a revoked key)",
    "413": "The body is larger than allowed",
    "422": "A field is missing, unknown or of the wrong type; `error.field` names it",
    "429": "Too many requests for this key (`Retry-After`), or too many failed attempts from this address",
    "503": "The key store or the rate limiter is unavailable, or the gateway is shutting down",
}


def _error_schema(error_format: str) -> dict[str, Any]:
    if error_format == "deployally":
        return {
            "type": "object", "required": ["success", "error"],
            "properties": {
                "success": {"type": "boolean", "enum": [False]},
                "error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string", "example": "UNAUTHORIZED"},
                    "message": {"type": "string"},
                    "field": {"type": "string"},
                }},
            },
        }
    return {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message", "status"], "properties": {
            "code": {"type": "string", "example": "invalid_token"},
            "message": {"type": "string"},
            "status": {"type": "integer"},
            "field": {"type": "string"},
        }}},
    }


def _key_schema(ip_field: str) -> dict[str, Any]:
    props: dict[str, Any] = {
        "id": {"type": "string", "example": "key_a1B2c3D4e5F6"},
        "name": {"type": "string"},
        "hint": {"type": "string", "description": "the last four characters of the key, to tell keys apart"},
        "permissions": _STRINGS,
        ip_field: _STRINGS,
        "environment": {"type": "string", "enum": ["live", "test"]},
        "rate_limit_tier": _NSTR,
        "description": _NSTR,
        "status": {"type": "string", "enum": ["active", "expired", "revoked"]},
        "created_at": _DATE,
        "created_by": _NSTR,
        "expires_at": _NDATE,
        "revoked_at": _NDATE,
        "auto_rotate": {"type": "boolean"},
        "rotation_period": {**_NSTR, "example": "90d"},
        "rotation_due_at": _NDATE,
        "rotation_status": {"type": "string", "enum": ["ok", "due", "grace_period"]},
        "rotated_from": _NSTR,
        "replaced_by": _NSTR,
        "last_used_at": _NDATE,
        "last_used_ip": _NSTR,
        "request_count": {"type": "integer", "minimum": 0},
    }
    return {"type": "object", "required": ["id", "name", "permissions", "environment", "status", "created_at"],
            "properties": props}


def _body_schema(ip_field: str, create: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "permissions": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": _SCOPE},
                        "description": "scopes, each held by the caller (`servers:read`, `instances:*`)"},
        ip_field: {**_STRINGS, "description": "IP addresses or CIDR networks the key may be used from"},
        "expires_at": _NDATE,
        "rate_limit_tier": _NSTR,
        "auto_rotate": {"type": "boolean"},
        "rotation_period": {**_NSTR, "pattern": r"^0*[1-9][0-9]{0,9}[smhdw]$", "example": "90d"},
        "description": _NSTR,
    }
    if create:
        props["environment"] = {"type": "string", "enum": ["live", "test"]}
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if create:
        schema["required"] = ["name"]
    return schema


def build_openapi(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document of the management API under this configuration."""
    p = "" if settings.management.prefix == "/" else settings.management.prefix
    ally = settings.error_format == "deployally"
    ip_field = "allowed_ips" if ally else "ip_whitelist"

    def ok(schema: dict[str, Any], wrap: bool = True) -> dict[str, Any]:
        if ally and wrap:
            schema = {"type": "object", "required": ["success", "data"], "properties": {
                "success": {"type": "boolean", "enum": [True]}, "data": schema}}
        return {"content": {"application/json": {"schema": schema}}}

    def responses(success: str, description: str, schema: dict[str, Any], *errors: str,
                  wrap: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {success: {"description": description, **ok(schema, wrap)}}
        for status in ("400", "401", "403", *errors, "413", "429", "503"):
            out[status] = {"description": _ERROR_STATUSES[status], "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        out["default"] = {"description": "Any other refusal (414, 431, 405, 502, ...), in the same shape",
                          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        return out

    key = {"$ref": "#/components/schemas/ApiKey"}
    id_param = {"name": "id", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "description": "the key's id (`key_...`), never its value"}

    def body(ref: str, required: bool = True) -> dict[str, Any]:
        return {"required": required, "content": {"application/json": {"schema": {"$ref": ref}}}}

    read, write = [{"bearerAuth": ["api-keys:read"]}], [{"bearerAuth": ["api-keys:write"]}]
    paths: dict[str, Any] = {
        f"{p}/auth/test": {"get": {
            "operationId": "authTest", "summary": "Who am I: the calling key (or JWT), its scopes and rate limit",
            "description": "Checks the credential without spending a request: a key's id, scopes, environment, "
                           "expiry and rotation state (or a JWT's subject), and its rate limit: the hourly window "
                           "(`rate_limit.limit`, `remaining`, `reset`; `999/1000` after one request of a standard "
                           "key) with the per-minute burst in `rate_limit.burst`. Takes an API key or, when "
                           "`jwt.enabled`, a dashboard JWT.",
            "security": [{"bearerAuth": []}], "tags": ["auth"],
            "responses": responses("200", "The credential is valid", {"$ref": "#/components/schemas/AuthTest"},
                                   wrap=False),
        }},
        f"{p}/api-keys": {
            "get": {
                "operationId": "listApiKeys", "summary": "List keys (never their values)", "security": read,
                "tags": ["api-keys"],
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500,
                                                                "default": 50}},
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                 "maximum": 10**9, "default": 0}},
                    {"name": "environment", "in": "query", "schema": {"type": "string", "enum": ["live", "test"]}},
                    {"name": "status", "in": "query",
                     "schema": {"type": "string", "enum": ["active", "expired", "revoked"]}},
                ],
                "responses": responses("200", "One page of keys", {"$ref": "#/components/schemas/KeyPage"}, "422"),
            },
            "post": {
                "operationId": "createApiKey", "summary": "Create a key; its value is in this answer only",
                "security": write, "tags": ["api-keys"], "requestBody": body("#/components/schemas/KeyCreate"),
                "responses": responses("201", "Created", {"allOf": [key, {"type": "object", "required": ["value"],
                                       "properties": {"value": {"type": "string"}}}]}, "409", "422"),
            },
        },
        f"{p}/api-keys/{{id}}": {
            "parameters": [id_param],
            "get": {"operationId": "getApiKey", "summary": "One key", "security": read, "tags": ["api-keys"],
                    "responses": responses("200", "The key", key, "404")},
            "patch": {"operationId": "updateApiKey", "summary": "Change a key's name, scopes, allowlist, expiry...",
                      "security": write, "tags": ["api-keys"],
                      "requestBody": body("#/components/schemas/KeyUpdate", required=False),
                      "responses": responses("200", "The updated key", key, "404", "409", "422")},
            "delete": {"operationId": "revokeApiKey", "summary": "Revoke a key (refused by every gateway within "
                       "cache.ttl_seconds)", "security": write, "tags": ["api-keys"],
                       "responses": responses("200", "The revoked key", key, "404", "409")},
        },
        f"{p}/api-keys/{{id}}/rotate": {
            "parameters": [id_param],
            "post": {"operationId": "rotateApiKey", "summary": "Issue a replacement; the old key keeps working for "
                     "the grace period", "security": write, "tags": ["api-keys"],
                     "requestBody": body("#/components/schemas/Rotate", required=False),
                     "responses": responses("200", "The old key's end and the new key (its value only here)",
                                            {"$ref": "#/components/schemas/Rotation"}, "404", "409", "422")},
        },
    }
    schemas: dict[str, Any] = {
        "Error": _error_schema(settings.error_format),
        "ApiKey": _key_schema(ip_field),
        "KeyCreate": _body_schema(ip_field, create=True),
        "KeyUpdate": _body_schema(ip_field, create=False),
        "KeyPage": {"type": "object", "required": ["data", "pagination"], "properties": {
            "data": {"type": "array", "items": key},
            "pagination": {"type": "object", "required": ["limit", "offset", "next_offset"], "properties": {
                "limit": {"type": "integer"}, "offset": {"type": "integer"},
                "next_offset": {"type": "integer", "nullable": True}}},
        }},
        "Rotate": {"type": "object", "additionalProperties": False, "properties": {
            "grace_period": {"oneOf": [{"type": "string", "pattern": _DURATION, "example": "7d"},
                                       {"type": "integer", "minimum": 0, "maximum": 36500 * 86400}],
                             "description": "how long the old key keeps working: 7d, 12h, 0"}}},
        "Rotation": {"type": "object", "required": ["old_key", "new_key"], "properties": {
            "old_key": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"},
                                                                              "expires_at": _NDATE}},
            "new_key": {"type": "object", "required": ["id", "value"], "properties": {
                "id": {"type": "string"}, "value": {"type": "string"}, "created_at": _DATE}},
        }},
        "AuthTest": {"type": "object", "required": ["authenticated"], "properties": {
            "authenticated": {"type": "boolean"},
            "key_id": _NSTR, "name": {"type": "string"}, "permissions": _STRINGS,
            "environment": {"type": "string"}, "expires_at": _NDATE, "subject": {"type": "string"},
            "credential": {"type": "string"},
            "rotation": {"type": "object", "properties": {"status": {"type": "string"},
                                                          "rotation_due_at": _NDATE, "replaced_by": _NSTR}},
            "rate_limit": _RATE_LIMIT,
        }},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "API-key gateway: management API", "version": __version__,
                 "description": "Keys are sent as `Authorization: Bearer <key>`. Every call passes the same gate "
                                "as proxied traffic: credential, IP allowlist, scopes, rate limit. " + (
                                    "The api-keys endpoints take API keys and dashboard JWTs "
                                    "(`management.allow_jwt`), a JWT no further than its own scopes."
                                    if settings.management.allow_jwt else
                                    "The api-keys endpoints take API keys only (`management.allow_jwt` is off): "
                                    "a JWT there is 401 `invalid_token`.")},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearerAuth": {
            "type": "http", "scheme": "bearer", "bearerFormat": "API key (dep_live_...) or JWT"}}},
        "security": [{"bearerAuth": []}],
    }


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
            scopes = [s for req in op.get("security", []) for s in req.get("bearerAuth", [])]
            parts += ["<h3><span class=m>", method.upper(), "</span> <code>", e(path), "</code></h3><p>",
                      e(op["summary"]), "</p>"]
            if "description" in op:
                parts += ["<p>", e(op["description"]), "</p>"]
            parts += ["<p>Scope: ", e(", ".join(scopes) or "any valid credential"), "</p>"]
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


def _static(body: bytes, content_type: bytes) -> ASGIApp:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-cache")]
    refused = b'{"status":"error","reason":"use GET or HEAD"}'

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await send({"type": "http.response.start", "status": 405, "headers": [
                (b"content-type", b"application/json"), (b"allow", b"GET, HEAD"),
                (b"content-length", str(len(refused)).encode())]})
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
    return {ops.openapi_path: _static(spec, b"application/json"),
            ops.docs_path: _static(page, b"text/html; charset=utf-8")}

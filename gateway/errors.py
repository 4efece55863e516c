"""Every answer the gateway gives on its own behalf, in the two error formats of the platforms it fronts.

    GatewayError
     +-- AuthenticationRequired   401 authentication_required / UNAUTHORIZED
     +-- InvalidToken             401 invalid_token           / UNAUTHORIZED  (revoked, JWT, malformed: variants)
     +-- ExpiredToken             401 expired_token           / UNAUTHORIZED  (ExpiredJWT for a JWT)
     +-- InsufficientPermissions  403 insufficient_permissions/ FORBIDDEN
     +-- IPRestricted             403 ip_restricted           / FORBIDDEN
     +-- BadRequest               400 invalid_request         / BAD_REQUEST
     +-- UpstreamUnavailable      502 upstream_unavailable    / BAD_GATEWAY
     +-- UpstreamTimeout          504 upstream_timeout        / GATEWAY_TIMEOUT
     +-- RateLimited              429 rate_limit_exceeded     / RATE_LIMITED (with Retry-After)
     +-- RateLimitUnavailable     503 rate_limit_unavailable  / SERVICE_UNAVAILABLE (with Retry-After)
     +-- StoreUnavailable         503 store_unavailable       / SERVICE_UNAVAILABLE
     ... and the rest below (404, 405, 408, 409, 413, 414, 422, 431)

deployERP:  {"error": {"code": ..., "message": ..., "status": ...}}
DeployAlly: {"success": false, "error": {"code": ..., "message": ...}}

A class gives the status and both platforms' codes; its ``message_id`` names the words, which live in the
message catalogues (gateway/messages/: English for deployERP, Portuguese for DeployAlly). A variant of a code is
a subclass with its own id (``NotBearer``: ``invalid_token.malformed_scheme``); an answer whose words take values
(a validation problem's field, a conflicting key's id) is raised with an id and those values. No message is
written here, and none ever echoes a credential or other client input.

:class:`ErrorFormat` is one format with its catalogue and the operator's ``messages`` overrides, made once at
start-up: the body and headers of every answer without values are rendered then, so a refusal costs a lookup.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from gateway import messages

Header = tuple[bytes, bytes]

_NO_PARAMS: Mapping[str, object] = MappingProxyType({})


class GatewayError(Exception):
    status: int = 500
    code: str = "internal_error"
    ally_code: str = "INTERNAL_ERROR"
    # The catalogue entry of the answer's words: the code, or the code and a variant. A subclass that sets its own
    # ``code`` and no ``message_id`` gets its code as its id.
    message_id: str = "internal_error"
    # RFC 6750 error attribute of WWW-Authenticate, for 401 answers.
    bearer_error: str | None = None
    # The request field at fault, for validation errors.
    field: str | None = None
    # Values for the placeholders of the message (``{where}``, ``{key_id}``...).
    params: Mapping[str, object] = _NO_PARAMS
    # Headers this answer carries beyond the common ones (Allow, Retry-After, rate-limit headers).
    extra_headers: Sequence[Header] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__ and "message_id" not in cls.__dict__:
            cls.message_id = cls.code

    def __init__(self, message_id: str | None = None, *, field: str | None = None, **params: object) -> None:
        if message_id is not None:
            if message_id not in messages.ids():
                raise ValueError(f"no message {message_id!r} in the catalogues (gateway/messages/)")
            self.message_id = message_id
        if field is not None:
            self.field = field
        if params:
            self.params = params
        super().__init__(self.message_id)

    def __str__(self) -> str:
        return self.message

    @property
    def message(self) -> str:
        """The English words of this answer (deployERP's catalogue, without overrides): logs and the CLI."""
        return _format(messages.ENGLISH).text(self)

    @property
    def ally_message(self) -> str:
        """The Portuguese words of this answer (DeployAlly's catalogue, without overrides)."""
        return _format("deployally").text(self)

    def body(self, error_format: ErrorFormat | str) -> bytes:
        return _format(error_format).body(self)


class ErrorFormat:
    """One error format (``deployerp`` or ``deployally``) with its words: the shipped catalogue with the
    operator's overrides over it. Made once, at start-up (:func:`error_format`); :meth:`render` answers an
    error in it, from a body and headers made ahead for every answer that carries no values."""

    __slots__ = ("name", "ally", "texts", "_ready")

    def __init__(self, name: str, overrides: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.ally = name == "deployally"
        self.texts: Mapping[str, str] = MappingProxyType({**messages.catalogue(name), **(overrides or {})})
        self._ready: dict[type[GatewayError], tuple[bytes, tuple[Header, ...]]] = {}
        for cls in every_error_class():
            self._prepare(cls)

    def text(self, error: GatewayError) -> str:
        template = self.texts.get(error.message_id)
        if template is None:
            template = self._foreign(type(error))
        return messages.fill(template, error.params)

    def _foreign(self, cls: type[GatewayError]) -> str:
        """The words of an application's own subclass (``AuthMiddleware`` answers those too) whose id no
        catalogue has: its own ``message`` / ``ally_message`` texts when it gives them, else its nearest
        ancestor's catalogue entry."""
        for name in ("ally_message", "message") if self.ally else ("message",):
            own = getattr(cls, name, None)
            if isinstance(own, str) and own:
                return own
        for base in cls.__mro__[1:]:
            found = self.texts.get(getattr(base, "message_id", ""))
            if found is not None:
                return found
        return self.texts["internal_error"]

    def body(self, error: GatewayError) -> bytes:
        message = self.text(error)
        if self.ally:
            err: dict[str, object] = {"code": error.ally_code, "message": message}
            doc: dict[str, object] = {"success": False, "error": err}
        else:
            err = {"code": error.code, "message": message, "status": error.status}
            doc = {"error": err}
        if error.field is not None:
            err["field"] = error.field
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

    def _head(self, error: GatewayError, body: bytes) -> tuple[Header, ...]:
        out: list[Header] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        if error.status == 401:
            if error.bearer_error is None:
                # RFC 6750 3.1: a request with no credentials gets no error attribute.
                out.append((b"www-authenticate", b'Bearer realm="api"'))
            else:
                desc = messages.header_text(self.text(error))
                out.append((b"www-authenticate",
                            f'Bearer realm="api", error="{error.bearer_error}", error_description="{desc}"'.encode()))
        return tuple(out)

    def _prepare(self, cls: type[GatewayError]) -> tuple[bytes, tuple[Header, ...]]:
        plain = cls.__new__(cls)  # the class's own answer: no field, no values
        body = self.body(plain)
        ready = self._ready[cls] = (body, self._head(plain, body))
        return ready

    def render(self, error: GatewayError, extra: Sequence[Header] = ()) -> tuple[int, list[Header], bytes]:
        """The status, headers and body of ``error`` in this format, with ``extra`` headers added."""
        cls = error.__class__
        if error.field is None and error.params is _NO_PARAMS and error.message_id == cls.message_id:
            body, head = self._ready.get(cls) or self._prepare(cls)
        else:
            body = self.body(error)
            head = self._head(error, body)
        return error.status, [*head, *error.extra_headers, *extra], body


def every_error_class() -> Iterator[type[GatewayError]]:
    """GatewayError and every subclass defined so far."""
    todo: list[type[GatewayError]] = [GatewayError]
    while todo:
        cls = todo.pop()
        yield cls
        todo.extend(cls.__subclasses__())


_FORMATS: dict[tuple[str, tuple[tuple[str, str], ...]], ErrorFormat] = {}


def error_format(name: str, overrides: Mapping[str, str] | None = None) -> ErrorFormat:
    """The :class:`ErrorFormat` of ``name`` with ``overrides`` (the ``messages`` setting): made once per
    configuration, shared by every front door of the process."""
    key = (name, tuple(sorted((overrides or {}).items())))
    found = _FORMATS.get(key)
    if found is None:
        found = _FORMATS[key] = ErrorFormat(name, overrides)
    return found


def _format(fmt: ErrorFormat | str) -> ErrorFormat:
    return fmt if isinstance(fmt, ErrorFormat) else error_format(fmt)


def render(
    error: GatewayError, error_format: ErrorFormat | str, extra_headers: Sequence[Header] = ()
) -> tuple[int, list[Header], bytes]:
    """``error`` answered in ``error_format`` (an :class:`ErrorFormat`, or a format's name: its shipped words)."""
    return _format(error_format).render(error, extra_headers)


# --- 401 -----------------------------------------------------------------------------------------------------------


class AuthenticationRequired(GatewayError):
    status, code, ally_code = 401, "authentication_required", "UNAUTHORIZED"


class InvalidToken(GatewayError):
    status, code, ally_code = 401, "invalid_token", "UNAUTHORIZED"
    bearer_error = "invalid_token"


class RevokedKey(InvalidToken):
    """A key that was revoked: only its holder can send it, so saying so tells no one else anything."""

    message_id = "invalid_token.revoked"


class JWTNotAccepted(InvalidToken):
    """A JWT on a route whose ``credentials`` do not list ``jwt``: the policy's API-key routes, and the
    key-management API unless ``management.allow_jwt``."""

    message_id = "invalid_token.jwt_not_accepted"


class APIKeyNotAccepted(InvalidToken):
    """An API key on a route whose ``credentials`` list only ``jwt``."""

    message_id = "invalid_token.api_key_not_accepted"


class MalformedAuthorization(InvalidToken):
    """An ``Authorization`` header that is not ``Bearer <token68>`` (RFC 9110 11.4, RFC 6750 2.1). The code stays
    ``invalid_token``; the message, one per problem, says what is wrong and the form expected."""

    message_id = "invalid_token.malformed"


class NotBearer(MalformedAuthorization):
    message_id = "invalid_token.malformed_scheme"


class BearerWithoutSpace(MalformedAuthorization):
    message_id = "invalid_token.bearer_without_space"


class NotOneToken(MalformedAuthorization):
    message_id = "invalid_token.not_one_token"


class CredentialCharacters(MalformedAuthorization):
    message_id = "invalid_token.credential_characters"


class CredentialTooLong(MalformedAuthorization):
    message_id = "invalid_token.credential_too_long"


class TwoAuthorizations(InvalidToken):
    message_id = "invalid_token.two_authorizations"


class InvalidJWT(InvalidToken):
    """A token shaped like a JWT that does not verify (signature, claims, shape): every way is one answer."""

    message_id = "invalid_token.jwt"


class JWTNotYetValid(InvalidJWT):
    message_id = "invalid_token.jwt_not_yet_valid"


class JWTAlgorithm(InvalidJWT):
    message_id = "invalid_token.jwt_algorithm"


class JWTNoKeyId(InvalidJWT):
    message_id = "invalid_token.jwt_no_key_id"


class JWTNoKey(InvalidJWT):
    message_id = "invalid_token.jwt_no_key"


class InvalidRefreshToken(InvalidToken):
    """A refresh token that is unknown, spent, expired or revoked (gateway.accounts): every way is one answer."""

    message_id = "invalid_token.refresh"


class InvalidCredentials(GatewayError):
    """A login whose e-mail address or password is wrong (or whose account is disabled): one answer for all, so
    it never tells whether an address has an account."""

    status, code, ally_code = 401, "invalid_credentials", "UNAUTHORIZED"


class ExpiredToken(GatewayError):
    status, code, ally_code = 401, "expired_token", "UNAUTHORIZED"
    bearer_error = "invalid_token"


class ExpiredJWT(ExpiredToken):
    message_id = "expired_token.jwt"


# --- 403 -----------------------------------------------------------------------------------------------------------


class InsufficientPermissions(GatewayError):
    status, code, ally_code = 403, "insufficient_permissions", "FORBIDDEN"


class JWTLacksScope(InsufficientPermissions):
    message_id = "insufficient_permissions.jwt"


class NoPolicyRule(InsufficientPermissions):
    """A path and method no policy rule names: refused whatever the credential holds."""

    message_id = "insufficient_permissions.no_rule"


class LiveKeyFromTestKey(InsufficientPermissions):
    message_id = "insufficient_permissions.test_key"


class CannotGrant(InsufficientPermissions):
    """A key may not give (or manage a key holding) a scope it does not hold itself; ``scope`` names it."""

    message_id = "insufficient_permissions.cannot_grant"

    def __init__(self, scope: str) -> None:
        super().__init__(scope=scope)


class RoleCannotGrant(InsufficientPermissions):
    """A dashboard user may not give a key a scope the user's role does not hold; ``scope`` names it."""

    message_id = "insufficient_permissions.role_cannot_grant"

    def __init__(self, scope: str) -> None:
        super().__init__(scope=scope)


class IPRestricted(GatewayError):
    status, code, ally_code = 403, "ip_restricted", "FORBIDDEN"


class EnvironmentUnavailable(GatewayError):
    status, code, ally_code = 403, "environment_unavailable", "FORBIDDEN"


# --- 400 -----------------------------------------------------------------------------------------------------------


class BadRequest(GatewayError):
    status, code, ally_code = 400, "invalid_request", "BAD_REQUEST"


class FramingError(BadRequest):
    message_id = "invalid_request.framing"


class NotHTTP(FramingError):
    message_id = "invalid_request.not_http"


class TargetNotOriginForm(BadRequest):
    message_id = "invalid_request.target"


class HTTPVersionNotSupported(BadRequest):
    message_id = "invalid_request.http_version"


class ClientGone(BadRequest):
    message_id = "invalid_request.client_gone"


# --- 404, 405, 408, 409, 413, 414, 422, 431 --------------------------------------------------------------------------


class NotFound(GatewayError):
    status, code, ally_code = 404, "not_found", "NOT_FOUND"


class KeyNotFound(NotFound):
    message_id = "not_found.key"


class UserNotFound(NotFound):
    message_id = "not_found.user"


class MethodNotAllowed(GatewayError):
    status, code, ally_code = 405, "method_not_allowed", "METHOD_NOT_ALLOWED"
    extra_headers = ((b"allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),)


class ConnectNotAllowed(MethodNotAllowed):
    message_id = "method_not_allowed.connect"


class PostOnlyEndpoint(MethodNotAllowed):
    """The gateway's login, refresh and logout endpoints (gateway.accounts): POST only."""

    message_id = "method_not_allowed.post_only"
    extra_headers = ((b"allow", b"POST"),)


class ReadOnlyEndpoint(MethodNotAllowed):
    """The gateway's own documents (the OpenAPI document, its page, the metrics): GET and HEAD only."""

    message_id = "method_not_allowed.read_only"
    extra_headers = ((b"allow", b"GET, HEAD"),)


class RequestTimeout(GatewayError):
    status, code, ally_code = 408, "request_timeout", "REQUEST_TIMEOUT"


class BodyTimeout(RequestTimeout):
    message_id = "request_timeout.body"


class ConflictError(GatewayError):
    """The change does not apply to the key as it is now: raised with the id of the store's
    :class:`gateway.keys.store.Conflict` and its values (the successor's id)."""

    status, code, ally_code = 409, "conflict", "CONFLICT"


class PayloadTooLarge(GatewayError):
    status, code, ally_code = 413, "payload_too_large", "PAYLOAD_TOO_LARGE"


class URITooLong(GatewayError):
    status, code, ally_code = 414, "uri_too_long", "URI_TOO_LONG"


class ValidationFailed(GatewayError):
    """A request field that is not what it may hold: raised with a ``validation_error.*`` id, the ``field`` and
    the values of its message (``where``: the field as documented, ``permissions[1]`` for an item)."""

    status, code, ally_code = 422, "validation_error", "VALIDATION_ERROR"


class HeadersTooLarge(GatewayError):
    status, code, ally_code = 431, "headers_too_large", "HEADERS_TOO_LARGE"


# --- 429 -----------------------------------------------------------------------------------------------------------


class RateLimited(GatewayError):
    """Over the key's rate limit. Carries the rate-limit headers of the answer (Retry-After among them)."""

    status, code, ally_code = 429, "rate_limit_exceeded", "RATE_LIMITED"

    def __init__(self, extra_headers: Sequence[Header] = ()) -> None:
        super().__init__()
        self.extra_headers = list(extra_headers)


class TooManyFailures(GatewayError):
    """Too many failed authentications from this client address: refused until the cool-down ends."""

    status, code, ally_code = 429, "too_many_failed_attempts", "TOO_MANY_REQUESTS"

    def __init__(self, retry_after: float) -> None:
        super().__init__()
        self.retry_after = max(1, int(retry_after + 0.999))
        self.extra_headers = ((b"retry-after", str(self.retry_after).encode()),)


class TooManyLogins(TooManyFailures):
    """Too many failed logins from this client address, or for this account (the answer does not say which)."""

    message_id = "too_many_failed_attempts.login"


# --- 5xx -----------------------------------------------------------------------------------------------------------


class UpstreamUnavailable(GatewayError):
    status, code, ally_code = 502, "upstream_unavailable", "BAD_GATEWAY"


class UpstreamTimeout(GatewayError):
    status, code, ally_code = 504, "upstream_timeout", "GATEWAY_TIMEOUT"


class ServiceUnavailable(GatewayError):
    status, code, ally_code = 503, "service_unavailable", "SERVICE_UNAVAILABLE"


class Overloaded(ServiceUnavailable):
    message_id = "service_unavailable.connection_limit"
    extra_headers = ((b"retry-after", b"1"),)


class RateLimitUnavailable(GatewayError):
    """The shared rate limiter (Redis) did not answer in time and ``on_store_error`` is ``deny``."""

    status, code, ally_code = 503, "rate_limit_unavailable", "SERVICE_UNAVAILABLE"
    extra_headers = ((b"retry-after", b"1"),)


class StoreUnavailable(GatewayError):
    """The key store (SQLite file or Redis) could not be read or written: a key lookup at the gate, or any
    call of the management API. The log line says what failed; the answer never does."""

    status, code, ally_code = 503, "store_unavailable", "SERVICE_UNAVAILABLE"


class ValueNotHeld(GatewayError):
    """``POST .../api-keys/{id}/reveal`` of a key whose value is not held: revealed already (a value is revealed
    once), delivered to the rotation webhook, or never held (a key made by a person got its value then)."""

    status, code, ally_code = 410, "value_not_held", "GONE"

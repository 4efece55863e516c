"""Every answer the gateway gives on its own behalf, in the two error formats of the platforms it fronts.

    GatewayError
     +-- AuthenticationRequired   401 authentication_required / UNAUTHORIZED
     +-- InvalidToken             401 invalid_token           / UNAUTHORIZED
     |    +-- MalformedAuthorization  (not ``Bearer <token>``: the message says what is wrong, see gateway.gate.bearer)
     +-- ExpiredToken             401 expired_token           / UNAUTHORIZED
     +-- InsufficientPermissions  403 insufficient_permissions/ FORBIDDEN
     +-- IPRestricted             403 ip_restricted           / FORBIDDEN
     +-- BadRequest               400 invalid_request         / BAD_REQUEST
     +-- UpstreamUnavailable      502 upstream_unavailable    / BAD_GATEWAY
     +-- UpstreamTimeout          504 upstream_timeout        / GATEWAY_TIMEOUT
     +-- RateLimited              429 rate_limit_exceeded     / RATE_LIMITED (with Retry-After)
     +-- RateLimitUnavailable     503 rate_limit_unavailable  / SERVICE_UNAVAILABLE (with Retry-After)
     +-- StoreUnavailable         503 store_unavailable       / SERVICE_UNAVAILABLE

deployERP:  {"error": {"code": ..., "message": ..., "status": ...}}
DeployAlly: {"success": false, "error": {"code": ..., "message": ...}}

Messages are fixed strings: no error ever echoes a credential or other client input.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

Header = tuple[bytes, bytes]


class GatewayError(Exception):
    status: int = 500
    code: str = "internal_error"
    ally_code: str = "INTERNAL_ERROR"
    message: str = "Internal error"
    ally_message: str = "Erro interno"
    # RFC 6750 error attribute of WWW-Authenticate, for 401 answers.
    bearer_error: str | None = None
    # The request field at fault, for validation errors.
    field: str | None = None
    # Headers this answer carries beyond the common ones (Allow, Retry-After, rate-limit headers).
    extra_headers: Sequence[Header] = ()

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        if message is not None:
            self.message = message
            self.ally_message = message
        if field is not None:
            self.field = field
        super().__init__(self.message)

    def www_authenticate(self) -> bytes | None:
        if self.status != 401:
            return None
        if self.bearer_error is None:
            # RFC 6750 3.1: a request with no credentials gets no error attribute.
            return b'Bearer realm="api"'
        desc = self.message.replace('"', "'")
        return f'Bearer realm="api", error="{self.bearer_error}", error_description="{desc}"'.encode()

    def body(self, error_format: str) -> bytes:
        if error_format == "deployally":
            err: dict[str, object] = {"code": self.ally_code, "message": self.ally_message}
            doc: dict[str, object] = {"success": False, "error": err}
        else:
            err = {"code": self.code, "message": self.message, "status": self.status}
            doc = {"error": err}
        if self.field is not None:
            err["field"] = self.field
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

    def headers(self, error_format: str, body: bytes) -> list[Header]:
        out: list[Header] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        www = self.www_authenticate()
        if www is not None:
            out.append((b"www-authenticate", www))
        out.extend(self.extra_headers)
        return out


class AuthenticationRequired(GatewayError):
    status, code, ally_code = 401, "authentication_required", "UNAUTHORIZED"
    message = "No authentication token provided"
    ally_message = "API Key inválida ou não fornecida"


class InvalidToken(GatewayError):
    status, code, ally_code = 401, "invalid_token", "UNAUTHORIZED"
    message = "The authentication token is invalid or has been revoked"
    ally_message = "API Key inválida ou não fornecida"
    bearer_error = "invalid_token"


class JWTNotAccepted(InvalidToken):
    """A JWT on a route whose ``credentials`` do not list ``jwt``: the policy's API-key routes, and the
    key-management API unless ``management.allow_jwt``."""

    message = "This endpoint takes an API key, not a JWT"
    ally_message = "Este endpoint aceita apenas API Key, não JWT"


class APIKeyNotAccepted(InvalidToken):
    """An API key on a route whose ``credentials`` list only ``jwt``."""

    message = "This endpoint takes a JWT, not an API key"
    ally_message = "Este endpoint aceita apenas JWT, não API Key"


_EXPECTED = "expected: Authorization: Bearer <key>"
_ESPERADO = "formato esperado: Authorization: Bearer <key>"


class MalformedAuthorization(InvalidToken):
    """An ``Authorization`` header that is not ``Bearer <token68>`` (RFC 9110 11.4, RFC 6750 2.1). The code stays
    ``invalid_token``; the message, one fixed string per problem, says what is wrong and the form expected."""

    message = f"The Authorization header is malformed; {_EXPECTED}"
    ally_message = f"O header Authorization está malformado; {_ESPERADO}"


class NotBearer(MalformedAuthorization):
    message = f"The Authorization scheme is not Bearer; {_EXPECTED}"
    ally_message = f"O esquema do header Authorization não é Bearer; {_ESPERADO}"


class BearerWithoutSpace(MalformedAuthorization):
    message = f"Bearer must be followed by a space and the key; {_EXPECTED}"
    ally_message = f"Bearer deve ser seguido de um espaço e da key; {_ESPERADO}"


class NotOneToken(MalformedAuthorization):
    message = f"The Authorization header must carry exactly one key after Bearer, without spaces, tabs or commas; " \
        f"{_EXPECTED}"
    ally_message = f"O header Authorization deve trazer uma única key após Bearer, sem espaços, tabs nem " \
        f"vírgulas; {_ESPERADO}"


class CredentialCharacters(MalformedAuthorization):
    message = ("The credential has characters no key or token has (ASCII letters, digits and -._~+/= only); "
               + _EXPECTED)
    ally_message = ("A credencial tem caracteres que nenhuma key ou token tem (apenas letras e dígitos ASCII e "
                    "-._~+/=); " + _ESPERADO)


class CredentialTooLong(MalformedAuthorization):
    message = f"The Authorization header is longer than 8192 bytes; {_EXPECTED}"
    ally_message = f"O header Authorization passa de 8192 bytes; {_ESPERADO}"


class TwoAuthorizations(InvalidToken):
    message = "More than one Authorization header was sent"
    ally_message = "Mais de um header Authorization foi enviado"


class ExpiredToken(GatewayError):
    status, code, ally_code = 401, "expired_token", "UNAUTHORIZED"
    message = "The authentication token has expired"
    ally_message = "API Key expirada"
    bearer_error = "invalid_token"


class InsufficientPermissions(GatewayError):
    status, code, ally_code = 403, "insufficient_permissions", "FORBIDDEN"
    message = "The API key does not have permission for this resource"
    ally_message = "API Key não tem permissão para este recurso"


class IPRestricted(GatewayError):
    status, code, ally_code = 403, "ip_restricted", "FORBIDDEN"
    message = "Requests from this IP address are not allowed for this API key"
    ally_message = "Endereço IP não permitido para esta API Key"


class BadRequest(GatewayError):
    status, code, ally_code = 400, "invalid_request", "BAD_REQUEST"
    message = "The request is malformed"
    ally_message = "Requisição malformada"


class UpstreamUnavailable(GatewayError):
    status, code, ally_code = 502, "upstream_unavailable", "BAD_GATEWAY"
    message = "The upstream service is unavailable"
    ally_message = "Serviço indisponível"


class UpstreamTimeout(GatewayError):
    status, code, ally_code = 504, "upstream_timeout", "GATEWAY_TIMEOUT"
    message = "The upstream service did not answer in time"
    ally_message = "O serviço não respondeu a tempo"


class NotFound(GatewayError):
    status, code, ally_code = 404, "not_found", "NOT_FOUND"
    message = "Not found"
    ally_message = "Não encontrado"


class ValidationFailed(GatewayError):
    status, code, ally_code = 422, "validation_error", "VALIDATION_ERROR"
    message = "The request body is invalid"
    ally_message = "Dados inválidos"


class ConflictError(GatewayError):
    status, code, ally_code = 409, "conflict", "CONFLICT"
    message = "The key cannot be changed in its current state"
    ally_message = "A key não pode ser alterada no estado atual"


class EnvironmentUnavailable(GatewayError):
    status, code, ally_code = 403, "environment_unavailable", "FORBIDDEN"
    message = "Test keys cannot be used here: no test environment is configured"
    ally_message = "Keys de teste não podem ser usadas aqui"


class ServiceUnavailable(GatewayError):
    status, code, ally_code = 503, "service_unavailable", "SERVICE_UNAVAILABLE"
    message = "The service is temporarily unavailable"
    ally_message = "Serviço temporariamente indisponível"


class RateLimited(GatewayError):
    """Over the key's rate limit. Carries the rate-limit headers of the answer (Retry-After among them)."""

    status, code, ally_code = 429, "rate_limit_exceeded", "RATE_LIMITED"
    message = "Rate limit exceeded; retry after the time given in Retry-After"
    ally_message = "Limite de requisições excedido; tente novamente após o tempo indicado em Retry-After"

    def __init__(self, extra_headers: Sequence[Header] = ()) -> None:
        super().__init__()
        self.extra_headers = list(extra_headers)


class RateLimitUnavailable(GatewayError):
    """The shared rate limiter (Redis) did not answer in time and ``on_store_error`` is ``deny``."""

    status, code, ally_code = 503, "rate_limit_unavailable", "SERVICE_UNAVAILABLE"
    message = "The rate limiter is temporarily unavailable; retry shortly"
    ally_message = "O limitador de requisições está indisponível; tente novamente em instantes"
    extra_headers = ((b"retry-after", b"1"),)


class StoreUnavailable(GatewayError):
    """The key store (SQLite file or Redis) could not be read or written: a key lookup at the gate, or any
    call of the management API. The log line says what failed; the answer never does."""

    status, code, ally_code = 503, "store_unavailable", "SERVICE_UNAVAILABLE"
    message = "The key store is unavailable"
    ally_message = "Serviço de chaves indisponível"


def render(
    error: GatewayError, error_format: str, extra_headers: Sequence[Header] = ()
) -> tuple[int, list[Header], bytes]:
    body = error.body(error_format)
    headers = error.headers(error_format, body)
    headers.extend(extra_headers)
    return error.status, headers, body


# --- refused by the HTTP server protocol, the request limits or the failed-login guard ---------------------


class MethodNotAllowed(GatewayError):
    status, code, ally_code = 405, "method_not_allowed", "METHOD_NOT_ALLOWED"
    message = "This method is not supported"
    ally_message = "Método não suportado"
    extra_headers = ((b"allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),)


class FramingError(BadRequest):
    message = "The request framing is malformed or ambiguous"
    ally_message = "O enquadramento da requisição é inválido ou ambíguo"


class TargetNotOriginForm(BadRequest):
    message = "The request target must be a path (origin-form)"
    ally_message = "O alvo da requisição deve ser um caminho"


class RequestTimeout(GatewayError):
    status, code, ally_code = 408, "request_timeout", "REQUEST_TIMEOUT"
    message = "The request headers did not arrive in time"
    ally_message = "Os cabeçalhos da requisição não chegaram a tempo"


class BodyTimeout(RequestTimeout):
    message = "The request body did not arrive in time"
    ally_message = "O corpo da requisição não chegou a tempo"


class PayloadTooLarge(GatewayError):
    status, code, ally_code = 413, "payload_too_large", "PAYLOAD_TOO_LARGE"
    message = "The request body is larger than this route accepts"
    ally_message = "O corpo da requisição é maior do que esta rota aceita"


class URITooLong(GatewayError):
    status, code, ally_code = 414, "uri_too_long", "URI_TOO_LONG"
    message = "The request target is too long"
    ally_message = "O alvo da requisição é longo demais"


class HeadersTooLarge(GatewayError):
    status, code, ally_code = 431, "headers_too_large", "HEADERS_TOO_LARGE"
    message = "The request headers are too large or too many"
    ally_message = "Os cabeçalhos da requisição são grandes ou numerosos demais"


class Overloaded(GatewayError):
    status, code, ally_code = 503, "service_unavailable", "SERVICE_UNAVAILABLE"
    message = "The gateway is at its connection limit; retry shortly"
    ally_message = "O gateway está no limite de conexões; tente novamente em instantes"
    extra_headers = ((b"retry-after", b"1"),)


class TooManyFailures(GatewayError):
    """Too many failed authentications from this client address: refused until the cool-down ends."""

    status, code, ally_code = 429, "too_many_failed_attempts", "TOO_MANY_REQUESTS"
    message = "Too many failed authentication attempts from this address; retry after the time in Retry-After"
    ally_message = "Muitas tentativas de autenticação falharam a partir deste endereço; tente mais tarde"

    def __init__(self, retry_after: float) -> None:
        super().__init__()
        self.retry_after = max(1, int(retry_after + 0.999))
        self.extra_headers = ((b"retry-after", str(self.retry_after).encode()),)


class ValueNotHeld(GatewayError):
    """``POST .../api-keys/{id}/reveal`` of a key whose value is not held: revealed already (a value is revealed
    once), delivered to the rotation webhook, or never held (a key made by a person got its value then)."""

    status, code, ally_code = 410, "value_not_held", "GONE"
    message = ("No value is held for this key: it was revealed already, delivered to the rotation webhook, or "
               "returned when the key was made")
    ally_message = ("Nenhum valor guardado para esta key: já foi revelado, entregue ao webhook de rotação ou "
                    "devolvido quando a key foi criada")

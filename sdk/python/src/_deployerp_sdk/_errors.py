"""The SDK's one exception tree, shared by ``deployerp`` and ``deployally`` (each re-exports every class).

    SDKError                           anything this SDK raises on purpose
     +-- ConfigurationError            a base URL that is not http(s), or a DeployAlly config file that is
     |                                 unreadable, malformed or readable by others (chmod 600 it)
     +-- APIConnectionError            the API could not be reached (refused, reset, DNS ...)
     |    +-- APITimeoutError          ... or did not answer in time
     +-- APIError                      the API answered with an error status
          +-- BadRequestError          400 (invalid_request / BAD_REQUEST)
          +-- AuthenticationError      401 (authentication_required, invalid_token, expired_token / UNAUTHORIZED),
          |                            and no API key at all (raised at the first call, before any request)
          +-- PermissionDeniedError    403 (insufficient_permissions, ip_restricted / FORBIDDEN)
          +-- NotFoundError            404
          +-- ConflictError            409 (the key is revoked, expired or already rotated)
          +-- ValidationError          422, with ``.field``: the request field at fault
          +-- RateLimitError           429, with ``.retry_after``: seconds to wait (from Retry-After)
          +-- ServerError              5xx (upstream_unavailable, store_unavailable ...)

Every :class:`APIError` carries the API's error ``code`` (``invalid_token`` in the deployERP format,
``UNAUTHORIZED`` in the DeployAlly one), its ``message`` and the HTTP ``status_code``. None of them holds
the API key, the request or the response object: an exception can be logged or printed whole.

``PermissionDeniedError`` is not called ``PermissionError``: that is Python's own (an ``OSError``), and an
``except PermissionError`` meant for one would silently catch the other.
"""

from __future__ import annotations

from typing import Any


class SDKError(Exception):
    """Base class of every error this SDK raises on purpose."""


class ConfigurationError(SDKError):
    """The client cannot be built: a base URL that is not http(s), or a config file that cannot be used."""


class APIConnectionError(SDKError):
    """The API could not be reached (connection refused or reset, name not resolved ...)."""


class APITimeoutError(APIConnectionError):
    """The API did not answer within the client's timeout."""


class APIError(SDKError):
    """The API answered with an error status.

    Attributes: ``status_code`` (int), ``code`` (the API's error code, or None when the body was not an
    API error), ``message``, ``field`` (the request field at fault, for validation errors),
    ``request_id`` (the ``X-Request-ID`` of the answer, when there is one) and ``body`` (the parsed JSON body,
    or None).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None = None,
        field: str | None = None,
        request_id: str | None = None,
        body: Any = None,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.code = code
        self.field = field
        self.request_id = request_id
        self.body = body
        label = f"{status_code} {code}" if code else str(status_code)
        super().__init__(f"{label}: {message}")


class BadRequestError(APIError):
    """400: the request was malformed (an ambiguous path, a bad header)."""


class AuthenticationError(APIError):
    """401: the key is missing, malformed, unknown, revoked or expired.

    With no key configured at all it is raised by the first call, before any request is sent, with the status
    and code the API gives a request without a key (401 ``authentication_required`` / ``UNAUTHORIZED``).
    """


class PermissionDeniedError(APIError):
    """403: the key is valid but lacks a scope, or the client address is not in its allowlist."""


class NotFoundError(APIError):
    """404: no key with this id (or none this key may see)."""


class ConflictError(APIError):
    """409: the change does not apply to the key as it is now (revoked, expired, already rotated)."""


class ValidationError(APIError):
    """422: a field of the request is invalid; ``.field`` names it."""


class RateLimitError(APIError):
    """429: the key is over its rate limit; ``.retry_after`` is the number of seconds to wait, or None."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kwargs)


class ServerError(APIError):
    """5xx: the API, its key store or the service behind it failed."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
    429: RateLimitError,
}


def error_class(status_code: int) -> type[APIError]:
    """The exception class for an error status (500-599: :class:`ServerError`; others: :class:`APIError`)."""
    if status_code >= 500:
        return ServerError
    return _BY_STATUS.get(status_code, APIError)

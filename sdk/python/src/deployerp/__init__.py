"""A Python client of the deployERP API's keys: ``Client`` (blocking) and ``AsyncClient`` (asyncio), on httpx.

The deployERP guide's snippet works as written (with ``AuthenticationError`` imported too)::

    from deployerp import Client, AuthenticationError

    client = Client()          # reads DEPLOYERP_API_KEY (and DEPLOYERP_BASE_URL, default https://api.deployerp.com)
    try:
        client.auth.test()
        print("Authentication successful")
    except AuthenticationError as e:
        print(f"Authentication failed: {e}")

Building a client never fails for want of a key: a missing key, like an invalid, revoked or expired one, is an
:class:`AuthenticationError` raised by the first call. ``client.api_keys.create / list / get / update / revoke /
rotate`` manage keys. Every error is an :class:`SDKError`:

    SDKError
     +-- ConfigurationError            a base URL that is not http(s)
     +-- APIConnectionError            the API could not be reached
     |    +-- APITimeoutError          ... or did not answer in time
     +-- APIError                      an error status, with .status_code, .code, .message, .request_id
          +-- BadRequestError          400
          +-- AuthenticationError      401, or no API key at all
          +-- PermissionDeniedError    403 (insufficient_permissions, ip_restricted)
          +-- NotFoundError            404
          +-- ConflictError            409 (revoked, expired or already rotated)
          +-- ValidationError          422, with .field
          +-- RateLimitError           429, with .retry_after (seconds)
          +-- ServerError              5xx

No exception message or repr holds the key.
"""

from __future__ import annotations

from _deployerp_sdk._client import AsyncClientBase, ClientBase, Platform
from _deployerp_sdk._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    SDKError,
    ServerError,
    ValidationError,
)
from _deployerp_sdk._resources import NOT_GIVEN, APIKeysResource, AuthResource
from _deployerp_sdk._version import __version__

__all__ = [
    "NOT_GIVEN",
    "APIConnectionError",
    "APIError",
    "APIKeysResource",
    "APITimeoutError",
    "AsyncClient",
    "AuthResource",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConfigurationError",
    "ConflictError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "SDKError",
    "ServerError",
    "ValidationError",
    "__version__",
]

PLATFORM = Platform(
    name="deployERP",
    package="deployerp",
    key_variable="DEPLOYERP_API_KEY",
    url_variable="DEPLOYERP_BASE_URL",
    base_url="https://api.deployerp.com",
    prefix="/v1",
    missing_key_code="authentication_required",
    invalid_key_code="invalid_token",
)


class Client(ClientBase):
    """A blocking client of the deployERP API.

    ``Client(api_key=None, base_url=None, *, prefix="/v1", timeout=30.0)``: with no ``api_key``,
    ``DEPLOYERP_API_KEY`` is read; with no ``base_url``, ``DEPLOYERP_BASE_URL`` (default
    ``https://api.deployerp.com``). ``prefix`` is where the key API lives under the base URL (a gateway's
    ``management.prefix``).

    >>> client = Client()                      # doctest: +SKIP
    >>> client.auth.test()["key_id"]           # doctest: +SKIP
    'key_abc123'

    Use it as a context manager, or call :meth:`close`, to release its connections.
    """

    _platform = PLATFORM


class AsyncClient(AsyncClientBase):
    """The asyncio twin of :class:`Client`: the same arguments and methods, each awaited.

    >>> async with AsyncClient() as client:    # doctest: +SKIP
    ...     await client.auth.test()
    """

    _platform = PLATFORM

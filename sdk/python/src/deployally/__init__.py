"""A Python client of the DeployAlly API's keys: ``Client`` (blocking) and ``AsyncClient`` (asyncio), on httpx.

::

    from deployally import Client, AuthenticationError

    client = Client()   # DEPLOYALLY_API_KEY, else api_key in ~/.config/deployally/config.toml (chmod 600)
    try:
        print(client.auth.test()["key_id"])
    except AuthenticationError as e:
        print(f"Authentication failed: {e}")

The key is the ``api_key`` argument, else ``DEPLOYALLY_API_KEY``, else ``api_key = "da_..."`` in
``$XDG_CONFIG_HOME/deployally/config.toml`` (``~/.config/deployally/config.toml``), as the DeployAlly guide
keeps it. That file is refused, as ssh refuses a private key, when group or others can read it: the
:class:`ConfigurationError` says to ``chmod 600`` it. The base URL is ``DEPLOYALLY_BASE_URL``, default
``https://sys.deployally.com/api/v1`` (``https://dev.sys.deployally.com/api/v1`` for ``da_test_`` keys).

Answers come unwrapped: ``{"success": true, "data": {...}}`` gives ``{...}``, and ``{"success": false,
"error": {"code": "UNAUTHORIZED", ...}}`` raises :class:`AuthenticationError` with ``.code == "UNAUTHORIZED"``.
The exception tree is the one :mod:`deployerp` draws (the same classes).
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
    name="DeployAlly",
    package="deployally",
    key_variable="DEPLOYALLY_API_KEY",
    url_variable="DEPLOYALLY_BASE_URL",
    base_url="https://sys.deployally.com/api/v1",
    prefix="",  # the base URL already ends in the API's /api/v1
    missing_key_code="UNAUTHORIZED",
    invalid_key_code="UNAUTHORIZED",
    config_app="deployally",
)


class Client(ClientBase):
    """A blocking client of the DeployAlly API.

    ``Client(api_key=None, base_url=None, *, prefix="", timeout=30.0)``: with no ``api_key``,
    ``DEPLOYALLY_API_KEY`` is read, then ``~/.config/deployally/config.toml``; with no ``base_url``,
    ``DEPLOYALLY_BASE_URL`` (default ``https://sys.deployally.com/api/v1``). Paths given to :meth:`request`
    are under the base URL: ``client.request("GET", "/templates")``.

    Use it as a context manager, or call :meth:`close`, to release its connections.
    """

    _platform = PLATFORM


class AsyncClient(AsyncClientBase):
    """The asyncio twin of :class:`Client`: the same arguments and methods, each awaited."""

    _platform = PLATFORM

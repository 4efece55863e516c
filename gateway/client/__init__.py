"""A Python client of the gateway's key API: ``Client`` (blocking) and ``AsyncClient`` (asyncio), on httpx.

The deployERP guide's snippet works as written, with this import::

    from gateway.client import Client, AuthenticationError

    client = Client()          # DEPLOYERP_API_KEY (or DEPLOYALLY_API_KEY) and GATEWAY_URL from the environment
    try:
        client.auth.test()
        print("Authentication successful")
    except AuthenticationError as e:
        print(f"Authentication failed: {e}")

``client.api_keys.create / list / get / update / revoke / rotate`` manage keys; every error is a
:class:`GatewayClientError` (see :mod:`gateway.client._errors` for the tree) carrying the gateway's error code.
"""

from __future__ import annotations

from gateway.client._client import NOT_GIVEN, APIKeysResource, AsyncClient, AuthResource, Client
from gateway.client._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    GatewayClientError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ValidationError,
)

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
    "GatewayClientError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "ValidationError",
]

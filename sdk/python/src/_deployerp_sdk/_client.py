"""The clients: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), on httpx.

How sync and async share one implementation (the shape openai-python and httpx use, reduced to one seam):

* every endpoint is described once, as a :class:`_Call` (method, path, JSON body, query), by the resource
  classes :class:`AuthResource` and :class:`APIKeysResource`. They are generic in what a call returns and
  hold only an ``execute`` function: ``Client`` gives them one that returns the result, ``AsyncClient`` one
  that returns a coroutine of it;
* turning a ``_Call`` into an ``httpx.Request`` and an ``httpx.Response`` into a result or a typed error is
  done once, in :class:`_BaseClient`;
* the only code written twice is the three-line ``_execute`` that sends the request, because that is the
  only place where blocking and awaiting differ.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from gateway.client._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ConfigurationError,
    RateLimitError,
    error_class,
)

__all__ = ["APIKeysResource", "AsyncClient", "AuthResource", "Client", "NOT_GIVEN"]

API_KEY_VARIABLES = ("DEPLOYERP_API_KEY", "DEPLOYALLY_API_KEY")
URL_VARIABLE = "GATEWAY_URL"
DEFAULT_BASE_URL = "http://127.0.0.1:8080"  # the gateway's default listen address
DEFAULT_PREFIX = "/v1"  # the gateway's default management.prefix
DEFAULT_TIMEOUT = 30.0
USER_AGENT = "gateway-python/0.1.0"

JSON = dict[str, Any]
_R = TypeVar("_R")


class _NotGiven:
    """The default of ``update`` arguments: "leave as it is" (``None`` means "clear")."""

    _instance: _NotGiven | None = None

    def __new__(cls) -> _NotGiven:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False


NOT_GIVEN = _NotGiven()


@dataclass(frozen=True, slots=True)
class _Call:
    """One endpoint call, before it is bound to a client: ``path`` is under the API prefix."""

    method: str
    path: str
    json: Mapping[str, Any] | None = None
    params: Mapping[str, Any] | None = None


# --- the endpoints, described once -----------------------------------------------------------------------------


def _segment(key_id: str) -> str:
    """A key id as one path segment: quoted, so an id can never change which endpoint is called."""
    if not isinstance(key_id, str) or not key_id or key_id in (".", ".."):
        raise ValueError("key_id must be a non-empty key id such as 'key_abc123'")
    return quote(key_id, safe="")


def _plain(name: str, value: Any) -> Any:
    """Arguments as JSON: datetimes as ISO 8601 (UTC, ``Z``), sequences as lists."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name}: give a timezone-aware datetime (e.g. datetime(..., tzinfo=UTC))")
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [str(v) for v in value]
    return value


def _fields(**fields: Any) -> JSON:
    return {k: _plain(k, v) for k, v in fields.items() if v is not NOT_GIVEN}


class AuthResource(Generic[_R]):
    """``client.auth``: the calling key itself."""

    def __init__(self, execute: Callable[[_Call], _R]) -> None:
        self._execute = execute

    def test(self) -> _R:
        """``GET {prefix}/auth/test``: ``authenticated``, ``key_id``, ``permissions``, ``rate_limit`` of this key.

        ``rate_limit`` reports the key's hourly window (``limit``, ``remaining``, ``reset``, ``window``, ``tier``;
        the per-minute one for a tier without an hourly limit) and its per-minute burst in ``burst`` (None for a
        tier of one window). The call spends no request.

        Raises :class:`AuthenticationError` when the key is missing, unknown, revoked or expired.
        """
        return self._execute(_Call("GET", "/auth/test"))


class APIKeysResource(Generic[_R]):
    """``client.api_keys``: the gateway's key-management API (needs ``api-keys:read`` / ``api-keys:write``).

    Every method returns the gateway's JSON object; the DeployAlly wrapper ``{"success": true, "data": ...}``
    is removed, so both platforms' gateways give the same shape. A key's value is returned only by
    :meth:`create` (``value``) and :meth:`rotate` (``new_key.value``), once.
    """

    def __init__(self, execute: Callable[[_Call], _R]) -> None:
        self._execute = execute

    def create(
        self,
        name: str,
        *,
        permissions: Sequence[str] | _NotGiven = NOT_GIVEN,
        expires_at: str | datetime | None | _NotGiven = NOT_GIVEN,
        ip_whitelist: Sequence[str] | _NotGiven = NOT_GIVEN,
        allowed_ips: Sequence[str] | _NotGiven = NOT_GIVEN,
        rate_limit_tier: str | None | _NotGiven = NOT_GIVEN,
        environment: str | _NotGiven = NOT_GIVEN,
        auto_rotate: bool | _NotGiven = NOT_GIVEN,
        rotation_period: str | None | _NotGiven = NOT_GIVEN,
        description: str | None | _NotGiven = NOT_GIVEN,
    ) -> _R:
        """``POST {prefix}/api-keys``: a new key; the answer's ``value`` is shown this once.

        ``ip_whitelist`` (deployERP) and ``allowed_ips`` (DeployAlly) are the same allowlist; give one.
        Without ``permissions`` the key gets the calling key's permissions.
        """
        body = _fields(name=name, permissions=permissions, expires_at=expires_at, ip_whitelist=ip_whitelist,
                       allowed_ips=allowed_ips, rate_limit_tier=rate_limit_tier, environment=environment,
                       auto_rotate=auto_rotate, rotation_period=rotation_period, description=description)
        return self._execute(_Call("POST", "/api-keys", json=body))

    def get(self, key_id: str) -> _R:
        """``GET {prefix}/api-keys/{id}``: one key (never its value). :class:`NotFoundError` if there is none."""
        return self._execute(_Call("GET", f"/api-keys/{_segment(key_id)}"))

    def update(
        self,
        key_id: str,
        *,
        name: str | _NotGiven = NOT_GIVEN,
        permissions: Sequence[str] | _NotGiven = NOT_GIVEN,
        expires_at: str | datetime | None | _NotGiven = NOT_GIVEN,
        ip_whitelist: Sequence[str] | _NotGiven = NOT_GIVEN,
        allowed_ips: Sequence[str] | _NotGiven = NOT_GIVEN,
        rate_limit_tier: str | None | _NotGiven = NOT_GIVEN,
        auto_rotate: bool | _NotGiven = NOT_GIVEN,
        rotation_period: str | None | _NotGiven = NOT_GIVEN,
        description: str | None | _NotGiven = NOT_GIVEN,
    ) -> _R:
        """``PATCH {prefix}/api-keys/{id}``: change only the fields given; ``None`` clears a field
        (``expires_at=None``: never expires), an empty allowlist removes the allowlist."""
        body = _fields(name=name, permissions=permissions, expires_at=expires_at, ip_whitelist=ip_whitelist,
                       allowed_ips=allowed_ips, rate_limit_tier=rate_limit_tier, auto_rotate=auto_rotate,
                       rotation_period=rotation_period, description=description)
        return self._execute(_Call("PATCH", f"/api-keys/{_segment(key_id)}", json=body))

    def revoke(self, key_id: str) -> _R:
        """``DELETE {prefix}/api-keys/{id}``: the key stops working (within the gateway's cache TTL)."""
        return self._execute(_Call("DELETE", f"/api-keys/{_segment(key_id)}"))

    def rotate(self, key_id: str, *, grace_period: str | None = None) -> _R:
        """``POST {prefix}/api-keys/{id}/rotate``: ``{"old_key": {id, expires_at}, "new_key": {id, value,
        created_at}}``. The old key keeps working for ``grace_period`` (``"7d"``, ``"12h"``, ``"0"``; default:
        the gateway's ``rotation.grace_period``)."""
        body = {} if grace_period is None else {"grace_period": grace_period}
        return self._execute(_Call("POST", f"/api-keys/{_segment(key_id)}/rotate", json=body))

    def list(
        self,
        *,
        limit: int | None = None,
        offset: int | None = None,
        environment: str | None = None,
        status: str | None = None,
    ) -> _R:
        """``GET {prefix}/api-keys``: ``{"data": [keys...], "pagination": {limit, offset, next_offset}}``.

        ``status`` is ``active``, ``expired`` or ``revoked``; ``environment`` is ``live`` or ``test``. Page with
        ``offset=page["pagination"]["next_offset"]`` until it is None.
        """
        params = {k: v for k, v in (("limit", limit), ("offset", offset), ("environment", environment),
                                    ("status", status)) if v is not None}
        return self._execute(_Call("GET", "/api-keys", params=params))


# --- the request/response logic, written once -------------------------------------------------------------------


def _resolve_key(api_key: str | None) -> str:
    if api_key is None:
        for var in API_KEY_VARIABLES:
            value = os.environ.get(var, "").strip()
            if value:
                api_key = value
                break
        else:
            raise ConfigurationError(
                f"no API key: pass Client(api_key=...) or set {API_KEY_VARIABLES[0]} (or {API_KEY_VARIABLES[1]})"
            )
    if not isinstance(api_key, str) or not api_key:
        raise ConfigurationError("api_key must be a non-empty string")
    # The key goes into a header: refuse anything that could split or bend it (and never echo it).
    if not api_key.isascii() or not all(33 <= ord(c) <= 126 for c in api_key):
        raise ConfigurationError("api_key contains spaces or characters that cannot be sent in a header")
    return api_key


def _resolve_url(base_url: str | None, prefix: str) -> tuple[str, str]:
    url = base_url if base_url is not None else os.environ.get(URL_VARIABLE, "").strip() or DEFAULT_BASE_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(
            f"base_url (or {URL_VARIABLE}) must be an http:// or https:// URL like {DEFAULT_BASE_URL} (got {url!r})"
        )
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ConfigurationError(f"prefix must start with '/' and not end with one, like {DEFAULT_PREFIX!r}")
    return url.rstrip("/"), prefix


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _BaseClient(Generic[_R]):
    """What both clients share: configuration, the resources, building requests and reading answers."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._api_key = _resolve_key(api_key)
        self.base_url, self.prefix = _resolve_url(base_url, prefix)
        self.timeout = timeout
        self.auth: AuthResource[_R] = AuthResource(self._execute)
        self.api_keys: APIKeysResource[_R] = APIKeysResource(self._execute)

    def __repr__(self) -> str:
        # Never the key, not even a part of it.
        return f"{type(self).__name__}(base_url={self.base_url!r}, prefix={self.prefix!r})"

    def _execute(self, call: _Call) -> _R:
        raise NotImplementedError

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._api_key}", "accept": "application/json", "user-agent": USER_AGENT}

    def _url(self, call: _Call) -> str:
        return f"{self.base_url}{self.prefix}{call.path}"

    def _redact(self, text: str) -> str:
        # The gateway never echoes a credential; this makes sure no proxy in between can make us do it.
        return text.replace(self._api_key, "[redacted]")

    def _transport_error(self, exc: httpx.HTTPError) -> APIConnectionError:
        where = f"{self.base_url}"
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"the gateway at {where} did not answer within {self.timeout:g} s")
        reason = self._redact(str(exc)) or type(exc).__name__
        return APIConnectionError(f"cannot reach the gateway at {where}: {reason}")

    def _result(self, response: httpx.Response) -> Any:
        """The parsed JSON body of a success (DeployAlly wrapper removed), or the typed error raised."""
        try:
            doc: Any = response.json() if response.content else None
        except ValueError:
            doc = None
        if response.is_success:
            if isinstance(doc, dict) and doc.get("success") is True and "data" in doc:
                return doc["data"]
            return doc
        raise self._error(response, doc)

    def _error(self, response: httpx.Response, doc: Any) -> APIError:
        status = response.status_code
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict):
            code = str(err["code"]) if err.get("code") is not None else None
            message = str(err.get("message") or response.reason_phrase)
            field = str(err["field"]) if err.get("field") is not None else None
        else:
            code, field = None, None
            message = f"HTTP {status} {response.reason_phrase}".strip() + " (not a gateway error body)"
        kwargs: dict[str, Any] = {
            "status_code": status, "code": code, "field": field,
            "request_id": response.headers.get("x-request-id"), "body": doc,
        }
        cls = error_class(status)
        if cls is RateLimitError:
            return RateLimitError(self._redact(message), retry_after=_retry_after(response.headers.get("retry-after")),
                                  **kwargs)
        return cls(self._redact(message), **kwargs)

    def _route_url(self, path: str) -> str:
        if not isinstance(path, str) or not path.startswith("/") or "://" in path:
            raise ValueError("path must be a path from the gateway's root, such as '/v1/servers'")
        return f"{self.base_url}{path}"

    def _request_args(self, method: str, url: str, json: Any = None,
                      params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {"method": method, "url": url, "headers": self._headers(), "params": params or None}
        if json is not None:
            args["json"] = json
        return args


class Client(_BaseClient[JSON]):
    """A blocking client of the gateway's key API.

    ``Client(api_key=None, base_url=None)``: with no ``api_key``, ``DEPLOYERP_API_KEY`` (then
    ``DEPLOYALLY_API_KEY``) is read from the environment; with no ``base_url``, ``GATEWAY_URL`` (default
    ``http://127.0.0.1:8080``). ``prefix`` is the gateway's ``management.prefix`` (default ``/v1``).

    >>> client = Client()                      # doctest: +SKIP
    >>> client.auth.test()["key_id"]           # doctest: +SKIP
    'key_abc123'

    Use it as a context manager, or call :meth:`close`, to release its connections.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(api_key, base_url, prefix=prefix, timeout=timeout)
        self._http = httpx.Client(timeout=timeout, follow_redirects=False)

    def _execute(self, call: _Call) -> JSON:
        result = self._send(self._request_args(call.method, self._url(call), call.json, call.params))
        return result if isinstance(result, dict) else {"data": result}

    def _send(self, args: dict[str, Any]) -> Any:
        try:
            response = self._http.request(**args)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        return self._result(response)

    def request(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        """Call any route through the gateway (``path`` from the root, e.g. ``/v1/servers``) with this key:
        the parsed JSON answer, or the typed error."""
        return self._send(self._request_args(method, self._route_url(path), json, params))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncClient(_BaseClient[Coroutine[Any, Any, JSON]]):
    """The asyncio twin of :class:`Client`: the same arguments and methods, each awaited.

    >>> async with AsyncClient() as client:    # doctest: +SKIP
    ...     await client.auth.test()
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(api_key, base_url, prefix=prefix, timeout=timeout)
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def _execute(self, call: _Call) -> JSON:
        result = await self._send(self._request_args(call.method, self._url(call), call.json, call.params))
        return result if isinstance(result, dict) else {"data": result}

    async def _send(self, args: dict[str, Any]) -> Any:
        try:
            response = await self._http.request(**args)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        return self._result(response)

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Mapping[str, Any] | None = None) -> Any:
        """Call any route through the gateway with this key (see :meth:`Client.request`)."""
        return await self._send(self._request_args(method, self._route_url(path), json, params))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

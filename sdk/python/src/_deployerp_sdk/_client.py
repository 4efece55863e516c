"""The clients' machinery, shared by ``deployerp`` and ``deployally``: one blocking and one asyncio base, on httpx.

How sync and async share one implementation (the shape openai-python and httpx use, reduced to one seam):

* every endpoint is described once, as a ``_Call`` (method, path, JSON body, query), by the resource classes
  in :mod:`_deployerp_sdk._resources`. They are generic in what a call returns and hold only an ``execute``
  function: the blocking client gives them one that returns the result, the async client one that returns a
  coroutine of it;
* turning a ``_Call`` into an ``httpx.Request`` and an ``httpx.Response`` into a result or a typed error is
  done once, in :class:`_BaseClient`;
* the only code written twice is the three-line ``_execute`` that sends the request, because that is the
  only place where blocking and awaiting differ.

What differs between the two platforms (variables, default URL, error codes, config file) is a
:class:`Platform` value: each package's ``Client`` is these bases with its platform set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar
from urllib.parse import urlsplit

import httpx

from _deployerp_sdk import _credentials
from _deployerp_sdk._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ConfigurationError,
    RateLimitError,
    error_class,
)
from _deployerp_sdk._resources import JSON, APIKeysResource, AuthResource, _Call
from _deployerp_sdk._version import __version__

__all__ = ["AsyncClientBase", "ClientBase", "Platform"]

DEFAULT_TIMEOUT = 30.0

_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Platform:
    """What one platform's API looks like to a client; each package defines one."""

    name: str  # as the platform spells itself, for messages: "deployERP"
    package: str  # the Python package, for the User-Agent: "deployerp"
    key_variable: str  # DEPLOYERP_API_KEY
    url_variable: str  # DEPLOYERP_BASE_URL
    base_url: str  # the default base URL
    prefix: str  # the key API's path under the base URL: "/v1", or "" when the base URL has it
    missing_key_code: str  # the code the API answers a request without a key with
    invalid_key_code: str  # ... and one with a key it refuses
    config_app: str | None = None  # read $XDG_CONFIG_HOME/<config_app>/config.toml when the variable is unset

    @property
    def user_agent(self) -> str:
        return f"{self.package}-python/{__version__}"


def _resolve_url(platform: Platform, base_url: str | None, prefix: str | None) -> tuple[str, str]:
    url = base_url if base_url is not None else os.environ.get(platform.url_variable, "").strip() or platform.base_url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(f"base_url (or {platform.url_variable}) must be an http:// or https:// URL like "
                                 f"{platform.base_url} (got {url!r})")
    prefix = platform.prefix if prefix is None else prefix
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ConfigurationError(f"prefix must start with '/' and not end with one, like '/v1' (got {prefix!r})")
    return url.rstrip("/"), prefix


def _sendable(key: str) -> bool:
    """Printable ASCII without spaces: a key that cannot split or bend the Authorization header."""
    return key.isascii() and all(33 <= ord(c) <= 126 for c in key)


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

    _platform: ClassVar[Platform]

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        prefix: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if api_key is not None and not isinstance(api_key, str):
            raise TypeError(f"api_key must be a str, not {type(api_key).__name__}")
        p = self._platform
        self._credential = _credentials.resolve(api_key, p.key_variable, p.config_app)
        self.base_url, self.prefix = _resolve_url(p, base_url, prefix)
        self.timeout = timeout
        self.auth: AuthResource[_R] = AuthResource(self._execute)
        self.api_keys: APIKeysResource[_R] = APIKeysResource(self._execute)

    def __repr__(self) -> str:
        # Never the key, not even a part of it: only whether there is one.
        key = "'[redacted]'" if self._credential.api_key else None
        return f"{type(self).__name__}(base_url={self.base_url!r}, prefix={self.prefix!r}, api_key={key})"

    def _execute(self, call: _Call) -> _R:
        raise NotImplementedError

    def _headers(self) -> dict[str, str]:
        """The request headers; a missing or unsendable key raises AuthenticationError here, before any I/O."""
        key = self._credential.api_key
        p = self._platform
        if key is None:
            raise AuthenticationError(f"no API key: {self._credential.looked}", status_code=401,
                                      code=p.missing_key_code)
        if not _sendable(key):
            raise AuthenticationError("the API key contains spaces or characters that cannot be sent in a header",
                                      status_code=401, code=p.invalid_key_code)
        return {"authorization": f"Bearer {key}", "accept": "application/json", "user-agent": p.user_agent}

    def _url(self, call: _Call) -> str:
        return f"{self.base_url}{self.prefix}{call.path}"

    def _redact(self, text: str) -> str:
        # The API never echoes a credential; this makes sure no proxy in between can make us do it.
        key = self._credential.api_key
        return text.replace(key, "[redacted]") if key else text

    def _transport_error(self, exc: httpx.HTTPError) -> APIConnectionError:
        where = f"the {self._platform.name} API at {self.base_url}"
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"{where} did not answer within {self.timeout:g} s")
        reason = self._redact(str(exc)) or type(exc).__name__
        return APIConnectionError(f"cannot reach {where}: {reason}")

    def _result(self, response: httpx.Response) -> Any:
        """The parsed JSON body of a success (DeployAlly wrapper removed), or the typed error raised.

        DeployAlly answers ``{"success": true, "data": ...}``; a list comes as ``{"success": true, "data": [...],
        "meta": {"pagination": ...}}``, returned as deployERP gives it: ``{"data": [...], "pagination": ...}``."""
        try:
            doc: Any = response.json() if response.content else None
        except ValueError:
            doc = None
        if response.is_success:
            if isinstance(doc, dict) and doc.get("success") is True and "data" in doc:
                meta = doc.get("meta")
                if isinstance(doc["data"], list) and isinstance(meta, dict):
                    return {**meta, "data": doc["data"]}
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
            message = f"HTTP {status} {response.reason_phrase}".strip() + " (not an API error body)"
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
            raise ValueError("path must be a path under the base URL, such as '/v1/servers'")
        return f"{self.base_url}{path}"

    def _request_args(self, method: str, url: str, json: Any = None,
                      params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {"method": method, "url": url, "headers": self._headers(), "params": params or None}
        if json is not None:
            args["json"] = json
        return args


class ClientBase(_BaseClient[JSON]):
    """The blocking client; ``deployerp.Client`` and ``deployally.Client`` set its platform and docstring."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        prefix: str | None = None,
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
        """Call any route of the API with this key (``path`` under the base URL, e.g. ``/v1/servers``): the
        parsed JSON answer (DeployAlly wrapper removed), or the typed error."""
        return self._send(self._request_args(method, self._route_url(path), json, params))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncClientBase(_BaseClient[Coroutine[Any, Any, JSON]]):
    """The asyncio twin of :class:`ClientBase`: the same arguments and methods, each awaited."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        prefix: str | None = None,
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
        """Call any route of the API with this key (see :meth:`ClientBase.request`)."""
        return await self._send(self._request_args(method, self._route_url(path), json, params))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

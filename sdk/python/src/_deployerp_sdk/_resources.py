"""The endpoints, described once: ``client.auth`` and ``client.api_keys``.

Each method turns its arguments into a :class:`_Call` (method, path under the API prefix, JSON body, query) and
hands it to the ``execute`` function its client gave it: the blocking client's returns the result, the async
client's a coroutine of it. So the resources are generic in what a call returns and hold no I/O of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

__all__ = ["NOT_GIVEN", "APIKeysResource", "AuthResource"]

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
    """``client.api_keys``: the key-management API (needs ``api-keys:read`` / ``api-keys:write``).

    Every method returns the API's JSON object; the DeployAlly wrapper ``{"success": true, "data": ...}``
    is removed, so both platforms give the same shape. A key's value is returned only by
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
        """``DELETE {prefix}/api-keys/{id}``: the key stops working (within the API's cache TTL)."""
        return self._execute(_Call("DELETE", f"/api-keys/{_segment(key_id)}"))

    def rotate(self, key_id: str, *, grace_period: str | None = None) -> _R:
        """``POST {prefix}/api-keys/{id}/rotate``: ``{"old_key": {id, expires_at}, "new_key": {id, value,
        created_at}}``. The old key keeps working for ``grace_period`` (``"7d"``, ``"12h"``, ``"0"``; default:
        the API's own default, 7 days in the deployERP guide)."""
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



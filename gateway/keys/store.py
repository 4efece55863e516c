"""The key store protocol and its errors (the stores are in gateway.keys.sqlite and gateway.keys.redis, opened by
gateway.keys.backends from the scheme of ``store.url``).

The protocol is narrow: look a key up by its keyed hash; add, read, list, update, revoke and rotate keys,
each change written together with its audit event (all or nothing); read the audit trail; add usage counts in
batches; take (read and erase at once) the sealed value an automatic rotation held; record the state of a key's
e-mail notices. A store never sees a key value, only its keyed hash and, for a value held until revealed, the
value sealed with a key derived from the server secret (gateway.keys.sealing).
"""

from __future__ import annotations

import builtins  # the stores have a list() method: annotations after it name the type this way
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

from gateway.keys.record import AuditEvent, KeyRecord
from gateway.keys.users import RefreshRecord, UserRecord
from gateway.messages import english


@dataclass(frozen=True, slots=True)
class UsageUpdate:
    key_id: str
    count: int
    last_used_at: datetime
    last_used_ip: str | None


class KeyStore(Protocol):
    async def get_by_hash(self, key_hash: str) -> KeyRecord | None: ...
    async def get(self, key_id: str) -> KeyRecord | None: ...
    async def add(self, record: KeyRecord, audit: AuditEvent | None = None) -> None: ...
    # ``watched``: only the keys the rotation pass looks after (auto_rotate on, or a notification_email); the
    # SQL stores answer it from an index, whatever the number of other keys.
    async def list(
        self, *, environment: str | None = None, status: str | None = None, now: datetime | None = None,
        limit: int | None = None, offset: int = 0, created_by: str | None = None, watched: bool = False,
    ) -> list[KeyRecord]: ...
    async def update(self, key_id: str, changes: Mapping[str, Any], audit: AuditEvent) -> KeyRecord | None: ...
    async def revoke(self, key_id: str, actor: str = "cli") -> KeyRecord | None: ...
    async def rotate(
        self, old_id: str, new: KeyRecord, old_expires_at: datetime, audit: AuditEvent
    ) -> KeyRecord | None: ...
    async def take_held_value(self, key_id: str, audit: AuditEvent) -> str | None: ...
    async def set_notices(self, key_id: str, notices: str | None) -> None: ...
    async def audit_log(self, key_id: str | None = None, limit: int = 1000) -> builtins.list[AuditEvent]: ...
    async def record_usage(self, updates: Sequence[UsageUpdate]) -> None: ...
    async def append_audit(self, events: Sequence[AuditEvent]) -> None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


class UserStore(Protocol):
    """Dashboard users and their refresh tokens (gateway.accounts), and the per-day usage counts of keys (the
    dashboard's usage chart). Implemented by the same stores as :class:`KeyStore`.

    ``add_user`` raises :class:`Conflict` (``conflict.user_exists``) for an address already taken;
    ``update_user`` changes ``role``, ``status``, ``password_hash`` or ``last_login_at``. ``spend_refresh``
    is the whole of a refresh, atomically: the token presented is looked up by hash and, when live, marked
    spent and ``new`` stored in its family (its ``family``, ``user_id`` and ``expires_at`` are taken from the
    token presented: a refresh never extends a login's session); when already spent, its whole family is
    revoked (RFC 9700 4.14.2). It returns what it found (gateway.keys.users: SPENT, UNKNOWN, REUSED, REVOKED,
    EXPIRED) and the record presented (None when unknown). ``usage_by_day`` gives requests per UTC day for the
    last ``days`` days, today included, oldest first, days without requests as 0."""

    async def add_user(self, user: UserRecord) -> None: ...
    async def get_user(self, user_id: str) -> UserRecord | None: ...
    async def get_user_by_email(self, email: str) -> UserRecord | None: ...
    async def list_users(self) -> builtins.list[UserRecord]: ...
    async def update_user(self, user_id: str, changes: Mapping[str, Any]) -> UserRecord | None: ...
    async def add_refresh(self, token: RefreshRecord) -> None: ...
    async def spend_refresh(
        self, token_hash: str, new: RefreshRecord, now: datetime
    ) -> tuple[str, RefreshRecord | None]: ...
    async def revoke_refresh_family(self, token_hash: str, now: datetime) -> bool: ...
    async def revoke_user_refresh(self, user_id: str, now: datetime) -> None: ...
    async def usage_by_day(self, key_id: str, days: int) -> builtins.list[tuple[date, int]]: ...


class StoreError(Exception):
    """The store could not be read or written (the message names the store, never a key)."""


class Conflict(StoreError):
    """The change does not apply to the key as it is now (revoked, already rotated). ``message_id`` names its
    words in the message catalogues (``conflict.revoked``, ``conflict.rotated``...), ``params`` their values (the
    successor's id); the exception's own message is the English text, for the CLI and the logs."""

    def __init__(self, message_id: str, **params: str) -> None:
        self.message_id = message_id
        self.params = params
        super().__init__(english(message_id, params))

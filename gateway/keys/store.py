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
from datetime import datetime
from typing import Any, Protocol

from gateway.keys.record import AuditEvent, KeyRecord
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
    async def list(
        self, *, environment: str | None = None, status: str | None = None, now: datetime | None = None,
        limit: int | None = None, offset: int = 0,
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

"""Key stores, chosen by the scheme of ``store.url``.

The protocol is narrow: look a key up by its keyed hash; add, read, list, update, revoke and rotate keys,
each change written together with its audit event (all or nothing); read the audit trail; add usage counts in
batches. A store never sees a key value, only its keyed hash.
"""

from __future__ import annotations

import builtins  # the stores have a list() method: annotations after it name the type this way
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from gateway.keys.record import AuditEvent, KeyRecord
from gateway.redisurl import SCHEMES
from gateway.settings import ConfigError, Settings, resolve_path


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
    async def audit_log(self, key_id: str | None = None, limit: int = 1000) -> builtins.list[AuditEvent]: ...
    async def record_usage(self, updates: Sequence[UsageUpdate]) -> None: ...
    async def append_audit(self, events: Sequence[AuditEvent]) -> None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


class StoreError(Exception):
    """The store could not be read or written (the message names the store, never a key)."""


class Conflict(StoreError):
    """The change does not apply to the key as it is now (revoked, already rotated)."""


REDIS_SCHEMES = SCHEMES  # one server, a Sentinel service or a Cluster (gateway.redisurl)


def is_redis_url(url: str) -> bool:
    return url.split(":", 1)[0] in REDIS_SCHEMES


def open_store(settings: Settings) -> KeyStore:
    """The store named by ``store.url``: ``sqlite:///path`` or ``redis://``, ``rediss://``, ``unix://``."""
    return open_url(settings.store.url, settings)


def open_url(url: str, settings: Settings) -> KeyStore:
    """A store by URL (``gateway store copy`` opens two); relative SQLite paths resolve like ``store.url``."""
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        from gateway.keys.sqlite import SQLiteStore

        if not url.startswith("sqlite:///"):
            raise ConfigError(f"{url!r}: a SQLite URL looks like sqlite:///relative/path.db or sqlite:////abs.db")
        return SQLiteStore(resolve_path(settings, url[len("sqlite:///"):]))
    if scheme in REDIS_SCHEMES:
        from gateway.keys.redis import RedisStore

        return RedisStore(url, settings.store.timeout_ms)
    raise ConfigError(f"store.url: unsupported scheme {scheme!r}; use sqlite:///path/keys.db or redis://host:port/db")

"""Whether a user's tokens still stand: the user is active, and the token was issued after the user's last
password reset (OWASP Session Management Cheat Sheet: disabling an account or changing its password ends its
sessions).

A token this gateway signed is good until its ``exp`` (up to 24 hours); revoking the refresh tokens alone would
leave it working that long. So every request with one is checked against the user's status, from a small cache
like the key cache (gateway.keys.cache): no store read per request, a change seen at once by the process that
made it (:meth:`UserStatus.forget`), within a second by every other sharing a Redis or PostgreSQL store (the
store publishes ``user:<id>`` on its invalidation channel: :class:`Invalidations`), and within
``cache.ttl_seconds`` in any case (a SQLite store has no channel).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cachetools import TTLCache

from gateway.errors import InvalidJWT
from gateway.keys.store import UserStore
from gateway.keys.users import USER_INVALIDATION, UserRecord

_CACHE_SIZE = 10_000


class KeyInvalidation(Protocol):
    """The key cache's side of :class:`Invalidations` (gateway.keys.cache.KeyCache)."""

    def invalidate(self, key_hash: str | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class Standing:
    """What a token's check needs of its user: active or not, and since when its tokens count (seconds since the
    epoch; a token issued before that second was issued before the last password reset)."""

    active: bool
    tokens_from: float

    @classmethod
    def of(cls, user: UserRecord | None) -> Standing:
        if user is None:
            return cls(active=False, tokens_from=0.0)
        changed = user.password_changed_at.timestamp() if user.password_changed_at is not None else 0.0
        return cls(active=user.status == "active", tokens_from=changed)

    def check(self, issued_ts: float) -> None:
        """Raise InvalidJWT (401 ``invalid_token``, the answer to any token that does not stand) unless a token
        issued at ``issued_ts`` stands."""
        # iat is a whole second; a reset is stored to the second too (so a login just after a reset stands).
        if not self.active or issued_ts < self.tokens_from:
            raise InvalidJWT()


class UserStatus:
    """The :class:`Standing` of users by id, each read from ``store`` at most once per ``ttl`` seconds (0: every
    time). :meth:`peek` is synchronous (the gate's hot path); :meth:`load` reads the store on a miss."""

    def __init__(self, store: UserStore, ttl: float, clock: Callable[[], float] = time.monotonic,
                 max_size: int = _CACHE_SIZE) -> None:
        self.store = store
        self.ttl = ttl
        self._cache: TTLCache[str, Standing] | None = (
            TTLCache(maxsize=max_size, ttl=ttl, timer=clock) if ttl > 0 else None)

    def __repr__(self) -> str:
        return f"UserStatus(ttl={self.ttl!r})"

    def peek(self, user_id: str) -> Standing | None:
        """The cached standing of ``user_id``; None when only the store can tell."""
        return self._cache.get(user_id) if self._cache is not None else None

    async def load(self, user_id: str) -> Standing:
        """The standing of ``user_id`` from the store (StoreError when it cannot be read), cached."""
        standing = Standing.of(await self.store.get_user(user_id))
        if self._cache is not None:
            self._cache[user_id] = standing
        return standing

    def forget(self, user_id: str | None = None) -> None:
        """Drop ``user_id`` (None: everyone) so the next request reads the store: called by this process's own
        changes to a user."""
        if self._cache is None:
            return
        if user_id is None:
            self._cache.clear()
        else:
            self._cache.pop(user_id, None)


class Invalidations:
    """What a store's invalidation channel (Redis pub/sub, PostgreSQL NOTIFY) is handed to: a key's hash drops
    that key-cache entry, ``user:<id>`` (:data:`gateway.keys.users.USER_INVALIDATION`) that user's standing, and
    nothing (the channel was lost, so anything may have changed) both caches whole."""

    def __init__(self, keys: KeyInvalidation, status: UserStatus) -> None:
        self.keys = keys
        self.status = status

    def invalidate(self, what: str | None = None) -> None:
        if what is None:
            self.keys.invalidate()
            self.status.forget()
        elif what.startswith(USER_INVALIDATION):
            self.status.forget(what[len(USER_INVALIDATION):])
        else:
            self.keys.invalidate(what)

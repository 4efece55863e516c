"""The rate-limit stage of the pipeline: tier -> quota -> limiter -> headers.

Everything that can be is compiled at start-up: one :class:`Quota` per tier, the header names, the
``RateLimit-Policy`` value of each quota. Per request the stage does one limiter call (a dict update in
memory, or one Lua script on Redis) and formats four small numbers.

A key's tier is ``rate_limit_tier`` on its record, else ``rate_limits.default_tier``. A key that needs its own
numbers gets a tier of its own in ``rate_limits.tiers`` (tiers are configuration, so every process agrees on
them). A tier that the configuration no longer defines falls back to the default tier. JWT principals
(dashboard users) are limited at the default tier, by subject.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.config.settings import RateLimitSettings, Settings
from gateway.errors import RateLimited, RateLimitUnavailable
from gateway.ratelimit import US, Decision, Limiter, LimiterUnavailable, Quota
from gateway.redisurl import SCHEMES

log = logging.getLogger("gateway.ratelimit")

Header = tuple[bytes, bytes]

_LIMIT, _REMAINING, _RESET = b"x-ratelimit-limit", b"x-ratelimit-remaining", b"x-ratelimit-reset"
_POLICY, _STATE = b"ratelimit-policy", b"ratelimit"
_RETRY_AFTER = b"retry-after"
_SECONDS = tuple(b";t=%d" % t for t in range(3601))  # the end of the RateLimit header, for up to an hour


def limiter_url(settings: Settings) -> str:
    """``rate_limits.url``, else the store's Redis when the store is Redis, else ``memory://``."""
    if settings.rate_limits.url:
        return settings.rate_limits.url
    if settings.store.url.split(":", 1)[0] in SCHEMES:  # one server, Sentinel or Cluster
        return settings.store.url
    return "memory://"


def open_limiter(settings: Settings) -> Limiter:
    """The limiter named by :func:`limiter_url` (chosen by URL scheme)."""
    rl = settings.rate_limits
    url = limiter_url(settings)
    if url.startswith("memory:"):
        from gateway.ratelimit.memory import MemoryLimiter

        return MemoryLimiter(rl.max_tracked_keys)
    from gateway.ratelimit.redis import RedisLimiter

    return RedisLimiter(url, rl.redis_timeout_ms, rl.on_store_error, rl.local_share, rl.max_tracked_keys)


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through object.__setattr__, per request
class Applied:
    """What the stage found for one request: the decision for the tightest window and its headers (the
    X-RateLimit-* and RateLimit headers describe the window that decides).

    What a caller is *told* of its quota, in ``/v1/auth/test`` and ``X-Auth-Rate-Limit``, is the tier's own
    window, the hour when it has one (``999/1000`` for a standard key after one request, as the deployERP guide
    shows it), with the per-minute burst beside it. Both are worked out from the decision only when asked."""

    decision: Decision
    headers: list[Header]

    def debug_values(self) -> tuple[bytes, bytes | None]:
        """``remaining/limit`` of the reported window (X-Auth-Rate-Limit) and of the burst beside it
        (X-Auth-Rate-Limit-Burst; None for a tier of one window)."""
        d = self.decision
        w, left, _ = d.window_state(d.quota.reported)
        reported = b"%d" % left + w.of_text
        if d.quota.burst is None:
            return reported, None
        w, left, _ = d.window_state(d.quota.burst)
        return reported, b"%d" % left + w.of_text

    def public(self, tier: str) -> dict[str, Any]:
        """The ``rate_limit`` object of ``/v1/auth/test``: ``limit``, ``remaining``, ``reset`` and ``window`` of
        the reported window, the ``tier``, and ``burst`` (the same four of the burst window, or None)."""
        d = self.decision
        burst = d.quota.burst
        return {**self._window(d.quota.reported), "tier": tier,
                "burst": self._window(burst) if burst is not None else None}

    def _window(self, i: int) -> dict[str, Any]:
        d = self.decision
        w, left, booked = d.window_state(i)
        full_at = -(-(d.now_us + booked) // US)  # whole seconds, rounded up
        reset = datetime.fromtimestamp(full_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"limit": w.limit, "remaining": left, "reset": reset, "window": w.name}


UNLIMITED_DEBUG = b"unlimited"


class RateLimits:
    """Per-tier quotas compiled once, and the limiter they are checked against."""

    def __init__(self, settings: RateLimitSettings, limiter: Limiter | None) -> None:
        self.enabled = settings.enabled and limiter is not None
        self.limiter = limiter
        # An in-memory limiter answers at once: the pipeline then calls spend_now() instead of awaiting check().
        self.local = hasattr(limiter, "hit_now")
        self._quotas: dict[str, Quota | None] = {
            name: Quota.of(t.per_hour, t.per_minute) for name, t in settings.tiers.items()
        }
        self.default_tier = settings.default_tier
        self._default = self._quotas[settings.default_tier]

    def tier_of(self, principal: Any) -> str:
        record = getattr(principal, "record", None)
        tier = record.rate_limit_tier if record is not None else None
        return tier if tier is not None and tier in self._quotas else self.default_tier

    def _quota(self, principal: Any) -> tuple[Quota | None, str]:
        record = getattr(principal, "record", None)
        if record is not None:
            tier = record.rate_limit_tier
            return (self._quotas.get(tier, self._default) if tier is not None else self._default), record.id
        return self._default, "jwt:" + str(getattr(principal, "subject", ""))

    async def check(self, principal: Any, spend: bool = True) -> Applied | None:
        """Spend (or, with ``spend=False``, only look at) one request of ``principal``'s quota.

        None: the principal is not limited (unlimited tier, limits off, or Redis away with
        ``on_store_error: allow``). Raises :class:`RateLimited` (429) over the limit and
        :class:`RateLimitUnavailable` (503) when the limiter cannot answer and the configuration says deny."""
        if not self.enabled:
            return None
        quota, bucket = self._quota(principal)
        if quota is None:
            return None
        assert self.limiter is not None
        try:
            decision = await (self.limiter.hit(bucket, quota) if spend else self.limiter.peek(bucket, quota))
        except LimiterUnavailable:
            raise RateLimitUnavailable() from None
        return self._applied(quota, decision, spend)

    def spend_now(self, principal: Any) -> Applied | None:
        """:meth:`check` for an in-memory limiter (``local`` is true): the same answer without a coroutine."""
        if not self.enabled:
            return None
        quota, bucket = self._quota(principal)
        if quota is None:
            return None
        return self._applied(quota, self.limiter.hit_now(bucket, quota, time.time_ns() // 1000), True)  # type: ignore[union-attr]

    def _applied(self, quota: Quota, decision: Decision | None, spend: bool) -> Applied | None:
        if decision is None:
            return None
        headers = self.headers(quota, decision)
        if spend and not decision.allowed:
            retry = max(1, math.ceil(decision.retry_after))
            headers.append((_RETRY_AFTER, str(retry).encode()))
            raise RateLimited(headers)
        return Applied(decision, headers)

    @staticmethod
    def headers(quota: Quota, d: Decision) -> list[Header]:
        """The X-RateLimit-* trio (Reset is a Unix time, as GitHub's) and the IETF draft's
        ``RateLimit-Policy`` (every window) and ``RateLimit`` (the tightest window, ``t`` in seconds)."""
        w = quota.by_name[d.window]
        reset_in = math.ceil(d.reset_after)
        remaining = b"%d" % d.remaining
        t = _SECONDS[reset_in] if reset_in < len(_SECONDS) else b";t=%d" % reset_in
        return [
            # The limit decided against: the window's own, unless a fallback limited at a share of it.
            (_LIMIT, w.limit_text if w.limit == d.limit else b"%d" % d.limit),
            (_REMAINING, remaining),
            (_RESET, b"%d" % (math.ceil(d.now) + reset_in)),
            (_POLICY, quota.policy_header),
            (_STATE, w.state_text + remaining + t),
        ]

    async def start(self) -> None:
        start = getattr(self.limiter, "start", None)
        if start is not None:
            await start()

    async def close(self) -> None:
        if self.limiter is not None:
            await self.limiter.close()

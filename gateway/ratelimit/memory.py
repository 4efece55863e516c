"""In-memory limits for one process: a bounded TTL cache of per-key times; idle keys fall out."""

from __future__ import annotations

import time

from cachetools import TTLCache

from gateway.ratelimit import US, Decision, Quota, decide


class MemoryLimiter:
    def __init__(self, max_keys: int = 1_000_000, idle_seconds: float = 3600.0) -> None:
        # An entry untouched for the longest period is back at rest: dropping it changes nothing.
        self._state: TTLCache[str, list[int]] = TTLCache(maxsize=max_keys, ttl=idle_seconds)

    async def hit(self, bucket: str, quota: Quota) -> Decision:
        return self.hit_now(bucket, quota, time.time_ns() // 1000)

    def hit_now(self, bucket: str, quota: Quota, now: int) -> Decision:
        tats = self._state.get(bucket) or [0] * len(quota.windows)
        if len(tats) != len(quota.windows):  # the key's tier changed: start afresh
            tats = [0] * len(quota.windows)
        decision, new = decide(quota, tats, now, consume=True)
        if new is not None:
            self._state[bucket] = new
        return decision

    async def peek(self, bucket: str, quota: Quota) -> Decision:
        tats = self._state.get(bucket) or [0] * len(quota.windows)
        if len(tats) != len(quota.windows):
            tats = [0] * len(quota.windows)
        return decide(quota, tats, time.time_ns() // 1000, consume=False)[0]

    async def close(self) -> None:
        self._state.clear()


__all__ = ["MemoryLimiter", "US"]

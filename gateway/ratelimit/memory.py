"""In-memory limits for one process: a bounded dict of per-key GCRA times; keys at rest are dropped.

A key whose stored times are all in the past is at rest: GCRA would treat it exactly like a key it has never
seen, so dropping it changes no decision. The table is swept of such keys whenever it has doubled since the
last sweep (amortised constant work per new key, memory at most twice the keys in use), and when it reaches
``max_keys``; if it is still full after a sweep (more keys in use than ``max_keys``), the oldest eighth is
dropped, and those keys start afresh (they may get one more burst).
"""

from __future__ import annotations

import itertools
import time

from gateway.ratelimit import US, Decision, Quota, decide


class MemoryLimiter:
    def __init__(self, max_keys: int = 1_000_000) -> None:
        self._max_keys = max(1, max_keys)
        self._state: dict[str, list[int]] = {}
        self._swept_at = 0  # the table's size after the last sweep

    async def hit(self, bucket: str, quota: Quota) -> Decision:
        return self.hit_now(bucket, quota, time.time_ns() // 1000)

    def hit_now(self, bucket: str, quota: Quota, now: int) -> Decision:
        state = self._state
        tats = state.get(bucket)
        if tats is None or len(tats) != len(quota.windows):  # new, or the key's tier changed: start afresh
            tats = [0] * len(quota.windows)
        decision, new = decide(quota, tats, now, consume=True)
        if new is not None:
            if bucket not in state and len(state) >= min(self._max_keys, max(2 * self._swept_at, 1024)):
                self._sweep(now)
            state[bucket] = new
        return decision

    async def peek(self, bucket: str, quota: Quota) -> Decision:
        tats = self._state.get(bucket)
        if tats is None or len(tats) != len(quota.windows):
            tats = [0] * len(quota.windows)
        return decide(quota, tats, time.time_ns() // 1000, consume=False)[0]

    def _sweep(self, now: int) -> None:
        state = self._state
        for bucket in [b for b, tats in state.items() if max(tats) <= now]:
            del state[bucket]
        if len(state) >= self._max_keys:
            for bucket in list(itertools.islice(state, max(1, len(state) // 8))):
                del state[bucket]
        self._swept_at = len(state)

    async def close(self) -> None:
        self._state.clear()


__all__ = ["MemoryLimiter", "US"]

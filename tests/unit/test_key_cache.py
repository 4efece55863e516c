"""The key cache's bounds, against a real SQLite store file: expired entries leave a few at a time as new
ones arrive (no long sweep), the size never passes max_size, and a hit is answered without the store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gateway.keys.cache import UNKNOWN, KeyCache
from gateway.keys.sqlite import SQLiteStore


def test_expired_entries_leave_as_new_ones_arrive_and_size_is_bounded(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "keys.db")
    cache = KeyCache(store, ttl_seconds=0.2, max_size=500)

    async def run() -> None:
        for i in range(2000):  # unknown keys are cached too (as None)
            assert await cache.lookup(f"{i:064x}") is None
        assert len(cache) == 500  # full: the oldest went first
        assert cache.peek(f"{1999:064x}") is None and cache.peek(f"{0:064x}") is UNKNOWN
        time.sleep(0.25)  # every entry has expired
        for i in range(200):
            await cache.lookup(f"new{i:061x}")
        # 200 inserts dropped up to 4 expired entries each: the 500 old ones are gone, no sweep was needed.
        assert len(cache) == 200
        assert cache.peek(f"{1999:064x}") is UNKNOWN

    asyncio.run(run())
    asyncio.run(store.close())

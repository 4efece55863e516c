"""The usage flush is written off the event loop, on a real SQLite file.

A flush of 20,000 rows with ``synchronous=FULL`` takes a few hundred milliseconds; it runs on the store's
usage thread and connection, so key lookups on the loop go on meanwhile and the loop never stalls for long.
The counts land exactly, closing the store (or stopping the recorder) during a flush loses nothing, and a
write after close is a StoreError.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.keys.record import KeyRecord
from gateway.keys.sqlite import SQLiteStore
from gateway.keys.store import StoreError, UsageUpdate
from gateway.keys.usage import UsageRecorder

KEYS = 20_000
STALL_MS = 50.0


def make_store(path: Path, count: int = KEYS) -> list[KeyRecord]:
    """``count`` keys in a new store file, written in one transaction (setup only: the store's own
    transaction helper, so this takes a second rather than one fsync per key)."""
    records = [KeyRecord(id=f"key_{i:06d}", key_hash=f"{i:064x}", hint=f"{i % 10000:04d}", name=f"k{i}",
                         permissions=("servers:read",)) for i in range(count)]

    async def fill() -> None:
        store = SQLiteStore(path)
        with store._write() as db:
            for r in records:
                SQLiteStore._insert(db, r)
        await store.close()

    asyncio.run(fill())
    return records


def counts_on_disk(path: Path) -> dict[str, tuple[int, str | None, str | None]]:
    db = sqlite3.connect(str(path))
    try:
        return {row[0]: row[1:] for row in
                db.execute("SELECT id, request_count, last_used_at, last_used_ip FROM api_keys")}
    finally:
        db.close()


class LagMeter:
    """The longest the loop went without running a 2 ms ticker (how long anything held the loop)."""

    def __init__(self) -> None:
        self.max_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            self.max_ms = max(self.max_ms, (now - last) * 1000 - 2)
            last = now

    def __enter__(self) -> LagMeter:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def test_lookups_go_on_during_a_large_flush(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    records = make_store(path)
    when = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    updates = [UsageUpdate(r.id, i % 7 + 1, when, f"10.0.{i // 256 % 256}.{i % 256}")
               for i, r in enumerate(records)]

    async def main() -> tuple[float, float, int, float]:
        store = SQLiteStore(path)
        probe = records[KEYS // 2]
        try:
            assert await store.get_by_hash(probe.key_hash) is not None  # warm the loop's connection
            with LagMeter() as lag:
                started = time.perf_counter()
                flush = asyncio.ensure_future(store.record_usage(updates))
                reads, slowest = 0, 0.0
                while not flush.done():
                    t0 = time.perf_counter()
                    assert (await store.get_by_hash(probe.key_hash)) is not None
                    slowest = max(slowest, time.perf_counter() - t0)
                    reads += 1
                    await asyncio.sleep(0.005)
                await flush
                took = time.perf_counter() - started
            return lag.max_ms, slowest * 1000, reads, took * 1000
        finally:
            await store.close()

    # The gateway freezes its start-up heap (gateway.app._settle_heap); so does this test, so that a full
    # collection of what earlier tests left in this process is not counted as a stall of the flush.
    gc.collect()
    gc.freeze()
    try:
        lag_ms, slowest_ms, reads, took_ms = asyncio.run(main())
    finally:
        gc.unfreeze()
    print(f"flush of {KEYS} rows {took_ms:.0f} ms; {reads} lookups meanwhile, slowest {slowest_ms:.1f} ms; "
          f"longest loop stall {lag_ms:.1f} ms")
    # On the loop the flush held it for its whole length and no lookup ran while it was in flight.
    assert reads >= 3, f"only {reads} lookups ran during a {took_ms:.0f} ms flush"
    assert lag_ms < STALL_MS, f"the loop stalled {lag_ms:.0f} ms during the flush ({took_ms:.0f} ms)"
    assert slowest_ms < STALL_MS

    on_disk = counts_on_disk(path)
    expected = {u.key_id: (u.count, "2026-11-23T12:00:00Z", u.last_used_ip) for u in updates}
    assert on_disk == expected


def test_close_during_a_flush_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    records = make_store(path)
    when = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    async def main() -> None:
        store = SQLiteStore(path)
        first = asyncio.ensure_future(store.record_usage([UsageUpdate(r.id, 2, when, "10.0.0.1") for r in records]))
        second = asyncio.ensure_future(store.record_usage([UsageUpdate(r.id, 1, when, "10.0.0.2")
                                                           for r in records[:100]]))
        await asyncio.sleep(0.01)  # the first write is under way in the usage thread
        assert not first.done()
        await store.close()
        # Both writes were acknowledged by the time close returned: nothing submitted is dropped.
        assert first.done() and second.done()
        await first
        await second
        with pytest.raises(StoreError, match="closed") as info:
            await store.record_usage([UsageUpdate(records[0].id, 1, when, None)])
        assert "key_" not in str(info.value)

    asyncio.run(main())
    on_disk = counts_on_disk(path)
    assert sum(c for c, _, _ in on_disk.values()) == 2 * KEYS + 100
    assert on_disk[records[0].id] == (3, "2026-11-23T12:00:00Z", "10.0.0.2")
    assert on_disk[records[-1].id] == (2, "2026-11-23T12:00:00Z", "10.0.0.1")


def test_recorder_stopped_mid_flush_loses_no_count(tmp_path: Path) -> None:
    """UsageRecorder.stop cancels its flushing task while a write is in flight: the write finishes, the
    uses noted meanwhile go out in the last flush, and every use is counted once."""
    path = tmp_path / "keys.db"
    records = make_store(path)

    async def main() -> int:
        store = SQLiteStore(path)
        recorder = UsageRecorder(store, flush_seconds=0.01)
        for i, r in enumerate(records):
            for _ in range(i % 3 + 1):
                recorder.note(r.id, "10.1.1.1")
        recorder.start()
        deadline = time.monotonic() + 5
        while recorder._writing is None:  # wait for the timer's flush to be in flight
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        for r in records[:500]:  # noted while the big write runs: the next batch
            recorder.note(r.id, "10.2.2.2")
        # Two flushes asked for at once run one after the other, each with what it took.
        await asyncio.gather(recorder.flush(), recorder.flush())
        for r in records[:10]:
            recorder.note(r.id, "10.3.3.3")
        await recorder.stop()
        await store.close()
        return sum(i % 3 + 1 for i in range(KEYS)) + 500 + 10

    noted = asyncio.run(main())
    on_disk = counts_on_disk(path)
    assert sum(c for c, _, _ in on_disk.values()) == noted
    assert on_disk[records[0].id][0] == 1 + 1 + 1 and on_disk[records[0].id][2] == "10.3.3.3"
    assert on_disk[records[600].id][0] == 600 % 3 + 1

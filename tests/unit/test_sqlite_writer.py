"""The SQLite store writes in its own thread: a write waiting for the file's write lock leaves the event loop
free, reads go on meanwhile, and close() waits for the queued writes and ends the thread.

A real SQLite file and a second real connection that holds the write lock (as another process would).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from gateway.keys.record import AuditEvent, KeyRecord
from gateway.keys.sqlite import SQLiteStore
from gateway.keys.store import StoreError


def record(key_id: str) -> KeyRecord:
    return KeyRecord(id=key_id, key_hash=f"hash-{key_id}", hint="abcd", name=key_id, permissions=("servers:read",))


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sqlite-writer")]


def test_a_write_waiting_on_the_lock_leaves_the_loop_free_and_completes_after(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    store = SQLiteStore(path)

    async def run() -> None:
        await store.add(record("first"))
        with closing(sqlite3.connect(str(path), isolation_level=None, timeout=10)) as other:
            other.execute("BEGIN EXCLUSIVE")
            event = AuditEvent(action="create", key_id="second", actor="test")
            add = asyncio.ensure_future(store.add(record("second"), event))
            # The loop keeps turning (10 ms ticks) and reads keep answering while the add waits for the lock.
            ticks, start, late = 0, time.monotonic(), 0.0
            while time.monotonic() - start < 0.6:
                before = time.monotonic()
                await asyncio.sleep(0.01)
                late = max(late, time.monotonic() - before)
                assert (await store.get("first")) is not None
                ticks += 1
            assert not add.done()
            other.execute("ROLLBACK")
        await asyncio.wait_for(add, 5)
        assert late < 0.3, f"the loop stalled {late:.2f} s while a write waited on the lock"
        assert ticks > 10
        assert (await store.get("second")) is not None
        assert [e.action for e in await store.audit_log("second")] == ["create"]
        assert len(writer_threads()) == 1

        # a change answers the record as its transaction wrote it
        revoked = await store.revoke("second", actor="test")
        assert revoked is not None and revoked.revoked_at is not None
        assert revoked == await store.get("second")

        await store.close()
        assert writer_threads() == []  # close() ended the thread
        with pytest.raises(StoreError, match="closed"):
            await store.add(record("third"))

    asyncio.run(run())

"""Two figures of the PostgreSQL key store, on a PostgreSQL server this script starts itself (initdb in a
temporary directory, a free loopback port; tests/support/postgres.py), removed at the end:

* a key lookup by keyed hash (what a cache miss costs the gate): median and p99 over 1,000 lookups of 200 keys;
* a revocation reaching another process: from the start of ``revoke`` on one store to the NOTIFY arriving at a
  second store's listener, over 50 revocations.

Run from the repository root: ``PYTHONPATH=. .venv/bin/python loadtests/postgres_store_latency.py``
"""

from __future__ import annotations

import asyncio
import statistics
import time

from gateway.config.settings import KeyFormat
from gateway.keys.hashing import Pepper
from gateway.keys.postgres.listener import InvalidationListener
from gateway.keys.postgres.store import PostgresStore
from gateway.keys.service import create_key, revoke_key
from tests.support.postgres import PostgresServer, fresh_db

PEPPER = Pepper(b"latency-measurement-secret-0123456789", "measurement")


class Arrivals:
    """Stands in for the key cache: notes when each keyed hash is announced."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def invalidate(self, key_hash: str | None = None) -> None:
        if key_hash is not None:
            self.at[key_hash] = time.perf_counter()


async def measure(url: str) -> None:
    writer, reader = PostgresStore(url, 2000), PostgresStore(url, 2000)
    records = [(await create_key(writer, PEPPER, KeyFormat(), name=f"k{i}", permissions=["servers:read"]))[1]
               for i in range(200)]
    took = []
    for record in records * 5:
        started = time.perf_counter()
        await reader.get_by_hash(record.key_hash)
        took.append(time.perf_counter() - started)
    took.sort()
    print(f"lookup by keyed hash: median {statistics.median(took) * 1e3:.2f} ms, "
          f"p99 {took[int(len(took) * 0.99)] * 1e3:.2f} ms (n={len(took)})")

    arrivals = Arrivals()
    listener = InvalidationListener(reader, arrivals)
    listener.start()
    while not listener.connected:
        await asyncio.sleep(0.01)
    delays = []
    for record in records[:50]:
        started = time.perf_counter()
        await revoke_key(writer, record.id)
        while record.key_hash not in arrivals.at:
            await asyncio.sleep(0.0005)
        delays.append(arrivals.at[record.key_hash] - started)
    delays.sort()
    print(f"revoke on one store -> NOTIFY at another's listener: median {statistics.median(delays) * 1e3:.2f} ms, "
          f"max {delays[-1] * 1e3:.2f} ms (n={len(delays)})")
    await listener.stop()
    await writer.close()
    await reader.close()


def main() -> None:
    server = PostgresServer()
    try:
        asyncio.run(measure(fresh_db(server)))
    finally:
        server.remove()


if __name__ == "__main__":
    main()

"""Databases of the session redis-server for the Redis tests: each test takes the next of DBs 1-15, flushed.

Tests run one at a time in a session, so flushing at the start is enough to give each its own empty DB.
"""

from __future__ import annotations

import itertools

import redis

from tests.support.procs import RedisServer

_numbers = itertools.cycle(range(1, 16))


def base_url(server: RedisServer | str) -> str:
    return server if isinstance(server, str) else server.url


def fresh_db(server: RedisServer | str) -> str:
    """The URL of the next database, emptied."""
    base = base_url(server).rsplit("/", 1)[0]
    url = f"{base}/{next(_numbers)}"
    with redis.Redis.from_url(url) as r:
        r.flushdb()
    return url


def dump(url: str) -> bytes:
    """Every key name and value in the database, for checks that no key value was stored."""
    out: list[bytes] = []
    with redis.Redis.from_url(url) as r:
        for name in r.scan_iter():
            out.append(name)
            kind = r.type(name)
            if kind == b"hash":
                for k, v in r.hgetall(name).items():
                    out += [k, v]
            elif kind == b"list":
                out += r.lrange(name, 0, -1)
            elif kind == b"zset":
                out += r.zrange(name, 0, -1)
            elif kind == b"string":
                out.append(r.get(name) or b"")
    return b"\n".join(out)

"""The key cache: a bounded TTL cache in front of the store, keyed by the keyed hash.

Known and unknown keys are cached alike, so a cache hit (valid, revoked or unknown) does no store I/O. Each
entry is compiled once: permissions as a frozenset, the allowlist as ``ipaddress`` networks, expiry as a
timestamp and the identity headers as bytes.

A change made elsewhere (the CLI, another process) is seen once the entry's TTL (``cache.ttl_seconds``) runs
out; with a Redis store every change is also announced on a pub/sub channel and
:class:`gateway.keys.redis.InvalidationListener` drops the entry at once (within a second). A lookup that was
already reading the store when an invalidation arrived does not cache what it read (it may predate the
change): every invalidation bumps a generation number that a lookup checks before it stores its answer.

Concurrent misses for the same key share one store read (a burst of requests with a key that just fell out of
the cache costs one round trip, not hundreds).

The cache is an ordered dict of ``(expires, entry)``: a hit is one dict lookup and one clock read (cachetools'
TTLCache, used before, cost several times that in timer bookkeeping on every get). Entries are kept in expiry
order; each insert drops up to four expired ones from the front and, when the cache is full, the oldest one, so
the cache holds about the keys seen in the last ``ttl_seconds`` and never stops for a long sweep (a whole-dict
sweep at ``max_size`` used to hold the event loop ~100 ms with 100,000 keys).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from time import monotonic

from gateway.keys.record import KeyRecord
from gateway.keys.store import KeyStore
from gateway.network import IPNetwork, parse_networks


@dataclass(frozen=True, slots=True)
class AuthKey:
    record: KeyRecord
    permissions: frozenset[str]
    networks: tuple[IPNetwork, ...]
    expires_ts: float | None
    revoked: bool
    id_header: bytes
    permissions_header: bytes
    environment_header: bytes
    # What the upstream is told about the caller.
    upstream_headers: tuple[tuple[str, str], ...]
    # When the key is due for rotation (a debug header says so past this time), or None.
    rotation_due_ts: float | None

    @property
    def environment(self) -> str:
        return self.record.environment

    @property
    def actor(self) -> str:
        return self.record.id

    @classmethod
    def compile(cls, record: KeyRecord) -> AuthKey:
        """The key's compiled form. What keys share (a permission set, an allowlist, an environment) is
        compiled once and shared by them all: a cached key costs ~1.0 KB instead of ~1.9 KB (see
        :func:`_compiled`)."""
        perms, nets, env = _compiled(tuple(record.permissions), tuple(record.allowed_ips), record.environment)
        due = record.rotation_due_at
        return cls(
            record=record,
            permissions=perms[0],
            networks=nets,
            expires_ts=record.expires_at.timestamp() if record.expires_at else None,
            revoked=record.revoked_at is not None,
            id_header=record.id.encode("ascii"),
            permissions_header=perms[1],
            environment_header=env[0],
            upstream_headers=(("x-auth-key-id", record.id), perms[2], env[1]),
            rotation_due_ts=due.timestamp() if due is not None and record.rotated_to is None else None,
        )


# Compiled parts shared between keys, by what they are compiled from. Cleared when full: keys that all differ
# cost a lookup here and the memory they cost before, never more.
_PERMISSIONS: dict[tuple[str, ...], tuple[frozenset[str], bytes, tuple[str, str]]] = {}
_NETWORKS: dict[tuple[str, ...], tuple[IPNetwork, ...]] = {}
_ENVIRONMENTS: dict[str, tuple[bytes, tuple[str, str]]] = {}
_SHARED_MAX = 4096


def _compiled(
    permissions: tuple[str, ...], allowed_ips: tuple[str, ...], environment: str
) -> tuple[tuple[frozenset[str], bytes, tuple[str, str]], tuple[IPNetwork, ...], tuple[bytes, tuple[str, str]]]:
    """(permission set, its header value, its upstream header), the allowlist's networks and (environment
    header value, its upstream header), each made once for all the keys that have it.

    Measured with tracemalloc over 20,000 keys read from SQLite through :meth:`KeyCache.lookup` (permissions
    ``servers:read``, allowlist ``127.0.0.0/8``): 1,929 bytes per cached key before, of which the frozenset
    (216), the network objects (104), the header values and tuples (~330) were the same for every key.
    """
    perms = _PERMISSIONS.get(permissions)
    if perms is None:
        if len(_PERMISSIONS) >= _SHARED_MAX:
            _PERMISSIONS.clear()
        text = ",".join(permissions)
        perms = _PERMISSIONS[permissions] = (frozenset(permissions), text.encode("ascii"),
                                             ("x-auth-permissions", text))
    nets = _NETWORKS.get(allowed_ips)
    if nets is None:
        if len(_NETWORKS) >= _SHARED_MAX:
            _NETWORKS.clear()
        nets = _NETWORKS[allowed_ips] = parse_networks(allowed_ips)
    env = _ENVIRONMENTS.get(environment)
    if env is None:
        if len(_ENVIRONMENTS) >= _SHARED_MAX:
            _ENVIRONMENTS.clear()
        env = _ENVIRONMENTS[environment] = (environment.encode("ascii"), ("x-auth-environment", environment))
    return perms, nets, env


UNKNOWN: object = object()  # what peek() returns for a hash the cache holds nothing (current) about


class KeyCache:
    def __init__(self, store: KeyStore, ttl_seconds: float, max_size: int) -> None:
        self.store = store
        self._ttl = ttl_seconds
        self._max_size = max(1, max_size)
        # key hash -> (monotonic expiry, compiled key or None for "no such key"); None: caching is off.
        self._entries: OrderedDict[str, tuple[float, AuthKey | None]] | None = (
            OrderedDict() if ttl_seconds > 0 else None
        )
        self.hits = 0
        self.misses = 0
        self._generation = 0
        self._loading: dict[str, asyncio.Task[AuthKey | None]] = {}

    def peek(self, key_hash: str) -> AuthKey | None | object:
        """The cached answer for ``key_hash`` (a key, or None for "no such key"), or :data:`UNKNOWN`."""
        entries = self._entries
        if entries is not None:
            entry = entries.get(key_hash)
            if entry is not None:
                if entry[0] > monotonic():
                    self.hits += 1
                    return entry[1]
                del entries[key_hash]
        return UNKNOWN

    def _put(self, key_hash: str, compiled: AuthKey | None) -> None:
        """Insert at the end. Every entry lives ``ttl`` seconds, so insertion order is expiry order: each insert
        drops a few expired entries from the front (so they never pile up into one long sweep), and a full
        cache drops its oldest entry."""
        entries = self._entries
        assert entries is not None
        now = monotonic()
        entries.pop(key_hash, None)
        for _ in range(4):
            if not entries or next(iter(entries.values()))[0] > now:
                break
            entries.popitem(last=False)
        if len(entries) >= self._max_size:
            entries.popitem(last=False)
        entries[key_hash] = (now + self._ttl, compiled)

    async def lookup(self, key_hash: str) -> AuthKey | None:
        entry = self.peek(key_hash)
        if entry is not UNKNOWN:
            return entry  # type: ignore[return-value]
        self.misses += 1
        task = self._loading.get(key_hash)
        if task is None:
            # A task of its own, so a client that goes away does not cancel the read the others wait for.
            task = asyncio.ensure_future(self._load(key_hash))
            self._loading[key_hash] = task
            task.add_done_callback(lambda t, h=key_hash: self._done(h, t))  # type: ignore[misc]
        return await asyncio.shield(task)

    def _done(self, key_hash: str, task: asyncio.Task[AuthKey | None]) -> None:
        if self._loading.get(key_hash) is task:
            del self._loading[key_hash]
        if not task.cancelled():
            task.exception()  # retrieved here: a failure nobody waited for is not "never retrieved"

    async def _load(self, key_hash: str) -> AuthKey | None:
        generation = self._generation
        record = await self.store.get_by_hash(key_hash)
        compiled = AuthKey.compile(record) if record is not None else None
        if self._entries is not None and generation == self._generation:
            # Keyed by the record's own copy of the hash (equal to key_hash): one 113-byte string per entry
            # instead of two.
            # (The store found the record by this hash, so the two are equal; the pipeline still compares them
            # in constant time before it trusts the entry.)
            self._put(record.key_hash if record is not None else key_hash, compiled)
        return compiled

    def invalidate(self, key_hash: str | None = None) -> None:
        """Forget one key (by keyed hash), or every key."""
        self._generation += 1
        if self._entries is None:
            return
        if key_hash is None:
            self._entries.clear()
        else:
            self._entries.pop(key_hash, None)

    def __len__(self) -> int:
        return len(self._entries) if self._entries is not None else 0

"""Redis key store: the same behaviour as the SQLite store, shared by every gateway process and host.

Layout (every name carries the hash tag ``{gw}``, so on Redis Cluster they all live in one slot and the
scripts below may touch several of them atomically)::

    {gw}:key:<id>          hash: the record's fields (never a value; the keyed hash is one field)
    {gw}:hash:<keyed hash> string: the id, to look a key up by the hash of the value presented
    {gw}:ids               sorted set of ids scored by created_at (listing order: created_at, id)
    {gw}:audit             list of audit events (JSON), oldest first
    {gw}:audit:<id>        the same events, per key

Every change is one Lua script: the check (exists, revoked, already rotated, expired) and the write, the audit
row and the invalidation message happen together or not at all. Each script ends by publishing the keyed
hash of every key it changed on :data:`INVALIDATE_CHANNEL`, so every gateway process drops that cache entry
at once (see :mod:`gateway.keys.cache`).

Every call is bounded by ``timeout_ms`` (connect and each read): an absent or hung Redis costs a request at
most that long, and the caller sees :class:`StoreError`. A timeout is never retried; a broken connection
(reset or refused, as a pooled connection is after Redis restarts) is retried once at once.

The URL may name one server, the master of a Sentinel service or a Redis Cluster: :mod:`gateway.redisconn`
builds the client, and every script here touches only ``{gw}`` keys, so on a Cluster each runs on one node.
"""

from __future__ import annotations

import asyncio
import builtins  # the stores have a list() method: annotations after it name the type this way
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError

from gateway import redisconn
from gateway.background import Background
from gateway.keys.record import AuditEvent, KeyRecord, parse_iso, to_iso, utcnow
from gateway.keys.redis_users import INVALIDATE_CHANNEL, RedisUsers, usage_daily_key
from gateway.keys.store import Conflict, StoreError, UsageUpdate
from gateway.redisconn import POOL_WAIT  # noqa: F401 - re-exported from its old home
from gateway.redisurl import RedisURLError, redacted

log = logging.getLogger("gateway.store")

NS = "{gw}"
_IDS = f"{NS}:ids"
_AUDIT = f"{NS}:audit"

_FIELDS = (
    "id", "key_hash", "hint", "name", "permissions", "allowed_ips", "environment", "created_at", "expires_at",
    "revoked_at", "rate_limit_tier", "description", "created_by", "auto_rotate", "rotation_period",
    "rotated_from", "rotated_to", "last_used_at", "last_used_ip", "request_count", "grace_period",
    "notification_email", "held_value", "notices",
)
_JSON_FIELDS = frozenset({"permissions", "allowed_ips"})
_TIME_FIELDS = frozenset({"created_at", "expires_at", "revoked_at", "last_used_at"})
_INT_FIELDS = frozenset({"rotation_period", "request_count", "grace_period"})
UPDATABLE = frozenset({"name", "permissions", "allowed_ips", "rate_limit_tier", "expires_at", "description",
                       "auto_rotate", "rotation_period", "grace_period", "notification_email"})

# --- scripts --------------------------------------------------------------------------------------------------
# Shared prologue: ARGV[1] is the invalidation channel.


def _typed(types: str, body: str) -> str:
    """``body`` behind a check that every key it names holds its type (or nothing yet), made before any write.
    Redis does not undo what a script wrote before a command failed, so a key of the wrong type (an operator's
    mistake, another program sharing the database) found halfway would leave a change half made: a key revoked
    with no audit line and no invalidation. ``types`` lists one type per KEYS entry; ``*hash`` means every key."""
    if types.startswith("*"):
        want = f"local function want(i) return '{types[1:]}' end"
    else:
        names = ", ".join(f"'{t}'" for t in types.split())
        want = f"local types = {{{names}}}\nlocal function want(i) return types[i] end"
    return f"""{want}
for i = 1, #KEYS do
  local have = redis.call('TYPE', KEYS[i])['ok']
  if have ~= 'none' and have ~= want(i) then
    local name = KEYS[i]
    if string.find(name, ':hash:', 1, true) then name = '{{gw}}:hash:<keyed hash>' end
    return redis.error_reply('WRONGTYPE gateway store key ' .. name .. ' holds a ' .. have .. ', not a ' .. want(i))
  end
end
{body}"""


_GET_BY_HASH = """
local id = redis.call('GET', KEYS[1])
if not id then return false end
return redis.call('HGETALL', ARGV[1] .. id)
"""

# KEYS: key, hash index, ids, audit, key audit. ARGV: channel, hash, id, score, audit json ('' for none),
# then field/value pairs.
_ADD = _typed("hash string zset list list", """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('SET', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
if ARGV[5] ~= '' then
  redis.call('RPUSH', KEYS[4], ARGV[5])
  redis.call('RPUSH', KEYS[5], ARGV[5])
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
""")

# KEYS: key, audit, key audit. ARGV: channel, audit json, number of pairs to set, pairs..., fields to delete...
_UPDATE = _typed("hash list list", """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(ARGV[3])
if n > 0 then
  local pairs_ = {}
  for i = 4, 3 + 2 * n do pairs_[#pairs_ + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(pairs_))
end
for i = 4 + 2 * n, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('PUBLISH', ARGV[1], redis.call('HGET', KEYS[1], 'key_hash'))
return 1
""")

# KEYS: key, audit, key audit. ARGV: channel, now (ISO), audit json.
_REVOKE = _typed("hash list list", """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'revoked_at') == 1 then return 2 end
redis.call('HSET', KEYS[1], 'revoked_at', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('PUBLISH', ARGV[1], redis.call('HGET', KEYS[1], 'key_hash'))
return 1
""")

# KEYS: old key, new key, new hash index, ids, audit, old key audit.
# ARGV: channel, now (ISO), old expires_at (ISO), new id, new hash, new score, audit json, new field/value pairs.
_ROTATE = _typed("hash hash string zset list list", """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local old = redis.call('HMGET', KEYS[1], 'revoked_at', 'rotated_to', 'expires_at', 'key_hash')
if old[1] then return {'revoked'} end
if old[2] then return {'rotated', old[2]} end
local expires = ARGV[3]
if old[3] then
  if old[3] <= ARGV[2] then return {'expired'} end
  if old[3] < expires then expires = old[3] end  -- rotation never extends a key's life
end
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then return {'exists'} end
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('SET', KEYS[3], ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[4])
redis.call('HSET', KEYS[1], 'expires_at', expires, 'rotated_to', ARGV[4])
redis.call('RPUSH', KEYS[5], ARGV[7])
redis.call('RPUSH', KEYS[6], ARGV[7])
redis.call('PUBLISH', ARGV[1], old[4])
redis.call('PUBLISH', ARGV[1], ARGV[5])
return {'ok'}
""")

# KEYS: key, audit, key audit. ARGV: audit json. The held value, erased as it is read: one caller gets it.
_TAKE_HELD = _typed("hash list list", """
local held = redis.call('HGET', KEYS[1], 'held_value')
if not held then return false end
redis.call('HDEL', KEYS[1], 'held_value')
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[1])
return held
""")

# KEYS: key. ARGV: the notices (JSON; '' for none). Only a key that exists (a deleted one is not made again).
_SET_NOTICES = _typed("hash", """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '' then redis.call('HDEL', KEYS[1], 'notices') else redis.call('HSET', KEYS[1], 'notices', ARGV[1]) end
return 1
""")

# KEYS: two per update: the key, and its per-day counts (gateway.keys.redis_users). ARGV: quadruples of count,
# last_used_at (ISO), last_used_ip ('' for none), UTC day.
_USAGE = _typed("*hash", """
for i = 1, #KEYS / 2 do
  local key, daily = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('EXISTS', key) == 1 then
    local count, at, ip, day = ARGV[4 * i - 3], ARGV[4 * i - 2], ARGV[4 * i - 1], ARGV[4 * i]
    local last = redis.call('HGET', key, 'last_used_at')
    redis.call('HINCRBY', key, 'request_count', count)
    redis.call('HINCRBY', daily, day, count)
    if (not last) or last <= at then
      if ip == '' then
        redis.call('HDEL', key, 'last_used_ip')
      else
        redis.call('HSET', key, 'last_used_ip', ip)
      end
    end
    if (not last) or last < at then redis.call('HSET', key, 'last_used_at', at) end
  end
end
return 1
""")

# KEYS: audit, then one per-key audit list per event. ARGV: the events (JSON).
_APPEND_AUDIT = _typed("*list", """
for i = 1, #ARGV do
  redis.call('RPUSH', KEYS[1], ARGV[i])
  redis.call('RPUSH', KEYS[i + 1], ARGV[i])
end
return 1
""")


def _key(key_id: str) -> str:
    return f"{NS}:key:{key_id}"


def _hash_key(key_hash: str) -> str:
    return f"{NS}:hash:{key_hash}"


def _key_audit(key_id: str) -> str:
    return f"{NS}:audit:{key_id}"


def _encode(name: str, value: Any) -> str | None:
    """A field as stored; None means absent."""
    if value is None:
        return None
    if name in _JSON_FIELDS:
        return json.dumps(list(value))
    if name in _TIME_FIELDS:
        return to_iso(value)
    if name == "auto_rotate":
        return "1" if value else "0"
    return str(value)


def _pairs(record: KeyRecord) -> list[str]:
    out: list[str] = []
    for name in _FIELDS:
        value = _encode(name, getattr(record, name))
        if value is not None:
            out += [name, value]
    return out


def _decode(raw: Mapping[bytes, bytes] | Sequence[bytes]) -> KeyRecord:
    if not isinstance(raw, Mapping):  # HGETALL through a script: a flat list
        it = iter(raw)
        raw = dict(zip(it, it, strict=True))
    data = {k.decode(): v.decode() for k, v in raw.items()}
    values: dict[str, Any] = {}
    for name in _FIELDS:
        text = data.get(name)
        if text is None:
            continue
        if name in _JSON_FIELDS:
            values[name] = tuple(json.loads(text))
        elif name in _TIME_FIELDS:
            values[name] = parse_iso(text)
        elif name == "auto_rotate":
            values[name] = text == "1"
        elif name in _INT_FIELDS:
            values[name] = int(text)
        else:
            values[name] = text
    return KeyRecord(**values)


def _event_json(event: AuditEvent) -> str:
    return json.dumps({"at": to_iso(event.at), "actor": event.actor, "action": event.action,
                       "key_id": event.key_id, "details": event.details}, default=str, separators=(",", ":"))


def _event(text: bytes) -> AuditEvent:
    d = json.loads(text)
    return AuditEvent(at=parse_iso(d["at"]), actor=d["actor"], action=d["action"], key_id=d["key_id"],
                      details=d["details"])


def client(url: str, timeout_ms: float, max_connections: int = 64) -> Any:
    """A client for any Redis URL (one server, Sentinel, Cluster: :func:`gateway.redisconn.connect`) whose
    every exchange is bounded by ``timeout_ms``; a URL that cannot work is a :class:`StoreError`."""
    try:
        return redisconn.connect(url, timeout_ms, max_connections)
    except RedisURLError as exc:
        raise StoreError(f"{redacted(url)}: not a usable Redis URL ({exc})") from None


class RedisStore(RedisUsers):
    """The :class:`gateway.keys.store.KeyStore` protocol on Redis (redis-py asyncio, hiredis parser)."""

    def __init__(self, url: str, timeout_ms: float = 50.0) -> None:
        self.url = url
        self.timeout_ms = timeout_ms
        self._where = redacted(url)
        self.redis = client(url, timeout_ms)
        self._get_by_hash = self.redis.register_script(_GET_BY_HASH)
        self._add = self.redis.register_script(_ADD)
        self._update = self.redis.register_script(_UPDATE)
        self._revoke = self.redis.register_script(_REVOKE)
        self._rotate = self.redis.register_script(_ROTATE)
        self._usage = self.redis.register_script(_USAGE)
        self._append_audit = self.redis.register_script(_APPEND_AUDIT)
        self._take_held = self.redis.register_script(_TAKE_HELD)
        self._set_notices = self.redis.register_script(_SET_NOTICES)
        self._register_user_scripts()

    def __repr__(self) -> str:
        return f"RedisStore({self._where!r})"

    def _fail(self, exc: BaseException, what: str) -> StoreError:
        text = str(exc)
        if text.startswith("WRONGTYPE gateway store key"):  # our scripts' own refusal: names a key, no value
            return StoreError(f"{self._where}: {what} refused, nothing written: {text[10:]}")
        return StoreError(f"{self._where}: {what} failed: {exc.__class__.__name__}")

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            return await coro
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._fail(exc, what) from None

    # --- reads -----------------------------------------------------------------------------------------------

    async def get_by_hash(self, key_hash: str) -> KeyRecord | None:
        raw = await self._call("lookup", self._get_by_hash(keys=[_hash_key(key_hash)], args=[f"{NS}:key:"]))
        return _decode(raw) if raw else None

    async def get(self, key_id: str) -> KeyRecord | None:
        raw = await self._call("read", self.redis.hgetall(_key(key_id)))
        return _decode(raw) if raw else None

    async def list(
        self, *, environment: str | None = None, status: str | None = None, now: datetime | None = None,
        limit: int | None = None, offset: int = 0, created_by: str | None = None, watched: bool = False,
    ) -> list[KeyRecord]:
        now = now or utcnow()
        ids = await self._call("list", self.redis.zrange(_IDS, 0, -1))
        out: list[KeyRecord] = []
        skipped = 0
        batch = 500
        for start in range(0, len(ids), batch):
            pipe = self.redis.pipeline(transaction=False)
            for key_id in ids[start:start + batch]:
                pipe.hgetall(_key(key_id.decode()))
            for raw in await self._call("list", pipe.execute()):
                if not raw:
                    continue
                record = _decode(raw)
                if watched and not (record.auto_rotate or record.notification_email):
                    continue
                if environment is not None and record.environment != environment:
                    continue
                if created_by is not None and record.created_by != created_by:
                    continue
                if status is not None and record.status(now) != status:
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                out.append(record)
                if limit is not None and len(out) >= limit:
                    return out
        return out

    async def audit_log(self, key_id: str | None = None, limit: int = 1000) -> builtins.list[AuditEvent]:
        name = _AUDIT if key_id is None else _key_audit(key_id)
        rows = await self._call("audit read", self.redis.lrange(name, 0, limit - 1))
        return [_event(r) for r in rows]

    # --- writes ----------------------------------------------------------------------------------------------

    async def add(self, record: KeyRecord, audit: AuditEvent | None = None) -> None:
        done = await self._call("write", self._add(
            keys=[_key(record.id), _hash_key(record.key_hash), _IDS, _AUDIT, _key_audit(record.id)],
            args=[INVALIDATE_CHANNEL, record.key_hash, record.id, record.created_at.timestamp(),
                  _event_json(audit) if audit is not None else "", *_pairs(record)],
        ))
        if not int(done):
            raise StoreError("a key with this id or value already exists")

    async def update(self, key_id: str, changes: Mapping[str, Any], audit: AuditEvent) -> KeyRecord | None:
        bad = set(changes) - UPDATABLE
        if bad:
            raise StoreError(f"cannot update field {sorted(bad)[0]!r}")
        sets: list[str] = []
        deletes: list[str] = []
        for name, value in changes.items():
            encoded = _encode(name, value)
            if encoded is None:
                deletes.append(name)
            else:
                sets += [name, encoded]
        done = await self._call("write", self._update(
            keys=[_key(key_id), _AUDIT, _key_audit(key_id)],
            args=[INVALIDATE_CHANNEL, _event_json(audit), len(sets) // 2, *sets, *deletes],
        ))
        if not int(done):
            return None
        return await self.get(key_id)

    async def revoke(self, key_id: str, actor: str = "cli") -> KeyRecord | None:
        now = utcnow()
        event = AuditEvent(action="revoke", key_id=key_id, actor=actor, at=now)
        done = await self._call("write", self._revoke(
            keys=[_key(key_id), _AUDIT, _key_audit(key_id)],
            args=[INVALIDATE_CHANNEL, to_iso(now), _event_json(event)],
        ))
        if not int(done):
            return None
        return await self.get(key_id)

    async def rotate(
        self, old_id: str, new: KeyRecord, old_expires_at: datetime, audit: AuditEvent
    ) -> KeyRecord | None:
        out = await self._call("write", self._rotate(
            keys=[_key(old_id), _key(new.id), _hash_key(new.key_hash), _IDS, _AUDIT, _key_audit(old_id)],
            args=[INVALIDATE_CHANNEL, to_iso(utcnow()), to_iso(old_expires_at), new.id, new.key_hash,
                  new.created_at.timestamp(), _event_json(audit), *_pairs(new)],
        ))
        verdict = out[0].decode()
        if verdict == "missing":
            return None
        if verdict == "revoked":
            raise Conflict("conflict.revoked")
        if verdict == "rotated":
            raise Conflict("conflict.rotated", key_id=out[1].decode())
        if verdict == "expired":
            raise Conflict("conflict.expired")
        if verdict == "exists":
            raise StoreError("a key with this id or value already exists")
        return await self.get(old_id)

    async def take_held_value(self, key_id: str, audit: AuditEvent) -> str | None:
        """The sealed value held for ``key_id``, erased by the same script (so only one caller ever gets it),
        with ``audit``; None when none is held."""
        held = await self._call("write", self._take_held(
            keys=[_key(key_id), _AUDIT, _key_audit(key_id)], args=[_event_json(audit)]))
        return held.decode() if held else None

    async def set_notices(self, key_id: str, notices: str | None) -> None:
        """Record the state of a key's notices (no audit event, no invalidation: the gate never reads them)."""
        await self._call("write", self._set_notices(keys=[_key(key_id)], args=[notices or ""]))

    async def record_usage(self, updates: Sequence[UsageUpdate]) -> None:
        if not updates:
            return
        args: list[str | int] = []
        keys: list[str] = []
        for u in updates:
            args += [u.count, to_iso(u.last_used_at) or "", u.last_used_ip or "", u.last_used_at.date().isoformat()]
            keys += [_key(u.key_id), usage_daily_key(u.key_id)]
        await self._call("usage write", self._usage(keys=keys, args=args))

    async def append_audit(self, events: Sequence[AuditEvent]) -> None:
        """Append audit rows as they are (``gateway store copy``)."""
        for start in range(0, len(events), 500):
            chunk = events[start:start + 500]
            await self._call("audit write", self._append_audit(
                keys=[_AUDIT, *(_key_audit(e.key_id) for e in chunk)], args=[_event_json(e) for e in chunk]))

    async def ping(self) -> None:
        await self._call("ping", self.redis.ping())

    async def follow_master(self) -> None:
        """Behind Sentinel, leave a master that Sentinel has replaced (:func:`gateway.redisconn.follow_master`)."""
        await self._call("master lookup", redisconn.follow_master(self.redis))

    async def close(self) -> None:
        await self.redis.aclose()


class InvalidationListener:
    """Keeps this process's :class:`KeyCache` in step with every change made anywhere.

    Every store script publishes the keyed hash of each key it changes on :data:`INVALIDATE_CHANNEL`; this
    task, started with the gateway, drops that entry from the cache as the message arrives (well under a
    second). The connection is watched with a PING every :attr:`PING_EVERY` seconds: if nothing at all comes
    back for :attr:`DEAD_AFTER` seconds (Redis down, hung or unreachable) the task reconnects, retrying every
    :attr:`RETRY` seconds. Messages sent while it was away are lost, so on every (re)subscription the whole
    cache is cleared. While it is away, ``cache.ttl_seconds`` remains the bound.

    Behind Sentinel the subscription follows the master (a failover drops it; the next one is made on the new
    master), and before it clears the cache the store's own client follows it too: a pooled connection asks
    Sentinel only when it is made, so after a failover it could still point at the old master, and a hung old
    master would turn each lookup that refills the cache into a timeout (a key that was cached into a 503). On a
    Cluster it is held on one node, and each reconnection reloads the slot map and tries the next node, so a
    failed node is left behind.
    """

    PING_EVERY = 0.5
    DEAD_AFTER = 1.5
    RETRY = 0.25
    POLL = 0.1

    def __init__(self, url: str, cache: Any, timeout_ms: float) -> None:
        self._redis = client(url, max(timeout_ms, 250.0), max_connections=2)
        self._cache = cache
        self._where = redacted(url)
        self._task = Background("key-invalidations")
        self.connected = False
        self.received = 0

    def start(self) -> None:
        self._task.start(self._run)

    async def stop(self) -> None:
        await self._task.stop()
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self._redis.aclose(), 1.0)

    async def _run(self) -> None:
        attempt = 0
        while True:
            conn: Any = None
            pubsub: Any = None
            try:
                # One server or a Sentinel master (followed through failovers): the client itself. A Cluster:
                # a connection to one node, from a fresh slot map, the next node on each new attempt; PUBLISH
                # reaches the subscribers of every node, so any live node will do.
                conn = await redisconn.subscriber_client(self._redis, attempt)
                pubsub = conn.pubsub()
                await self._listen(pubsub, self._describe(conn))
            except (RedisError, OSError, TimeoutError) as exc:
                if self.connected:
                    log.warning("key invalidations: lost %s (%s); revocations fall back to cache.ttl_seconds "
                                "until it is back", self._where, exc.__class__.__name__)
                self.connected = False
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    if pubsub is not None:
                        await asyncio.wait_for(pubsub.aclose(), 1.0)
                    if conn is not None and conn is not self._redis:
                        await asyncio.wait_for(conn.aclose(), 1.0)
            attempt += 1
            await asyncio.sleep(self.RETRY)

    async def _follow_master(self) -> None:
        store = getattr(self._cache, "store", None)
        if isinstance(store, RedisStore):
            try:
                await store.follow_master()
            except StoreError as exc:
                log.warning("key invalidations: %s; key lookups may wait out a timeout on the old master", exc)

    def _describe(self, conn: Any) -> str:
        if conn is self._redis:
            return self._where
        kw = conn.connection_pool.connection_kwargs
        return f"{self._where} (node {kw.get('host')}:{kw.get('port')})"

    async def _listen(self, pubsub: Any, where: str) -> None:
        await pubsub.subscribe(INVALIDATE_CHANNEL)
        last_seen = last_ping = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=self.POLL)
            now = time.monotonic()
            if message is not None:
                last_seen = now
                kind = message.get("type")
                if kind == "subscribe":
                    # Anything published while we were away is lost: start from an empty cache, once the
                    # store's client has left a master Sentinel replaced (the lookups that refill the cache
                    # would otherwise wait out a timeout there, and answer 503).
                    await self._follow_master()
                    self._cache.invalidate()
                    if not self.connected:
                        log.info("key invalidations: subscribed on %s", where)
                    self.connected = True
                elif kind == "message":
                    self.received += 1
                    self._cache.invalidate(message["data"].decode("ascii", "replace"))
                continue
            if now - last_seen > self.DEAD_AFTER:
                raise TimeoutError("no answer from Redis")
            if now - last_ping >= self.PING_EVERY:
                last_ping = now
                await pubsub.ping()

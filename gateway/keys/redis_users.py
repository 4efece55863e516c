"""The Redis store's dashboard users, refresh tokens and per-day usage (the
:class:`gateway.keys.store.UserStore` half of :class:`gateway.keys.redis.RedisStore`).

Layout (all under the ``{gw}`` hash tag, like the keys)::

    {gw}:user:<id>                  hash: the user's fields (the password's argon2id hash among them)
    {gw}:user-email:<address>       string: the id, by lower-cased address
    {gw}:users                      sorted set of ids scored by creation time
    {gw}:refresh:<sha256>           hash: a refresh token (family, user_id, created_at, expires_at, used_at);
                                    expires a day after its family ends
    {gw}:refresh-family:<family>    string: set (to the time) when the family is revoked
    {gw}:user-families:<id>         set of the user's families, to revoke them all
    {gw}:usage-daily:<key id>       hash: UTC day -> requests (written by the usage flush's script)

A refresh is one script: the check, the spend and the successor, or the family's revocation on reuse.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import date, datetime
from typing import Any

from gateway.keys.record import parse_iso, to_iso
from gateway.keys.store import Conflict
from gateway.keys.users import (
    REUSED,
    REVOKED,
    SPENT,
    UNKNOWN,
    USER_INVALIDATION,
    USER_STANDING,
    USER_UPDATABLE,
    RefreshRecord,
    UserRecord,
    day_range,
    email_key,
)

NS = "{gw}"
# Every change to a key is published here (its keyed hash; gateway.keys.redis), and a change to a user's standing
# as "user:<id>" (gateway.accounts.status), so every gateway process drops its cache entry.
INVALIDATE_CHANNEL = "gateway:keys:invalidate"
_USERS = f"{NS}:users"
_USER_FIELDS = ("id", "email", "role", "password_hash", "status", "created_at", "last_login_at",
                "password_changed_at")
_GRACE_MS = 86_400_000  # a spent token is kept a day past its family's end, so a late replay is still seen

# KEYS: user, email index, users. ARGV: id, score, field/value pairs.
_ADD_USER = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
"""

# KEYS: user. ARGV: channel, message (empty: publish nothing), number of pairs to set, pairs..., fields to
# delete...
_UPDATE_USER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(ARGV[3])
if n > 0 then
  local p = {}
  for i = 4, 3 + 2 * n do p[#p + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(p))
end
for i = 4 + 2 * n, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return 1
"""

# KEYS: token, user families. ARGV: family, user id, created_at, expires_at, time to live (ms).
_ADD_REFRESH = """
redis.call('HSET', KEYS[1], 'family', ARGV[1], 'user_id', ARGV[2], 'created_at', ARGV[3], 'expires_at', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('SADD', KEYS[2], ARGV[1])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[2], ARGV[5]) end
return 1
"""

# KEYS: token presented, its successor. ARGV: now (ISO), family key prefix.
# Returns {outcome, family, user_id, created_at, expires_at, used_at, revoked_at} ({outcome} when unknown).
_SPEND = """
local r = redis.call('HMGET', KEYS[1], 'family', 'user_id', 'created_at', 'expires_at', 'used_at')
if not r[1] then return {'unknown'} end
local fam = ARGV[2] .. r[1]
local revoked = redis.call('GET', fam)
local ttl = redis.call('PTTL', KEYS[1])
local function out(what, rev) return {what, r[1], r[2], r[3], r[4], r[5] or '', rev or ''} end
if revoked then return out('revoked', revoked) end
if r[5] then
  redis.call('SET', fam, ARGV[1])
  if ttl > 0 then redis.call('PEXPIRE', fam, ttl) end
  return out('reused', ARGV[1])
end
if r[4] <= ARGV[1] then return out('expired', nil) end
redis.call('HSET', KEYS[1], 'used_at', ARGV[1])
redis.call('HSET', KEYS[2], 'family', r[1], 'user_id', r[2], 'created_at', ARGV[1], 'expires_at', r[4])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return out('ok', nil)
"""

# KEYS: token. ARGV: now (ISO), family key prefix.
_REVOKE_FAMILY = """
local family = redis.call('HGET', KEYS[1], 'family')
if not family then return 0 end
local fam = ARGV[2] .. family
redis.call('SET', fam, ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', fam, ttl) end
return 1
"""

# KEYS: user families. ARGV: now (ISO), family key prefix.
_REVOKE_USER = """
local ttl = redis.call('PTTL', KEYS[1])
for _, family in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fam = ARGV[2] .. family
  redis.call('SET', fam, ARGV[1])
  if ttl > 0 then redis.call('PEXPIRE', fam, ttl) end
end
redis.call('DEL', KEYS[1])
return 1
"""


def _user_key(user_id: str) -> str:
    return f"{NS}:user:{user_id}"


def _email_key(email: str) -> str:
    return f"{NS}:user-email:{email_key(email)}"


def _refresh_key(token_hash: str) -> str:
    return f"{NS}:refresh:{token_hash}"


def usage_daily_key(key_id: str) -> str:
    return f"{NS}:usage-daily:{key_id}"


def _user(raw: Mapping[bytes, bytes]) -> UserRecord:
    d = {k.decode(): v.decode() for k, v in raw.items()}
    return UserRecord(id=d["id"], email=d["email"], role=d["role"], password_hash=d["password_hash"],
                      status=d["status"], created_at=parse_iso(d["created_at"]),
                      last_login_at=parse_iso(d["last_login_at"]) if d.get("last_login_at") else None,
                      password_changed_at=(parse_iso(d["password_changed_at"]) if d.get("password_changed_at")
                                           else None))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisUsers:
    """Mixed into RedisStore, whose client (``redis``) and ``_call`` it uses; :meth:`_register_user_scripts`
    is called from its ``__init__``."""

    redis: Any
    _call: Callable[[str, Awaitable[Any]], Awaitable[Any]]

    def _register_user_scripts(self) -> None:
        r = self.redis
        self._add_user_script = r.register_script(_ADD_USER)
        self._update_user_script = r.register_script(_UPDATE_USER)
        self._add_refresh_script = r.register_script(_ADD_REFRESH)
        self._spend_script = r.register_script(_SPEND)
        self._revoke_family_script = r.register_script(_REVOKE_FAMILY)
        self._revoke_user_script = r.register_script(_REVOKE_USER)

    # --- users -----------------------------------------------------------------------------------------------

    async def add_user(self, user: UserRecord) -> None:
        pairs: list[str] = []
        for name in _USER_FIELDS:
            value = getattr(user, name)
            if name == "email":
                value = email_key(value)
            if isinstance(value, datetime):
                value = to_iso(value)
            if value is not None:
                pairs += [name, str(value)]
        added = await self._call("user write", self._add_user_script(
            keys=[_user_key(user.id), _email_key(user.email), _USERS],
            args=[user.id, user.created_at.timestamp(), *pairs]))
        if not added:
            raise Conflict("conflict.user_exists")

    async def get_user(self, user_id: str) -> UserRecord | None:
        raw = await self._call("user read", self.redis.hgetall(_user_key(user_id)))
        return _user(raw) if raw else None

    async def get_user_by_email(self, email: str) -> UserRecord | None:
        user_id = await self._call("user read", self.redis.get(_email_key(email)))
        return await self.get_user(_text(user_id)) if user_id else None

    async def list_users(self) -> builtins.list[UserRecord]:
        ids = await self._call("user read", self.redis.zrange(_USERS, 0, -1))
        users = [await self.get_user(_text(i)) for i in ids]
        return [u for u in users if u is not None]

    async def update_user(self, user_id: str, changes: Mapping[str, Any]) -> UserRecord | None:
        bad = set(changes) - USER_UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {', '.join(sorted(bad))}")
        sets: list[str] = []
        dels: list[str] = []
        for name, value in changes.items():
            if value is None:
                dels.append(name)
            else:
                sets += [name, (to_iso(value) or "") if isinstance(value, datetime) else str(value)]
        # A change to the user's standing reaches every gateway's status cache (gateway.accounts.status).
        message = USER_INVALIDATION + user_id if USER_STANDING & set(changes) else ""
        done = await self._call("user write", self._update_user_script(
            keys=[_user_key(user_id)], args=[INVALIDATE_CHANNEL, message, len(sets) // 2, *sets, *dels]))
        return await self.get_user(user_id) if done else None

    # --- refresh tokens --------------------------------------------------------------------------------------

    async def add_refresh(self, token: RefreshRecord) -> None:
        ttl_ms = max(1, int((token.expires_at.timestamp() - time.time()) * 1000)) + _GRACE_MS
        await self._call("refresh write", self._add_refresh_script(
            keys=[_refresh_key(token.token_hash), f"{NS}:user-families:{token.user_id}"],
            args=[token.family, token.user_id, to_iso(token.created_at), to_iso(token.expires_at), ttl_ms]))

    async def spend_refresh(self, token_hash: str, new: RefreshRecord,
                            now: datetime) -> tuple[str, RefreshRecord | None]:
        got = await self._call("refresh write", self._spend_script(
            keys=[_refresh_key(token_hash), _refresh_key(new.token_hash)],
            args=[to_iso(now), f"{NS}:refresh-family:"]))
        outcome = _text(got[0])
        if outcome == UNKNOWN:
            return UNKNOWN, None
        family, user_id, created, expires, used, revoked = (_text(v) for v in got[1:])
        record = RefreshRecord(token_hash=token_hash, family=family, user_id=user_id, created_at=parse_iso(created),
                               expires_at=parse_iso(expires), used_at=parse_iso(used) if used else None,
                               revoked_at=parse_iso(revoked) if revoked else None)
        return {"ok": SPENT, "reused": REUSED, "revoked": REVOKED}.get(outcome, outcome), record

    async def revoke_refresh_family(self, token_hash: str, now: datetime) -> bool:
        done = await self._call("refresh write", self._revoke_family_script(
            keys=[_refresh_key(token_hash)], args=[to_iso(now), f"{NS}:refresh-family:"]))
        return bool(done)

    async def revoke_user_refresh(self, user_id: str, now: datetime) -> None:
        await self._call("refresh write", self._revoke_user_script(
            keys=[f"{NS}:user-families:{user_id}"], args=[to_iso(now), f"{NS}:refresh-family:"]))

    # --- usage per day ---------------------------------------------------------------------------------------

    async def usage_by_day(self, key_id: str, days: int) -> builtins.list[tuple[date, int]]:
        _, span = day_range(days)
        values = await self._call("usage read", self.redis.hmget(usage_daily_key(key_id),
                                                                 [d.isoformat() for d in span]))
        return [(d, int(v) if v is not None else 0) for d, v in zip(span, values, strict=True)]

"""Key operations shared by the CLI and the management API: validate, create, update, rotate.

Validation errors are :class:`KeyInputError` naming the offending field; nothing is written unless every
field is valid. An ``actor`` with ``caller_permissions`` (a key using the API) can never create, change or
rotate a key to hold more than it holds itself; the CLI acts with full rights (``caller_permissions=None``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from gateway.keys.format import generate_key, generate_key_id
from gateway.keys.hashing import Pepper
from gateway.keys.record import AuditEvent, KeyRecord, parse_iso, to_iso, utcnow
from gateway.keys.store import Conflict, KeyStore
from gateway.network import parse_network
from gateway.policies import Policy, grants, valid_scope
from gateway.settings import KeyFormat, parse_duration

audit_log = logging.getLogger("gateway.audit")

ENVIRONMENTS = ("live", "test")
DEFAULT_TIERS = ("standard", "high_volume", "limited", "unlimited")
MAX_NAME = 200
MAX_DESCRIPTION = 1000


class PermissionDenied(Exception):
    """The caller may not do this to that key (it would grant more than the caller holds)."""


class KeyInputError(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


def check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise KeyInputError("name", "must not be empty")
    if len(name) > MAX_NAME or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise KeyInputError("name", f"must be at most {MAX_NAME} printable characters")
    return name


def check_permissions(permissions: Sequence[str], policy: Policy | None) -> tuple[str, ...]:
    if not permissions:
        raise KeyInputError("permissions", "give at least one permission (for example servers:read)")
    out: list[str] = []
    for p in permissions:
        p = p.strip()
        if not valid_scope(p):
            raise KeyInputError("permissions", f"{p!r} is not a scope (resource:action, resource:* or *)")
        if policy is not None and not policy.knows_scope(p):
            raise KeyInputError("permissions", f"{p!r} is not a scope the policy knows")
        if p not in out:
            out.append(p)
    return tuple(out)


def check_allowed_ips(entries: Sequence[str]) -> tuple[str, ...]:
    out = []
    for e in entries:
        try:
            out.append(str(parse_network(e)))
        except ValueError as exc:
            raise KeyInputError("ip_whitelist", str(exc)) from None
    return tuple(out)


def check_expires_at(value: str | datetime | None, now: datetime) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = parse_iso(value)
        except ValueError:
            raise KeyInputError("expires_at", "must be an ISO 8601 time like 2026-12-31T23:59:59Z") from None
    if value <= now:
        raise KeyInputError("expires_at", "must be in the future")
    return value


def check_environment(env: str) -> str:
    if env not in ENVIRONMENTS:
        raise KeyInputError("environment", f"must be live or test (got {env!r})")
    return env


def check_tier(tier: str | None, tiers: Collection[str]) -> str | None:
    if tier is None:
        return None
    if tier not in tiers:
        raise KeyInputError("rate_limit_tier", f"unknown tier {tier!r} (known: {', '.join(sorted(tiers))})")
    return tier


# A hundred years: anything longer is a typo, and now + it must stay a datetime (year 9999 at most), or every
# answer that shows the key would fail with an OverflowError (schemathesis found a 500 with a 29-digit period).
MAX_PERIOD_SECONDS = 36500 * 86400


def check_period(period: str | int | None) -> int | None:
    if period is None:
        return None
    if isinstance(period, int) and not isinstance(period, bool):
        seconds = period
    else:
        try:
            seconds = parse_duration(str(period))
        except ValueError as exc:
            raise KeyInputError("rotation_period", str(exc)) from None
    if seconds <= 0:
        raise KeyInputError("rotation_period", "must be longer than zero")
    if seconds > MAX_PERIOD_SECONDS:
        raise KeyInputError("rotation_period", "must be at most 36500d")
    return seconds


def check_description(text: str | None) -> str | None:
    if text is None:
        return None
    if len(text) > MAX_DESCRIPTION:
        raise KeyInputError("description", f"must be at most {MAX_DESCRIPTION} characters")
    return text


def check_within(caller_permissions: frozenset[str] | None, permissions: Sequence[str]) -> None:
    """No privilege escalation: every permission given must be one the caller holds (or covers)."""
    if caller_permissions is None:
        return
    for p in permissions:
        if not grants(caller_permissions, p):
            raise PermissionDenied(f"cannot grant {p!r}: the calling key does not hold it")


async def create_key(
    store: KeyStore,
    pepper: Pepper,
    key_format: KeyFormat,
    *,
    name: str,
    permissions: Sequence[str],
    allowed_ips: Sequence[str] = (),
    expires_at: str | datetime | None = None,
    environment: str = "live",
    description: str | None = None,
    rate_limit_tier: str | None = None,
    auto_rotate: bool = False,
    rotation_period: str | int | None = None,
    policy: Policy | None = None,
    tiers: Collection[str] = DEFAULT_TIERS,
    created_by: str = "cli",
    caller_permissions: frozenset[str] | None = None,
) -> tuple[str, KeyRecord]:
    """Validate everything, then create and store a key. Returns (value, record): the value is never stored."""
    now = utcnow()
    perms = check_permissions(permissions, policy)
    check_within(caller_permissions, perms)
    period = check_period(rotation_period)
    if auto_rotate and period is None:
        raise KeyInputError("rotation_period", "is needed when auto_rotate is true (e.g. 90d)")
    env = check_environment(environment)
    value = generate_key(key_format.prefix(env))
    record = KeyRecord(
        id=generate_key_id(),
        key_hash=pepper.hash(value),
        hint=value[-4:],
        name=check_name(name),
        permissions=perms,
        allowed_ips=check_allowed_ips(allowed_ips),
        expires_at=check_expires_at(expires_at, now),
        environment=env,
        description=check_description(description),
        rate_limit_tier=check_tier(rate_limit_tier, tiers),
        auto_rotate=bool(auto_rotate),
        rotation_period=period,
        created_at=now,
        created_by=created_by,
    )
    event = AuditEvent(action="create", key_id=record.id, actor=created_by, details=_audit_view(record))
    await store.add(record, event)
    _emit(event)
    return value, record


def _emit(event: AuditEvent) -> None:
    """The structured log twin of an audit row (the row itself is written with the change)."""
    audit_log.info(json.dumps({"event": f"key.{event.action}", **event.public()}, default=str))


def _audit_view(record: KeyRecord) -> dict[str, Any]:
    return {"name": record.name, "permissions": list(record.permissions), "allowed_ips": list(record.allowed_ips),
            "environment": record.environment, "expires_at": to_iso(record.expires_at),
            "rate_limit_tier": record.rate_limit_tier}


def check_manageable(record: KeyRecord, caller_permissions: frozenset[str] | None) -> None:
    """A caller may only change, rotate or revoke keys it could have created itself."""
    check_within(caller_permissions, record.permissions)


async def update_key(
    store: KeyStore,
    key_id: str,
    changes: Mapping[str, Any],
    *,
    policy: Policy | None = None,
    tiers: Collection[str] = DEFAULT_TIERS,
    actor: str = "cli",
    caller_permissions: frozenset[str] | None = None,
) -> KeyRecord | None:
    """Validate and apply ``changes`` (name, permissions, allowed_ips, rate_limit_tier, expires_at,
    description, auto_rotate, rotation_period). Returns the new record, or None for an unknown id.

    Raises :class:`Conflict` for a revoked key, and for a rotated key whose end of grace would move later:
    otherwise a key rotated out because it leaked could be brought back by changing its expiry."""
    record = await store.get(key_id)
    if record is None:
        return None
    check_manageable(record, caller_permissions)
    if record.revoked_at is not None:
        raise Conflict("the key is revoked")
    now = utcnow()
    clean: dict[str, Any] = {}
    for field, value in changes.items():
        if field == "name":
            clean[field] = check_name(value)
        elif field == "permissions":
            clean[field] = check_permissions(value, policy)
            check_within(caller_permissions, clean[field])
        elif field == "allowed_ips":
            clean[field] = check_allowed_ips(value)
        elif field == "rate_limit_tier":
            clean[field] = check_tier(value, tiers)
        elif field == "expires_at":
            clean[field] = check_expires_at(value, now)
        elif field == "description":
            clean[field] = check_description(value)
        elif field == "auto_rotate":
            clean[field] = bool(value)
        elif field == "rotation_period":
            clean[field] = check_period(value)
        else:
            raise KeyInputError(field, "is not a field that can be changed")
    if record.rotated_to is not None and "expires_at" in clean:
        new_end = clean["expires_at"]
        if record.expires_at is not None and (new_end is None or new_end > record.expires_at):
            raise Conflict(f"the key was rotated to {record.rotated_to}; its grace period can end sooner, not later")
    if clean.get("auto_rotate", record.auto_rotate) and not clean.get("rotation_period", record.rotation_period):
        raise KeyInputError("rotation_period", "is needed when auto_rotate is true (e.g. 90d)")
    details = {k: (to_iso(v) if isinstance(v, datetime) else list(v) if isinstance(v, tuple) else v)
               for k, v in clean.items()}
    event = AuditEvent(action="update", key_id=key_id, actor=actor, details=details)
    updated = await store.update(key_id, clean, event)
    if updated is not None:
        _emit(event)
    return updated


async def revoke_key(
    store: KeyStore, key_id: str, *, actor: str = "cli", caller_permissions: frozenset[str] | None = None
) -> KeyRecord | None:
    record = await store.get(key_id)
    if record is None:
        return None
    check_manageable(record, caller_permissions)
    revoked = await store.revoke(key_id, actor=actor)
    if revoked is not None and record.revoked_at is None:
        _emit(AuditEvent(action="revoke", key_id=key_id, actor=actor))
    return revoked


async def rotate_key(
    store: KeyStore,
    pepper: Pepper,
    key_format: KeyFormat,
    key_id: str,
    *,
    grace_period: str | int,
    actor: str = "cli",
    caller_permissions: frozenset[str] | None = None,
) -> tuple[KeyRecord, str, KeyRecord] | None:
    """Make a successor that inherits everything but the value; the old key works until now + grace.

    Returns (old record as updated, new value, new record), or None for an unknown id. Raises
    :class:`gateway.keys.store.Conflict` for a revoked, expired or already rotated key."""
    if isinstance(grace_period, int) and not isinstance(grace_period, bool):
        grace = grace_period
    else:
        try:
            grace = parse_duration(str(grace_period))
        except ValueError as exc:
            raise KeyInputError("grace_period", str(exc)) from None
    if grace < 0:
        raise KeyInputError("grace_period", "must not be negative")
    if grace > MAX_PERIOD_SECONDS:
        raise KeyInputError("grace_period", "must be at most 36500d")
    old = await store.get(key_id)
    if old is None:
        return None
    check_manageable(old, caller_permissions)
    now = utcnow()
    value = generate_key(key_format.prefix(old.environment))
    new = KeyRecord(
        id=generate_key_id(), key_hash=pepper.hash(value), hint=value[-4:], name=old.name,
        permissions=old.permissions, allowed_ips=old.allowed_ips, environment=old.environment,
        created_at=now, expires_at=old.expires_at, rate_limit_tier=old.rate_limit_tier,
        description=old.description, created_by=actor, auto_rotate=old.auto_rotate,
        rotation_period=old.rotation_period, rotated_from=old.id,
    )
    old_expires = now + timedelta(seconds=grace)
    audit = AuditEvent(action="rotate", key_id=old.id, actor=actor,
                       details={"new_key_id": new.id, "old_key_expires_at": to_iso(old_expires),
                                "grace_period_seconds": grace})
    updated = await store.rotate(old.id, new, old_expires, audit)
    if updated is None:
        return None
    _emit(audit)
    return updated, value, new


async def due_for_rotation(store: KeyStore, now: datetime | None = None) -> list[KeyRecord]:
    now = now or utcnow()
    return [r for r in await store.list(status="active", now=now) if r.rotation_state(now) == "due"]

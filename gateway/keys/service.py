"""Key operations shared by the CLI and the management API: create, update, revoke, rotate.

What a field may hold (a name's length, a scope's form, a network, a duration, the configured tiers) is checked
before these are called, by the models of :mod:`gateway.admin.models` that the API and the CLI both validate
with; the values arrive here valid and normalised. What is checked here needs state: a scope the policy knows,
an expiry still in the future, a rotation period for a key that rotates, the key's own state (revoked, rotated:
:class:`gateway.keys.store.Conflict`). Those are :class:`KeyInputError` naming the field, and nothing is
written unless all pass. An ``actor`` with ``caller_permissions`` (a key using the API) can never create, change
or rotate a key to hold more than it holds itself; the CLI acts with full rights (``caller_permissions=None``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from gateway.config.settings import KeyFormat, parse_duration
from gateway.keys.format import generate_key, generate_key_id
from gateway.keys.hashing import Pepper
from gateway.keys.record import AuditEvent, KeyRecord, to_iso, utcnow
from gateway.keys.sealing import Sealer
from gateway.keys.store import Conflict, KeyStore
from gateway.mailaddr import masked
from gateway.messages import english, problem_text
from gateway.policy.rules import Policy, grants

audit_log = logging.getLogger("gateway.audit")

# A hundred years: anything longer is a typo, and now + it must stay a datetime (year 9999 at most), or every
# answer that shows the key would fail with an OverflowError (schemathesis found a 500 with a 29-digit period).
MAX_PERIOD_SECONDS = 36500 * 86400


class PermissionDenied(Exception):
    """The caller may not do this to that key (it would grant more than the caller holds): ``scope`` is the
    first scope it does not hold."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        super().__init__(english("insufficient_permissions.cannot_grant", {"scope": scope}))


class KeyInputError(ValueError):
    """A field the key's state refuses: ``message_id`` names the words (``validation_error.in_the_past``...) in
    the message catalogues, ``params`` their values; ``problem`` is the English text without the field."""

    def __init__(self, field: str, message_id: str, **params: object) -> None:
        self.field = field
        self.message_id = message_id
        self.params = params
        self.problem = problem_text(message_id, field, params)
        super().__init__(f"{field}: {self.problem}")


def check_permissions(permissions: Sequence[str], policy: Policy | None) -> tuple[str, ...]:
    """The scopes, each one the policy knows (a policy reload can change which)."""
    if not permissions:
        raise KeyInputError("permissions", "validation_error.permissions_empty")
    for i, p in enumerate(permissions):
        if policy is not None and not policy.knows_scope(p):
            # Which one, not what it says: a key pasted into the wrong field has the form of a scope.
            raise KeyInputError("permissions", "validation_error.unknown_scope", item=i + 1)
    return tuple(permissions)


def check_expires_at(value: datetime | None, now: datetime) -> datetime | None:
    if value is not None and value <= now:
        raise KeyInputError("expires_at", "validation_error.in_the_past")
    return value


def seconds(duration: str | int) -> int:
    """A duration (``"90d"``, or seconds) in seconds."""
    return duration if isinstance(duration, int) else parse_duration(duration)


def check_within(caller_permissions: frozenset[str] | None, permissions: Sequence[str]) -> None:
    """No privilege escalation: every permission given must be one the caller holds (or covers)."""
    if caller_permissions is None:
        return
    for p in permissions:
        if not grants(caller_permissions, p):
            raise PermissionDenied(p)


async def create_key(
    store: KeyStore,
    pepper: Pepper,
    key_format: KeyFormat,
    *,
    name: str,
    permissions: Sequence[str],
    allowed_ips: Sequence[str] = (),
    expires_at: datetime | None = None,
    environment: str = "live",
    description: str | None = None,
    rate_limit_tier: str | None = None,
    auto_rotate: bool = False,
    rotation_period: str | int | None = None,
    grace_period: str | int | None = None,
    notification_email: str | None = None,
    policy: Policy | None = None,
    created_by: str = "cli",
    caller_permissions: frozenset[str] | None = None,
) -> tuple[str, KeyRecord]:
    """Check what needs state, then create and store a key (its fields as a ``KeyCreate`` validated them:
    ``allowed_ips`` normalised networks, ``rotation_period`` a duration or seconds). Returns (value, record):
    the value is never stored."""
    now = utcnow()
    perms = check_permissions(permissions, policy)
    check_within(caller_permissions, perms)
    period = seconds(rotation_period) if rotation_period is not None else None
    if auto_rotate and period is None:
        raise KeyInputError("rotation_period", "validation_error.rotation_period_needed")
    value = generate_key(key_format.prefix(environment))
    record = KeyRecord(
        id=generate_key_id(),
        key_hash=pepper.hash(value),
        hint=value[-4:],
        name=name,
        permissions=perms,
        allowed_ips=tuple(allowed_ips),
        expires_at=check_expires_at(expires_at, now),
        environment=environment,
        description=description,
        rate_limit_tier=rate_limit_tier,
        auto_rotate=auto_rotate,
        rotation_period=period,
        grace_period=seconds(grace_period) if grace_period is not None else None,
        notification_email=notification_email,
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
    actor: str = "cli",
    caller_permissions: frozenset[str] | None = None,
) -> KeyRecord | None:
    """Check what needs state and apply ``changes`` (a ``KeyUpdate``'s fields: name, permissions, allowed_ips,
    rate_limit_tier, expires_at, description, auto_rotate, rotation_period, grace_period, notification_email; the
    audit trail shows the address masked). Returns the new record, or None
    for an unknown id.

    Raises :class:`Conflict` for a revoked key, and for a rotated key whose end of grace would move later:
    otherwise a key rotated out because it leaked could be brought back by changing its expiry."""
    record = await store.get(key_id)
    if record is None:
        return None
    check_manageable(record, caller_permissions)
    if record.revoked_at is not None:
        raise Conflict("conflict.revoked")
    now = utcnow()
    clean: dict[str, Any] = {}
    for field, value in changes.items():
        if field in ("name", "rate_limit_tier", "description", "auto_rotate", "notification_email"):
            clean[field] = value
        elif field == "permissions":
            clean[field] = check_permissions(value, policy)
            check_within(caller_permissions, clean[field])
        elif field == "allowed_ips":
            clean[field] = tuple(value)
        elif field == "expires_at":
            clean[field] = check_expires_at(value, now)
        elif field in ("rotation_period", "grace_period"):
            clean[field] = seconds(value) if value is not None else None
        else:
            raise KeyInputError(field, "validation_error.not_changeable")
    if record.rotated_to is not None and "expires_at" in clean:
        new_end = clean["expires_at"]
        if record.expires_at is not None and (new_end is None or new_end > record.expires_at):
            raise Conflict("conflict.grace_later", key_id=record.rotated_to)
    if clean.get("auto_rotate", record.auto_rotate) and not clean.get("rotation_period", record.rotation_period):
        raise KeyInputError("rotation_period", "validation_error.rotation_period_needed")
    details = {k: (to_iso(v) if isinstance(v, datetime) else list(v) if isinstance(v, tuple) else v)
               for k, v in clean.items()}
    if isinstance(clean.get("notification_email"), str):
        details["notification_email"] = masked(clean["notification_email"])  # the trail is logged too
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
    hold: Sealer | None = None,
) -> tuple[KeyRecord, str, KeyRecord] | None:
    """Make a successor that inherits everything but the value; the old key works until now + grace.

    With ``hold`` (an automatic rotation, whose value nobody is there to receive) the new value is also kept
    sealed on the new record, written with it, until :func:`reveal_value` takes it.

    Returns (old record as updated, new value, new record), or None for an unknown id. Raises
    :class:`gateway.keys.store.Conflict` for a revoked, expired or already rotated key."""
    grace = seconds(grace_period)
    if not 0 <= grace <= MAX_PERIOD_SECONDS:
        # A KeyRotate checked the API's and the CLI's; this guards rotation.grace_period from the configuration
        # (`keys rotate-due`), which no model reads: an end of grace past year 9999 cannot be stored.
        raise KeyInputError("grace_period", "validation_error.period_too_long", limit="36500d")
    old = await store.get(key_id)
    if old is None:
        return None
    check_manageable(old, caller_permissions)
    now = utcnow()
    value = generate_key(key_format.prefix(old.environment))
    new_id = generate_key_id()
    new = KeyRecord(
        id=new_id, key_hash=pepper.hash(value), hint=value[-4:], name=old.name,
        permissions=old.permissions, allowed_ips=old.allowed_ips, environment=old.environment,
        created_at=now, expires_at=old.expires_at, rate_limit_tier=old.rate_limit_tier,
        description=old.description, created_by=actor, auto_rotate=old.auto_rotate,
        rotation_period=old.rotation_period, rotated_from=old.id, grace_period=old.grace_period,
        notification_email=old.notification_email,
        held_value=hold.seal(new_id, value) if hold is not None else None,
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


def grace_for(record: KeyRecord, default: str | int) -> str | int:
    """The grace period of a rotation of ``record`` that names none: the key's own, else ``default``
    (``rotation.grace_period``)."""
    return record.grace_period if record.grace_period is not None else default


class NothingHeld(LookupError):
    """No value is held for the key: never made by an automatic rotation, delivered to the webhook, or revealed
    already."""


async def reveal_value(
    store: KeyStore, pepper: Pepper, key_id: str, *, actor: str = "cli",
    caller_permissions: frozenset[str] | None = None,
) -> tuple[KeyRecord, str] | None:
    """The value an automatic rotation held for ``key_id``, erased as it is read (one caller ever gets it).

    Only a caller that could rotate the key may (it holds every permission the key holds). Returns (record,
    value), or None for an unknown id; raises :class:`NothingHeld` when no value is held, and
    :class:`gateway.keys.sealing.SealError` when the held one does not open (another server secret)."""
    record = await store.get(key_id)
    if record is None:
        return None
    check_manageable(record, caller_permissions)
    if record.held_value is None:
        raise NothingHeld(key_id)
    sealed = await store.take_held_value(key_id, AuditEvent(action="reveal", key_id=key_id, actor=actor))
    if sealed is None:
        raise NothingHeld(key_id)  # another caller took it between the two reads
    value = Sealer(pepper).open(key_id, sealed)
    _emit(AuditEvent(action="reveal", key_id=key_id, actor=actor))
    return record, value


async def due_for_rotation(store: KeyStore, now: datetime | None = None) -> list[KeyRecord]:
    now = now or utcnow()
    return [r for r in await store.list(status="active", now=now) if r.rotation_state(now) == "due"]

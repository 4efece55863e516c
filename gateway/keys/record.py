"""The stored description of a key: everything but its value."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def to_iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    """Parse an ISO 8601 timestamp; a naive one is taken as UTC. Raises ValueError."""
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    key_hash: str = dataclasses.field(repr=False)
    hint: str  # the last 4 characters of the value, to tell keys apart in listings
    name: str
    permissions: tuple[str, ...]
    allowed_ips: tuple[str, ...] = ()
    environment: str = "live"
    created_at: datetime = dataclasses.field(default_factory=utcnow)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    rate_limit_tier: str | None = None
    description: str | None = None
    created_by: str = "cli"
    auto_rotate: bool = False
    rotation_period: int | None = None  # seconds
    rotated_from: str | None = None
    rotated_to: str | None = None
    last_used_at: datetime | None = None
    last_used_ip: str | None = None
    request_count: int = 0
    grace_period: int | None = None  # seconds a rotation leaves the old key; None: rotation.grace_period
    # Personal data: never in a log line, a metric or a repr.
    notification_email: str | None = dataclasses.field(default=None, repr=False)
    # The value of a key made by an automatic rotation, sealed (gateway.keys.sealing) until revealed once.
    held_value: str | None = dataclasses.field(default=None, repr=False)
    notices: str | None = None  # JSON: the e-mail notices of this key and their delivery (gateway.rotation)

    @property
    def rotation_due_at(self) -> datetime | None:
        if not self.auto_rotate or not self.rotation_period:
            return None
        return self.created_at + timedelta(seconds=self.rotation_period)

    def rotation_state(self, now: datetime) -> str:
        """``grace_period`` (rotated, still working until expires_at), ``due`` (past its rotation period)
        or ``ok``."""
        if self.rotated_to is not None and self.status(now) == "active":
            return "grace_period"
        due = self.rotation_due_at
        if due is not None and due <= now and self.rotated_to is None:
            return "due"
        return "ok"

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def format_duration(seconds: int | None) -> str | None:
    """The shortest exact form: 7776000 -> "90d", 43200 -> "12h"."""
    if seconds is None:
        return None
    if seconds == 0:
        return "0"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):  # days, not weeks: the guides' "90d", "7d"
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One change to a key: who (a key id, ``cli`` or ``demo``), what, when. Never a value or a hash."""

    action: str  # create, update, revoke, rotate
    key_id: str
    actor: str
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    at: datetime = dataclasses.field(default_factory=utcnow)

    def public(self) -> dict[str, Any]:
        return {"at": to_iso(self.at), "actor": self.actor, "action": self.action, "key_id": self.key_id,
                "details": self.details}

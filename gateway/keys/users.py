"""The stored description of a dashboard user and of a refresh token: what the stores keep for
gateway.accounts.

A user record holds the argon2id hash of the password, never the password; a refresh token record holds the
SHA-256 of the token, never the token (a refresh token is 256 random bits, so a plain hash is enough: nothing
to guess offline). Their reprs leave the hashes out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from gateway.keys.record import utcnow

USER_STATUSES = ("active", "disabled")
# A change to these fields of a user is published on the store's invalidation channel (Redis pub/sub, PostgreSQL
# NOTIFY) as USER_INVALIDATION + the user's id, beside the keys' hashes: gateway.accounts.status drops its entry.
USER_STANDING = frozenset({"status", "password_changed_at"})
USER_INVALIDATION = "user:"

# What spending a refresh token found (:meth:`gateway.keys.store.UserStore.spend_refresh`).
SPENT = "ok"  # it was live: it is now spent and its successor stored
UNKNOWN = "unknown"  # no such token
REUSED = "reused"  # it had been spent already: its whole family is now revoked (RFC 9700 4.14.2)
REVOKED = "revoked"  # its family was revoked (logout, reuse, a disabled user or a new password)
EXPIRED = "expired"  # past the family's end


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    email: str  # lower-cased domain (gateway.mailaddr.check_address); unique, compared case-insensitively
    role: str
    password_hash: str = dataclasses.field(repr=False)
    status: str = "active"
    created_at: datetime = dataclasses.field(default_factory=lambda: datetime.min)
    last_login_at: datetime | None = None
    # When the password was last set by a reset (None: never): a token issued before it is refused.
    password_changed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    """One refresh token. ``family`` is the login it descends from: every token a refresh hands out stays in
    its predecessor's family, and the family ends (``expires_at``) when the login's session does."""

    token_hash: str = dataclasses.field(repr=False)
    family: str
    user_id: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None
    revoked_at: datetime | None = None


# The columns of the SQL stores (and fields of the Redis hashes), in the records' order.
USER_FIELDS = tuple(f.name for f in dataclasses.fields(UserRecord))
REFRESH_FIELDS = tuple(f.name for f in dataclasses.fields(RefreshRecord))
# What update_user may change (the rest is set when a user is made).
USER_UPDATABLE = frozenset({"role", "status", "password_hash", "last_login_at", "password_changed_at"})


def email_key(email: str) -> str:
    """The form an address is looked up by: the whole address lower-cased (two accounts that differ only in the
    case of the local part would confuse people, even if RFC 5321 lets a server tell them apart)."""
    return email.strip().lower()


def day_range(days: int) -> tuple[date, list[date]]:
    """The first day and every day of the last ``days`` UTC days, today included, oldest first (the span of a
    usage chart, the same in every store)."""
    if days < 1:
        raise ValueError("days must be at least 1")
    today = utcnow().date()
    span = [today - timedelta(days=n) for n in range(days - 1, -1, -1)]
    return span[0], span

"""Dashboard users: their login, refresh and logout, and their management (create, list, disable, reset).

Login (OWASP Authentication Cheat Sheet): the address and the account are each held to a number of failed
attempts per minute (:class:`gateway.gate.failures.FailureGuard`, the gate's own failed-authentication counter),
past which they get 429 with ``Retry-After`` for the cool-down; a wrong password, an unknown address and a disabled
account get the same answer (401 ``invalid_credentials``) after the same work (an unknown address is verified
against a dummy argon2id hash).

Refresh tokens (RFC 9700 4.14.2, refresh token rotation): each is 256 random bits, stored only as its SHA-256,
and good for one refresh, which hands out its successor in the same family; presenting a spent one revokes the
whole family (someone holds a copy). A family ends ``accounts.refresh_lifetime`` after the login; logout, disabling
the user and a new password revoke families.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from gateway.accounts.passwords import (
    MAX_PASSWORD,
    dummy_hash,
    hash_in_thread,
    needs_rehash,
    verify_in_thread,
)
from gateway.accounts.status import UserStatus
from gateway.accounts.tokens import Principal, TokenIssuer, load_standing
from gateway.config.settings import AccountsSettings
from gateway.errors import (
    ConflictError,
    InvalidCredentials,
    InvalidRefreshToken,
    RoleCannotGrant,
    StoreUnavailable,
    TooManyLogins,
    UserNotFound,
    ValidationFailed,
)
from gateway.gate.failures import FailureGuard
from gateway.keys.store import Conflict, StoreError, UserStore
from gateway.keys.users import REUSED, SPENT, RefreshRecord, UserRecord, email_key
from gateway.mailaddr import MAX_ADDRESS, check_address, masked
from gateway.network import IPAddress
from gateway.policy.rules import Policy, grants

log = logging.getLogger("gateway.accounts")
security = logging.getLogger("gateway.security")

_MAX_TRACKED = 100_000
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class User:
    """A dashboard user as the management commands and the dashboard see it (no password hash)."""

    id: str
    email: str
    role: str
    status: str
    created_at: datetime
    last_login_at: datetime | None

    @classmethod
    def of(cls, record: UserRecord) -> User:
        return cls(id=record.id, email=record.email, role=record.role, status=record.status,
                   created_at=record.created_at, last_login_at=record.last_login_at)


@dataclass(frozen=True, slots=True)
class Session:
    """What a login or a refresh answers: the JWT, when it expires, and the refresh token for the next one."""

    token: str
    expires_at: datetime
    refresh_token: str

    def __repr__(self) -> str:
        return f"Session(expires_at={self.expires_at.isoformat()!r}, token=<redacted>, refresh_token=<redacted>)"


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _event(name: str, **fields: object) -> None:
    """One JSON line for log shippers; never a password or token (an address is masked to its domain)."""
    security.warning(json.dumps({"event": name, **fields}, separators=(",", ":")))


class Accounts:
    """Users, logins and sessions over a :class:`gateway.keys.store.UserStore`.

    ``policy`` gives the policy served now (its ``roles:`` map a role to scopes); ``clock`` is seconds since the
    epoch (tests move it); ``status_ttl`` is how long a user's status is cached (``cache.ttl_seconds``)."""

    def __init__(self, settings: AccountsSettings, store: UserStore, issuer: TokenIssuer,
                 policy: Callable[[], Policy], clock: Callable[[], float] = time.time,
                 status_ttl: float = 5.0) -> None:
        self.settings = settings
        self.store = store
        self.status = UserStatus(store, status_ttl)
        self.issuer = issuer
        self.policy = policy
        self.clock = clock
        self.lifetime = settings.token_seconds
        self.refresh_lifetime = settings.refresh_seconds
        cooldown = settings.login_cooldown_seconds
        # Thresholds only: the global alert of the gate's own counter is not wanted twice.
        self.by_address = FailureGuard(settings.login_failures_per_address, cooldown, 2**62, _MAX_TRACKED)
        self.by_account = FailureGuard(settings.login_failures_per_account, cooldown, 2**62, _MAX_TRACKED)
        self._dummy = dummy_hash()
        # argon2id takes 64 MiB and tens of ms of CPU per hash: at most one per core at a time, so a flood of logins
        # queues here instead of taking the process's memory (and the event loop's threads).
        self._hashing = asyncio.Semaphore(max(1, os.cpu_count() or 1))

    def __repr__(self) -> str:
        return f"Accounts(issuer={self.issuer.issuer!r}, kid={self.issuer.keys.kid!r})"

    # --- roles -----------------------------------------------------------------------------------------------

    def role_scopes(self, role: str) -> frozenset[str]:
        """The scopes of ``role`` in the policy served now (none for a role the policy no longer has)."""
        return self.policy().roles.get(role, frozenset())

    def roles(self) -> list[str]:
        return sorted(self.policy().roles)

    def check_grant(self, role: str, permissions: Iterable[str]) -> None:
        """Raise RoleCannotGrant (403) naming the first of ``permissions`` that ``role`` does not hold: a user
        never gives a key more than the user's role holds."""
        held = self.role_scopes(role)
        for scope in permissions:
            # grants() reads a wildcard asked for literally: only the same or a wider wildcard covers it.
            if not grants(held, scope):
                raise RoleCannotGrant(scope)

    # --- login, refresh, logout ------------------------------------------------------------------------------

    def _now(self) -> float:
        return self.clock()

    async def login(self, email: str, password: str, client: IPAddress | None) -> Session:
        now = self._now()
        address = str(client) if client is not None else "unknown"
        account = email_key(email)[:MAX_ADDRESS + 1]
        waits = [w for w in (self.by_address.retry_after(address, now), self.by_account.retry_after(account, now))
                 if w is not None]
        if waits:
            raise TooManyLogins(max(waits))
        user = await self._get_by_email(account) if len(account) <= MAX_ADDRESS else None
        usable = user is not None and user.status == "active" and len(password) <= MAX_PASSWORD
        # The same argon2id work whether or not the address has an account.
        async with self._hashing:
            ok = await verify_in_thread(user.password_hash if usable and user is not None else self._dummy,
                                        password[:MAX_PASSWORD])
        if not ok or not usable or user is None:
            self.by_address.failure(address, now)
            self.by_account.failure(account, now)
            _event("login_failed", client=address, account=masked(account))
            raise InvalidCredentials()
        changes: dict[str, object] = {"last_login_at": _dt(now)}
        if needs_rehash(user.password_hash):
            changes["password_hash"] = await self._hash(password)
        await self._store("user write", self.store.update_user(user.id, changes))
        family = uuid.uuid4().hex
        session, refresh = self._session(user, now)
        await self._store("refresh write", self.store.add_refresh(RefreshRecord(
            token_hash=_token_hash(refresh), family=family, user_id=user.id, created_at=_dt(now),
            expires_at=_dt(now + self.refresh_lifetime))))
        log.info("login user=%s role=%s client=%s", user.id, user.role, address)
        return session

    async def refresh(self, refresh_token: str, client: IPAddress | None) -> Session:
        if not refresh_token or len(refresh_token) > 256:
            raise InvalidRefreshToken()
        now = self._now()
        successor = secrets.token_urlsafe(32)
        placeholder = RefreshRecord(token_hash=_token_hash(successor), family="", user_id="", created_at=_dt(now),
                                    expires_at=_dt(now))
        outcome, old = await self._store("refresh write", self.store.spend_refresh(
            _token_hash(refresh_token), placeholder, _dt(now)))
        if outcome == REUSED and old is not None:
            _event("refresh_token_reused", user_id=old.user_id, family=old.family,
                   client=str(client) if client is not None else "unknown")
        if outcome != SPENT or old is None:
            raise InvalidRefreshToken()
        user = await self._store("user read", self.store.get_user(old.user_id))
        if user is None or user.status != "active":
            await self._store("refresh write", self.store.revoke_refresh_family(_token_hash(successor), _dt(now)))
            raise InvalidRefreshToken()
        session, _ = self._session(user, now, successor)
        return session

    async def logout(self, refresh_token: str) -> None:
        """Revoke the login ``refresh_token`` belongs to (every token of its family). Unknown: nothing to do."""
        if refresh_token and len(refresh_token) <= 256:
            await self._store("refresh write", self.store.revoke_refresh_family(
                _token_hash(refresh_token), _dt(self._now())))

    async def principal(self, token: str) -> Principal | None:
        """The user of a valid (unexpired) token this gateway signed, while the user stands (active, no password
        reset since the token was issued); None for anything else."""
        try:
            if not self.issuer.ours(token):
                return None
            principal = self.issuer.verify(token, self._now())
            standing = self.status.peek(principal.user_id) or await load_standing(self.status, principal.user_id)
            standing.check(principal.issued_ts)
            return principal
        except Exception:  # noqa: BLE001 - any refusal is "no principal" to the caller
            return None

    def _session(self, user: UserRecord, now: float, refresh: str | None = None) -> tuple[Session, str]:
        refresh = refresh or secrets.token_urlsafe(32)
        token, exp = self.issuer.issue(user.id, user.email, user.role, now, self.lifetime, uuid.uuid4().hex)
        return Session(token=token, expires_at=datetime.fromtimestamp(exp, UTC), refresh_token=refresh), refresh

    async def _get_by_email(self, email: str) -> UserRecord | None:
        return await self._store("user read", self.store.get_user_by_email(email))

    @staticmethod
    async def _store(what: str, work: Awaitable[T]) -> T:
        try:
            return await work
        except Conflict:
            raise  # a refusal of the change (an address taken), not a store that is away
        except StoreError as exc:
            log.error("store unavailable for %s: %s", what, exc)
            raise StoreUnavailable() from None

    async def _hash(self, password: str) -> str:
        async with self._hashing:
            return await hash_in_thread(password)

    # --- management ------------------------------------------------------------------------------------------

    def _check_password(self, password: str) -> None:
        n = self.settings.min_password_length
        if len(password) < n:
            raise ValidationFailed("validation_error.password_too_short", field="password", where="password",
                                   min_length=n)
        if len(password) > MAX_PASSWORD:
            raise ValidationFailed("validation_error.password_too_long", field="password", where="password",
                                   max_length=MAX_PASSWORD)

    def _check_role(self, role: str) -> None:
        if role not in self.policy().roles:
            raise ValidationFailed("validation_error.role", field="role", where="role",
                                   roles=", ".join(self.roles()) or "(none: add roles: to the policy)")

    async def create_user(self, email: str, password: str, role: str) -> User:
        try:
            address = check_address(email)
        except ValueError:
            raise ValidationFailed("validation_error.email", field="email", where="email", limit=MAX_ADDRESS) from None
        self._check_role(role)
        self._check_password(password)
        record = UserRecord(id="usr_" + uuid.uuid4().hex[:20], email=email_key(address), role=role,
                            password_hash=await self._hash(password), status="active",
                            created_at=_dt(self._now()))
        try:
            await self._store("user write", self.store.add_user(record))
        except Conflict as exc:
            raise ConflictError(exc.message_id) from None
        log.info("user created id=%s role=%s", record.id, role)
        return User.of(record)

    async def list_users(self) -> list[User]:
        return [User.of(r) for r in await self._store("user read", self.store.list_users())]

    async def get_user(self, email: str) -> User:
        return User.of(await self._user(email))

    async def _user(self, email: str) -> UserRecord:
        record = await self._get_by_email(email_key(email))
        if record is None:
            raise UserNotFound()
        return record

    async def disable_user(self, email: str) -> User:
        """Disable the account and revoke its refresh tokens; its JWTs are refused at once in this process, and
        within ``cache.ttl_seconds`` in every other (gateway.accounts.status)."""
        record = await self._user(email)
        updated = await self._store("user write", self.store.update_user(record.id, {"status": "disabled"}))
        self.status.forget(record.id)
        await self._store("refresh write", self.store.revoke_user_refresh(record.id, _dt(self._now())))
        return User.of(updated or record)

    async def enable_user(self, email: str) -> User:
        record = await self._user(email)
        updated = await self._store("user write", self.store.update_user(record.id, {"status": "active"}))
        self.status.forget(record.id)
        return User.of(updated or record)

    async def reset_password(self, email: str, password: str) -> User:
        """A new password (same rules as at creation); every session of the user is revoked: the refresh tokens,
        and the JWTs issued before now (refused as a disabled user's are)."""
        record = await self._user(email)
        self._check_password(password)
        password_hash = await self._hash(password)
        updated = await self._store("user write", self.store.update_user(
            record.id, {"password_hash": password_hash, "password_changed_at": _dt(self._now())}))
        self.status.forget(record.id)
        await self._store("refresh write", self.store.revoke_user_refresh(record.id, _dt(self._now())))
        return User.of(updated or record)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(int(ts), UTC)


__all__ = ["Accounts", "Principal", "Session", "User"]

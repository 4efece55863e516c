"""The JWTs the gateway signs for dashboard users, and what the gate gets from one: a :class:`Principal`.

Claims (RFC 7519 4.1): ``iss`` (``accounts.issuer``), ``sub`` (the user's id), ``iat``, ``exp`` (at most 24 hours
later), ``jti``, and the user's ``email``, ``role`` and ``permissions`` (the role's scopes when it was signed, for
upstreams that verify the token themselves with the published keys). The gateway itself takes the scopes from
the role in the policy it serves now, so a role changed in the policy applies at once (within the verified-token
cache's minute).

:class:`CombinedVerifier` is what the gate is given as its JWT verifier when accounts are on: a token whose ``kid``
is one of this gateway's keys is verified here (ES256 only); any other goes to the configured external issuer's
verifier (gateway.gate.jwt.JWTVerifier), if there is one. Given the users' :class:`gateway.accounts.status.UserStatus`,
it also refuses a token whose user is disabled or reset the password after the token was issued: from the
status cache, or (a miss) by :class:`UserStatusUnknown`, which makes the gate await :meth:`verify_refreshed` for
that request alone, as for a key-cache miss.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from cachetools import TTLCache

from gateway.accounts.signing import ALGORITHM, SigningKeys
from gateway.accounts.status import Standing, UserStatus
from gateway.errors import ExpiredJWT, InvalidJWT, JWTNoKey, StoreUnavailable
from gateway.gate import VerifyLater
from gateway.keys.store import StoreError

_CACHE_SIZE = 10_000
_CACHE_TTL = 60.0


@dataclass(frozen=True, slots=True)
class Principal:
    """A dashboard user, verified from a token this gateway signed. Shaped, where the gate and the management
    API read it, like the external issuer's principal (gateway.gate.jwt.JWTPrincipal)."""

    user_id: str
    email: str
    role: str
    scopes: frozenset[str]
    expires_ts: float = math.inf
    not_before_ts: float | None = None
    issued_ts: float = 0.0  # iat: checked against the user's last password reset (gateway.accounts.status)
    environment: str = "live"
    networks: tuple[()] = ()
    permissions_list: tuple[str, ...] = dataclasses.field(init=False)
    subject_header: bytes = dataclasses.field(init=False)
    permissions_header: bytes = dataclasses.field(init=False)
    upstream_headers: tuple[tuple[str, str], ...] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        listed = tuple(sorted(self.scopes))
        joined = ",".join(listed)
        object.__setattr__(self, "permissions_list", listed)
        object.__setattr__(self, "subject_header", self.user_id.encode("ascii"))
        object.__setattr__(self, "permissions_header", joined.encode("ascii"))
        # The existing X-Auth-Subject / X-Auth-Permissions, and who the user is (the gateway drops any X-Auth-*
        # header a client sends, so the upstream can believe these).
        object.__setattr__(self, "upstream_headers", (
            ("x-auth-subject", self.user_id), ("x-auth-permissions", joined), ("x-auth-user-id", self.user_id),
            ("x-auth-user-email", self.email), ("x-auth-user-role", self.role)))

    @property
    def permissions(self) -> frozenset[str]:
        return self.scopes

    @property
    def subject(self) -> str:
        return self.user_id

    @property
    def actor(self) -> str:
        """Who the audit trail says made a change."""
        return f"user:{self.user_id}"

    def __repr__(self) -> str:
        return f"Principal(user_id={self.user_id!r}, role={self.role!r})"


class TokenIssuer:
    """Signs and verifies this gateway's JWTs. ``role_scopes`` gives a role's scopes in the policy served now."""

    def __init__(self, keys: SigningKeys, issuer: str, role_scopes: Callable[[str], frozenset[str]],
                 clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.issuer = issuer
        self.role_scopes = role_scopes
        self.clock = clock
        self._cache: TTLCache[str, Principal] = TTLCache(maxsize=_CACHE_SIZE, ttl=_CACHE_TTL)

    def issue(self, user_id: str, email: str, role: str, now: float, lifetime: int, jti: str) -> tuple[str, int]:
        """A signed token and its ``exp`` (seconds since the epoch)."""
        exp = int(now) + lifetime
        claims = {"iss": self.issuer, "sub": user_id, "iat": int(now), "exp": exp, "jti": jti, "email": email,
                  "role": role, "permissions": sorted(self.role_scopes(role))}
        return self.keys.sign(claims), exp

    def ours(self, token: str) -> bool:
        """Whether ``token`` names one of this gateway's keys (a cached one surely does)."""
        if token in self._cache:
            return True
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except (jwt.PyJWTError, ValueError, TypeError):
            return False
        return isinstance(kid, str) and self.keys.public_key(kid) is not None

    def verify(self, token: str, now: float | None = None) -> Principal:
        """The principal of one of this gateway's tokens; ExpiredJWT past ``exp``, InvalidJWT otherwise."""
        now = self.clock() if now is None else now
        principal = self._cache.get(token)
        if principal is None:
            principal = self._verify(token)
            self._cache[token] = principal
        if now >= principal.expires_ts:
            raise ExpiredJWT()
        return principal

    def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidJWT() from None
        kid = header.get("kid")
        key = self.keys.public_key(kid) if isinstance(kid, str) else None
        if key is None:
            raise JWTNoKey()
        try:
            # Only ES256, whatever the header says; exp is checked by verify() against the gateway's clock.
            claims = jwt.decode(token, key, algorithms=[ALGORITHM], issuer=self.issuer,
                                options={"require": ["exp", "sub", "iss", "iat"], "verify_exp": False,
                                         "verify_iat": False})
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidJWT() from None
        sub, email, role, exp = claims.get("sub"), claims.get("email"), claims.get("role"), claims.get("exp")
        iat = claims.get("iat")
        if not (isinstance(sub, str) and isinstance(email, str) and isinstance(role, str) and sub.isascii()
                and email.isascii() and isinstance(exp, int) and not isinstance(exp, bool)
                and isinstance(iat, int) and not isinstance(iat, bool)):
            raise InvalidJWT()
        return Principal(user_id=sub, email=email, role=role, scopes=self.role_scopes(role), expires_ts=float(exp),
                         issued_ts=float(iat))


class UserStatusUnknown(VerifyLater):
    """One of this gateway's tokens whose user's status is not cached: the gate awaits
    :meth:`CombinedVerifier.verify_refreshed` (one store read) for this request, as it awaits the store on a
    key-cache miss."""


class ExternalVerifier(Protocol):
    """What :class:`CombinedVerifier` needs of the external issuer's verifier (gateway.gate.jwt.JWTVerifier)."""

    def verify(self, token: str, now: float | None = None) -> Any: ...

    async def verify_refreshed(self, token: str, now: float | None = None) -> Any: ...


class CombinedVerifier:
    """The gate's JWT verifier with accounts on: this gateway's tokens first (by ``kid``), else the external
    issuer's verifier (``external``; None: no other tokens are accepted). With ``status``, a token of this gateway
    stands only while its user does (active, and no password reset since the token was issued)."""

    def __init__(self, issuer: TokenIssuer, external: ExternalVerifier | None,
                 status: UserStatus | None = None) -> None:
        self.issuer = issuer
        self.external = external
        self.status = status

    def verify(self, token: str, now: float | None = None) -> Any:
        if self.issuer.ours(token):
            principal = self.issuer.verify(token, now)
            if self.status is not None:
                standing = self.status.peek(principal.user_id)
                if standing is None:
                    raise UserStatusUnknown()
                standing.check(principal.issued_ts)
            return principal
        if self.external is None:
            raise JWTNoKey()
        return self.external.verify(token, now)

    async def verify_refreshed(self, token: str, now: float | None = None) -> Any:
        if self.issuer.ours(token):
            principal = self.issuer.verify(token, now)
            if self.status is not None:
                (await load_standing(self.status, principal.user_id)).check(principal.issued_ts)
            return principal
        if self.external is None:
            raise JWTNoKey()
        return await self.external.verify_refreshed(token, now)


async def load_standing(status: UserStatus, user_id: str) -> Standing:
    """The user's standing from the store; StoreUnavailable (503) when the store cannot be read."""
    try:
        return await status.load(user_id)
    except StoreError:
        raise StoreUnavailable() from None

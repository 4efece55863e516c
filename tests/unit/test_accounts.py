"""gateway.accounts without a server: roles in the policy, the signing-key file, the tokens' checks under a clock
the test moves, the lockout's cool-down, and reprs that never show a secret. The store is a real SQLite file."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.accounts import Accounts, Principal
from gateway.accounts.signing import KEY_FILE, SigningKeys, thumbprint
from gateway.accounts.status import Invalidations, UserStatus
from gateway.accounts.tokens import CombinedVerifier, TokenIssuer, UserStatusUnknown
from gateway.config.settings import AccountsSettings, ConfigError
from gateway.errors import (
    ExpiredJWT,
    InvalidCredentials,
    InvalidJWT,
    InvalidRefreshToken,
    JWTNoKey,
    RoleCannotGrant,
    TooManyLogins,
)
from gateway.keys.sqlite import SQLiteStore
from gateway.policy.rules import PolicyError, load_policy, parse_policy
from tests.support.lifecycle import FakeClock
from tests.support.procs import ROOT

POLICY = load_policy(ROOT / "policies" / "deployally.yaml")


def _accounts(tmp_path: Path, clock: FakeClock, **settings: Any) -> Accounts:
    keys = SigningKeys(tmp_path / "signing-keys")
    issuer = TokenIssuer(keys, "gateway", lambda role: POLICY.roles.get(role, frozenset()), clock)
    store = SQLiteStore(tmp_path / "keys.db")
    return Accounts(AccountsSettings(**{"enabled": True, **settings}), store, issuer, lambda: POLICY, clock)


def test_roles_must_name_scopes_the_policy_knows() -> None:
    base = {"routes": [{"path": "/v1/servers", "methods": ["GET"], "scopes": ["servers:read"]}]}
    assert parse_policy({**base, "roles": {"ops": ["servers:*"]}}).roles == {"ops": frozenset({"servers:*"})}
    with pytest.raises(PolicyError, match=r"roles.ops: scope 'billing:read' is not one the policy knows"):
        parse_policy({**base, "roles": {"ops": ["billing:read"]}})
    with pytest.raises(PolicyError, match="invalid role name"):
        parse_policy({**base, "roles": {"Ops!": ["servers:read"]}})
    with pytest.raises(PolicyError, match="must be a list of scopes"):
        parse_policy({**base, "roles": {"ops": "servers:read"}})
    # The gateway's own routes added to a policy keep its roles.
    assert parse_policy({**base, "roles": {"ops": ["servers:read"]}}).with_routes([]).roles["ops"]


def test_a_role_grants_keys_only_within_its_scopes() -> None:
    accounts = Accounts.__new__(Accounts)
    accounts.policy = lambda: POLICY
    accounts.check_grant("developer", ["templates:read", "deployments:create"])
    for scope in ("servers:manage", "*", "servers:*", "instances:*"):
        with pytest.raises(RoleCannotGrant) as caught:
            accounts.check_grant("developer", ["templates:read", scope])
        assert caught.value.params == {"scope": scope}
    with pytest.raises(RoleCannotGrant):
        accounts.check_grant("no-such-role", ["templates:read"])


def test_the_signing_key_file_is_private_stable_and_refused_when_others_can_read_it(tmp_path: Path) -> None:
    old = os.umask(0)  # the most permissive umask: the key must still be 600 in a 700 directory
    try:
        first = SigningKeys(tmp_path / "keys")
    finally:
        os.umask(old)
    path = tmp_path / "keys" / KEY_FILE
    assert first.created and path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    again = SigningKeys(tmp_path / "keys")
    assert not again.created and again.kid == first.kid
    (jwk,) = again.jwks()["keys"]
    assert "d" not in jwk and jwk["kid"] == thumbprint(jwk) and jwk["alg"] == "ES256"
    assert "PRIVATE" not in repr(again)
    # A retired key beside it is published and verified with, never signed with.
    os.rename(path, tmp_path / "keys" / "retired.pem")
    rotated = SigningKeys(tmp_path / "keys")
    assert rotated.kid != first.kid and {k["kid"] for k in rotated.jwks()["keys"]} == {first.kid, rotated.kid}
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 644\); chmod 600 it"):
        SigningKeys(tmp_path / "keys")


def test_tokens_expire_by_the_gateways_clock_and_forgeries_are_refused(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000)
    keys = SigningKeys(tmp_path / "k")
    issuer = TokenIssuer(keys, "gateway", lambda role: POLICY.roles.get(role, frozenset()), clock)
    token, exp = issuer.issue("usr_1", "ana@example.com", "viewer", clock(), 3600, "j1")
    assert exp == 1_800_003_600
    principal = issuer.verify(token)
    assert principal.user_id == "usr_1" and principal.scopes == POLICY.roles["viewer"]
    assert ("x-auth-user-role", "viewer") in principal.upstream_headers
    clock.now = exp
    with pytest.raises(ExpiredJWT):
        issuer.verify(token)
    # The payload changed, the signature kept: refused. The same claims as HS256 with the public key as secret
    # (algorithm confusion): refused. Another issuer's ES256 key under our kid: refused.
    header, payload, sig = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    tampered = jwt.utils.base64url_encode(json.dumps({**claims, "role": "admin"}).encode()).decode()
    public_pem = keys.public_key(keys.kid).public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    signing_input = (jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": keys.kid}).encode()) + b"."
                     + jwt.utils.base64url_encode(json.dumps(claims).encode()))
    mac = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    hs = (signing_input + b"." + jwt.utils.base64url_encode(mac)).decode()
    for bad in (f"{header}.{tampered}.{sig}", hs):
        with pytest.raises(InvalidJWT):
            issuer._verify(bad)
    wrong_iss = keys.sign({**claims, "iss": "someone-else"})
    with pytest.raises(InvalidJWT):
        issuer._verify(wrong_iss)
    # A token of no key of ours goes to the external issuer, and is refused when there is none.
    other = SigningKeys(tmp_path / "other").sign(claims)
    with pytest.raises(JWTNoKey):
        CombinedVerifier(issuer, None).verify(other)


def test_login_lockout_ends_after_the_cool_down_and_refresh_needs_an_active_user(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000)
    accounts = _accounts(tmp_path, clock, login_failures_per_account=2, login_cooldown_seconds=60)

    async def go() -> None:
        await accounts.create_user("ana@example.com", "long enough", "viewer")
        for _ in range(2):
            with pytest.raises(InvalidCredentials):
                await accounts.login("ana@example.com", "wrong", None)
        with pytest.raises(TooManyLogins) as held:
            await accounts.login("ANA@example.com", "long enough", None)
        assert held.value.retry_after == 60
        clock.now += 61
        session = await accounts.login("ana@example.com", "long enough", None)
        assert isinstance(await accounts.principal(session.token), Principal)
        assert await accounts.principal("eyJhbGciOiJub25lIn0.e30.") is None
        assert session.token not in repr(session) and session.refresh_token not in repr(session)
        await accounts.disable_user("ana@example.com")
        # The process that disabled the user refuses its token at once (the dashboard's check).
        assert await accounts.principal(session.token) is None
        with pytest.raises(InvalidRefreshToken):
            await accounts.refresh(session.refresh_token, None)
        await accounts.store.close()  # type: ignore[attr-defined]

    asyncio.run(go())


def test_a_schema_2_store_gains_the_user_tables_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    asyncio.run(SQLiteStore(path).close())
    db = sqlite3.connect(path)  # made a schema-2 file: the tables of schema 3 dropped, the version set back
    for table in ("users", "refresh_tokens", "usage_daily"):
        db.execute(f"DROP TABLE {table}")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    asyncio.run(store.close())
    db = sqlite3.connect(path)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"users", "refresh_tokens", "usage_daily", "api_keys"} <= tables
    assert db.execute("PRAGMA user_version").fetchone()[0] == 5
    db.close()


def test_a_disabled_or_reset_users_token_is_refused_from_the_status_cache_within_its_bound(tmp_path: Path) -> None:
    """OWASP Session Management Cheat Sheet: disabling an account or changing its password ends its sessions. The
    gate's verifier reads a user's status from the store once per cache TTL (a miss: UserStatusUnknown, which the
    gate awaits as verify_refreshed); this process's own change applies at once. A real SQLite file."""
    clock = FakeClock(1_800_000_000)
    accounts = _accounts(tmp_path, clock)
    other = _accounts(tmp_path, clock)  # another process on the same store: it learns only through its cache
    verifier = CombinedVerifier(accounts.issuer, None, accounts.status)
    theirs = CombinedVerifier(other.issuer, None, other.status)

    async def go() -> None:
        await accounts.create_user("ana@example.com", "long enough", "viewer")
        token = (await accounts.login("ana@example.com", "long enough", None)).token
        with pytest.raises(UserStatusUnknown):
            verifier.verify(token)  # not cached yet: the gate awaits the store once
        assert (await verifier.verify_refreshed(token)).user_id
        assert verifier.verify(token).email == "ana@example.com"  # now from the cache, no store read
        assert (await theirs.verify_refreshed(token)).user_id
        await accounts.disable_user("ana@example.com")
        with pytest.raises(UserStatusUnknown):
            verifier.verify(token)  # forgotten at once here ...
        with pytest.raises(InvalidJWT):
            await verifier.verify_refreshed(token)  # ... and refused
        assert theirs.verify(token).user_id  # the other process: still cached, until its TTL ...
        other.status.forget()  # (the TTL passing, without waiting for it)
        with pytest.raises(InvalidJWT):
            await theirs.verify_refreshed(token)
        await accounts.enable_user("ana@example.com")
        assert (await verifier.verify_refreshed(token)).user_id  # enabled again: the token stands
        clock.now += 10
        await accounts.reset_password("ana@example.com", "a new long password")
        with pytest.raises(InvalidJWT):
            await verifier.verify_refreshed(token)  # issued before the reset
        assert await accounts.principal(token) is None
        fresh = (await accounts.login("ana@example.com", "a new long password", None)).token
        assert (await verifier.verify_refreshed(fresh)).user_id  # issued in the reset's second: it stands
        await accounts.store.close()
        await other.store.close()

    asyncio.run(go())


def test_the_invalidation_channel_reaches_the_key_cache_and_the_users_status(tmp_path: Path) -> None:
    """A key's hash drops that key only; "user:<id>" that user's standing only; a lost channel (no payload) both
    caches whole. (The channels themselves, Redis and PostgreSQL, are tested end to end in test_users.py.)"""
    store = SQLiteStore(tmp_path / "keys.db")
    status = UserStatus(store, 300)
    dropped: list[str | None] = []

    class Keys:  # records what the key cache is told: the routing is what is under test
        def invalidate(self, key_hash: str | None = None) -> None:
            dropped.append(key_hash)

    async def go() -> None:
        for user_id in ("usr_a", "usr_b"):
            await status.load(user_id)
        channel = Invalidations(Keys(), status)
        channel.invalidate("ab" * 32)
        assert dropped == ["ab" * 32] and status.peek("usr_a") is not None
        channel.invalidate("user:usr_a")
        assert dropped == ["ab" * 32] and status.peek("usr_a") is None and status.peek("usr_b") is not None
        channel.invalidate()
        assert dropped == ["ab" * 32, None] and status.peek("usr_b") is None
        await store.close()

    asyncio.run(go())

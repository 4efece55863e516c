"""What every front door is built on: the parts made from the settings (store, server secret, policy, JWT
verifier) and :class:`GateService`, the gate with the cache, usage recorder and rate limits it runs on.

`gateway serve` (gateway.app) and the ASGI middleware (gateway.doors.middleware) both build their gate here, so
the two decide alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from gateway.accounts import Accounts
from gateway.admin.api import build_policy
from gateway.config.settings import Settings
from gateway.gate import Gate, Verifier
from gateway.keys.backends import is_postgres_url, is_redis_url, open_store
from gateway.keys.cache import KeyCache
from gateway.keys.hashing import Pepper, load_pepper
from gateway.keys.store import KeyStore, UserStore
from gateway.keys.usage import UsageRecorder
from gateway.observability.metrics import Metrics
from gateway.policy.rules import Policy
from gateway.ratelimit.stage import RateLimits, open_limiter

if TYPE_CHECKING:
    from gateway.doors.jwks import JWKSFetcher
    from gateway.keys.postgres.listener import InvalidationListener as PostgresListener
    from gateway.keys.redis import InvalidationListener


@dataclass
class Components:
    store: KeyStore
    pepper: Pepper
    pepper_created: bool
    policy: Policy
    jwt: Verifier | None = None
    # Dashboard users and the gateway's own JWTs (accounts.enabled); its tokens are verified by ``jwt``.
    accounts: Accounts | None = None


def build_components(settings: Settings) -> Components:
    """Everything that can fail on bad configuration, built before any socket is opened."""
    policy = build_policy(settings)  # the same function a reload uses (gateway/admin/api.py)
    pepper, created = load_pepper(settings)
    jwt = build_verifier(settings)
    store = open_store(settings)
    if is_postgres_url(settings.store.url):
        from gateway.keys.postgres.store import PostgresStore

        assert isinstance(store, PostgresStore)
        # A database at a schema this gateway does not know (or that cannot be reached) stops the start here,
        # with a message naming what to do.
        store.check_schema_at_start()
    components = Components(store=store, pepper=pepper, pepper_created=created, policy=policy, jwt=jwt)
    if settings.accounts.enabled:
        components.accounts = build_accounts(settings, store, lambda: components.policy)
        components.jwt = combine_verifiers(components.accounts, jwt)
    return components


def build_accounts(settings: Settings, store: KeyStore, policy: Callable[[], Policy]) -> Accounts:
    """The dashboard users over ``store``, signing with the key of ``accounts.signing_key_dir`` (made on first
    start); ``policy`` gives the policy served now (its roles). ConfigError names a bad key file."""
    from gateway.accounts.signing import SigningKeys, default_key_dir
    from gateway.accounts.tokens import TokenIssuer

    a = settings.accounts
    keys = SigningKeys(default_key_dir(settings))
    issuer = TokenIssuer(keys, a.issuer, lambda role: policy().roles.get(role, frozenset()))
    return Accounts(a, cast(UserStore, store), issuer, policy, status_ttl=settings.cache.ttl_seconds)


def combine_verifiers(accounts: Accounts | None, external: Verifier | None) -> Verifier | None:
    """What the gate verifies JWTs with: the gateway's own tokens (with accounts on), then ``external``."""
    if accounts is None:
        return external
    from gateway.accounts.tokens import CombinedVerifier

    return CombinedVerifier(accounts.issuer, external, accounts.status)


def build_verifier(settings: Settings) -> Verifier | None:
    """The JWT verifier of ``settings`` (None when JWTs are off); ConfigError names a bad setting."""
    if not settings.jwt.enabled:
        return None
    from gateway.gate.jwt import JWTVerifier

    return JWTVerifier(settings.jwt, settings.base_dir)


class GateService:
    """The gate and what it runs on: the key cache in front of the store (with invalidations from Redis pub/sub
    or PostgreSQL NOTIFY), the usage recorder and the rate limits. Every front door serves one: the proxy
    (:class:`GatewayApp`) and the ASGI middleware (:class:`gateway.doors.middleware.AuthMiddleware`) start it with
    their lifespan."""

    def __init__(self, settings: Settings, components: Components, metrics: Metrics | None = None,
                 unmatched: str = "deny") -> None:
        store = components.store
        self.store = store
        self.cache = KeyCache(store, settings.cache.ttl_seconds, settings.cache.max_size)
        # What the store's invalidation channel reaches: the key cache, and with accounts the users' status.
        invalidated: Any = self.cache
        if components.accounts is not None:
            from gateway.accounts.status import Invalidations

            invalidated = Invalidations(self.cache, components.accounts.status)
        self.invalidations: InvalidationListener | PostgresListener | None = None
        if is_redis_url(settings.store.url):
            from gateway.keys.redis import InvalidationListener

            # Changes made by any process reach this one's cache within a second (pub/sub).
            self.invalidations = InvalidationListener(settings.store.url, invalidated, settings.store.timeout_ms)
        elif is_postgres_url(settings.store.url):
            from gateway.keys.postgres.listener import InvalidationListener as PostgresListener
            from gateway.keys.postgres.store import PostgresStore

            assert isinstance(store, PostgresStore)
            # The same within a second, through LISTEN/NOTIFY.
            self.invalidations = PostgresListener(store, invalidated)
        self.usage = UsageRecorder(store, settings.usage.flush_seconds)
        rl = settings.rate_limits
        self.limits = RateLimits(rl, open_limiter(settings) if rl.enabled else None)
        self.gate = Gate(settings, components.policy, self.cache, components.pepper, usage=self.usage,
                         jwt=components.jwt, limits=self.limits, metrics=metrics, unmatched=unmatched)
        self.metrics = metrics
        self.jwt_settings = settings.jwt
        self.accounts = components.accounts
        self.jwks: JWKSFetcher | None = self._fetcher(components.jwt, settings)
        self._retired: set[asyncio.Task[None]] = set()

    def _fetcher(self, verifier: Verifier | None, settings: Settings) -> JWKSFetcher | None:
        # With accounts on, the external issuer's verifier is inside the combined one (gateway.accounts.tokens).
        verifier = getattr(verifier, "external", verifier)
        if verifier is None or settings.jwt.jwks_url is None:
            return None
        from gateway.doors.jwks import JWKSFetcher
        from gateway.gate.jwt import JWTVerifier

        assert isinstance(verifier, JWTVerifier)
        return JWKSFetcher(verifier, settings.jwt, self.metrics)

    def swap_jwt(self, verifier: Verifier | None, settings: Settings) -> None:
        """Serve ``verifier`` (built from the reloaded ``settings.jwt``) from now on. A JWKS URL fetched before
        keeps its fetcher and keys; a new one is fetched in the background (a token meanwhile waits for it, as
        for an unknown key id)."""
        old = self.jwks
        combined = combine_verifiers(self.accounts, verifier)
        if old is not None and verifier is not None and old.same_source(settings.jwt):
            from gateway.gate.jwt import JWTVerifier

            assert isinstance(verifier, JWTVerifier)
            old.adopt(verifier)
            old.settings = settings.jwt
        else:
            self.jwks = self._fetcher(verifier, settings)
            if old is not None:
                self._background(old.stop())
            if self.jwks is not None:
                fetcher = self.jwks
                # Started before the swap: a token arriving before the first fetch lands joins it.
                self._background(fetcher.start())
        self.gate.jwt = combined
        self.jwt_settings = settings.jwt

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def start(self) -> None:
        self.usage.start()
        await self.limits.start()
        if self.invalidations is not None:
            self.invalidations.start()
        if self.jwks is not None:
            await self.jwks.start()

    async def stop(self) -> None:
        """Flush usage, close the limiter, the invalidation listener and the store."""
        await self.usage.stop()
        await self.limits.close()
        if self.jwks is not None:
            await self.jwks.stop()
        for task in list(self._retired):
            task.cancel()
        if self.invalidations is not None:
            await self.invalidations.stop()
        await self.store.close()

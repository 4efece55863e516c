"""What every front door is built on: the parts made from the settings (store, server secret, policy, JWT
verifier) and :class:`GateService`, the gate with the cache, usage recorder and rate limits it runs on.

`gateway serve` (gateway.app) and the ASGI middleware (gateway.doors.middleware) both build their gate here, so
the two decide alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.admin.api import build_policy
from gateway.config.settings import Settings
from gateway.gate import Gate, Verifier
from gateway.keys.backends import is_redis_url, open_store
from gateway.keys.cache import KeyCache
from gateway.keys.hashing import Pepper, load_pepper
from gateway.keys.store import KeyStore
from gateway.keys.usage import UsageRecorder
from gateway.observability.metrics import Metrics
from gateway.policy.rules import Policy
from gateway.ratelimit.stage import RateLimits, open_limiter

if TYPE_CHECKING:
    from gateway.keys.redis import InvalidationListener


@dataclass
class Components:
    store: KeyStore
    pepper: Pepper
    pepper_created: bool
    policy: Policy
    jwt: Verifier | None = None


def build_components(settings: Settings) -> Components:
    """Everything that can fail on bad configuration, built before any socket is opened."""
    policy = build_policy(settings)  # the same function a reload uses (gateway/admin/api.py)
    pepper, created = load_pepper(settings)
    jwt: Verifier | None = None
    if settings.jwt.enabled:
        from gateway.gate.jwt import JWTVerifier

        jwt = JWTVerifier(settings.jwt, settings.base_dir)
    store = open_store(settings)
    return Components(store=store, pepper=pepper, pepper_created=created, policy=policy, jwt=jwt)


class GateService:
    """The gate and what it runs on: the key cache in front of the store (with pub/sub invalidation on Redis),
    the usage recorder and the rate limits. Every front door serves one: the proxy (:class:`GatewayApp`) and the
    ASGI middleware (:class:`gateway.doors.middleware.AuthMiddleware`) start it with their lifespan."""

    def __init__(self, settings: Settings, components: Components, metrics: Metrics | None = None,
                 unmatched: str = "deny") -> None:
        store = components.store
        self.store = store
        self.cache = KeyCache(store, settings.cache.ttl_seconds, settings.cache.max_size)
        self.invalidations: InvalidationListener | None = None
        if is_redis_url(settings.store.url):
            from gateway.keys.redis import InvalidationListener

            # Changes made by any process reach this one's cache within a second (pub/sub).
            self.invalidations = InvalidationListener(settings.store.url, self.cache, settings.store.timeout_ms)
        self.usage = UsageRecorder(store, settings.usage.flush_seconds)
        rl = settings.rate_limits
        self.limits = RateLimits(rl, open_limiter(settings) if rl.enabled else None)
        self.gate = Gate(settings, components.policy, self.cache, components.pepper, usage=self.usage,
                         jwt=components.jwt, limits=self.limits, metrics=metrics, unmatched=unmatched)

    async def start(self) -> None:
        self.usage.start()
        await self.limits.start()
        if self.invalidations is not None:
            self.invalidations.start()

    async def stop(self) -> None:
        """Flush usage, close the limiter, the invalidation listener and the store."""
        await self.usage.stop()
        await self.limits.close()
        if self.invalidations is not None:
            await self.invalidations.stop()
        await self.store.close()

"""Wiring: settings in, one ASGI application out."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.types import Receive, Scope, Send

from gateway.admin.api import ManagementAPI, internal_routes
from gateway.keys.cache import KeyCache
from gateway.keys.hashing import Pepper, load_pepper
from gateway.keys.store import KeyStore, is_redis_url, open_store
from gateway.keys.usage import UsageRecorder
from gateway.ops.health import Health, readiness_checks
from gateway.pipeline import Gateway, Verifier
from gateway.policies import Policy, load_policy
from gateway.proxy.forwarder import Forwarder
from gateway.ratelimit.stage import RateLimits, open_limiter
from gateway.settings import Settings, resolve_path

if TYPE_CHECKING:
    from gateway.keys.redis import InvalidationListener

log = logging.getLogger("gateway")

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def policy_path(settings: Settings) -> Path:
    """The policy file: relative to the config file, else to the project (the shipped ``policies/``)."""
    path = resolve_path(settings, settings.policies)
    if not path.exists() and not Path(settings.policies).is_absolute():
        shipped = PROJECT_ROOT / settings.policies
        if shipped.exists():
            return shipped
    return path


@dataclass
class Components:
    store: KeyStore
    pepper: Pepper
    pepper_created: bool
    policy: Policy
    jwt: Verifier | None = None


def build_components(settings: Settings) -> Components:
    """Everything that can fail on bad configuration, built before any socket is opened."""
    policy = load_policy(policy_path(settings))
    if settings.management.enabled:
        policy = policy.with_routes(internal_routes(settings.management.prefix))
    pepper, created = load_pepper(settings)
    jwt: Verifier | None = None
    if settings.jwt.enabled:
        from gateway.jwtauth import JWTVerifier

        jwt = JWTVerifier(settings.jwt, settings.base_dir)
    store = open_store(settings)
    return Components(store=store, pepper=pepper, pepper_created=created, policy=policy, jwt=jwt)


class GatewayApp:
    """The ASGI application: the lifespan around the :class:`Gateway` pipeline."""

    def __init__(self, settings: Settings, components: Components) -> None:
        self.settings = settings
        self.components = components
        store = components.store
        self.cache = KeyCache(store, settings.cache.ttl_seconds, settings.cache.max_size)
        self.invalidations: InvalidationListener | None = None
        if is_redis_url(settings.store.url):
            from gateway.keys.redis import InvalidationListener

            # Changes made by any process reach this one's cache within a second (pub/sub).
            self.invalidations = InvalidationListener(settings.store.url, self.cache, settings.store.timeout_ms)
        up = settings.upstream

        def forwarder(url: str) -> Forwarder:
            return Forwarder(url, connect_timeout=up.connect_timeout, read_timeout=up.read_timeout,
                             pool_size=up.pool_size)

        self.forwarders: dict[str, Forwarder | None] = {
            "live": forwarder(up.url),
            "test": forwarder(up.environments.test) if up.environments.test else None,
        }
        self.usage = UsageRecorder(store, settings.usage.flush_seconds)
        management = (
            ManagementAPI(settings, store, self.cache, components.pepper, components.policy,
                          tiers=tuple(settings.rate_limits.tiers))
            if settings.management.enabled else None
        )
        rl = settings.rate_limits
        self.limits = RateLimits(rl, open_limiter(settings) if rl.enabled else None)
        self.gateway = Gateway(
            settings, components.policy, self.cache, components.pepper, self.forwarders,
            management=management, usage=self.usage, jwt=components.jwt, limits=self.limits,
        )
        ops = settings.ops
        self.health = Health(ops.healthz_path, ops.readyz_path, readiness_checks(
            store, lambda: self.gateway.policy, self.limits.limiter), ops.readyz_timeout_seconds)
        # Probes are answered before the auth gate: one dict lookup on the path per request.
        self._probes = self.health.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        probe = self._probes.get(scope["path"]) if scope["type"] == "http" else None
        if probe is not None:
            await probe(scope, receive, send)
            return
        await self.gateway(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for f in self.forwarders.values():
                        if f is not None:
                            await f.start()
                    self.usage.start()
                    await self.limits.start()
                    if self.invalidations is not None:
                        self.invalidations.start()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.health.start_draining()
                await self.usage.stop()
                await self.limits.close()
                if self.invalidations is not None:
                    await self.invalidations.stop()
                for f in self.forwarders.values():
                    if f is not None:
                        await f.close()
                await self.components.store.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings, components: Components | None = None) -> GatewayApp:
    return GatewayApp(settings, components or build_components(settings))

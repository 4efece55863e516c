"""Wiring: settings in, one ASGI application out."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.admin.api import ManagementAPI, build_policy
from gateway.gate import Gate, Verifier
from gateway.keys.backends import is_redis_url, open_store
from gateway.keys.cache import KeyCache
from gateway.keys.hashing import Pepper, load_pepper
from gateway.keys.store import KeyStore
from gateway.keys.usage import UsageRecorder
from gateway.ops.health import Health, readiness_checks, soft_checks
from gateway.ops.logging import AccessLog, logged
from gateway.ops.metrics import Metrics, MetricsEndpoint, gateway_sources
from gateway.pipeline import Gateway
from gateway.policies import Policy
from gateway.proxy.forwarder import Forwarder
from gateway.ratelimit.stage import RateLimits, open_limiter
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.keys.redis import InvalidationListener
    from gateway.ops.multiprocess import SharedMetrics

log = logging.getLogger("gateway")

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
        from gateway.jwtauth import JWTVerifier

        jwt = JWTVerifier(settings.jwt, settings.base_dir)
    store = open_store(settings)
    return Components(store=store, pepper=pepper, pepper_created=created, policy=policy, jwt=jwt)


class GateService:
    """The gate and what it runs on: the key cache in front of the store (with pub/sub invalidation on Redis),
    the usage recorder and the rate limits. Every front door serves one: the proxy (:class:`GatewayApp`) and the
    ASGI middleware (:class:`gateway.middleware.AuthMiddleware`) start it with their lifespan."""

    def __init__(self, settings: Settings, components: Components, metrics: Metrics | None = None) -> None:
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
                         jwt=components.jwt, limits=self.limits, metrics=metrics)

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


class GatewayApp:
    """The ASGI application of ``gateway serve``: the lifespan around the reverse proxy (:class:`Gateway`),
    with probes, metrics and the API description answered before it."""

    def __init__(self, settings: Settings, components: Components,
                 reload_settings: Callable[[], Settings] | None = None, metrics_dir: str | None = None) -> None:
        self.settings = settings
        self.components = components
        store = components.store
        ops = settings.ops
        # One registry per app: several apps (tests, workers) never share a time series.
        self.metrics = Metrics(ops.metrics_key_labels) if ops.metrics_enabled else None
        self.service = GateService(settings, components, self.metrics)
        self.gate = self.service.gate
        self.cache = self.service.cache
        self.usage = self.service.usage
        self.limits = self.service.limits
        up = settings.upstream

        def forwarder(url: str) -> Forwarder:
            return Forwarder(url, connect_timeout=up.connect_timeout, read_timeout=up.read_timeout,
                             pool_size=up.pool_size, body_timeout=settings.limits.body_timeout_seconds)

        self.forwarders: dict[str, Forwarder | None] = {
            "live": forwarder(up.url),
            "test": forwarder(up.environments.test) if up.environments.test else None,
        }
        management = (
            ManagementAPI(settings, store, self.cache, components.pepper, components.policy,
                          tiers=tuple(settings.rate_limits.tiers))
            if settings.management.enabled else None
        )
        self.gateway = Gateway(settings, self.gate, self.forwarders, management=management, metrics=self.metrics,
                               access_log=AccessLog() if ops.access_log else None)
        self.health = Health(ops.healthz_path, ops.readyz_path, readiness_checks(
            store, lambda: self.gate.policy, self.limits.limiter), ops.readyz_timeout_seconds,
            soft=soft_checks(settings.rate_limits.on_store_error))
        # Probes, metrics and the API description are answered before the auth gate: one dict lookup on the
        # path per request.
        self._probes: dict[str, ASGIApp] = dict(self.health.routes)
        # With workers (gateway/workers.py), each worker's counts also go to files all workers read.
        self.shared_metrics: SharedMetrics | None = None
        if self.metrics is not None:
            health = self.health
            gateway_sources(self.metrics, self.cache, self.gate.auth_failures, self.limits.limiter,
                            is_redis_url(settings.store.url), readiness=lambda: health.state)
            render = self.metrics.render
            if metrics_dir is not None:
                from gateway.ops.multiprocess import SharedMetrics

                self.shared_metrics = SharedMetrics(self.metrics, metrics_dir)
                render = self.shared_metrics.render
            self._probes[ops.metrics_path] = MetricsEndpoint(
                render, ops.metrics_scope, self.gateway.authorize, settings.error_format, refresh=health.readiness)
        if ops.openapi_enabled:
            from gateway.ops.openapi import openapi_routes

            self._probes.update(openapi_routes(settings))
        if ops.access_log and ops.access_log_probes:
            access = AccessLog()
            self._probes = {path: logged(app, access, path) for path, app in self._probes.items()}
        from gateway.ops.reload import Reloader

        self.reloader = Reloader(self, reload_settings)

    def swap_policy(self, policy: Policy, settings: Settings) -> None:
        """Serve ``policy`` and the reloadable settings (gateway.ops.reload.RELOADABLE) from now on: plain
        assignments, so no request ever sees half of a change."""
        self.gate.policy = policy
        self.components.policy = policy
        gateway = self.gateway
        if gateway.management is not None:
            gateway.management._policy = policy  # noqa: SLF001 - the one holder outside the gate
        self.gate.debug_allowed = settings.debug_headers
        if settings.ops.access_log != (gateway.access_log is not None):
            gateway.access_log = AccessLog() if settings.ops.access_log else None

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
                    await self.service.start()
                    self.reloader.start()
                    if self.shared_metrics is not None:
                        self.shared_metrics.start()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                _settle_heap()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.health.start_draining()
                await self.reloader.stop()
                for f in self.forwarders.values():
                    if f is not None:
                        await f.close()
                await self.service.stop()
                if self.shared_metrics is not None:
                    await self.shared_metrics.stop()  # the last counts, after the last request
                await send({"type": "lifespan.shutdown.complete"})
                return


def _settle_heap() -> None:
    """Tune the garbage collector for serving.

    Everything built at start-up (modules, settings, policy, pools) is moved out of the collector's sight:
    it is never garbage, and every full collection would walk it again while requests wait. Then the young
    generation's threshold goes from 700 to 10,000 objects: requests free almost all they allocate by
    reference counting, so at 700 collections were set off by the objects of the requests in flight (about
    one every 24 requests under load, some 9 us a request in all) and found next to nothing; at 10,000 they
    run when cyclic garbage has really built up. Measured with gc.callbacks under loadtests/profile.sh's
    load (loadtests/RESULTS.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def create_app(settings: Settings, components: Components | None = None,
               reload_settings: Callable[[], Settings] | None = None, metrics_dir: str | None = None) -> GatewayApp:
    """The app; ``reload_settings`` re-reads the configuration on a reload (else only the policy file is);
    ``metrics_dir`` is the workers' shared metrics directory (gateway/workers.py), None in one process."""
    return GatewayApp(settings, components or build_components(settings), reload_settings, metrics_dir)

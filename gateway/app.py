"""Wiring: settings in, one ASGI application out."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, cast

from prometheus_client.metrics_core import CounterMetricFamily, Metric
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.admin.api import ManagementAPI
from gateway.config.settings import Settings
from gateway.doors.assembly import Components, GateService, build_components
from gateway.doors.cors import UPSTREAM_CORS
from gateway.doors.forward_auth import ForwardAuth
from gateway.doors.proxy.forwarder import Forwarder
from gateway.doors.proxy.pipeline import Gateway
from gateway.doors.proxy.websocket import UpstreamWebSockets
from gateway.errors import error_format
from gateway.gate import Verifier
from gateway.keys.backends import store_kind
from gateway.keys.store import UserStore
from gateway.observability.health import Health, readiness_checks, soft_checks
from gateway.observability.logging import AccessLog, logged
from gateway.observability.metrics import Metrics, MetricsEndpoint, gateway_sources
from gateway.policy.rules import Policy

if TYPE_CHECKING:
    from gateway.admin.dashboard import Dashboard
    from gateway.observability.multiprocess import SharedMetrics
    from gateway.observability.otel import Tracing
    from gateway.rotation.runner import RotationTask

log = logging.getLogger("gateway")

class GatewayApp:
    """The ASGI application of ``gateway serve``: the lifespan around the reverse proxy (:class:`Gateway`),
    with probes, metrics and the API description answered before it."""

    def __init__(self, settings: Settings, components: Components,
                 reload_settings: Callable[[], Settings] | None = None, metrics_dir: str | None = None) -> None:
        self.settings = settings
        self.components = components
        store = components.store
        ops = settings.ops
        # The error format and its words (the catalogue, the `messages` overrides), rendered once for every door.
        errors = error_format(settings.error_format, settings.messages)
        # One registry per app: several apps (tests, workers) never share a time series.
        self.metrics = Metrics(ops.metrics_key_labels) if ops.metrics_enabled else None
        self.service = GateService(settings, components, self.metrics)
        self.gate = self.service.gate
        self.cache = self.service.cache
        self.usage = self.service.usage
        self.limits = self.service.limits
        up = settings.upstream

        urls = {"live": up.url, "test": up.environments.test}
        # Per environment: the HTTP requests' forwarder, and the WebSockets' handshakes.
        self.forwarders: dict[str, Forwarder | None] = {
            env: Forwarder(url, connect_timeout=up.connect_timeout, read_timeout=up.read_timeout,
                           pool_size=up.pool_size, body_timeout=settings.limits.body_timeout_seconds,
                           drop_response=UPSTREAM_CORS if settings.cors.allow_origins else frozenset())
            if url else None
            for env, url in urls.items()
        }
        self.websockets: dict[str, UpstreamWebSockets | None] = {
            env: UpstreamWebSockets(url, connect_timeout=up.connect_timeout, read_timeout=up.read_timeout)
            if url else None
            for env, url in urls.items()
        }
        management = (
            ManagementAPI(settings, store, self.cache, components.pepper, lambda: self.gate.policy)
            if settings.management.enabled else None
        )
        # OpenTelemetry spans (docs/tracing.md): imported only when an OTLP endpoint is set.
        self.tracing: Tracing | None = None
        if settings.tracing.otlp_endpoint is not None:
            from gateway.observability.otel import Tracing

            self.tracing = Tracing(settings.tracing)
        self.gateway = Gateway(settings, self.gate, self.forwarders, self.websockets, management=management,
                               metrics=self.metrics, access_log=AccessLog() if ops.access_log else None,
                               tracing=self.tracing)
        # Automatic rotation and its notices (gateway/rotation): a pass every rotation.check_seconds, by one
        # process at a time of those sharing the store. The ASGI middleware does not run it (a `gateway serve`
        # or `gateway keys rotate-due` beside it does).
        self.rotation: RotationTask | None = None
        if settings.rotation.automatic:
            from gateway.rotation.runner import RotationRunner, RotationTask

            self.rotation = RotationTask(
                RotationRunner(settings, store, components.pepper, invalidate=self.cache.invalidate),
                settings.rotation.check_seconds)
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
                            store_kind(settings.store.url), readiness=lambda: health.state)
            if self.rotation is not None:
                self.metrics.sources.append(_rotation_families(self.rotation))
            render = self.metrics.render
            if metrics_dir is not None:
                from gateway.observability.multiprocess import SharedMetrics

                self.shared_metrics = SharedMetrics(self.metrics, metrics_dir)
                render = self.shared_metrics.render
            self._probes[ops.metrics_path] = MetricsEndpoint(
                render, ops.metrics_scope, self.gateway.authorize, errors, refresh=health.readiness)
        # The dashboard login (gateway/doors/login.py): exact paths answered before the gate, like the probes.
        if components.accounts is not None:
            from gateway.doors.login import AccountEndpoints

            self._probes.update(AccountEndpoints(components.accounts, settings.management.prefix, errors,
                                                 self.gate.resolver).routes())
        if ops.openapi_enabled:
            from gateway.admin.openapi import openapi_routes

            self._probes.update(openapi_routes(settings))
        if ops.access_log and ops.access_log_probes:
            access = AccessLog()
            self._probes = {path: logged(app, access, path) for path, app in self._probes.items()}
        # Forward-auth (gateway/doors/forward_auth.py): its path is one more exact path; the paths below it (Envoy's
        # path_prefix form) cost the other requests one startswith, made only when the dict lookup missed. Off,
        # the prefix is one no request path starts with.
        self._verify_under = b"\0"
        self._verify: ASGIApp = self.gateway
        self.forward_auth: ForwardAuth | None = None
        fa = settings.forward_auth
        if fa.enabled:
            self.forward_auth = ForwardAuth(
                self.gate, fa.path, errors, test_keys=fa.test_keys,
                forward_authorization=settings.forward_authorization, metrics=self.metrics,
                access_log=AccessLog() if ops.access_log else None)
            self._probes[fa.path] = self.forward_auth
            self._verify, self._verify_under = self.forward_auth, self.forward_auth.under
        # The dashboard (gateway/admin/dashboard): every path below dashboard.path, answered before the gate (its
        # pages authenticate users by their session cookie, not by an Authorization header). The other requests
        # pay one startswith.
        self.dashboard: Dashboard | None = None
        self._dashboard_app: ASGIApp | None = None
        self._dashboard_under = "\0"
        if settings.dashboard.enabled and components.accounts is not None:
            from gateway.admin.dashboard import Dashboard

            self.dashboard = Dashboard(settings, store, components.pepper, components.accounts,
                                       lambda: self.gate.policy, self.cache.invalidate,
                                       cast(UserStore, store).usage_by_day,
                                       self.gate.resolver)
            self._dashboard_app = self.dashboard
            if ops.access_log:
                self._dashboard_app = logged(self.dashboard, AccessLog(), settings.dashboard.path)
            self._dashboard_under = settings.dashboard.path
        from gateway.serving.reload import Reloader

        self.reloader = Reloader(self, reload_settings)

    def swap_policy(self, policy: Policy, settings: Settings) -> None:
        """Serve ``policy`` and the reloadable settings (gateway.serving.reload.RELOADABLE) from now on: plain
        assignments, so no request ever sees half of a change."""
        self.gate.policy = policy
        self.components.policy = policy
        gateway = self.gateway
        self.gate.debug_allowed = settings.debug_headers
        if settings.ops.access_log != (gateway.access_log is not None):
            gateway.access_log = AccessLog() if settings.ops.access_log else None
        verify = self.forward_auth
        if verify is not None and settings.ops.access_log != (verify.access_log is not None):
            verify.access_log = AccessLog() if settings.ops.access_log else None

    def swap_jwt(self, verifier: Verifier | None, settings: Settings) -> None:
        """Verify JWTs with ``verifier`` (the reloaded ``jwt`` section) from now on: one assignment in the gate
        every front door shares."""
        self.service.swap_jwt(verifier, settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        probe = self._probes.get(scope["path"]) if scope["type"] == "http" else None
        if probe is not None:
            await probe(scope, receive, send)
            return
        if (scope.get("raw_path") or b"").startswith(self._verify_under) and scope["type"] == "http":
            await self._verify(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(self._dashboard_under) and scope["type"] == "http" and self.dashboard is not None \
                and self.dashboard.owns(path):
            await self._dashboard_app(scope, receive, send)  # type: ignore[misc]
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
                    if self.rotation is not None:
                        self.rotation.start()
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
                if self.rotation is not None:
                    await self.rotation.stop()
                for f in self.forwarders.values():
                    if f is not None:
                        await f.close()
                for w in self.websockets.values():
                    if w is not None:
                        await w.close()
                await self.service.stop()
                if self.shared_metrics is not None:
                    await self.shared_metrics.stop()  # the last counts, after the last request
                if self.tracing is not None:
                    # The last batch of spans, exported (bounded by the exporter's timeout) off the event loop.
                    await asyncio.to_thread(self.tracing.shutdown)
                await send({"type": "lifespan.shutdown.complete"})
                return


def _rotation_families(task: RotationTask) -> Callable[[], Iterator[Metric]]:
    """gateway_key_rotations_total and gateway_notifications_total, from the counts the rotation task keeps."""
    from gateway.rotation.runner import families

    def collect() -> Iterator[Metric]:
        for name, doc, labels, samples in families(task.runner.counters):
            fam = CounterMetricFamily(name, doc, labels=labels)
            for values, n in samples:
                fam.add_metric(values, n)
            yield fam

    return collect


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

"""Prometheus metrics: plain counters on the hot path, turned into metric families only when scraped.

The pipeline calls :meth:`Metrics.request` once per request, at its end. That costs a few dict and list
updates (no lock: everything runs on the event loop); prometheus_client's own ``Counter.labels().inc()``
takes a lock and looks the child up each time, which is several times dearer. At scrape time
:meth:`Metrics.collect` turns the counts into metric families, and reads the counters other parts already
keep (the key cache's hits and misses, the failed-authentication guard, the rate limiter's Redis errors)
instead of counting them twice.

Each app has a registry of its own (:attr:`Metrics.registry`: these families and prometheus_client's
``process_*``), so several apps in one process do not collide. With ``--workers N`` every worker counts the
same way and gateway/observability/multiprocess.py adds the workers up for one answer. Labels never carry a key id or a
client address unless ``ops.metrics_key_labels`` is on (each key would be a new time series).

Exported (all prefixed ``gateway_``):

========================================  =======================================================
``requests_total``                        route (policy template), method, status [, key_id]
``request_duration_seconds``              histogram by route: from the head to the last byte sent
``upstream_duration_seconds``             histogram by route: from forwarding to the upstream's head
``auth_decisions_total``                  result (allowed/denied), reason (ok or the error code)
``rate_limit_decisions_total``            result (allowed/limited/unlimited/unavailable)
``key_cache_hits_total`` / ``_misses_``   the key cache's own counters
``config_reloads_total``                  result (success/failure)
``redis_errors_total``                    component (rate_limiter/key_store)
``key_store_errors_total``                store (sqlite/postgresql/redis): key lookups the store failed
``auth_failures_total``                   failed authentications counted by the brute-force guard
``auth_failure_blocks_total``             addresses blocked by it; ``auth_failure_refusals_total``
``readiness``                             gauge, state (ready/degraded/unavailable/draining): 1 for
                                          the state ``/readyz`` answers now, 0 for the others
``build_info``                            gauge, version and python: always 1
========================================  =======================================================

and ``process_*`` (CPU, memory, file descriptors, start time; per worker with a ``pid`` label).
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from starlette.types import Receive, Scope, Send

from gateway import __version__
from gateway.errors import ErrorFormat, GatewayError, ReadOnlyEndpoint, render

# Seconds. The gateway's own cost is sub-millisecond; upstreams range from milliseconds to a minute.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNMATCHED = "<unmatched>"  # the route label of a request no policy rule matched (or an unreadable one)
READINESS_STATES = ("ready", "degraded", "unavailable", "draining")  # gateway/observability/health.py


class Histogram:
    """Bucket counts of one label set (counted by :meth:`Metrics.request`); cumulated only when scraped."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*(repr(b) for b in BUCKETS), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, float(total)))
        return out


class Metrics:
    """The gateway's counters and a prometheus_client collector over them (registered in :attr:`registry`)."""

    def __init__(self, key_labels: bool = False) -> None:
        self.key_labels = key_labels
        self.requests: dict[tuple[str | int, ...], int] = {}
        self.auth: dict[tuple[str, str], int] = {}
        self.rate_limit: dict[str, int] = {}
        self.reloads: dict[str, int] = {"success": 0, "failure": 0}
        self.store_errors = 0  # key lookups the key store failed (any store; also counted under Redis's errors)
        self.jwks: dict[str, int] = {}  # fetches of jwt.jwks_url by result (gateway/doors/jwks.py), when set
        self.total: dict[str, Histogram] = {}
        self.upstream: dict[str, Histogram] = {}
        # Families read from counters kept elsewhere: callables yielding metric families at scrape time.
        self.sources: list[Callable[[], Iterator[Metric]]] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # a Collector: anything with collect()
        ProcessCollector(registry=self.registry)  # this process's CPU, memory and file descriptors
        self._build_info = GaugeMetricFamily("gateway_build_info", "The gateway's version and Python's",
                                             labels=["version", "python"])
        self._build_info.add_metric([__version__, platform.python_version()], 1)

    # --- the hot path ------------------------------------------------------------------------------------------

    def request(self, route: str, method: str, status: int, duration: float, upstream: float | None,
                key_id: str | None, auth: tuple[str, str] | None = None, rate: str | None = None) -> None:
        """Count one finished request (called once, at its end): its route, method and status, its durations,
        and the authentication decision ``auth`` (result, reason) and rate-limit result ``rate`` when it had
        them. One call per request; the status is made text when scraped."""
        label = (route, method, status, key_id or "") if self.key_labels else (route, method, status)
        requests = self.requests
        requests[label] = requests.get(label, 0) + 1
        # Histogram.observe, inline: two calls fewer per request.
        hist = self.total.get(route)
        if hist is None:
            hist = self.total[route] = Histogram()
        hist.counts[bisect_left(BUCKETS, duration)] += 1
        hist.sum += duration
        if upstream is not None:
            hist = self.upstream.get(route)
            if hist is None:
                hist = self.upstream[route] = Histogram()
            hist.counts[bisect_left(BUCKETS, upstream)] += 1
            hist.sum += upstream
        if auth is not None:
            self.auth[auth] = self.auth.get(auth, 0) + 1
        if rate is not None:
            self.rate_limit[rate] = self.rate_limit.get(rate, 0) + 1

    def reload(self, ok: bool) -> None:
        self.reloads["success" if ok else "failure"] += 1

    # --- scrape time ---------------------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        labels = ["route", "method", "status", *(["key_id"] if self.key_labels else [])]
        fam = CounterMetricFamily("gateway_requests", "HTTP requests by policy route, method and status",
                                  labels=labels)
        for lab, n in list(self.requests.items()):
            fam.add_metric([str(v) for v in lab], n)
        yield fam
        for name, doc, hists in (
            ("gateway_request_duration_seconds", "Time from the request head to the last byte sent", self.total),
            ("gateway_upstream_duration_seconds", "Time from forwarding to the upstream's response head",
             self.upstream),
        ):
            h = HistogramMetricFamily(name, doc, labels=["route"])
            for route, hist in list(hists.items()):
                h.add_metric([route], hist.buckets(), hist.sum)
            yield h
        fam = CounterMetricFamily("gateway_auth_decisions", "Authentication and authorisation decisions",
                                  labels=["result", "reason"])
        for (result, reason), n in list(self.auth.items()):
            fam.add_metric([result, reason], n)
        yield fam
        fam = CounterMetricFamily("gateway_rate_limit_decisions", "Rate-limit decisions", labels=["result"])
        for result, n in list(self.rate_limit.items()):
            fam.add_metric([result], n)
        yield fam
        fam = CounterMetricFamily("gateway_config_reloads", "Policy/configuration reloads by result",
                                  labels=["result"])
        for result, n in self.reloads.items():
            fam.add_metric([result], n)
        yield fam
        if self.jwks:
            fam = CounterMetricFamily("gateway_jwks_fetches", "Fetches of the JWKS URL (jwt.jwks_url) by result",
                                      labels=["result"])
            for result, n in list(self.jwks.items()):
                fam.add_metric([result], n)
            yield fam
        for source in self.sources:
            yield from source()
        yield self._build_info

    def render(self) -> bytes:
        return generate_latest(self.registry)


def counter(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> CounterMetricFamily:
    """One counter family with one sample (for counters kept elsewhere)."""
    fam = CounterMetricFamily(name, doc, labels=list(labels or {}))
    fam.add_metric(list((labels or {}).values()), value)
    return fam


def gateway_sources(metrics: Metrics, cache: Any, guard: Any, limiter: Any, store_kind: str,
                    readiness: Callable[[], str | None] = lambda: None) -> None:
    """Attach the counters the key cache, the brute-force guard and the Redis limiter keep themselves, and the
    readiness state (``readiness`` returns what ``/readyz`` said last: one of :data:`READINESS_STATES`)."""

    def cache_families() -> Iterator[Metric]:
        yield counter("gateway_key_cache_hits", "Key lookups answered from the cache", cache.hits)
        yield counter("gateway_key_cache_misses", "Key lookups that went to the store", cache.misses)

    def guard_families() -> Iterator[Metric]:
        yield counter("gateway_auth_failures", "Failed authentications (brute-force guard)", guard.failures_total)
        yield counter("gateway_auth_failure_blocks", "Client addresses blocked after too many failures",
                      guard.blocks_total)
        yield counter("gateway_auth_failure_refusals", "Requests refused while their address was blocked",
                      guard.refused_total)

    def redis_families() -> Iterator[Metric]:
        fam = CounterMetricFamily("gateway_redis_errors", "Redis commands that failed", labels=["component"])
        fam.add_metric(["rate_limiter"], float(getattr(limiter, "errors", 0) or 0))
        fam.add_metric(["key_store"], float(metrics.store_errors if store_kind == "redis" else 0))
        yield fam
        yield counter("gateway_key_store_errors", "Key lookups the key store failed (answered 503 unless cached)",
                      metrics.store_errors, {"store": store_kind})

    def readiness_families() -> Iterator[Metric]:
        # One series per state, 1 for the current one: a state set, as Prometheus conventions have it.
        fam = GaugeMetricFamily("gateway_readiness", "1 for the state /readyz answers (ready, degraded: serving "
                                "without a part, unavailable, draining), 0 for the others", labels=["state"])
        state = readiness()
        for name in READINESS_STATES:
            fam.add_metric([name], 1.0 if name == state else 0.0)
        yield fam

    metrics.sources.extend((cache_families, guard_families, redis_families, readiness_families))


_HEADERS_BASE = [(b"content-type", CONTENT_TYPE_LATEST.encode()), (b"cache-control", b"no-store")]

Authorize = Callable[[Scope, str], Any]  # async (scope, needed scope) -> principal; raises GatewayError


class MetricsEndpoint:
    """``GET {ops.metrics_path}``: the text exposition format, optionally only for keys holding a scope.

    ``render`` makes the body (:meth:`Metrics.render` in one process, the sum over the workers with several);
    ``refresh`` runs first when given (the readiness checks, so ``gateway_readiness`` is current)."""

    def __init__(self, render: Callable[[], bytes], required_scope: str | None, authorize: Authorize | None,
                 error_format: ErrorFormat | str, refresh: Callable[[], Awaitable[Any]] | None = None) -> None:
        self._render = render
        self._refresh = refresh
        self.required_scope = required_scope
        self._authorize = authorize
        self._format = error_format

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            status, headers, body = render(ReadOnlyEndpoint(), self._format)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if self.required_scope is not None and self._authorize is not None:
            try:
                await self._authorize(scope, self.required_scope)
            except GatewayError as exc:
                status, headers, err = render(exc, self._format)
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": err})
                return
        if self._refresh is not None:
            await self._refresh()
        body = self._render()
        headers = [*_HEADERS_BASE, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

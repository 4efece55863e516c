"""OpenTelemetry spans of the reverse proxy, exported over OTLP/HTTP (docs/tracing.md).

Imported only when ``tracing.otlp_endpoint`` is set (the ``otel`` extra): with it unset the gateway never imports
OpenTelemetry and the proxy pays one ``is not None`` per stage.

Per proxied request, three spans at most:

* ``{method} {route}`` (SERVER): its trace id and span id are exactly those of the ``traceparent`` the gateway
  forwards (:func:`gateway.observability.tracing.propagate` draws them; :class:`_Ids` hands them to the SDK), so the
  upstream's spans nest under it; its parent is the caller's span when a valid ``traceparent`` came;
* ``gate`` (INTERNAL): the gate's decision (authentication, network, policy, rate limit) with ``gateway.decision``
  (``allowed``/``denied``), ``gateway.deny_reason`` and ``gateway.key_id`` (the key's id, never its value);
* ``upstream`` (CLIENT): the forwarded call, from the first byte sent to the end of the answer.

Attributes follow the OpenTelemetry HTTP semantic conventions (``http.request.method``, ``url.path``,
``http.route``, ``http.response.status_code``, ``client.address``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from gateway.observability.tracing import parse_traceparent

if TYPE_CHECKING:
    from gateway.config.settings import TracingSettings

_UNSET = 0


class _Ids(IdGenerator):
    """The SDK's ids, except for the one server span in the making: the ids :func:`propagate` drew (set just
    before ``start_span``, taken by it; no await in between, so no other request sees them)."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self.trace_id = _UNSET
        self.span_id = _UNSET

    def generate_trace_id(self) -> int:
        given, self.trace_id = self.trace_id, _UNSET
        return given or self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        given, self.span_id = self.span_id, _UNSET
        return given or self._random.generate_span_id()


class Tracing:
    """The tracer provider (one per app) and the spans of one request."""

    def __init__(self, settings: TracingSettings) -> None:
        self._ids = _Ids()
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)), id_generator=self._ids)
        assert settings.otlp_endpoint is not None
        self.provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=settings.otlp_endpoint.rstrip("/") + "/v1/traces")))
        self.tracer = self.provider.get_tracer("gateway")

    def shutdown(self) -> None:
        """Export what is left and stop (lifespan shutdown)."""
        self.provider.shutdown()

    def start(self, method: str, path: str, client: str | None, incoming: bytes | None, forwarded: str) -> Any:
        """Start the server span of a request with ``forwarded`` (``00-trace-span-flags``, from propagate) as its
        ids, under the caller's span when ``incoming`` was a valid ``traceparent``. Returns the span."""
        _, trace_hex, span_hex, _ = forwarded.split("-")
        context = None
        text = incoming.decode("latin-1").strip(" \t") if incoming else ""
        parsed = parse_traceparent(text) if text else None
        if parsed is not None:
            caller = text[36:52]  # the caller's span id (W3C Trace Context 3.2.2.4)
            remote = SpanContext(int(parsed[0], 16), int(caller, 16), is_remote=True,
                                 trace_flags=TraceFlags(int(parsed[1], 16) & 1))
            context = trace.set_span_in_context(NonRecordingSpan(remote))
        self._ids.trace_id = int(trace_hex, 16)
        self._ids.span_id = int(span_hex, 16)
        attributes: dict[str, str] = {"http.request.method": method, "url.path": path}
        if client:
            attributes["client.address"] = client
        span = self.tracer.start_span(method, context=context, kind=SpanKind.SERVER, attributes=attributes)
        self._ids.trace_id = self._ids.span_id = _UNSET
        return span

    @staticmethod
    def traceparent(span: Any) -> str:
        """The ``traceparent`` to forward: the server span's ids and its sampling decision."""
        ctx = span.get_span_context()
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags) & 0xff:02x}"

    def gate(self, server: Any, start_ns: int, allowed: bool, reason: str | None, key_id: str | None,
             method: str, route: str | None) -> None:
        """The gate's decision, as a span from ``start_ns`` to now."""
        attributes: dict[str, str] = {"gateway.decision": "allowed" if allowed else "denied"}
        if reason is not None:
            attributes["gateway.deny_reason"] = reason
        if key_id is not None:
            attributes["gateway.key_id"] = key_id
        span = self.tracer.start_span("gate", context=trace.set_span_in_context(server), start_time=start_ns,
                                      attributes=attributes)
        span.end()
        if route is not None:
            server.set_attribute("http.route", route)
            server.update_name(f"{method} {route}")

    def finish(self, server: Any, status: int, deny: str | None, forward_ns: int, method: str) -> None:
        """End the request: the upstream span (``forward_ns``: when forwarding began, 0 if it never did), then
        the server span with the answer's status."""
        now = time.time_ns()
        if forward_ns:
            attributes: dict[str, Any] = {"http.request.method": method}
            if status and deny is None:  # else the status is the gateway's own error answer
                attributes["http.response.status_code"] = status
            up = self.tracer.start_span("upstream", context=trace.set_span_in_context(server), kind=SpanKind.CLIENT,
                                        start_time=forward_ns, attributes=attributes)
            if deny is not None:
                up.set_status(Status(StatusCode.ERROR, deny))
                up.set_attribute("error.type", deny)
            up.end(now)
        server.set_attribute("http.response.status_code", status)
        if deny is not None:
            server.set_attribute("gateway.deny_reason", deny)
        if status >= 500:
            server.set_status(Status(StatusCode.ERROR))
        server.end(now)

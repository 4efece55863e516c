"""OpenTelemetry spans of the proxy (docs/tracing.md), exported over OTLP/HTTP when ``tracing.otlp_endpoint`` is set.

The gateway app runs in a real uvicorn server in a thread of this process (so the test can add the SDK's
``InMemorySpanExporter`` to its tracer provider, beside the OTLP exporter the settings configure), in front of a
real recording upstream process, with a real SQLite store; a real ``gateway serve`` process exports to a tiny real
OTLP/HTTP receiver. The trace ids follow W3C Trace Context (https://www.w3.org/TR/trace-context/).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.support.lifecycle import ThreadedGateway, bearer, wait_for
from tests.support.procs import ROOT, SECRET, Gateway, Upstream, free_port

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = "00f067aa0ba902b7"


class Receiver:
    """A tiny OTLP/HTTP receiver: accepts ``POST /v1/traces`` (protobuf) and keeps the spans it was sent."""

    def __init__(self) -> None:
        self.posts = 0
        self.spans: list[Any] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.posts += 1
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        receiver.spans.extend((rs.resource, s) for s in ss.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


Setup = tuple[ThreadedGateway, InMemorySpanExporter, Upstream, str]


@contextmanager
def traced_gateway(work: Path, upstream_url: str, tracing: dict[str, Any]) -> Iterator[
        tuple[ThreadedGateway, InMemorySpanExporter, str]]:
    """A gateway in this process (ThreadedGateway) with ``tracing`` settings, its spans also kept in memory, and
    a ``servers:read`` key's value."""
    cfg = Gateway(work, upstream_url, {"tracing": tracing}, start=False)
    key = cfg.create_key("reader", "servers:read")
    gw = ThreadedGateway(cfg.config, {"GATEWAY_SECRET": SECRET}, time.time)
    try:
        memory = InMemorySpanExporter()
        assert gw.app.tracing is not None
        gw.app.tracing.provider.add_span_processor(SimpleSpanProcessor(memory))
        yield gw, memory, key["value"]
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Setup]:
    tmp_path = tmp_path_factory.mktemp("otel")
    up = Upstream(tmp_path)
    try:
        tracing = {"otlp_endpoint": receiver.url, "service_name": "edge"}
        with traced_gateway(tmp_path / "gw", up.url, tracing) as (gw, memory, key):
            yield gw, memory, up, key
    finally:
        up.stop()


@pytest.fixture
def setup(traced: Setup) -> Setup:
    traced[1].clear()
    traced[2].clear()
    return traced


def _spans(memory: InMemorySpanExporter, count: int) -> dict[str, ReadableSpan]:
    """The request's spans by role (server, gate, upstream), once all have ended (the server span last)."""
    wait_for(lambda: len(memory.get_finished_spans()) >= count, timeout=5)
    spans = memory.get_finished_spans()
    assert len(spans) == count, [s.name for s in spans]
    out: dict[str, ReadableSpan] = {}
    for s in spans:
        role = {SpanKind.SERVER: "server", SpanKind.CLIENT: "upstream"}.get(s.kind, s.name)
        out[role] = s
    return out


def _forwarded(up: Upstream) -> str:
    (record,) = up.records()
    values = [v for n, v in record["headers"] if n.lower() == "traceparent"]
    assert len(values) == 1
    return str(values[0])


def test_an_allowed_request_is_a_server_span_with_gate_and_upstream_children(setup: Setup) -> None:
    """W3C Trace Context 3.2.2.4 (parent-id): the traceparent forwarded upstream carries the gateway's server span
    id, so the upstream's spans nest under it; the server span's own parent is the caller's span."""
    gw, memory, up, key = setup
    with gw.client() as c:
        r = c.get("/v1/servers/7", headers={**bearer(key), "traceparent": f"00-{TRACE}-{CALLER}-01"})
    assert r.status_code == 200
    spans = _spans(memory, 3)
    server, gate, upstream = spans["server"], spans["gate"], spans["upstream"]
    ctx = server.context
    assert ctx is not None and server.parent is not None
    assert f"{ctx.trace_id:032x}" == TRACE
    assert f"{server.parent.span_id:016x}" == CALLER and server.parent.is_remote
    assert _forwarded(up) == f"00-{TRACE}-{ctx.span_id:016x}-01"
    assert server.name == "GET /v1/servers/**"
    assert dict(server.attributes or {}) == {
        "http.request.method": "GET", "url.path": "/v1/servers/7", "http.route": "/v1/servers/**",
        "client.address": "127.0.0.1", "http.response.status_code": 200}
    for child in (gate, upstream):
        assert child.parent is not None and child.parent.span_id == ctx.span_id
        assert child.context is not None and child.context.trace_id == ctx.trace_id
    assert gate.kind == SpanKind.INTERNAL
    attrs = dict(gate.attributes or {})
    assert attrs["gateway.decision"] == "allowed" and str(attrs["gateway.key_id"]).startswith("key_")
    assert key not in str(attrs) and "gateway.deny_reason" not in attrs
    assert upstream.kind == SpanKind.CLIENT
    assert dict(upstream.attributes or {}) == {"http.request.method": "GET", "http.response.status_code": 200}
    assert server.resource.attributes["service.name"] == "edge"
    assert server.start_time is not None and server.end_time is not None
    assert server.start_time <= gate.start_time <= upstream.start_time <= upstream.end_time <= server.end_time  # type: ignore[operator]


def test_a_request_without_traceparent_starts_a_sampled_trace_with_the_forwarded_ids(setup: Setup) -> None:
    """W3C Trace Context 4.3 (a new trace when none came): the trace id and span id forwarded are the server
    span's; the sampled flag (3.2.2.5.1) now says the gateway recorded it."""
    gw, memory, up, key = setup
    with gw.client() as c:
        assert c.get("/v1/servers", headers=bearer(key)).status_code == 200
    server = _spans(memory, 3)["server"]
    assert server.parent is None and server.context is not None
    assert _forwarded(up) == f"00-{server.context.trace_id:032x}-{server.context.span_id:016x}-01"


def test_a_denied_request_has_the_denial_in_its_gate_span_and_no_upstream_span(setup: Setup) -> None:
    gw, memory, up, key = setup
    with gw.client() as c:
        r = c.get("/v1/servers", headers=bearer(key[:-2] + "xx"))
    assert r.status_code == 401
    spans = _spans(memory, 2)
    assert set(spans) == {"server", "gate"}
    gate = dict(spans["gate"].attributes or {})
    assert gate["gateway.decision"] == "denied" and gate["gateway.deny_reason"] == r.json()["error"]["code"]
    assert "gateway.key_id" not in gate
    assert spans["server"].attributes is not None
    assert spans["server"].attributes["http.response.status_code"] == 401
    assert up.records() == []


def test_tracing_is_off_by_default_and_opentelemetry_tracing_never_imported(tmp_path: Any) -> None:
    """With the default settings a request is served and neither the gateway's tracing module nor
    OpenTelemetry's tracing SDK or exporter is imported. (redis-py 8 imports OpenTelemetry's API and metrics SDK
    itself whenever they are installed: ``redis.observability``; that part is not the gateway's.)"""
    script = """
import sys, asyncio, httpx
from gateway.app import create_app
from gateway.config.settings import load_settings
settings = load_settings(environ={"GATEWAY_SECRET": "s" * 32, "GATEWAY_STORE__URL": sys.argv[1]})
app = create_app(settings)
async def main():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        return (await c.get("/v1/servers")).status_code
print(asyncio.run(main()), app.tracing, sorted(m for m in sys.modules if m == "gateway.observability.otel"
      or m.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter"))))
"""
    out = subprocess.run([sys.executable, "-c", script, f"sqlite:///{tmp_path / 'keys.db'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["401", "None", "[]"]


def test_an_endpoint_without_the_otel_extra_is_a_configuration_error_naming_the_install() -> None:
    """The OpenTelemetry packages hidden from the import system (as if the extra were not installed)."""
    script = """
import sys
sys.modules["opentelemetry.sdk.trace"] = None
from gateway.config.settings import ConfigError, load_settings
try:
    load_settings(environ={"GATEWAY_TRACING__OTLP_ENDPOINT": "http://127.0.0.1:4318"})
except ConfigError as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "tracing.otlp_endpoint" in out.stdout and "pip install 'gateway[otel]'" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_a_real_otlp_receiver_gets_the_batch_when_the_gateway_stops(
        make_gateway: Callable[..., Gateway], fresh_upstream: Upstream, receiver: Receiver) -> None:
    """A `gateway serve` process: the spans are batched (BatchSpanProcessor) and the last batch is posted to
    ``{otlp_endpoint}/v1/traces`` on shutdown."""
    before = len(receiver.spans)
    gw = make_gateway(fresh_upstream.url, {"tracing": {"otlp_endpoint": receiver.url, "service_name": "served"}})
    key = gw.create_key("reader", "servers:read")
    with gw.client() as c:
        assert c.get("/v1/servers/1", headers=bearer(key["value"])).status_code == 200
        assert c.get("/v1/servers/1").status_code == 401
    gw.stop()
    mine = [(res, s) for res, s in receiver.spans[before:]
            if any(a.key == "service.name" and a.value.string_value == "served" for a in res.attributes)]
    assert sorted(s.name for _, s in mine) == ["GET /v1/servers/**", "GET /v1/servers/**", "gate", "gate",
                                               "upstream"]


def test_an_unreachable_upstream_is_an_upstream_span_with_the_error(tmp_path: Any, receiver: Receiver) -> None:
    """The CLIENT span records the failed call (``error.type``, status ERROR) and the SERVER span the 502."""
    unreachable = f"http://127.0.0.1:{free_port()}"
    with traced_gateway(tmp_path / "gw", unreachable, {"otlp_endpoint": receiver.url}) as (gw, memory, key):
        with gw.client() as c:
            r = c.get("/v1/servers", headers=bearer(key))
        assert r.status_code == 502
        spans = _spans(memory, 3)
    upstream, server = spans["upstream"], spans["server"]
    assert upstream.status.status_code == StatusCode.ERROR
    assert upstream.attributes is not None and upstream.attributes["error.type"] == r.json()["error"]["code"]
    assert "http.response.status_code" not in upstream.attributes  # the 502 is the gateway's, not an answer
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 502
    assert server.status.status_code == StatusCode.ERROR


def test_sample_ratio_zero_records_no_new_trace_but_follows_a_sampled_caller(
        tmp_path: Any, receiver: Receiver, fresh_upstream: Upstream) -> None:
    """W3C Trace Context 3.2.2.5.1 (the sampled flag): a new trace not sampled is forwarded with the flag unset
    and its ids still the ones forwarded; a caller's sampled trace is recorded whatever the ratio."""
    tracing = {"otlp_endpoint": receiver.url, "sample_ratio": 0}
    with traced_gateway(tmp_path / "gw", fresh_upstream.url, tracing) as (gw, memory, key):
        with gw.client() as c:
            assert c.get("/v1/servers", headers=bearer(key)).status_code == 200
            time.sleep(0.2)
            assert memory.get_finished_spans() == ()
            (first,) = [v for n, v in fresh_upstream.records()[0]["headers"] if n.lower() == "traceparent"]
            assert first.endswith("-00")
            fresh_upstream.clear()
            sampled = {**bearer(key), "traceparent": f"00-{TRACE}-{CALLER}-01"}
            assert c.get("/v1/servers", headers=sampled).status_code == 200
        server = _spans(memory, 3)["server"]
    assert server.context is not None
    assert _forwarded(fresh_upstream) == f"00-{TRACE}-{server.context.span_id:016x}-01"

"""GET /metrics over real sockets: a real `gateway serve` process, a real upstream, a real SQLite file.

Each test scrapes the Prometheus text format, parses it with prometheus_client's own parser, makes requests,
scrapes again and checks that exactly the expected series moved.
"""

from __future__ import annotations

import platform
from collections.abc import Callable

from gateway import __version__
from tests.support.metrics import scrape, value
from tests.support.procs import Gateway, Upstream


def test_requests_auth_cache_and_latency_series_move(gateway: Gateway, fresh_upstream: Upstream) -> None:
    key = gateway.create_key("reader", "servers:read")
    auth = {"Authorization": f"Bearer {key['value']}"}
    before = scrape(gateway)
    with gateway.client() as c:
        assert c.get("/v1/servers/1", headers=auth).status_code == 200
        assert c.get("/v1/servers/2", headers=auth).status_code == 200
        assert c.get("/v1/servers/1").status_code == 401
        assert c.get("/v1/teams", headers=auth).status_code == 403
        assert c.get("/v1/nowhere", headers=auth).status_code == 403
        assert c.get("/v1/servers", headers={"Authorization": "Bearer dep_live_" + "A" * 32}).status_code == 401
    after = scrape(gateway)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/v1/servers/**"
    assert moved("gateway_requests_total", route=route, method="GET", status="200") == 2
    assert moved("gateway_requests_total", route=route, method="GET", status="401") == 2
    assert moved("gateway_requests_total", route="/v1/teams/**", method="GET", status="403") == 1
    assert moved("gateway_requests_total", route="<unmatched>", method="GET", status="403") == 1
    assert moved("gateway_auth_decisions_total", result="allowed", reason="ok") == 2
    assert moved("gateway_auth_decisions_total", result="denied", reason="authentication_required") == 1
    assert moved("gateway_auth_decisions_total", result="denied", reason="invalid_token") == 1
    assert moved("gateway_auth_decisions_total", result="denied", reason="insufficient_permissions") == 2
    assert moved("gateway_rate_limit_decisions_total", result="allowed") == 2
    # the key cache: the first lookup of the key misses, the rest hit (the TTL is 5 s)
    assert moved("gateway_key_cache_hits_total") + moved("gateway_key_cache_misses_total") == 4
    assert moved("gateway_key_cache_misses_total") >= 1
    assert moved("gateway_auth_failures_total") == 1  # the unknown key (a missing one is no attempt)
    # histograms: every request in the total, only the forwarded ones upstream
    assert moved("gateway_request_duration_seconds_count", route=route) == 4
    assert moved("gateway_upstream_duration_seconds_count", route=route) == 2
    assert moved("gateway_upstream_duration_seconds_bucket", route=route, le="+Inf") == 2
    assert 0 < moved("gateway_upstream_duration_seconds_sum", route=route) < 10
    assert value(after, "gateway_config_reloads_total", result="failure") == 0
    assert ("gateway_redis_errors_total", (("component", "rate_limiter"),)) in after
    # no per-key or per-client label by default, and never a key
    with gateway.client() as c:
        text = c.get("/metrics").text
    assert key["id"] not in text and key["value"] not in text and "127.0.0.1" not in text
    # the metrics endpoint itself is not counted as a gated request, and nothing reached the upstream for it
    assert all("/metrics" not in r["target"] for r in fresh_upstream.records())


def test_build_info_and_process_metrics(gateway: Gateway) -> None:
    """``gateway_build_info`` (version and Python, value 1) and prometheus_client's ``process_*`` families of
    the serving process, in one process as with workers (tests/e2e/test_workers.py)."""
    samples = scrape(gateway)
    assert value(samples, "gateway_build_info", version=__version__, python=platform.python_version()) == 1
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_start_time_seconds") > 0
    assert ("process_cpu_seconds_total", ()) in samples


def test_brute_force_blocks_are_counted(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings={"limits": {"auth_failures_per_minute": 3}})
    with gw.client() as c:
        codes = [c.get("/v1/servers", headers={"Authorization": "Bearer nope"}).status_code for _ in range(5)]
    assert codes[:3] == [401, 401, 401] and codes[3:] == [429, 429]
    after = scrape(gw)
    assert value(after, "gateway_auth_failure_blocks_total") == 1
    assert value(after, "gateway_auth_failure_refusals_total") == 2
    assert value(after, "gateway_auth_decisions_total", result="denied", reason="too_many_failed_attempts") == 2


def test_key_labels_only_when_opted_in(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings={"ops": {"metrics_key_labels": True}})
    key = gw.create_key("reader", "servers:read")
    with gw.client() as c:
        assert c.get("/v1/servers", headers={"Authorization": f"Bearer {key['value']}"}).status_code == 200
    after = scrape(gw)
    assert value(after, "gateway_requests_total", route="/v1/servers/**", method="GET", status="200",
                 key_id=key["id"]) == 1


def test_scope_protected_metrics_and_custom_path(make_gateway: Callable[..., Gateway],
                                                 fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings={"ops": {"metrics_scope": "api-keys:read",
                                                            "metrics_path": "/-/metrics"}})
    reader = gw.create_key("reader", "servers:read")
    ops = gw.create_key("ops", "api-keys:read")
    with gw.client() as c:
        none = c.get("/-/metrics")
        wrong = c.get("/-/metrics", headers={"Authorization": f"Bearer {reader['value']}"})
        bad = c.get("/-/metrics", headers={"Authorization": "Bearer dep_live_" + "B" * 32})
        ok = c.get("/-/metrics", headers={"Authorization": f"Bearer {ops['value']}"})
        # The credential is read as at the gate: scheme in any case, one or more spaces (RFC 9110 11.1, 11.4).
        lower = c.get("/-/metrics", headers={"Authorization": f"bearer   {ops['value']}"})
        scheme = c.get("/-/metrics", headers={"Authorization": f"Token {ops['value']}"})
        default_path = c.get("/metrics")
        post = c.post("/-/metrics", headers={"Authorization": f"Bearer {ops['value']}"})
    assert none.status_code == 401 and none.json()["error"]["code"] == "authentication_required"
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "insufficient_permissions"
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_token"
    assert ok.status_code == 200 and "gateway_requests_total" in ok.text
    assert lower.status_code == 200 and "gateway_requests_total" in lower.text
    assert scheme.status_code == 401 and "scheme is not Bearer" in scheme.json()["error"]["message"]
    assert default_path.status_code == 401  # /metrics is an ordinary path again: the gate answers it
    assert post.status_code == 405


def test_metrics_can_be_turned_off(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, env={"GATEWAY_OPS__METRICS_ENABLED": "false"})
    with gw.client() as c:
        assert c.get("/metrics").status_code == 401

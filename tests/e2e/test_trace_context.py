"""W3C Trace Context (https://www.w3.org/TR/trace-context/) over real sockets: a real `gateway serve` in front
of a real recording upstream. The gateway is one hop of the trace: it continues a valid ``traceparent`` with
its own span id, starts a trace otherwise, and logs the trace id of every request."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.support.procs import Gateway, Upstream

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"
SHAPE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def _sent(up: Upstream) -> list[dict[str, list[str]]]:
    out = []
    for rec in up.records():
        headers: dict[str, list[str]] = {}
        for n, v in rec["headers"]:
            headers.setdefault(n.lower(), []).append(v)
        out.append(headers)
    return out


def _access(gw: Gateway) -> list[dict[str, Any]]:
    docs = [json.loads(line) for line in gw.log().splitlines() if line.strip()]
    return [d for d in docs if d.get("event") == "request"]


def test_a_valid_traceparent_is_continued_with_the_gateways_own_span(gateway: Gateway,
                                                                     fresh_upstream: Upstream) -> None:
    """Section 3.2.2 (the traceparent fields) and 4.3 (a proxy mutates parent-id only): same trace id and flags,
    a new parent id; tracestate passed on (3.3) with its lines combined (3.3.1.1)."""
    key = gateway.create_key("reader", "servers:read")
    auth = {"Authorization": f"Bearer {key['value']}"}
    with gateway.client() as c:
        r = c.get("/v1/servers/1", headers=[*auth.items(), ("traceparent", VALID), ("tracestate", "congo=t61rcWkgMzE"),
                                           ("tracestate", "rojo=00f067aa0ba902b7")])
        r2 = c.get("/v1/servers/2", headers={**auth, "traceparent": f"00-{TRACE}-{PARENT}-00"})
    assert r.status_code == 200 and r2.status_code == 200
    first, second = _sent(fresh_upstream)
    assert len(first["traceparent"]) == 1
    m = SHAPE.match(first["traceparent"][0])
    assert m is not None and m.group(1) == TRACE and m.group(3) == "01"
    assert m.group(2) != PARENT and m.group(2) != "0" * 16
    assert first["tracestate"] == ["congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"]
    m2 = SHAPE.match(second["traceparent"][0])
    assert m2 is not None and m2.group(1) == TRACE and m2.group(3) == "00" and m2.group(2) != m.group(2)
    assert "tracestate" not in second
    gateway.stop()
    assert [d["trace_id"] for d in _access(gateway)] == [TRACE, TRACE]


INVALID = [
    f"01-{TRACE}-{PARENT}",  # too short for any version (3.2.4)
    f"00-{TRACE}-{PARENT}-01-extra",  # version 00 is exactly 55 characters (3.2.2)
    f"00-{TRACE.upper()}-{PARENT}-01",  # lower-case hex only (3.2.2.3)
    f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id (3.2.2.3)
    f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id (3.2.2.4)
    f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid (3.2.2.1)
    f"00-{TRACE}-{PARENT}-0g",  # flags are two hex digits (3.2.2.5)
    f"00_{TRACE}_{PARENT}_01",
]


def test_an_invalid_or_missing_traceparent_starts_a_new_trace(gateway: Gateway, fresh_upstream: Upstream) -> None:
    """Section 4.3 ("if the traceparent header is invalid... the vendor creates a new traceparent"), 3.3 (no
    tracestate without a valid traceparent), 3.2.2.5.1 (the gateway records nothing: sampled unset)."""
    key = gateway.create_key("reader", "servers:read")
    auth = {"Authorization": f"Bearer {key['value']}"}
    with gateway.client() as c:
        for value in INVALID:
            assert c.get("/v1/servers/1", headers={**auth, "traceparent": value,
                                                   "tracestate": "congo=t61rcWkgMzE"}).status_code == 200
        assert c.get("/v1/servers/1", headers=auth).status_code == 200
        # two traceparent lines: which one holds is not knowable, so neither is trusted
        assert c.get("/v1/servers/1", headers=[*auth.items(), ("traceparent", VALID),
                                                ("traceparent", VALID)]).status_code == 200
    sent = _sent(fresh_upstream)
    assert len(sent) == len(INVALID) + 2
    traces = set()
    for headers in sent:
        assert len(headers["traceparent"]) == 1 and "tracestate" not in headers
        m = SHAPE.match(headers["traceparent"][0])
        assert m is not None and m.group(1) != TRACE and m.group(3) == "00"
        assert m.group(1) != "0" * 32 and m.group(2) != "0" * 16
        traces.add(m.group(1))
    assert len(traces) == len(sent)  # random per request
    gateway.stop()
    assert [d["trace_id"] for d in _access(gateway)] == [SHAPE.match(h["traceparent"][0]).group(1)  # type: ignore[union-attr]
                                                         for h in sent]


def test_a_higher_version_is_read_as_version_00(gateway: Gateway, fresh_upstream: Upstream) -> None:
    """Section 3.2.4 (versioning): a later version is parsed by its first 55 characters when the rest, if
    any, follows a '-'; the gateway sends version 00, the one it knows."""
    key = gateway.create_key("reader", "servers:read")
    with gateway.client() as c:
        r = c.get("/v1/servers/1", headers={"Authorization": f"Bearer {key['value']}",
                                            "traceparent": f"cc-{TRACE}-{PARENT}-01-what-the-future-holds"})
    assert r.status_code == 200
    m = SHAPE.match(_sent(fresh_upstream)[0]["traceparent"][0])
    assert m is not None and m.group(1) == TRACE and m.group(3) == "01"


def test_an_oversized_tracestate_is_dropped(gateway: Gateway, fresh_upstream: Upstream) -> None:
    """Section 3.3.1.1 (at most 32 list members) and 3.3.1.5 (512 characters a vendor must pass on): beyond
    them the gateway drops tracestate rather than cut it; traceparent still continues."""
    key = gateway.create_key("reader", "servers:read")
    auth = {"Authorization": f"Bearer {key['value']}", "traceparent": VALID}
    at_limit = ",".join(f"k{i}=v" for i in range(32))
    with gateway.client() as c:
        for state in (at_limit, at_limit + ",k32=v", "a=" + "x" * 510, "a=" + "x" * 511):
            assert c.get("/v1/servers/1", headers={**auth, "tracestate": state}).status_code == 200
    sent = _sent(fresh_upstream)
    assert [h.get("tracestate") for h in sent] == [[at_limit], None, ["a=" + "x" * 510], None]
    assert all(SHAPE.match(h["traceparent"][0]).group(1) == TRACE for h in sent)  # type: ignore[union-attr]


def test_denied_requests_are_logged_with_their_trace_id(gateway: Gateway, fresh_upstream: Upstream) -> None:
    """Every access line carries trace_id, answers the gateway gives itself included (401 here): the trace id
    of a valid traceparent (3.2.2.3), a new one otherwise."""
    with gateway.client() as c:
        assert c.get("/v1/servers/1", headers={"traceparent": VALID}).status_code == 401
        assert c.get("/v1/servers/1").status_code == 401
    gateway.stop()
    logged = _access(gateway)
    assert logged[0]["trace_id"] == TRACE
    assert re.fullmatch(r"[0-9a-f]{32}", logged[1]["trace_id"]) and logged[1]["trace_id"] != TRACE
    assert fresh_upstream.records() == []

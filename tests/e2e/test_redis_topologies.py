"""Sentinel and Cluster URLs behave as redis:// does: real gateway processes on a real master + replica +
Sentinel, and on a real 3-master Redis Cluster (tests/support/redistopo.py), with keys made by the CLI.

- Sentinel: keys work, a revocation through one process is refused by another within 1 s, and a failover (the
  master SIGKILLed, the replica promoted) is survived: requests answer 503 (never 500, never a hang) while
  there is no master and 200 again once Sentinel has promoted the replica; keys made and revoked afterwards
  work on the new master. A hung master (SIGSTOP) costs each request at most the timeout, and
  ``on_store_error: allow`` lets requests through unlimited until the failover.
- Cluster: keys and revocation as above, PUBLISH reaching subscribers on every node, exactly 10 of a burst
  admitted for a ``limited`` key across two processes, ``gateway store copy`` into the cluster, and the
  invalidation subscription moving to another node when its node dies.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.exceptions import MovedError

from tests.e2e.test_ratelimit_redis import EMISSION, burst
from tests.e2e.test_redis_revocation import BOUND, bearer, seconds_until, status, wait_subscribed
from tests.support.procs import Gateway, Upstream
from tests.support.redistopo import ClusterSetup, SentinelSetup

# Generous bounds: this is about topology, on a busy 2-core machine, not about the 50 ms default.
TIMEOUTS = {"store": {"timeout_ms": 500}, "rate_limits": {"redis_timeout_ms": 500}}


def settings_for(url: str, **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"cache": {"ttl_seconds": 300}, "store": {**TIMEOUTS["store"], "url": url},
                           "rate_limits": dict(TIMEOUTS["rate_limits"])}
    for k, v in more.items():
        out[k] = {**out.get(k, {}), **v}
    return out


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelSetup]:
    """A master, a replica and a Sentinel of this test's own (asked for before the gateways, so it is stopped
    after them)."""
    setup = SentinelSetup(tmp_path / "sentinel")
    yield setup
    setup.stop()


@pytest.fixture(scope="module")
def cluster_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    setup = ClusterSetup(tmp_path_factory.mktemp("cluster"))
    yield setup
    setup.stop()


@pytest.fixture
def cluster(cluster_setup: ClusterSetup) -> ClusterSetup:
    """The module's cluster, emptied, with every node up (a test may have stopped one)."""
    cluster_setup.heal()
    cluster_setup.flush()
    return cluster_setup


def revoke_via_api(gw: Gateway, admin: dict[str, Any], key_id: str) -> None:
    resp = httpx.delete(f"{gw.url}/v1/api-keys/{key_id}", headers=bearer(admin["value"]), timeout=5)
    assert resp.status_code == 200, (resp.text, gw.log()[-3000:])


def two_gateways(url: str, make_gateway: Callable[..., Gateway], upstream: Upstream
                 ) -> tuple[Gateway, Gateway, dict[str, Any], dict[str, Any]]:
    """Two gateways on the store at ``url``, both subscribed; an admin key made through one, a reader key through
    the other, which both accept (and then hold in their caches for 300 s)."""
    a = make_gateway(upstream.url, settings=settings_for(url), name="a")
    b = make_gateway(upstream.url, settings=settings_for(url), name="b")
    wait_subscribed(a)
    wait_subscribed(b)
    admin = a.create_key("admin", "*")
    key = b.create_key("k", "servers:read")
    assert status(a, key["value"]) == 200 and status(b, key["value"]) == 200
    return a, b, admin, key


# --- Sentinel ---------------------------------------------------------------------------------------------------


def test_sentinel_keys_and_revocation_across_processes(
    sentinel: SentinelSetup, make_gateway: Callable[..., Gateway], fresh_upstream: Upstream
) -> None:
    a, b, admin, key = two_gateways(sentinel.url, make_gateway, fresh_upstream)
    with sentinel.node_on(sentinel.master_port()).client() as m:
        assert m.exists(f"{{gw}}:key:{key['id']}") and m.exists(f"{{rl:{key['id']}}}")  # on the master
    revoke_via_api(a, admin, key["id"])
    took = seconds_until(b, key["value"], 401)
    assert took < BOUND
    print(f"sentinel: revoked through A, refused by B after {took * 1000:.0f} ms")


def test_sentinel_failover_is_survived(
    sentinel: SentinelSetup, make_gateway: Callable[..., Gateway], fresh_upstream: Upstream
) -> None:
    gw = make_gateway(fresh_upstream.url, settings=settings_for(sentinel.url))
    wait_subscribed(gw)
    before = gw.create_key("before", "servers:read")
    assert status(gw, before["value"]) == 200
    sentinel.sync_replica()  # the replica has the key: the promoted one must know it

    old = sentinel.kill_master()
    killed = time.monotonic()
    seen: list[tuple[float, int, float]] = []  # (since the kill, status, request duration)
    with httpx.Client(timeout=5) as c:
        while True:
            started = time.monotonic()
            got = c.get(f"{gw.url}/v1/servers", headers=bearer(before["value"])).status_code
            seen.append((started - killed, got, time.monotonic() - started))
            if got == 200 and any(s != 200 for _, s, _ in seen):
                break
            assert started - killed < 15, f"no recovery after 15 s: {seen[-5:]}"
            time.sleep(0.05)
    recovered = seen[-1][0]
    new = sentinel.wait_new_master(old)
    promoted = time.monotonic() - killed
    assert {s for _, s, _ in seen} <= {200, 503}, seen  # refused while there is no master: never a 500
    assert max(d for _, _, d in seen) < 2.0, seen  # and never a hang (timeouts: 500 ms, one retry)
    outage = [t for t, s, _ in seen if s == 503]

    # Writes go to the new master, and the subscription followed it: a revocation is seen within 1 s.
    after = gw.create_key("after", "servers:read")
    assert status(gw, after["value"]) == 200 and status(gw, before["value"]) == 200
    wait_subscribed(gw, times=2)
    gw.cli("keys", "revoke", after["id"])
    took = seconds_until(gw, after["value"], 401)
    assert took < BOUND
    with sentinel.node_on(new).client() as m:
        assert m.info("replication")["role"] == "master" and m.exists(f"{{gw}}:key:{after['id']}")
    print(f"sentinel failover: master {old} killed; 503 from {outage[0]:.2f} s to {outage[-1]:.2f} s "
          f"({len(outage)} requests); 200 again at {recovered:.2f} s; Sentinel reported {new} by {promoted:.2f} s; "
          f"longest request {max(d for _, _, d in seen) * 1000:.0f} ms; revocation after failover seen in "
          f"{took * 1000:.0f} ms")


def test_sentinel_hung_master_costs_bounded_time_and_on_store_error_applies(
    sentinel: SentinelSetup, make_gateway: Callable[..., Gateway], fresh_upstream: Upstream
) -> None:
    """SIGSTOP the master (it keeps its socket, answers nothing): with ``on_store_error: allow`` requests keep
    answering 200, without limit headers, each within the 500 ms bound; once Sentinel has promoted the replica,
    limits (their headers) are back."""
    gw = make_gateway(fresh_upstream.url, settings=settings_for(sentinel.url, rate_limits={"on_store_error": "allow"}))
    key = gw.create_key("k", "servers:read")
    assert status(gw, key["value"]) == 200  # cached for 300 s
    sentinel.sync_replica()
    master = sentinel.node_on(sentinel.master_port())
    assert master.proc is not None
    master.proc.send_signal(signal.SIGSTOP)
    paused = time.monotonic()
    seen: list[tuple[float, int, bool, float]] = []  # (since the pause, status, limited, duration)
    try:
        with httpx.Client(timeout=5) as c:
            while True:
                started = time.monotonic()
                resp = c.get(f"{gw.url}/v1/servers", headers=bearer(key["value"]))
                limited = "x-ratelimit-remaining" in resp.headers
                seen.append((started - paused, resp.status_code, limited, time.monotonic() - started))
                if limited and any(not lim for _, _, lim, _ in seen):
                    break
                assert started - paused < 15, f"limits not back after 15 s: {seen[-5:]}"
                time.sleep(0.05)
        promoted = sentinel.master_port()  # limits came back from the promoted replica, not the hung master
    finally:
        master.proc.send_signal(signal.SIGCONT)
    assert promoted != master.port
    assert {s for _, s, _, _ in seen} == {200}, seen  # allow: never refused, never a 500
    slowest = max(d for _, _, _, d in seen)
    assert slowest < 1.5, seen  # 500 ms per Redis exchange, a timeout never retried
    unlimited = [t for t, _, lim, _ in seen if not lim]
    print(f"sentinel, master SIGSTOPped: answered 200 without limits from {unlimited[0]:.2f} s to "
          f"{unlimited[-1]:.2f} s, limits back at {seen[-1][0]:.2f} s; slowest request {slowest * 1000:.0f} ms")


# --- Cluster ----------------------------------------------------------------------------------------------------


def test_cluster_keys_and_revocation_across_processes(
    make_gateway: Callable[..., Gateway], fresh_upstream: Upstream, cluster: ClusterSetup
) -> None:
    a, b, admin, key = two_gateways(cluster.url, make_gateway, fresh_upstream)

    # Every store key on the {gw} slot's node; the limiter's key on its own slot's node.
    home = cluster.node_for("{gw}")
    for node in cluster.nodes:
        with node.client() as r:
            names = {n.decode() for n in r.scan_iter("{gw}*")}
            assert (f"{{gw}}:key:{key['id']}" in names) == (node is home), (node.port, names)
    with cluster.node_for(f"{{rl:{key['id']}}}").client() as r:
        assert r.exists(f"{{rl:{key['id']}}}")

    # PUBLISH from the {gw} node reaches subscribers on every node (what the listener relies on).
    watchers = []
    for node in cluster.nodes:
        ps = node.client().pubsub()
        ps.subscribe("gateway:keys:invalidate")
        assert ps.get_message(timeout=2)["type"] == "subscribe"
        watchers.append(ps)
    revoke_via_api(a, admin, key["id"])
    took = seconds_until(b, key["value"], 401)
    assert took < BOUND
    for node, ps in zip(cluster.nodes, watchers, strict=True):
        message = ps.get_message(timeout=2)
        assert message is not None and message["type"] == "message", node.port
        ps.close()
    print(f"cluster: revoked through A, refused by B after {took * 1000:.0f} ms")


def test_cluster_limited_tier_admits_exactly_the_limit_across_two_processes(
    make_gateway: Callable[..., Gateway], fresh_upstream: Upstream, cluster: ClusterSetup
) -> None:
    settings = settings_for(cluster.url, rate_limits={"redis_timeout_ms": 2000})
    a = make_gateway(fresh_upstream.url, settings=settings, name="a")
    b = make_gateway(fresh_upstream.url, settings=settings, name="b")
    limited = a.create_key("limited", "servers:read", "--tier", "limited")
    answers, took = burst((a, b), limited["value"], n=100)
    statuses = [r.status_code for r in answers]
    assert statuses.count(200) + statuses.count(429) == 100, sorted(set(statuses))
    admitted = statuses.count(200)
    if took < EMISSION:
        assert admitted == 10, (took, admitted)
    else:  # a machine so loaded that the burst outlasted one emission interval: one more per 6 s
        assert 10 <= admitted <= 10 + int(took // EMISSION), (took, admitted)
    assert len(fresh_upstream.records()) == admitted
    print(f"cluster: 100 concurrent requests over 2 processes, {admitted} admitted, burst took {took:.2f} s")


def test_store_copy_into_the_cluster(
    make_gateway: Callable[..., Gateway], fresh_upstream: Upstream, cluster: ClusterSetup
) -> None:
    first = make_gateway(fresh_upstream.url, name="sqlite", start=False)
    made = [first.create_key(f"k{i}", "servers:read") for i in range(2)]
    out = first.cli("store", "copy", "--from", f"sqlite:///{first.work / 'keys.db'}", "--to", cluster.url, "--json")
    assert json.loads(out.stdout) == {"copied_keys": 2, "skipped_keys": 0, "copied_audit_events": 2,
                                      "copied_users": 0, "skipped_users": 0}
    gw = make_gateway(fresh_upstream.url, settings=settings_for(cluster.url))
    for m in made:
        assert status(gw, m["value"]) == 200


def test_cluster_helper_is_one_cluster(cluster: ClusterSetup) -> None:
    """A guard on the helper itself: the module's cluster is one cluster, not three lone servers."""
    with cluster.cluster_client() as rc:
        rc.set("{gw}:probe", "1")
    with cluster.node_for("{gw}").client() as r:
        assert r.get("{gw}:probe") == b"1"
    with cluster.nodes[0].client() as r, pytest.raises(MovedError):
        r.get("{gw}:probe")


def test_cluster_subscription_moves_off_a_dead_node(
    make_gateway: Callable[..., Gateway], fresh_upstream: Upstream, cluster: ClusterSetup
) -> None:
    # Limits off: their key could live on the node this test stops; the store's {gw} keys do not.
    settings = settings_for(cluster.url, rate_limits={"enabled": False})
    a = make_gateway(fresh_upstream.url, settings=settings, name="a")
    b = make_gateway(fresh_upstream.url, settings=settings, name="b")
    first, home = cluster.nodes[0], cluster.node_for("{gw}")
    assert first is not home
    wait_subscribed(a)
    wait_subscribed(b)
    assert f"(node 127.0.0.1:{first.port})" in b.log()  # the first node by name, as documented
    admin = a.create_key("admin", "*")
    key = a.create_key("k", "servers:read")
    assert status(b, key["value"]) == 200  # cached for 300 s

    first.kill()
    killed = time.monotonic()
    wait_subscribed(b, times=2)
    moved = time.monotonic() - killed
    assert "key invalidations: lost" in b.log()
    assert f"(node 127.0.0.1:{first.port})" not in b.log().rsplit("key invalidations: subscribed", 1)[1][:200]
    revoke_via_api(a, admin, key["id"])
    took = seconds_until(b, key["value"], 401)
    assert took < BOUND
    print(f"cluster: B's subscription moved off the killed node in {moved:.2f} s; a revocation through A then "
          f"refused by B in {took * 1000:.0f} ms")

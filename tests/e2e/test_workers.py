"""`gateway serve` with two uvicorn workers: what an operator sees is one gateway, not two.

Every test starts a real multi-worker `gateway serve` (a supervisor and two spawned worker processes) in front
of a real recording upstream, and talks to it over fresh connections, so that both workers serve some of the
requests. Which worker served a request is read from the request id the gateway forwards upstream (its first 12
characters are per process) or from the ``pid`` of the JSON access line.

* Logs: every line of every process is one JSON object (``ops.log_format``), with its ``pid``.
* Metrics: one ``/metrics`` answer sums the counters and histograms of every worker (prometheus_client's
  multiprocess mode, in a private temporary directory the supervisor removes on exit), with ``process_*`` per
  worker and ``gateway_build_info``.
* SIGTERM to the supervisor drains every worker: readiness 503, in-flight requests finish, exit 0.
* SIGHUP to the supervisor reloads the policy in every worker, in place (the same worker processes).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from gateway import __version__
from tests.e2e.test_reload import NEW, OLD, write_policy
from tests.e2e.test_shutdown import in_background
from tests.support.metrics import scrape, value
from tests.support.procs import Gateway, Upstream

TWO = {"listen": {"workers": 2}}
ROUTE = "/v1/servers/**"


def json_lines(gw: Gateway) -> list[dict[str, Any]]:
    """Every line of the log, parsed: raises on the first line that is not one JSON object."""
    out = []
    for line in gw.log().splitlines():
        if line.strip():
            try:
                doc = json.loads(line)
            except ValueError:
                raise AssertionError(f"not a JSON line: {line!r}") from None
            assert isinstance(doc, dict), line
            out.append(doc)
    return out


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"{what}: not met within {timeout} s")


def started_workers(gw: Gateway) -> set[int]:
    """The pids of the worker processes that logged uvicorn's startup line (JSON lines carry the pid)."""
    return {d["pid"] for d in json_lines(gw) if d.get("message", "").startswith("Application startup complete")}


def wait_workers(gw: Gateway, n: int = 2) -> set[int]:
    pids: set[int] = wait_for(lambda: (p := started_workers(gw)) and len(p) >= n and p, what=f"{n} workers")
    return pids


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def worker_of(record: dict[str, Any]) -> str:
    """The per-process prefix of the request id the gateway sent upstream: which worker forwarded it."""
    [rid] = [v for n, v in record["headers"] if n.lower() == "x-request-id"]
    return str(rid[:12])


def test_every_worker_writes_json_lines_with_its_pid(make_gateway: Callable[..., Gateway],
                                                    fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings=TWO)
    workers = wait_workers(gw)
    assert gw.proc is not None and gw.proc.pid not in workers
    supervisor = gw.proc.pid
    key = gw.create_key("reader", "servers:read")["value"]

    def both_served() -> bool:
        for _ in range(10):  # a fresh connection each: either worker may accept it
            assert httpx.get(f"{gw.url}/v1/servers", headers=bearer(key), timeout=10).status_code == 200
        return len({d["pid"] for d in json_lines(gw) if d.get("event") == "request"}) == 2

    wait_for(both_served, what="both workers serving")
    gw.stop()
    docs = json_lines(gw)  # every line of every process is JSON
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for d in docs:
        by_pid.setdefault(d["pid"], []).append(d)
    assert set(by_pid) == workers | {supervisor}
    assert any(d.get("event") == "start" for d in by_pid[supervisor])
    for pid in workers:
        events = {d.get("event") for d in by_pid[pid]}
        assert "request" in events  # the access lines
        assert any(d["logger"].startswith("uvicorn") for d in by_pid[pid])  # and uvicorn's own lines
    assert key not in gw.log()


def test_text_format_reaches_the_workers_too(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings={**TWO, "ops": {"log_format": "text"}})
    assert httpx.get(f"{gw.url}/v1/servers", timeout=10).status_code == 401
    wait_for(lambda: gw.log().count("uvicorn.error: Application startup complete") == 2, what="two workers")
    gw.stop()
    log = gw.log()
    assert "INFO uvicorn.error: Application startup complete" in log
    assert not any(line.startswith("{") and '"logger":"uvicorn' in line for line in log.splitlines())
    # the access line stays one JSON object per request, as in one process
    assert any(line.startswith("{") and '"event":"request"' in line for line in log.splitlines())


def test_one_metrics_answer_sums_every_worker(make_gateway: Callable[..., Gateway],
                                              fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings=TWO)
    workers = wait_workers(gw)
    key = gw.create_key("reader", "servers:read")["value"]
    sent = 0

    def both_served() -> bool:
        nonlocal sent
        for _ in range(10):
            assert httpx.get(f"{gw.url}/v1/servers", headers=bearer(key), timeout=10).status_code == 200
            sent += 1
        return len({worker_of(r) for r in fresh_upstream.records()}) == 2

    wait_for(both_served, what="both workers serving")
    assert sent == len(fresh_upstream.records())

    # Each worker writes its counts to the shared files at least once a second; the answering worker writes
    # its own just before it reads them all. The sum reaches what was sent, and never passes it.
    def summed() -> dict[Any, float] | None:
        samples = scrape(gw)
        got = value(samples, "gateway_requests_total", route=ROUTE, method="GET", status="200")
        assert got <= sent
        return samples if got == sent else None

    samples = wait_for(summed, timeout=10, what=f"gateway_requests_total reaching {sent}")
    assert value(samples, "gateway_request_duration_seconds_count", route=ROUTE) == sent
    assert value(samples, "gateway_request_duration_seconds_bucket", route=ROUTE, le="+Inf") == sent
    assert value(samples, "gateway_upstream_duration_seconds_count", route=ROUTE) == sent
    assert 0 < value(samples, "gateway_upstream_duration_seconds_sum", route=ROUTE) < sent * 5
    assert value(samples, "gateway_auth_decisions_total", result="allowed", reason="ok") == sent
    assert (value(samples, "gateway_key_cache_hits_total") + value(samples, "gateway_key_cache_misses_total")
            == sent)
    # one series per label set, not one per worker
    assert not any(name.startswith("gateway_") and dict(labels).get("pid") for name, labels in samples)
    assert value(samples, "gateway_build_info", version=__version__, python=platform.python_version()) == 1
    # process metrics per worker, told apart by pid
    for pid in workers:
        assert value(samples, "process_resident_memory_bytes", pid=str(pid)) > 0
        assert ("process_cpu_seconds_total", (("pid", str(pid)),)) in samples

    # The shared files live in a private directory of the supervisor's, removed when it exits.
    environ = Path(f"/proc/{min(workers)}/environ").read_bytes()
    [directory] = [v.split(b"=", 1)[1].decode() for v in environ.split(b"\0")
                   if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert any(name.endswith(".db") for name in os.listdir(directory))
    gw.stop()
    assert not os.path.exists(directory)


def test_sigterm_drains_every_worker(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream) -> None:
    gw = make_gateway(fresh_upstream.url, settings={**TWO, "ops": {"drain_seconds": 3.0}})
    workers = wait_workers(gw)
    key = gw.create_key("reader", "servers:read")["value"]

    def slow() -> int:
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            return c.get("/v1/servers/__slow?seconds=5", headers=bearer(key)).status_code

    # Slow requests on fresh connections, one at a time, until each worker has one in flight.
    in_flight: list[tuple[threading.Thread, dict[str, Any]]] = []
    while len({worker_of(r) for r in fresh_upstream.records()}) < 2:
        assert len(in_flight) < 16, "every slow request went to the same worker"
        in_flight.append(in_background(slow))
        wait_for(lambda: len(fresh_upstream.records()) == len(in_flight), what="the upstream seeing it")
    assert gw.proc is not None
    proc = gw.proc
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()

    def draining() -> set[int]:
        said = "draining: readiness now answers 503"
        return {d["pid"] for d in json_lines(gw) if d.get("message", "").startswith(said)}

    # The parent passes the signal on: once every worker has said it is draining (on a busy machine that can take
    # longer than a fixed pause), both keep answering and readiness says 503 draining on every connection.
    wait_for(lambda: draining() == workers, timeout=2.5, what="every worker draining")
    for _ in range(4):
        with httpx.Client(base_url=gw.url, timeout=2) as c:
            ready = c.get("/readyz")
            assert (ready.status_code, ready.json()["status"]) == (503, "draining")
            assert c.get("/v1/servers").status_code == 401  # still serving
    assert time.monotonic() - sent < 3.0  # all of that within the drain
    for t, _ in in_flight:
        t.join(30)
    assert [out for _, out in in_flight] == [{"value": 200}] * len(in_flight)
    assert proc.wait(30) == 0
    assert draining() == workers
    assert "Traceback" not in gw.log()


def test_sighup_reloads_every_worker_in_place(make_gateway: Callable[..., Gateway], fresh_upstream: Upstream,
                                             tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, OLD)
    gw = make_gateway(fresh_upstream.url, settings={**TWO, "policies": str(policy), "ops": {"watch_policy": False}})
    workers = wait_workers(gw)
    key = gw.create_key("reader", "servers:read")["value"]

    def statuses(path: str, n: int = 10) -> set[int]:
        return {httpx.get(f"{gw.url}{path}", headers=bearer(key), timeout=10).status_code for _ in range(n)}

    assert statuses("/v1/teams/1") == {403}
    write_policy(policy, NEW)
    # Requests keep flowing across the reload: none is dropped or refused.
    stop = threading.Event()
    seen: list[int | str] = []

    def traffic() -> None:
        while not stop.is_set():
            try:
                seen.append(httpx.get(f"{gw.url}/v1/servers/1", headers=bearer(key), timeout=10).status_code)
            except httpx.HTTPError as exc:
                seen.append(repr(exc))

    t = threading.Thread(target=traffic)
    t.start()
    try:
        time.sleep(0.3)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        reloaded = wait_for(lambda: (p := {d["pid"] for d in json_lines(gw) if d.get("event") == "reload"})
                            and len(p) == 2 and p, what="a reload in each worker")
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(15)
    assert reloaded == workers  # the same processes, reloaded where they run
    assert set(seen) <= {200, 403} and 200 in seen, seen
    assert statuses("/v1/teams/1") == {200}
    assert statuses("/v1/servers/1") == {403}
    assert gw.proc.poll() is None
    assert started_workers(gw) == workers  # no worker was restarted
    assert value(scrape(gw), "gateway_config_reloads_total", result="success") == 2


def test_a_worker_that_cannot_start_stops_the_supervisor(make_gateway: Callable[..., Gateway],
                                                         fresh_upstream: Upstream) -> None:
    """A replacement worker that finds a broken configuration file (edited since the supervisor read it) says
    why in one JSON line and stops the supervisor with uvicorn's start-up failure status (3), instead of being
    replaced again and again."""
    gw = make_gateway(fresh_upstream.url, settings=TWO)
    workers = wait_workers(gw)
    assert gw.proc is not None
    gw.config.write_text("listen: {port: nope}\n")
    os.kill(min(workers), signal.SIGKILL)
    assert gw.proc.wait(30) == 3
    [line] = [d for d in json_lines(gw) if d["message"].startswith("worker not started")]
    assert line["level"] == "error" and "listen.port" in line["message"] and line["pid"] not in workers
    assert "Traceback" not in gw.log()

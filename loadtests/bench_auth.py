"""Per-request cost of the gateway's own work, in process, on the real code (no HTTP server, no upstream).

    .venv/bin/python loadtests/bench_auth.py [--rounds 15] [--n 2000]

Builds the real application from a real configuration (a fresh SQLite store in a temp directory, the shipped
deployerp policy, a "bench" rate-limit tier that is never reached, the product's default ops settings) and
creates a key with the project's own ``create_key`` (servers:read, allowlist 127.0.0.0/8, tier bench). Then
it times, each as the median over ``--rounds`` rounds of the per-call mean of ``--n`` calls:

``auth decision (cache hit)``
    What the gate decides for ``GET /v1/servers`` with a valid key: ``Gate.decide``, which every front door
    calls: ``Policy.match_path`` (the route, remembered per path), ``Gate.authenticate_now``
    (Bearer parse, key shape, keyed HMAC hash, ``KeyCache.peek`` hit, revoked/expiry checks),
    ``ClientResolver.resolve`` + ``in_networks`` (the CIDR allowlist), ``grants`` for each scope of the route,
    and ``RateLimits.spend_now`` (the in-memory GCRA update and the X-RateLimit-* header values).
``auth decision, cache miss (SQLite)``
    The same, with the key cache emptied before each call (``KeyCache.invalidate()``), so every call checks
    the key's checksum and reads it from the SQLite file (``Gate.load_key``: ``SQLiteStore.get_by_hash``
    + ``AuthKey.compile``).
``full pipeline, no-op upstream``
    ``Gateway.__call__`` (what uvicorn calls) for the same request, with a forwarder that answers 200 with a
    fixed body at once instead of calling the upstream. This is all the gateway adds to a request apart from
    the HTTP server and the aiohttp client: the header pass, request id, the auth decision, forwarding
    headers, the metrics update and the JSON access line (written to /dev/null, as ``gateway serve`` formats
    it).
``full pipeline, invalid key``
    The same with a key whose checksum is wrong (401 before any hashing or store access).

Targets the gateway is held to: auth decision median < 20 us; cache miss on SQLite < 300 us. Prints medians in
microseconds and exits 0; nothing is asserted (figures depend on the machine; see loadtests/RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from gateway.app import create_app  # noqa: E402
from gateway.config.settings import load_settings  # noqa: E402
from gateway.keys.service import create_key  # noqa: E402

BODY = b'{"servers":[{"id":"srv_1","name":"web-1","status":"running","region":"eu-west"}]}'


class NoopForwarder:
    """Stands in for the upstream leg: answers 200 at once, with the headers a small JSON answer has."""

    async def forward(self, method: str, raw_path: bytes, query: bytes, headers: Any, has_body: bool,
                      receive: Any, send: Any, extra: Any = (), body_limit: int | None = None,
                      tally: Any = None) -> int:
        out = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY)), *extra]
        if tally is not None:
            tally.status, tally.t_head, tally.bytes_out = 200, time.perf_counter(), len(BODY)
        await send({"type": "http.response.start", "status": 200, "headers": out})
        await send({"type": "http.response.body", "body": BODY, "more_body": False})
        return 200


def scope_for(key: str) -> dict[str, Any]:
    """The scope uvicorn builds for wrk's request (the same headers wrk sends, plus the key)."""
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "server": ("127.0.0.1", 19103), "client": ("127.0.0.1", 40000), "scheme": "http", "method": "GET",
        "root_path": "", "path": "/v1/servers", "raw_path": b"/v1/servers", "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:19103"), (b"authorization", f"Bearer {key}".encode())],
        "state": {},
    }


async def time_calls(fn: Any, n: int, rounds: int) -> float:
    """Median over rounds of the mean time of one awaited call, in microseconds."""
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            await fn()
        per_round.append((time.perf_counter_ns() - t0) / n / 1000)
    return statistics.median(per_round)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--n", type=int, default=2000, help="calls per round (cache-miss rounds use n/10)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-auth."))
    cfg = tmp / "config.yaml"
    cfg.write_text(
        f"store: {{url: 'sqlite:///{tmp}/keys.db'}}\n"
        f"secret_file: {tmp}/gateway.secret\n"
        f"policies: {HERE.parent}/policies/deployerp.yaml\n"
        "upstream: {url: 'http://127.0.0.1:9'}\n"
        "rate_limits: {tiers: {bench: {per_hour: 100000000, per_minute: 10000000}}}\n"
    )
    settings = load_settings(cfg, environ={})
    # Before the app is built, as `gateway serve` does (AccessLog finds its handler then): the access line is
    # formatted and written as under serve, into /dev/null.
    try:
        from gateway.observability.logging import configure_logging

        configure_logging()
    except ImportError:  # pragma: no cover - older tree
        logging.basicConfig(level=logging.INFO)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    for name in ("", "gateway.access"):
        for h in logging.getLogger(name).handlers:
            if isinstance(h, logging.StreamHandler):
                h.setStream(devnull)

    app = create_app(settings)
    comps = app.components
    key, _record = await create_key(comps.store, comps.pepper, settings.key_format, name="bench",
                                    permissions=["servers:read"], allowed_ips=["127.0.0.0/8"],
                                    rate_limit_tier="bench")
    gw = app.gateway
    gw.forwarders = {"live": NoopForwarder(), "test": None}  # type: ignore[dict-item]
    scope = scope_for(key)
    bad_scope = scope_for(key[:-1] + ("0" if key[-1] != "0" else "1"))
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    authorization = [v for n, v in scope["headers"] if n == b"authorization"]
    raw_path = scope["raw_path"]

    gate = app.gate

    async def decision() -> None:
        # The gate's decision, as every front door asks for it (gateway/gate): the route (remembered per
        # path), the key (the store is awaited on a cache miss only), the allowlist, the scopes, the in-memory
        # limit.
        decided = await gate.decide("GET", raw_path, authorization, "127.0.0.1", [])
        if not decided.allowed or decided.applied is None:
            raise AssertionError(f"the bench key should pass the gate and its tier be checked: {decided}")

    async def miss() -> None:
        gate.cache.invalidate()
        await decision()

    async def full() -> None:
        sent.clear()
        await gw(scope, receive, send)

    async def full_bad() -> None:
        sent.clear()
        await gw(bad_scope, receive, send)

    # Sanity: the decisions are the real ones.
    await full()
    assert sent[0]["status"] == 200, sent[0]
    await full_bad()
    assert sent[0]["status"] == 401, sent[0]
    gate.auth_failures.failure = lambda *a, **k: None  # type: ignore[method-assign]  # no cool-down mid-benchmark

    for _ in range(3):  # warm-up
        await time_calls(decision, args.n, 1)
    hit = await time_calls(decision, args.n, args.rounds)
    cold = await time_calls(miss, max(1, args.n // 10), args.rounds)
    pipe = await time_calls(full, args.n, args.rounds)
    bad = await time_calls(full_bad, args.n, args.rounds)

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    print(f"python {platform.python_version()}, {cpu}, load {os.getloadavg()[0]:.2f}, "
          f"{args.rounds} rounds x {args.n} calls")
    print(f"auth decision (cache hit)           median {hit:8.1f} us   target < 20")
    print(f"auth decision, cache miss (SQLite)  median {cold:8.1f} us   target < 300")
    print(f"full pipeline, no-op upstream       median {pipe:8.1f} us")
    print(f"full pipeline, invalid key (401)    median {bad:8.1f} us")
    await app.limits.close()
    await comps.store.close()
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()


if __name__ == "__main__":
    asyncio.run(main())

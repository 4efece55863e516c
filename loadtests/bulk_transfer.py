"""1 GB through the gateway, for the memory targets: upload and download speed next to direct, and the gateway's RSS.

    .venv/bin/python loadtests/bulk_transfer.py [--runs 3] [--mib 1024] [--no-pin]

Three real processes on loopback:

* an upstream (this script with ``--upstream PORT``, aiohttp on uvloop): ``POST /v1/backups/upload`` reads the
  body as it arrives and throws it away, answering ``{"received": N}``; ``GET /v1/backups/download?bytes=N``
  streams N bytes with a Content-Length, written as one 1 MiB block over and over (never N bytes in memory);
* ``gateway serve`` (the config serve_for_bench.sh writes: fresh SQLite store, the deployerp policy, the bench
  tier), with one key made by ``gateway keys create`` holding backups:read and backups:write;
* this script as the client (aiohttp on uvloop): the upload body is an async generator of 256 KiB blocks
  with an explicit Content-Length (not one 1 GiB bytes object), the download is read with
  ``iter_chunked(1 MiB)`` and only counted.

Each run times, for ``--mib`` MiB (default 1024, i.e. 1 GiB = 1,073,741,824 bytes): upload direct, download
direct, upload through the gateway, download through the gateway, checking the byte counts (the upstream's for
the upload, the client's for the download) and the status. MB/s is 10^6 bytes per second. While the gateway
carries a transfer its VmRSS is sampled every 0.2 s: before (just before the transfer), peak, and after (1 s
after it ended).

The gateway's body limit (``limits.max_body_bytes``) defaults to 1,073,741,824 bytes and refuses only a body
*longer* than that (``length > limit``), so a 1 GiB upload passes with the defaults and this script changes
no limit; with ``--mib`` above 1024 it raises ``limits.max_body_bytes`` to fit and says so.

Pinning (as ../shared/bench/compare.sh does): the gateway on CPU 0, the upstream and the client on CPU 1, for
the direct and the gateway transfers alike; ``--no-pin`` leaves the scheduler free.

Targets (medians over ``--runs``; exit status 1 if one is missed): gateway speed >= 0.60 x direct both ways;
the gateway's RSS rises by less than 50 MB (peak - before, the worst run counts) both ways.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from harness import (  # noqa: E402
    BENCH_TIER,
    PYTHON,
    GatewayProcess,
    RssSampler,
    clean_env,
    free_port,
    load_average,
    pinned,
    wait_port,
)

MiB = 1 << 20
UP_BLOCK = 256 * 1024
DEFAULT_MAX_BODY = 1_073_741_824
FRAMING: dict[str, str] = {}  # upload URL -> how the upstream saw the body framed (last upload)


# --- the upstream (its own process) ---------------------------------------------------------------------------

def run_upstream(port: int) -> None:
    from aiohttp import web

    block = os.urandom(MiB)

    async def upload(request: web.Request) -> web.Response:
        received = 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                break
            received += len(chunk)
        return web.json_response({"received": received, "content_length": request.content_length,
                                  "chunked": request.headers.get("Transfer-Encoding", "")})

    async def download(request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("bytes", "0"))
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = size
        await resp.prepare(request)
        view = memoryview(block)
        left = size
        while left > 0:
            n = min(left, MiB)
            await resp.write(view[:n])
            left -= n
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=1 << 40)
    app.router.add_post("/v1/backups/upload", upload)
    app.router.add_get("/v1/backups/download", download)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- the client ----------------------------------------------------------------------------------------------

async def blocks(total: int) -> AsyncIterator[bytes]:
    block = os.urandom(UP_BLOCK)
    left = total
    while left > 0:
        n = min(left, UP_BLOCK)
        yield block if n == UP_BLOCK else block[:n]
        left -= n


async def upload(session: object, url: str, total: int, headers: dict[str, str]) -> float:
    """Seconds to send ``total`` bytes and get the answer; raises if the upstream did not get them all."""
    import aiohttp

    assert isinstance(session, aiohttp.ClientSession)
    t0 = time.perf_counter()
    async with session.post(url, data=blocks(total), headers={**headers, "Content-Length": str(total)}) as resp:
        body = await resp.read()
    took = time.perf_counter() - t0
    if resp.status != 200:
        raise RuntimeError(f"upload to {url}: status {resp.status}: {body[:300]!r}")
    got = json.loads(body)
    if got["received"] != total:
        raise RuntimeError(f"upload to {url}: the upstream received {got['received']} of {total} bytes")
    FRAMING[url] = (f"Content-Length {got['content_length']}" if got["content_length"] is not None
                    else f"Transfer-Encoding {got['chunked']}")
    return took


async def download(session: object, url: str, total: int, headers: dict[str, str]) -> float:
    import aiohttp

    assert isinstance(session, aiohttp.ClientSession)
    t0 = time.perf_counter()
    received = 0
    async with session.get(f"{url}?bytes={total}", headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"download from {url}: status {resp.status}: {(await resp.read())[:300]!r}")
        async for chunk in resp.content.iter_chunked(MiB):
            received += len(chunk)
    took = time.perf_counter() - t0
    if received != total:
        raise RuntimeError(f"download from {url}: received {received} of {total} bytes")
    return took


async def sampled(gateway: GatewayProcess, work: object) -> tuple[float, float, float, float]:
    """Run the awaitable ``work`` (a transfer through the gateway) while sampling the gateway's RSS every 0.2 s.
    Returns (seconds, before MB, peak MB, after MB)."""
    before = gateway.rss_mb()
    sampler = RssSampler(gateway.pid, 0.2).start()
    took = await work  # type: ignore[misc]
    await asyncio.sleep(1.0)
    samples = sampler.stop()
    after = samples[-1][1]
    return took, before, max(before, sampler.peak), after


async def client_main(args: argparse.Namespace, gateway: GatewayProcess, up_port: int, key: str) -> dict[str, list]:
    import aiohttp

    total = args.mib * MiB
    direct = f"http://127.0.0.1:{up_port}/v1/backups"
    through = f"http://127.0.0.1:{gateway.port}/v1/backups"
    auth = {"Authorization": f"Bearer {key}"}
    results: dict[str, list] = {"direct_up": [], "direct_down": [], "gw_up": [], "gw_down": []}
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        # Warm-up: a small transfer each way, through the gateway (key in the cache, upstream pool open).
        await upload(session, f"{through}/upload", MiB, auth)
        await download(session, f"{through}/download", MiB, auth)
        for run in range(1, args.runs + 1):
            d_up = await upload(session, f"{direct}/upload", total, {})
            d_down = await download(session, f"{direct}/download", total, {})
            g_up = await sampled(gateway, upload(session, f"{through}/upload", total, auth))
            g_down = await sampled(gateway, download(session, f"{through}/download", total, auth))
            results["direct_up"].append(d_up)
            results["direct_down"].append(d_down)
            results["gw_up"].append(g_up)
            results["gw_down"].append(g_down)
            mbps = lambda s: total / s / 1e6  # noqa: E731
            print(f"run {run}: upload   direct {mbps(d_up):7.1f} MB/s  gateway {mbps(g_up[0]):7.1f} MB/s  "
                  f"ratio {d_up / g_up[0]:.2f}  gateway RSS {g_up[1]:.1f} -> peak {g_up[2]:.1f} -> "
                  f"{g_up[3]:.1f} MB (+{g_up[2] - g_up[1]:.1f})", flush=True)
            print(f"run {run}: download direct {mbps(d_down):7.1f} MB/s  gateway {mbps(g_down[0]):7.1f} MB/s  "
                  f"ratio {d_down / g_down[0]:.2f}  gateway RSS {g_down[1]:.1f} -> peak {g_down[2]:.1f} -> "
                  f"{g_down[3]:.1f} MB (+{g_down[2] - g_down[1]:.1f})", flush=True)
    print(f"upload framing as the upstream saw it: direct {FRAMING[f'{direct}/upload']}, through the gateway "
          f"{FRAMING[f'{through}/upload']}")
    return results


def write_config(work: Path, port: int, upstream: str, max_body: int | None) -> Path:
    config = work / "config.yaml"
    limits = f"limits: {{max_body_bytes: {max_body}}}\n" if max_body is not None else ""
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"upstream: {{url: \"{upstream}\"}}\n"
        f"store: {{url: \"sqlite:///{work}/keys.db\"}}\n"
        f"secret_file: {work}/gateway.secret\n"
        f"policies: {HERE.parent}/policies/deployerp.yaml\n"
        + limits +
        "rate_limits:\n  tiers:\n"
        f"    bench: {{per_hour: {BENCH_TIER['per_hour']}, per_minute: {BENCH_TIER['per_minute']}}}\n"
    )
    return config


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=1024, help="MiB each way (default 1024 = 1 GiB)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the processes to CPUs")
    ap.add_argument("--min-ratio", type=float, default=0.60)
    ap.add_argument("--max-rss-rise-mb", type=float, default=50.0)
    ap.add_argument("--upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the upstream process
    args = ap.parse_args()
    if args.upstream:
        run_upstream(args.upstream)
        return 0

    gw_cpu, rest_cpu = (None, None) if args.no_pin else ("0", "1")
    if rest_cpu is not None and shutil.which("taskset"):
        os.sched_setaffinity(0, {int(rest_cpu)})  # this client
    total = args.mib * MiB
    max_body = total if total > DEFAULT_MAX_BODY else None
    work = Path(tempfile.mkdtemp(prefix="gw-bulk."))
    up_port, gw_port = free_port(), free_port()
    config = write_config(work, gw_port, f"http://127.0.0.1:{up_port}", max_body)
    upstream = subprocess.Popen(pinned(rest_cpu, [PYTHON, str(Path(__file__).resolve()), "--upstream", str(up_port)]),
                                env=clean_env())
    gateway: GatewayProcess | None = None
    try:
        wait_port(up_port, upstream)
        made = subprocess.run(
            [PYTHON, "-m", "gateway", "keys", "create", "--config", str(config), "--name", "bulk",
             "--permissions", "backups:read,backups:write", "--tier", "bench", "--json"],
            capture_output=True, text=True, env=clean_env(), check=True)
        key = json.loads(made.stdout)["value"]
        gateway = GatewayProcess(config, gw_port, work / "gateway.log", cpu=gw_cpu)
        print(f"{platform.node()}: nproc {os.cpu_count()}, kernel {platform.release()}, python "
              f"{platform.python_version()}, load average {load_average()} (before)")
        pin = "no pinning" if args.no_pin else "gateway on CPU 0, upstream and client on CPU 1"
        limit = (f"limits.max_body_bytes raised to {max_body}" if max_body else
                 f"limits.max_body_bytes at its default ({DEFAULT_MAX_BODY})")
        print(f"{args.mib} MiB each way, {args.runs} runs; {pin}; {limit}", flush=True)
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        results = asyncio.run(client_main(args, gateway, up_port, key))
        load = load_average()
    except Exception:
        if gateway is not None:
            print(f"gateway log, last lines:\n{gateway.tail(10)}", file=sys.stderr)
        raise
    finally:
        if gateway is not None:
            gateway.stop()
        if upstream.poll() is None:
            upstream.terminate()
            upstream.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    def med_mbps(key: str) -> float:
        return statistics.median(total / (r if isinstance(r, float) else r[0]) / 1e6 for r in results[key])

    failed = False
    print()
    for way, d_key, g_key in (("upload", "direct_up", "gw_up"), ("download", "direct_down", "gw_down")):
        direct, through = med_mbps(d_key), med_mbps(g_key)
        ratio = through / direct
        rises = [peak - before for _, before, peak, _ in results[g_key]]
        befores = [before for _, before, _, _ in results[g_key]]
        peaks = [peak for _, _, peak, _ in results[g_key]]
        afters = [after for _, _, _, after in results[g_key]]
        ok_speed = ratio >= args.min_ratio
        ok_rss = max(rises) < args.max_rss_rise_mb
        failed |= not (ok_speed and ok_rss)
        print(f"{way:8s} median direct {direct:7.1f} MB/s, gateway {through:7.1f} MB/s, ratio {ratio:.2f} "
              f"(target >= {args.min_ratio:.2f}): {'PASS' if ok_speed else 'FAIL'}")
        print(f"{way:8s} gateway RSS before {statistics.median(befores):.1f} MB, peak {max(peaks):.1f} MB, after "
              f"{statistics.median(afters):.1f} MB; rise per run "
              f"{', '.join(f'{r:+.1f}' for r in rises)} MB (target < {args.max_rss_rise_mb:.0f}): "
              f"{'PASS' if ok_rss else 'FAIL'}")
    print(f"load average {load} (after)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

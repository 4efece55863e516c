"""Memory soak, against the memory targets: 100,000 keys, requests spread over all of them, gateway RSS sampled.

    .venv/bin/python loadtests/soak_memory.py [--seconds 300] [--keys 100000] [--connections 32]

1. Builds a fresh SQLite store in a temp directory holding ``--keys`` real keys, made in this one process by
   the code path the CLI uses (``gateway.keys.service.create_key``: validation, the key format and checksum,
   HMAC-SHA256 with the server secret from ``secret_file``, one audit row each). Each key holds
   ``servers:read``, allowlist 127.0.0.0/8 and the ``bench`` tier of serve_for_bench.sh (10^8 an hour, 10^7 a
   minute: checked on every request, never reached). The only shortcut: the loading connection runs with
   ``PRAGMA synchronous=OFF`` (the store's own is FULL, one fsync per key), which changes how fast the rows
   reach the disk, not what they are. The key values go to a mode-600 file in the temp directory.
2. Starts an nginx upstream (profile.sh's fixed JSON answer) on CPU 1 and ``gateway serve`` (a real process,
   the config serve_for_bench.sh writes, everything else at the product defaults: cache.ttl_seconds 5,
   cache.max_size 100,000, JSON access line per request to a log file, metrics) pinned to CPU 0.
3. Drives ``GET /v1/servers`` for ``--seconds`` with ``wrk -t1 -c CONNECTIONS`` on CPU 1; a Lua script walks
   the key file in order from a random start, one key per request, so every key is used about every
   ``keys / rps`` seconds. At ~2,000 requests/s that is every ~50 s, ten times the cache TTL: nearly every
   request is a key-cache miss and a SQLite read, the worst case for the cache and the fullest the
   per-key rate-limit table can get.
4. Every ``--interval`` seconds (5) samples the gateway's VmRSS (/proc/PID/status) and its own request counter
   (``gateway_requests_total`` on /metrics), and prints the curve: time, RSS, requests so far, rps over the
   interval.
5. Meanwhile a probe thread asks ``GET /healthz`` every 20 ms on one keep-alive connection and keeps the
   slowest answers: /healthz is answered on the event loop with no I/O, so its slowest answer bounds the
   longest time the loop was held (a flush, a full garbage collection), plus its wait behind the requests
   already queued (~10 ms at full load). Printed with wrk's p50, p99 and max latency.

Verdict (exit status 1 if any fails, 0 if all pass):

* peak RSS < ``--max-rss-mb`` (250);
* RSS stops growing: the median of the last three samples exceeds the median of the three samples around the
  half-way mark by less than ``--max-growth-mb`` (10 MB). The per-key state only fills during the first pass
  over the keys (100,000 keys at ~2,000 rps: the first ~50 s), so the second half of a 300 s run should be
  flat; a leak per request (600,000 requests) or per key would show there. With ``--seconds`` much shorter
  than two passes over the keys this check measures the filling, not a leak;
* no non-2xx answer and no socket error (wrk's count, cross-checked with the gateway's own counter).

What bounds the memory: the key cache (a dict of cache.max_size entries, default 100,000, each living
cache.ttl_seconds, 5) holds at most the keys seen in the last 5 s, ~0.9 KB each (tracemalloc; ~2 KB before
commit 2d83c4f); the in-memory rate limiter keeps two integers per key in use (~0.2 KB an entry;
rate_limits.max_tracked_keys, default 1,000,000; keys at rest swept), so with 100,000 keys it holds 100,000
entries once every key has been used; usage counts (gateway/keys/usage.py) hold the keys used since the last
flush (usage.flush_seconds). ``--cache-ttl 60`` keeps every key cached between two uses: the cache fills to
cache.max_size, the worst case for its memory.

Needs nginx and wrk (``apt-get install -y nginx wrk``). ``--keep`` leaves the temp directory (store, key file,
configs, gateway log) for a look afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from harness import (  # noqa: E402
    BENCH_TIER,
    GatewayProcess,
    free_port,
    load_average,
    pinned,
    tree_rss_mb,
    wait_port,
)

WRK_LUA = r"""
-- One key per request, walking the key file in order from a random start (every key is used in turn).
local keys, n, i = {}, 0, 0
function init(args)
  for line in io.lines(args[1]) do
    n = n + 1
    keys[n] = "Bearer " .. line
  end
  i = tonumber(args[2]) % n
end
function request()
  i = i % n + 1
  return wrk.format(nil, nil, {["Authorization"] = keys[i]})
end
"""

NGINX_CONF = """worker_processes 1; daemon on; pid {work}/nginx.pid; error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; client_body_temp_path {work}/nginx-body;
  proxy_temp_path {work}/nginx-proxy; fastcgi_temp_path {work}/nginx-fcgi; uwsgi_temp_path {work}/nginx-uwsgi;
  scgi_temp_path {work}/nginx-scgi;
  server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json; return 200 '{body}'; }} }} }}
"""
# profile.sh's answer.
BODY = ('{"servers":[{"id":"srv_1","name":"web-1","status":"running","region":"eu-west"},'
        '{"id":"srv_2","name":"db-1","status":"running","region":"eu-west"}]}')


def write_config(work: Path, port: int, upstream: str, cache_ttl: float | None = None,
                 usage_flush: float | None = None) -> Path:
    config = work / "config.yaml"
    extra = (f"cache: {{ttl_seconds: {cache_ttl}}}\n" if cache_ttl is not None else "") + (
        f"usage: {{flush_seconds: {usage_flush}}}\n" if usage_flush is not None else "")
    config.write_text(extra +
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"upstream: {{url: \"{upstream}\"}}\n"
        f"store: {{url: \"sqlite:///{work}/keys.db\"}}\n"
        f"secret_file: {work}/gateway.secret\n"
        f"policies: {HERE.parent}/policies/deployerp.yaml\n"
        "rate_limits:\n  tiers:\n"
        f"    bench: {{per_hour: {BENCH_TIER['per_hour']}, per_minute: {BENCH_TIER['per_minute']}}}\n"
    )
    return config


async def make_keys(config: Path, count: int, out: Path) -> float:
    """``count`` keys through gateway.keys.service.create_key (the CLI's path); values to ``out``. Seconds."""
    from gateway.config.settings import load_settings
    from gateway.keys.backends import open_store
    from gateway.keys.hashing import load_pepper
    from gateway.keys.service import create_key

    settings = load_settings(config, environ={})
    pepper, _created = load_pepper(settings)
    store = open_store(settings)
    # Bulk loading only: one fsync per key (synchronous=FULL) would take minutes; the rows are the same.
    store._db.execute("PRAGMA synchronous=OFF")  # type: ignore[attr-defined]
    t0 = time.monotonic()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        for n in range(count):
            value, _record = await create_key(
                store, pepper, settings.key_format, name=f"soak-{n}", permissions=["servers:read"],
                allowed_ips=["127.0.0.0/8"], rate_limit_tier="bench")
            fh.write(value + "\n")
    store._db.execute("PRAGMA synchronous=FULL")  # type: ignore[attr-defined]
    await store.close()
    return time.monotonic() - t0


def scrape(port: int) -> dict[str, int]:
    """The gateway's own request counter by status (summed over routes and methods), plus its key-cache hits
    and misses under "cache_hits" / "cache_misses"; empty if /metrics cannot be read."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for m in re.finditer(r'^gateway_requests_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M):
        status = re.search(r'status="([^"]*)"', m.group(1))
        key = status.group(1) if status else "?"
        out[key] = out.get(key, 0) + int(float(m.group(2)))
    for name in ("hits", "misses"):
        if m := re.search(rf'^gateway_key_cache_{name}_total ([0-9.e+]+)$', text, re.M):
            out[f"cache_{name}"] = int(float(m.group(1)))
    return out


def requests_by_status(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if not k.startswith("cache_")}


def wrk_figures(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    if m := re.search(r"(\d+) requests in", text):
        out["requests"] = int(m.group(1))
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        out["rps"] = float(m.group(1))
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        out["non2xx"] = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        out["socket_errors"] = sum(int(g) for g in m.groups())
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    for pct in ("50", "99"):
        if m := re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
            out[f"p{pct}_ms"] = float(m.group(1)) * scale[m.group(2)]
    # "Latency   10.56ms   20.00ms  340.05ms   90.00%": average, stdev, max.
    if m := re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\s", text, re.M):
        out["max_ms"] = float(m.group(1)) * scale[m.group(2)]
    return out


class StallProbe(threading.Thread):
    """``GET /healthz`` every ``every`` seconds on one keep-alive connection; keeps the answer times (ms)."""

    def __init__(self, port: int, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.port, self.every = port, every
        self.times: list[float] = []
        self.errors = 0
        self.done = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.done.wait(self.every):
            t0 = time.perf_counter()
            try:
                conn.request("GET", "/healthz")
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                continue
            self.times.append((time.perf_counter() - t0) * 1000)
        conn.close()

    def summary(self) -> str:
        if not self.times:
            return f"/healthz probe: no answers ({self.errors} errors)"
        ts = sorted(self.times)
        over = sum(t > 100 for t in ts)
        return (f"/healthz probe (every {self.every * 1000:.0f} ms, bounds the longest loop stall): "
                f"{len(ts)} answers, p50 {ts[len(ts) // 2]:.1f} ms, p99 {ts[int(len(ts) * 0.99)]:.1f} ms, "
                f"max {ts[-1]:.1f} ms, {over} over 100 ms, {self.errors} errors")


def median_at(samples: list[tuple[float, float, int]], t: float) -> float:
    """Median RSS of the three samples nearest to time ``t``."""
    near = sorted(samples, key=lambda s: abs(s[0] - t))[:3]
    return statistics.median(s[1] for s in near)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=300, help="how long wrk runs (default 300)")
    ap.add_argument("--keys", type=int, default=100_000, help="keys in the store, all used (default 100000)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--interval", type=float, default=5.0, help="RSS sampling interval, seconds (default 5)")
    ap.add_argument("--max-rss-mb", type=float, default=250.0)
    ap.add_argument("--max-growth-mb", type=float, default=10.0)
    ap.add_argument("--cache-ttl", type=float, metavar="SECONDS",
                    help="set cache.ttl_seconds (default: the product default, 5)")
    ap.add_argument("--usage-flush", type=float, metavar="SECONDS",
                    help="set usage.flush_seconds (default: the product default, 5)")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = ap.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"soak_memory: {tool} is not installed (apt-get install -y nginx wrk)", file=sys.stderr)
            return 2

    work = Path(tempfile.mkdtemp(prefix="gw-soak."))
    up_port, gw_port = free_port(), free_port()
    config = write_config(work, gw_port, f"http://127.0.0.1:{up_port}", args.cache_ttl, args.usage_flush)
    keys_file = work / "keys.txt"
    (work / "soak.lua").write_text(WRK_LUA)
    (work / "nginx.conf").write_text(NGINX_CONF.format(work=work, port=up_port, body=BODY))
    gateway: GatewayProcess | None = None
    nginx_started = False
    wrk: subprocess.Popen[str] | None = None
    try:
        took = asyncio.run(make_keys(config, args.keys, keys_file))
        print(f"created {args.keys} keys in {took:.1f} s ({work}/keys.db)", flush=True)
        subprocess.run(pinned("1", ["nginx", "-c", str(work / "nginx.conf")]), check=True)
        nginx_started = True
        wait_port(up_port)
        gateway = GatewayProcess(config, gw_port, work / "gateway.log", cpu="0")
        first_key = keys_file.open().readline().strip()
        req = urllib.request.Request(f"http://127.0.0.1:{gw_port}/v1/servers",
                                     headers={"Authorization": f"Bearer {first_key}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200, resp.status

        print(f"{platform.node()}: nproc {os.cpu_count()}, kernel {platform.release()}, python "
              f"{platform.python_version()}, load average {load_average()} (before)")
        print(f"gateway pid {gateway.pid} on CPU 0; wrk -t1 -c{args.connections} and nginx on CPU 1; "
              f"{args.seconds} s over {args.keys} keys; cache.ttl_seconds "
              f"{args.cache_ttl if args.cache_ttl is not None else '5 (default)'}, usage.flush_seconds "
              f"{args.usage_flush if args.usage_flush is not None else '5 (default)'}", flush=True)
        wrk = subprocess.Popen(
            pinned("1", ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--timeout", "10s",
                         "--latency", "-s", str(work / "soak.lua"), f"http://127.0.0.1:{gw_port}/v1/servers",
                         "--", str(keys_file), str(random.randrange(args.keys))]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        probe = StallProbe(gw_port)
        probe.start()
        t0 = time.monotonic()
        samples: list[tuple[float, float, int]] = []  # (t, rss MB, requests so far)
        print(f"\n{'t (s)':>6} {'RSS (MB)':>9} {'requests':>9} {'rps':>7}")
        last_t, last_n = 0.0, 0
        while True:
            t = time.monotonic() - t0
            rss = tree_rss_mb(gateway.pid)
            # The counter includes the one sanity request before the run.
            n = max(0, sum(requests_by_status(scrape(gw_port)).values()) - 1)
            rps = (n - last_n) / (t - last_t) if t > last_t else 0.0
            samples.append((t, rss, n))
            print(f"{t:6.0f} {rss:9.1f} {n:9d} {rps:7.0f}", flush=True)
            last_t, last_n = t, n
            if wrk.poll() is not None:
                break
            next_t = (len(samples)) * args.interval
            time.sleep(max(0.0, next_t - (time.monotonic() - t0)))
        wrk_out = wrk.stdout.read() if wrk.stdout else ""
        wrk = None
        probe.done.set()
        probe.join(15)
        time.sleep(2)
        idle_rss = tree_rss_mb(gateway.pid)
        counters = scrape(gw_port)
        statuses = requests_by_status(counters)
        load = load_average()
        log_tail = gateway.tail(10)
    finally:
        if wrk is not None and wrk.poll() is None:
            wrk.terminate()
            wrk.wait(5)
        if gateway is not None:
            gateway.stop()
        if nginx_started and (work / "nginx.pid").exists():
            try:
                os.kill(int((work / "nginx.pid").read_text()), 15)
            except (OSError, ValueError):
                pass
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    figs = wrk_figures(wrk_out)
    during = [s for s in samples if s[0] <= args.seconds + args.interval]
    peak = max(s[1] for s in samples)
    start_rss = samples[0][1]
    half = median_at(during, args.seconds / 2)
    end = median_at(during, during[-1][0])
    growth = end - half
    non2xx_gw = sum(v for k, v in statuses.items() if not k.startswith("2"))
    non2xx = int(figs.get("non2xx", 0))
    errors = int(figs.get("socket_errors", 0))
    print(f"\nwrk: {int(figs.get('requests', 0))} requests, {figs.get('rps', 0):.0f} rps, "
          f"p50 {figs.get('p50_ms', 0):.2f} ms, p99 {figs.get('p99_ms', 0):.2f} ms, "
          f"max {figs.get('max_ms', 0):.2f} ms, non-2xx {non2xx}, socket errors {errors}")
    print(probe.summary())
    print(f"gateway counted by status: {json.dumps(dict(sorted(statuses.items())))}; key cache hits "
          f"{counters.get('cache_hits', 0)}, misses {counters.get('cache_misses', 0)}")
    print(f"RSS: start {start_rss:.1f} MB, peak {peak:.1f} MB, at half-time {half:.1f} MB, at the end "
          f"{end:.1f} MB (growth over the second half {growth:+.1f} MB), 2 s after the load {idle_rss:.1f} MB")
    print(f"load average {load} (after)")
    checks = [
        (f"peak RSS {peak:.1f} MB < {args.max_rss_mb:.0f} MB", peak < args.max_rss_mb),
        (f"RSS growth over the second half {growth:+.1f} MB < {args.max_growth_mb:.0f} MB",
         growth < args.max_growth_mb),
        (f"non-2xx {non2xx} (gateway's count {non2xx_gw}) and socket errors {errors} are 0",
         non2xx == 0 and non2xx_gw == 0 and errors == 0),
        ("wrk finished with figures", "requests" in figs),
    ]
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    if not all(ok for _, ok in checks):
        if "requests" not in figs:
            print(wrk_out, file=sys.stderr)
        print(f"gateway log, last lines:\n{log_tail}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

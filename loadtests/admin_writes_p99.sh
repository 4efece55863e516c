#!/usr/bin/env bash
# Proxied p99 while the management API writes: does a key-store write stall the requests of its process?
#
# Runs a gateway on a fresh SQLite store (CPU 0) in front of an nginx upstream (CPU 1), measures the proxied p99
# with wrk (CPU 1, loopback only, D seconds) idle, then again while N keys are created concurrently through
# the management API (POST /v1/api-keys, each a BEGIN IMMEDIATE transaction with synchronous=FULL), and prints
# both p99s and their ratio. A benchmark, not a test: the machine may be shared, so it prints the load average.
#
# Usage: loadtests/admin_writes_p99.sh [-d SECONDS] [-c CONNECTIONS] [-n KEYS]     (defaults 8, 32, 100)
# Needs nginx and wrk (apt-get install -y nginx wrk). Everything it starts is stopped on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"  # python -m gateway: this checkout's code
py=${GW_PYTHON:-$here/.venv/bin/python}
D=8 C=32 N=100
while getopts "d:c:n:" o; do case $o in d) D=$OPTARG;; c) C=$OPTARG;; n) N=$OPTARG;; *) sed -n '2,10p' "$0"; exit 2;; esac; done
for tool in nginx wrk taskset; do
  command -v $tool >/dev/null || { echo "admin_writes_p99.sh: $tool is missing (apt-get install -y nginx wrk)"; exit 2; }
done
work=$(mktemp -d /tmp/gw-admin-p99.XXXXXX)
. "$here/loadtests/bench_lib.sh"
trap cleanup EXIT
up=$(free_port) port=$(free_port)
start_nginx_upstream "$up"
. "$here/loadtests/bench_config.sh"
bench_config "$port" "http://127.0.0.1:$up" "sqlite:///$work/keys.db"
key=$(bench_key bench servers:read)
admin=$(bench_key admin "*")
setsid taskset -c 0 "$py" -m gateway serve --config "$work/config.yaml" > "$work/gw.log" 2>&1 & gw=$!
for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
url="http://127.0.0.1:$port/v1/servers"
p99() { awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}'; }
run_wrk() { taskset -c 1 wrk -t1 -c"$C" -d"${D}s" --latency -H "Authorization: Bearer $key" "$url"; }

taskset -c 1 wrk -t1 -c"$C" -d2s -H "Authorization: Bearer $key" "$url" > /dev/null  # warm the pool and cache
idle=$(run_wrk | tee "$work/idle.txt" | p99)

# The writers: N creates, all in flight at once, spread over the middle of the wrk run.
"$py" - "$port" "$admin" "$N" "$D" > "$work/writes.txt" 2>&1 <<'PY' & writer=$!
import asyncio, sys, time
import httpx
port, admin, n, d = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
async def main() -> None:
    await asyncio.sleep(d / 4)
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60,
                                 headers={"Authorization": f"Bearer {admin}"}) as client:
        start = time.perf_counter()
        got = await asyncio.gather(*(client.post("/v1/api-keys", json={"name": f"k{i}", "permissions": ["servers:read"]})
                                     for i in range(n)))
        took = time.perf_counter() - start
    codes: dict[int, int] = {}
    for r in got:
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
    print(f"{n} creates in {took:.2f} s, status codes {codes}")
asyncio.run(main())
PY
busy=$(run_wrk | tee "$work/busy.txt" | p99)
wait "$writer"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "writes: $(cat "$work/writes.txt")"
echo "proxied p99 idle:             ${idle} ms   ($(awk '/Requests\/sec/ {print $2}' "$work/idle.txt") req/s)"
echo "proxied p99 during $N creates: ${busy} ms   ($(awk '/Requests\/sec/ {print $2}' "$work/busy.txt") req/s)"
awk -v a="$idle" -v b="$busy" 'BEGIN {printf "ratio busy/idle: %.2f (target <= 2)\n", b / a}'

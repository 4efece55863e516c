#!/usr/bin/env bash
# CPU time per request of a proxy under wrk load: steadier than requests/s on a shared machine, since it does
# not count time the proxy spent waiting for a CPU. Used to judge each hot-path change (loadtests/RESULTS.md).
#
# Usage: loadtests/cpu_per_request.sh gateway|lean|raw [SECONDS]  (GW_LIMITER=redis works as in serve_for_bench.sh)
# The proxy runs pinned to CPU 0 (the gateway through serve_for_bench.sh, the lean and raw peers from
# ../shared/bench with compare.sh's venv, made by running compare.sh once), an nginx upstream answering
# compare.sh's JSON and wrk (-c32) on CPU 1. After a 1 s warm-up it reads the proxy's utime and stime from /proc
# around a SECONDS-long run (default 5) and prints: requests/s, CPU microseconds per request (user + system),
# the user and system parts, non-2xx count.
# Interleave them (lean, gateway, lean, gateway, ...) and compare medians. The system part includes waking wrk
# and nginx on the other CPU for each answer: a proxy that answers fewer requests a second finds them asleep
# more often, so that part shrinks as a proxy gets faster; the user part is the proxy's own work.
set -u
what=${1:?gateway, lean or raw} D=${2:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
bench=$here/../shared/bench
work=$(mktemp -d /tmp/gw-cpu.XXXXXX)
. "$here/loadtests/bench_lib.sh"
trap cleanup EXIT
up=$(free_port) port=$(free_port)
start_nginx_upstream "$up"
if [ "$what" = raw ]; then
  (cd "$bench" && exec setsid taskset -c 0 "${BENCH_VENV:-/tmp/gw-bench-venv}/bin/python" raw_peer.py "$port" "$up") \
    > "$work/log" 2>&1 & gw=$!
  key=dep_live_benchbenchbenchbenchbenchbench01
elif [ "$what" = lean ]; then
  (cd "$bench" && PEER_UPSTREAM=http://127.0.0.1:$up exec setsid taskset -c 0 "${BENCH_VENV:-/tmp/gw-bench-venv}/bin/uvicorn" \
    lean_peer:app --host 127.0.0.1 --log-level warning --no-access-log --port "$port") > "$work/log" 2>&1 & gw=$!
  key=dep_live_benchbenchbenchbenchbenchbench01
else
  GW_PORT=$port GW_UPSTREAM=http://127.0.0.1:$up GW_KEY_FILE="$work/key" setsid taskset -c 0 \
    "$here/loadtests/serve_for_bench.sh" > "$work/log" 2>&1 & gw=$!
fi
for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
if [ "$what" != gateway ]; then pid=$gw; else key=$(tr -d '[:space:]' < "$work/key"); pid=$(pgrep -n -f -- "gateway serve --config /tmp/gw-bench"); fi
url="http://127.0.0.1:$port/v1/servers"
taskset -c 1 wrk -t1 -c32 -d1s -H "Authorization: Bearer $key" "$url" > /dev/null
t0=$(awk '{print $14" "$15}' "/proc/$pid/stat")
out=$(taskset -c 1 wrk -t1 -c32 -d"${D}s" -H "Authorization: Bearer $key" "$url")
t1=$(awk '{print $14" "$15}' "/proc/$pid/stat")
n=$(echo "$out" | awk '/requests in/{print $1}')
rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
non=$(echo "$out" | awk '/Non-2xx/{print $NF}')
python3 - "$what" "$rps" "$t0" "$t1" "$n" "$(getconf CLK_TCK)" "${non:-0}" <<'PY'
import sys
what, rps, t0, t1, n, hz, non = sys.argv[1:]
(u0, s0), (u1, s1) = (map(int, t.split()) for t in (t0, t1))
per = 1e6 / int(hz) / int(n)
user, system = (u1 - u0) * per, (s1 - s0) * per
print(f"{what} rps={rps} cpu_us_per_req={user + system:.1f} user_us={user:.1f} sys_us={system:.1f} non2xx={non}")
PY

#!/usr/bin/env bash
# Profiles the gateway under wrk load with py-spy, the way compare.sh runs it (gateway on CPU 0, wrk and an
# nginx upstream on CPU 1), and prints where the CPU time goes (self and inclusive, top functions).
#
# Usage: loadtests/profile.sh [-d SECONDS] [-c CONNECTIONS] [-o OUTDIR]     (GW_LIMITER=redis works as in
#        serve_for_bench.sh). Needs nginx, wrk and py-spy (PYSPY, default /tmp/pyspy/bin/py-spy, else the venv's; install it
#        with `python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy`).
# Writes OUTDIR/profile.txt (collapsed stacks, `py-spy record --format raw`), OUTDIR/summary.txt, OUTDIR/wrk.txt
# and OUTDIR/flame.svg (a flame graph of D more seconds under the same load). summary.txt ends with the split by
# layer (loadtests/profile_split.py: server parse, ASGI, gate, upstream client, write...). The nginx upstream
# answers the same fixed JSON as compare.sh's, on a free port.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
D=15 C=32 OUT=/tmp/gw-profile
while getopts "d:c:o:" o; do case $o in d) D=$OPTARG;; c) C=$OPTARG;; o) OUT=$OPTARG;; *) sed -n '2,9p' "$0"; exit 2;; esac; done
PYSPY=${PYSPY:-/tmp/pyspy/bin/py-spy}
[ -x "$PYSPY" ] || PYSPY=$here/.venv/bin/py-spy  # the [load] extra installs it
mkdir -p "$OUT"
work=$(mktemp -d /tmp/gw-prof.XXXXXX)
. "$here/loadtests/bench_lib.sh"
trap cleanup EXIT
up=$(free_port) port=$(free_port)
start_nginx_upstream "$up"
GW_PORT=$port GW_UPSTREAM=http://127.0.0.1:$up GW_KEY_FILE="$work/key" setsid taskset -c 0 \
  "$here/loadtests/serve_for_bench.sh" > "$work/gw.log" 2>&1 & gw=$!
for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
key=$(tr -d '[:space:]' < "$work/key")
pid=$(pgrep -f -n -- "gateway serve --config $work" || true)
[ -z "$pid" ] && pid=$(pgrep -P "$gw" -n)
url="http://127.0.0.1:$port/v1/servers"
taskset -c 1 wrk -t1 -c"$C" -d2s -H "Authorization: Bearer $key" "$url" > /dev/null  # warm the pool and cache
taskset -c 1 wrk -t1 -c"$C" -d"$((2 * D + 3))s" --latency -H "Authorization: Bearer $key" "$url" > "$OUT/wrk.txt" &
wrk_pid=$!
sleep 1
"$PYSPY" record --nonblocking -r 250 -d "$D" -f raw -o "$OUT/profile.txt" -p "$pid" > /dev/null 2>&1
"$PYSPY" record --nonblocking -r 250 -d "$D" -f flamegraph -o "$OUT/flame.svg" -p "$pid" > /dev/null 2>&1
wait "$wrk_pid"
python3 - "$OUT/profile.txt" > "$OUT/summary.txt" <<'PY'
import collections, sys
self_t, incl = collections.Counter(), collections.Counter()
total = 0
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    n = int(n); total += n
    frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].split("/")[-1] + ")" if " (" in f else f
              for f in stack.split(";")]
    self_t[frames[-1]] += n
    for f in set(frames):
        incl[f] += n
print(f"samples: {total}")
print("\n-- self time (top 30) --")
for f, n in self_t.most_common(30):
    print(f"{100 * n / total:5.1f}%  {f}")
print("\n-- inclusive time (top 45) --")
for f, n in incl.most_common(45):
    print(f"{100 * n / total:5.1f}%  {f}")
PY
echo "-- split by layer (loadtests/profile_split.py) --" >> "$OUT/summary.txt"
python3 "$here/loadtests/profile_split.py" "$OUT/profile.txt" | tee -a "$OUT/summary.txt"
grep -E "Requests/sec|99%" "$OUT/wrk.txt"
echo "profile: $OUT/profile.txt  summary: $OUT/summary.txt  flame graph: $OUT/flame.svg"

#!/usr/bin/env bash
# CPU instructions per request of a proxy, counted by valgrind's callgrind: the same figure run after run
# (within ~0.5%), whatever else the machine is doing, where requests/s and even CPU time drift by 10-20% on
# these shared machines. Used to judge each hot-path change (loadtests/RESULTS.md). Counts user-space
# instructions only: system calls are not in it (compare them with `strace -c`, or cpu_per_request.sh).
#
# Usage: loadtests/instructions_per_request.sh gateway|lean|raw [N] [OUTDIR]   (GW_LIMITER=redis works as in
#        serve_for_bench.sh; the lean and raw peers need compare.sh's venv, made by running compare.sh once)
# The proxy runs under callgrind on CPU 0 with instrumentation off; after 300 warm-up requests it is switched
# on for exactly N requests (default 2000, 32 connections, fixed_requests.py on CPU 1, an nginx upstream
# answering compare.sh's JSON), then off. Prints: requests, instructions, instructions per request, non-2xx.
# With OUTDIR the callgrind file is kept there (callgrind_annotate OUTDIR/callgrind.out.* shows where).
# Needs valgrind (Debian package) and nginx. A run takes about a minute.
set -u
what=${1:?gateway, lean or raw} N=${2:-2000} keep=${3:-}
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/gw-instr.XXXXXX)
. "$here/loadtests/bench_lib.sh"
trap cleanup EXIT
command -v valgrind > /dev/null || { echo "instructions_per_request.sh: valgrind is missing (apt-get install -y valgrind)"; exit 2; }
up=$(free_port) port=$(free_port)
start_nginx_upstream "$up"
vg=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$work/callgrind.out")
if [ "$what" = raw ]; then
  (cd "$here/../shared/bench" && exec setsid taskset -c 0 "${vg[@]}" "${BENCH_VENV:-/tmp/gw-bench-venv}/bin/python" \
    raw_peer.py "$port" "$up") > "$work/log" 2>&1 & gw=$!
  key=dep_live_benchbenchbenchbenchbenchbench01
elif [ "$what" = lean ]; then
  (cd "$here/../shared/bench" && PEER_UPSTREAM=http://127.0.0.1:$up exec setsid taskset -c 0 "${vg[@]}" \
    "${BENCH_VENV:-/tmp/gw-bench-venv}/bin/python" -m uvicorn lean_peer:app --host 127.0.0.1 --log-level warning \
    --no-access-log --port "$port") > "$work/log" 2>&1 & gw=$!
  key=dep_live_benchbenchbenchbenchbenchbench01
else
  # serve_for_bench.sh runs "$GW_PYTHON -m gateway ..." for the CLI and the server: only the server runs under
  # callgrind.
  printf '#!/usr/bin/env bash\ncase " $* " in *" serve "*) exec %s %s "$@";; *) exec %s "$@";; esac\n' \
    "${vg[*]}" "$here/.venv/bin/python" "$here/.venv/bin/python" > "$work/python"
  chmod +x "$work/python"
  GW_PYTHON=$work/python GW_PORT=$port GW_UPSTREAM=http://127.0.0.1:$up GW_KEY_FILE="$work/key" setsid \
    taskset -c 0 "$here/loadtests/serve_for_bench.sh" > "$work/log" 2>&1 & gw=$!
fi
for _ in $(seq 1200); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
[ "$what" = lean ] || [ "$what" = raw ] || key=$(tr -d '[:space:]' < "$work/key")
pid=$(pgrep -n -f -- "callgrind-out-file=$work/") || { echo "the proxy did not start:"; tail -5 "$work/log"; exit 1; }
load() { taskset -c 1 python3 "$here/loadtests/fixed_requests.py" 127.0.0.1 "$port" "$key" "$1" 32; }
load 300 > /dev/null
callgrind_control -i on "$pid" > /dev/null 2>&1
set -- $(load "$N")
callgrind_control -i off "$pid" > /dev/null 2>&1
callgrind_control -d "$pid" > /dev/null 2>&1
sleep 1
ir=$(cat "$work"/callgrind.out* | awk '/^(summary|totals):/{s+=$2} END{print s+0}')
echo "$what requests=$1 instructions=$ir per_request=$((ir / $1)) non2xx=$2"
if [ -n "$keep" ]; then mkdir -p "$keep" && cp "$work"/callgrind.out* "$keep"/; fi

#!/usr/bin/env bash
# nginx + auth_request to the gateway (forward-auth) against the gateway as the reverse proxy, on the loopback
# harness of ../shared/bench/compare.sh: the Python process (the gateway) pinned to CPU 0; wrk and nginx (the
# fixed-JSON upstream and, for forward-auth, the front proxy) on CPU 1.
#
# Usage: loadtests/forward_auth_bench.sh [-d SECONDS] [-c CONNECTIONS] [-r ROUNDS]      (default -d 8 -c 32 -r 2)
# Contenders, interleaved round by round, each preceded by a 1 s warm-up:
#   gateway   wrk -> gateway -> upstream                          (the gateway as the reverse proxy)
#   fwd-auth  wrk -> nginx -(auth_request)-> gateway; nginx -> upstream
#             (the nginx configuration of docs/forward-auth.md, read from the page, addresses replaced)
#   fwd-nokeep  the same without `keepalive` to the gateway (a new connection per auth request)
# One gateway process serves all of it (loadtests/serve_for_bench.sh: SQLite store, in-memory limits, the "bench"
# tier checked on every request, access line and metrics on), with trusted_proxies 127.0.0.1 so that nginx may
# ask. Prints per round: rps, p50, p99, non-2xx, and the gateway's CPU microseconds per request (utime+stime
# from /proc); then the medians, the ratios to the gateway alone, and the load average before and after.
# Needs nginx and wrk (apt-get install -y nginx wrk). Loopback only; everything it starts is stopped on exit.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
D=8 C=32 R=2
while getopts "d:c:r:" o; do case $o in
  d) D=$OPTARG;; c) C=$OPTARG;; r) R=$OPTARG;; *) sed -n '2,17p' "$0"; exit 2;; esac; done
for tool in nginx wrk taskset python3; do
  command -v $tool >/dev/null || { echo "forward_auth_bench.sh: $tool is missing (apt-get install -y nginx wrk)"; exit 2; }
done
work=$(mktemp -d /tmp/gw-fwd-bench.XXXXXX)
. "$here/loadtests/bench_lib.sh"
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

up=$(free_port) front=$(free_port) nokeep=$(free_port) port=$(free_port)
# The documented server block twice (with and without keep-alive to the gateway), after a fixed-JSON upstream.
python3 - "$here/docs/forward-auth.md" "$work/nginx.conf" "$work" "$up" "$front" "$nokeep" "$port" <<'PY'
import re, sys
doc, out, work, up, front, nokeep, gw = sys.argv[1:]
(block,) = [b for b in re.findall(r"```nginx\n(.*?)```", open(doc).read(), re.S) if "auth_request " in b]
def server(listen: str, keepalive: bool, suffix: str) -> str:
    text = (block.replace("listen 80;", f"listen 127.0.0.1:{listen};").replace("127.0.0.1:9000", f"127.0.0.1:{up}")
            .replace("127.0.0.1:8080", f"127.0.0.1:{gw}").replace("upstream api ", f"upstream api{suffix} ")
            .replace("upstream gateway ", f"upstream gateway{suffix} ").replace("http://api;", f"http://api{suffix};")
            .replace("http://gateway/", f"http://gateway{suffix}/"))
    if not keepalive:
        text = text.replace(f"upstream gateway{suffix} {{ server 127.0.0.1:{gw}; keepalive 32; }}",
                            f"upstream gateway{suffix} {{ server 127.0.0.1:{gw}; }}")
        assert "keepalive 32; }\n" in text and text.count("keepalive 32;") == 1, "the doc's upstream lines changed"
    return text
body = '{"servers":[{"id":"srv_1","name":"web-1","status":"running","region":"eu-west"},{"id":"srv_2","name":"db-1","status":"running","region":"eu-west"}]}'
open(out, "w").write(f"""worker_processes 1; daemon on; pid {work}/nginx.pid; error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{up}; location / {{ default_type application/json; return 200 '{body}'; }} }}
{server(front, True, "")}
{server(nokeep, False, "_nokeep")}
}}
""")
PY
[ $? -eq 0 ] || exit 2
GATEWAY_TRUSTED_PROXIES=127.0.0.1/32 GW_PORT=$port GW_UPSTREAM=http://127.0.0.1:$up GW_KEY_FILE="$work/key" \
  setsid taskset -c 0 "$here/loadtests/serve_for_bench.sh" > "$work/gateway.log" 2>&1 & gw=$!
for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
[ -s "$work/key" ] || { echo "forward_auth_bench.sh: the gateway did not start"; tail -5 "$work/gateway.log"; exit 2; }
taskset -c 1 nginx -c "$work/nginx.conf" || { echo "forward_auth_bench.sh: nginx did not start"; exit 2; }
key=$(tr -d '[:space:]' < "$work/key")
pid=$(pgrep -P "$gw" -f "gateway serve" | head -1)
[ -n "$pid" ] || { echo "forward_auth_bench.sh: cannot find the gateway's pid"; exit 2; }

run() {  # name url -> prints "rps p50 p99 non2xx cpu_us_per_req"
  taskset -c 1 wrk -t1 -c"$C" -d1s -H "Authorization: Bearer $key" "$2" > /dev/null
  local t0 t1 out
  t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  out=$(taskset -c 1 wrk -t1 -c"$C" -d"${D}s" --latency -H "Authorization: Bearer $key" "$2" 2>&1)
  t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  echo "$out" | awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" '
     /requests in/{n=$1} /Requests\/sec/{r=$2} $1=="50%"{p50=$2} $1=="99%"{p99=$2} /Non-2xx/{x=$NF}
     END{printf "%s %s %s %d %.0f\n", r+0, p50, p99, x+0, (n ? t / hz / n * 1e6 : 0)}'
}
res="$work/results"; : > "$res"
for r in $(seq "$R"); do
  for name in gateway fwd-auth fwd-nokeep; do
    case $name in
      gateway) url=http://127.0.0.1:$port/v1/servers;;
      fwd-auth) url=http://127.0.0.1:$front/v1/servers;;
      fwd-nokeep) url=http://127.0.0.1:$nokeep/v1/servers;;
    esac
    set -- $(run "$name" "$url")
    printf "round %s  %-10s rps=%-9s p50=%-8s p99=%-8s non2xx=%-4s gateway_cpu_us_per_req=%s\n" "$r" "$name" "$1" "$2" "$3" "$4" "$5"
    echo "$name $1 $4" >> "$res"
  done
done
python3 - "$res" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = {n: statistics.median(float(r[1]) for r in rows if r[0] == n) for n in dict.fromkeys(r[0] for r in rows)}
print("median rps: " + ", ".join(f"{n}={v:.0f}" for n, v in med.items()))
for n in ("fwd-auth", "fwd-nokeep"):
    if med.get("gateway"):
        print(f"{n}/gateway = {med[n] / med['gateway']:.2f}")
bad = sorted({r[0] for r in rows if int(r[2]) > 0})
if bad:
    print("WARNING: non-2xx answers from: " + ", ".join(bad) + " (a figure with errors does not count)")
PY
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

#!/usr/bin/env bash
# The realistic mix of loadtests/locustfile.py in one command, on loopback: the demo upstream, a gateway on a
# fresh SQLite store, the three keys of make_keys.sh, then locust headless; prints locust's summary and the
# load average, and stops everything it started (its temp directory, keys included, is removed).
#
# Usage: loadtests/locust.sh [-u USERS] [-t SECONDS]        (defaults: 50 users for 40 s; at most 500 and 600)
# The gateway's config is the product default but for two settings a long run from one address needs:
#   rate_limits.tiers.high_volume sized for load (10^8 an hour, 10^7 a minute): left at its default (1,000 a
#     minute) it is spent within a second at locust's rate and every read becomes a 429 failure;
#   limits.auth_failures_per_minute 0: the invalid keys of the mix would otherwise lock the address out
#     (429 too_many_failed_attempts for every request, valid keys included).
# Exit status: locust's (1 when a request failed: a 5xx, a timeout or an unexpected status).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py=${GW_PYTHON:-$here/.venv/bin/python}
locust=${LOCUST:-$(dirname "$py")/locust}
U=50 T=40
while getopts "u:t:" o; do case $o in u) U=$OPTARG;; t) T=$OPTARG;; *) sed -n '2,12p' "$0"; exit 2;; esac; done
case $U$T in *[!0-9]*|'') echo "locust.sh: -u and -t take whole numbers" >&2; exit 2;; esac
[ "$U" -ge 1 ] && [ "$U" -le 500 ] || { echo "locust.sh: -u must be 1 to 500 users, not $U" >&2; exit 2; }
[ "$T" -ge 1 ] && [ "$T" -le 600 ] || { echo "locust.sh: -t must be 1 to 600 seconds, not $T" >&2; exit 2; }
[ -x "$locust" ] || { echo "locust.sh: no locust at $locust (pip install -e '.[load]', or set LOCUST)" >&2; exit 2; }
work=$(mktemp -d /tmp/gw-locust.XXXXXX)
up_pid="" gw_pid=""
cleanup() {
  trap - EXIT INT TERM
  for pid in $gw_pid $up_pid; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {  # PORT PID NAME LOG
  for _ in $(seq 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "locust.sh: the $3 exited; its log:" >&2; tail -5 "$4" >&2; exit 1; }
    sleep 0.1
  done
  echo "locust.sh: the $3 did not listen on 127.0.0.1:$1 within 15 s" >&2; exit 1
}
up=$(free_port) port=$(free_port)
cat > "$work/config.yaml" <<YAML
listen: {host: 127.0.0.1, port: $port}
upstream: {url: "http://127.0.0.1:$up"}
store: {url: "sqlite:///$work/keys.db"}
secret_file: $work/gateway.secret
policies: $here/policies/deployerp.yaml
limits: {auth_failures_per_minute: 0}
rate_limits: {tiers: {high_volume: {per_hour: 100000000, per_minute: 10000000}}}
YAML
"$py" -m gateway.demo.upstream --host 127.0.0.1 --port "$up" > "$work/upstream.log" 2>&1 & up_pid=$!
GATEWAY_LOAD_KEYS=$work/keys.json "$here/loadtests/make_keys.sh" --config "$work/config.yaml" > "$work/keys.log" 2>&1 \
  || { echo "locust.sh: make_keys.sh failed:" >&2; tail -5 "$work/keys.log" >&2; exit 1; }
"$py" -m gateway serve --config "$work/config.yaml" > "$work/gateway.log" 2>&1 & gw_pid=$!
wait_port "$up" "$up_pid" "demo upstream" "$work/upstream.log"
wait_port "$port" "$gw_pid" gateway "$work/gateway.log"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $U users for $T s against 127.0.0.1:$port"
set +e
GATEWAY_LOAD_KEYS=$work/keys.json "$locust" -f "$here/loadtests/locustfile.py" --headless -u "$U" \
  -r "$(( U < 10 ? U : 10 ))" -t "${T}s" --stop-timeout 5 --host "http://127.0.0.1:$port" --only-summary \
  2>&1 | grep -v -e '^\[20'
status=${PIPESTATUS[0]}
set -e
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
exit "$status"

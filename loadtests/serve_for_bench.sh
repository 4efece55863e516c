#!/usr/bin/env bash
# Starts the gateway in the foreground the way ../shared/bench/compare.sh -g expects:
#   listens on 127.0.0.1:$GW_PORT, proxies to $GW_UPSTREAM, and writes one valid key to $GW_KEY_FILE first.
# The key holds servers:read, an IP allowlist that matches (127.0.0.0/8) and the "bench" rate-limit tier: a limit
# that is checked on every request (the GCRA update and the X-RateLimit-* headers are on the hot path) but is
# never reached (10^8 an hour, 10^7 a minute). Everything else is the product default, so access logging and
# metrics are whatever `gateway serve` does out of the box.
#
#   (default)         store: a fresh SQLite file; limiter: in memory (the default for a SQLite store).
#   GW_LIMITER=redis  store and limiter on a private redis-server started on a free loopback port, pinned to
#                     CPU $GW_REDIS_CPU (default 1, beside wrk and nginx, so the gateway keeps CPU 0 to itself
#                     as it would with Redis on another host); it is stopped on exit.
#   GW_SERVER=uvicorn (default) `gateway serve`: uvicorn with the gateway's guarded protocol, the shipped transport.
#   GW_SERVER=granian the same app and config on granian's ASGI interface, one worker, one runtime thread
#                     (loadtests/granian_app.py). For comparison only: granian has no guarded protocol, so the
#                     raw-target, HTTP-version, head-size and head-deadline checks of gateway/doors/proxy/protocol.py
#                     are not there (loadtests/RESULTS.md, "Transports").
#
# The script does not exec the gateway: it waits for it, and on SIGTERM/SIGINT (compare.sh kills the whole
# process group after each round) it stops the gateway, then redis-server, then removes its temp directory, so
# nothing outlives a round. compare.sh waits for this script, so the next round starts on a clean machine.
# Example: ../shared/bench/compare.sh -d 8 -c 32 -r 3 -g 'exec loadtests/serve_for_bench.sh'
#          ../shared/bench/compare.sh -d 8 -c 32 -r 3 -g 'GW_LIMITER=redis exec loadtests/serve_for_bench.sh'
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py=${GW_PYTHON:-$here/.venv/bin/python}
: "${GW_PORT:?}" "${GW_UPSTREAM:?}" "${GW_KEY_FILE:?}"
case ${GW_SERVER:=uvicorn} in uvicorn|granian) ;;
  *) echo "serve_for_bench.sh: GW_SERVER must be uvicorn or granian, not ${GW_SERVER}" >&2; exit 2 ;; esac
work=$(mktemp -d /tmp/gw-bench.XXXXXX)
gw_pid="" redis_pid=""
cleanup() {
  trap - EXIT INT TERM
  if [ -n "$gw_pid" ]; then kill -TERM "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; fi
  if [ -n "$redis_pid" ]; then kill -TERM "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
  # granian's worker process can still be writing its last usage flush into the store when its parent has
  # exited (the whole group got the signal at once): try again until the directory is really gone.
  for _ in 1 2 3 4 5 6 7 8 9 10; do rm -rf "$work" 2>/dev/null; [ -e "$work" ] || break; sleep 0.2; done
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

if [ "${GW_LIMITER:-memory}" = redis ]; then
  rport=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  taskset -c "${GW_REDIS_CPU:-1}" redis-server --bind 127.0.0.1 --port "$rport" --save "" --appendonly no \
    --dir "$work" --logfile "$work/redis.log" & redis_pid=$!
  for _ in $(seq 100); do redis-cli -p "$rport" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
  store="redis://127.0.0.1:$rport/0"
else
  store="sqlite:///$work/keys.db"
fi
. "$here/loadtests/bench_config.sh"
bench_config "$GW_PORT" "$GW_UPSTREAM" "$store"
bench_key bench servers:read > "$work/key"
mv "$work/key" "$GW_KEY_FILE"  # whole, before the port opens
case $GW_SERVER in
  uvicorn) "$py" -m gateway serve --config "$work/config.yaml" & gw_pid=$! ;;
  granian)
    # The nearest granian has to the guarded protocol's limits.max_connections and header_timeout_seconds.
    GATEWAY_SERVE_CONFIG="$work/config.yaml" "$(dirname "$py")/granian" --interface asgi --factory \
      --working-dir "$here/loadtests" --host 127.0.0.1 --port "$GW_PORT" --workers 1 --runtime-threads 1 \
      --loop uvloop --http 1 --no-ws --backpressure 1024 --http1-header-read-timeout 10000 \
      --log-level warning --no-access-log granian_app:app & gw_pid=$! ;;
esac
wait "$gw_pid"

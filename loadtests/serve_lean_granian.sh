#!/usr/bin/env bash
# The shared harness's lean peer (../shared/bench/lean_peer.py: pure ASGI + aiohttp client, dict key check) on
# granian instead of uvicorn, started the way ../shared/bench/compare.sh -g expects (GW_PORT, GW_UPSTREAM,
# GW_KEY_FILE; the peer's one static key is written to GW_KEY_FILE). granian runs as serve_for_bench.sh runs it
# with GW_SERVER=granian: one worker, one runtime thread, uvloop, HTTP/1 only.
# Example: ../shared/bench/compare.sh -d 8 -r 3 -n lean,gateway -g 'exec loadtests/serve_lean_granian.sh'
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py=${GW_PYTHON:-$here/.venv/bin/python}
# The harness sits beside the repository (../shared/bench), or two levels up from a worktree in /work/wt/NAME.
bench=${GW_BENCH_DIR:-$here/../shared/bench}
[ -d "$bench" ] || bench=$here/../../shared/bench
: "${GW_PORT:?}" "${GW_UPSTREAM:?}" "${GW_KEY_FILE:?}"
[ -f "$bench/lean_peer.py" ] || { echo "serve_lean_granian.sh: no lean_peer.py in $bench (set GW_BENCH_DIR)" >&2; exit 2; }
echo dep_live_benchbenchbenchbenchbenchbench01 > "$GW_KEY_FILE"
PEER_UPSTREAM=$GW_UPSTREAM exec "$(dirname "$py")/granian" --interface asgi --working-dir "$bench" \
  --host 127.0.0.1 --port "$GW_PORT" --workers 1 --runtime-threads 1 --loop uvloop --http 1 --no-ws \
  --log-level warning --no-access-log lean_peer:app

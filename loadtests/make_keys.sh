#!/usr/bin/env bash
# Creates the three keys loadtests/locustfile.py uses and writes them to loadtests/keys.json (mode 600).
# Usage: loadtests/make_keys.sh [--config config.yaml]   (the same config the gateway under test runs with)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
gw=${GATEWAY_BIN:-$here/.venv/bin/gateway}
out=${GATEWAY_LOAD_KEYS:-$here/loadtests/keys.json}
value() { "$gw" keys create "$@" --json | "$here/.venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["value"])'; }
read=$(value --name load-read --permissions servers:read,instances:read,backups:read --tier high_volume "${@}")
write=$(value --name load-write --permissions servers:read,instances:* --tier high_volume "${@}")
limited=$(value --name load-limited --permissions servers:read --tier limited "${@}")
umask 077
printf '{"read": "%s", "write": "%s", "limited": "%s"}\n' "$read" "$write" "$limited" > "$out"
echo "wrote $out"

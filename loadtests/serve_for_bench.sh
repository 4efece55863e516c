#!/usr/bin/env bash
# Starts the gateway in the foreground the way ../shared/bench/compare.sh -g expects:
#   listens on 127.0.0.1:$GW_PORT, proxies to $GW_UPSTREAM, and writes one valid key to $GW_KEY_FILE first.
# The key holds servers:read and an IP allowlist that matches (127.0.0.0/8); the store is a fresh SQLite file.
# Example: ../shared/bench/compare.sh -d 8 -c 32 -r 3 -g 'exec loadtests/serve_for_bench.sh'
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py=${GW_PYTHON:-$here/.venv/bin/python}
work=$(mktemp -d /tmp/gw-bench.XXXXXX)
cat > "$work/config.yaml" <<YAML
listen: {host: 127.0.0.1, port: ${GW_PORT:?}}
upstream: {url: "${GW_UPSTREAM:?}"}
store: {url: "sqlite:///$work/keys.db"}
policies: $here/policies/deployerp.yaml
YAML
"$py" -m gateway keys create --config "$work/config.yaml" --name bench --permissions servers:read \
  --allow-ip 127.0.0.0/8 --json | "$py" -c 'import json,sys; print(json.load(sys.stdin)["value"])' > "${GW_KEY_FILE:?}"
exec "$py" -m gateway serve --config "$work/config.yaml"

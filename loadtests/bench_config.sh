# Shared by serve_for_bench.sh and admin_writes_p99.sh (source it; it expects $work, $here and $py).
# bench_config PORT UPSTREAM STORE: writes $work/config.yaml, the gateway the benchmarks run: the shipped deployERP
#   policy, a secret file in $work and the "bench" tier (checked on every request, never reached).
# bench_key NAME PERMISSIONS: creates a key on that tier, allowed from 127.0.0.0/8, and prints its value.
bench_config() {
  cat > "$work/config.yaml" <<YAML
listen: {host: 127.0.0.1, port: $1}
upstream: {url: "$2"}
store: {url: "$3"}
secret_file: $work/gateway.secret
policies: $here/policies/deployerp.yaml
rate_limits:
  tiers:
    bench: {per_hour: 100000000, per_minute: 10000000}
YAML
}
bench_key() {
  "$py" -m gateway keys create --config "$work/config.yaml" --name "$1" --permissions "$2" \
    --allow-ip 127.0.0.0/8 --tier bench --json | "$py" -c 'import json,sys; print(json.load(sys.stdin)["value"])'
}

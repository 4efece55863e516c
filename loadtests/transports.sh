#!/usr/bin/env bash
# The gateway on uvicorn and on granian, the lean peer on both, nginx and the raw peer: one command, runs
# interleaved, medians written to the data file that loadtests/plot_results.py draws.
#
# Usage: loadtests/transports.sh [-d SECONDS] [-r ROUNDS] [-o CSV]      (from the repository root)
#   Each round runs ../shared/bench/compare.sh three times, -r 1 each:
#     -n nginx,raw,lean,gateway   gateway: serve_for_bench.sh (uvicorn, the shipped transport)
#     -n lean,gateway             gateway: GW_SERVER=granian serve_for_bench.sh
#     -n lean,gateway             gateway: serve_lean_granian.sh (the lean peer on granian)
#   so every transport meets the same machine in every round. It prints compare.sh's lines, then per contender
#   the median rps, p50 and p99 over all rounds, the ratios (of those medians, and per compare.sh call against
#   the lean peer on uvicorn of the same call, which cancels the drift between calls), and the load average
#   before and after; -o FILE writes those figures as CSV (loadtests/results.csv is the file RESULTS.md and
#   plot_results.py show; - is stdout). The lean peer on uvicorn runs in every compare.sh call: its figures pool
#   all of them.
#   GW_LIMITER=redis is passed to both gateway runs. Needs nginx, wrk (see ../shared/bench/README.md).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bench=${GW_BENCH_DIR:-$here/../shared/bench}
[ -d "$bench" ] || bench=$here/../../shared/bench
D=8 R=3 OUT=""
while getopts "d:r:o:" o; do case $o in d) D=$OPTARG;; r) R=$OPTARG;; o) OUT=$OPTARG;; *) sed -n '2,16p' "$0"; exit 2;; esac; done
[ -x "$bench/compare.sh" ] || { echo "transports.sh: no compare.sh in $bench (set GW_BENCH_DIR)" >&2; exit 2; }
cd "$here"
log=$(mktemp /tmp/gw-transports.XXXXXX)
trap 'rm -f "$log" "$log.one"' EXIT
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# Uncommitted changes to what is measured (the data file and its plot aside) are named in the commit column.
[ -n "$(git status --porcelain -- gateway loadtests ':!loadtests/results.*' 2>/dev/null)" ] && commit="$commit+changes"
for r in $(seq "$R"); do
  for server in uvicorn granian lean-granian; do
    case $server in
      uvicorn) names=nginx,raw,lean,gateway gw='exec loadtests/serve_for_bench.sh';;
      granian) names=lean,gateway gw='GW_SERVER=granian exec loadtests/serve_for_bench.sh';;
      lean-granian) names=lean,gateway gw='exec loadtests/serve_lean_granian.sh';;
    esac
    echo "== round $r: gateway slot = $server"
    if ! "$bench/compare.sh" -d "$D" -c 32 -r 1 -n "$names" -g "$gw" | tee "$log.one"; then
      echo "transports.sh: compare.sh failed (its message is above); nothing written" >&2; exit 1
    fi
    sed "s/^/$server $r /" "$log.one" >> "$log"
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$log" "$load_before" "$load_after" "$commit" "${OUT}" <<'PY'
import csv, re, statistics, sys, time
log, before, after, commit, out = sys.argv[1:6]
UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}
LABEL = {("uvicorn", "gateway"): ("gateway", "uvicorn"), ("granian", "gateway"): ("gateway", "granian"),
         ("lean-granian", "gateway"): ("lean", "granian")}
rows: dict[tuple[str, str], list[tuple[float, float, float, int]]] = {}
pat = re.compile(r"^(\S+) (\d+) round \d+\s+(\S+)\s+rps=(\S+)\s+p50=(\S+)\s+p99=(\S+)\s+non2xx=(\d+)")
calls: dict[tuple[str, str], dict[tuple[str, str], float]] = {}  # (slot, round) -> rps of each contender
def ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m[1]) * UNIT[m[2]] if m else float("nan")
for line in open(log):
    m = pat.match(line)
    if not m:
        continue
    slot, name = m[1], m[3]
    key = LABEL.get((slot, name), (name, {"nginx": "nginx", "raw": "uvloop"}.get(name, "uvicorn")))
    rows.setdefault(key, []).append((float(m[4]), ms(m[5]), ms(m[6]), int(m[7])))
    calls.setdefault((slot, m[2]), {})[key] = float(m[4])
if not rows:
    sys.exit("transports.sh: compare.sh printed no rounds (see its lines above)")
med = {k: (statistics.median(v[0] for v in vs), statistics.median(v[1] for v in vs),
           statistics.median(v[2] for v in vs), sum(v[3] for v in vs), len(vs)) for k, vs in rows.items()}
print(f"\nload average before {before}, after {after}; commit {commit}")
print(f"{'contender':10} {'server':8} {'rounds':>6} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} non2xx")
for (name, server), (rps, p50, p99, bad, n) in med.items():
    print(f"{name:10} {server:8} {n:>6} {rps:>9.0f} {p50:>8.2f} {p99:>8.2f} {bad}")
def ratio(a, b):
    if a in med and b in med and med[b][0]:
        print(f"{a[0]}({a[1]}) / {b[0]}({b[1]}) = {med[a][0] / med[b][0]:.2f}")
gw_u, gw_g, lean_u, lean_g = ("gateway", "uvicorn"), ("gateway", "granian"), ("lean", "uvicorn"), ("lean", "granian")
print("medians over all calls:")
for a, b in ((gw_g, gw_u), (lean_g, lean_u), (gw_u, lean_u), (gw_g, lean_u), (gw_u, ("nginx", "nginx")),
             (gw_u, ("raw", "uvloop"))):
    ratio(a, b)
# The machine drifts between compare.sh calls more than within one: each contender against the lean peer on
# uvicorn of the same call cancels that drift; the transports are then compared through those ratios.
same: dict[tuple[str, str], list[float]] = {}
for figures in calls.values():
    for key, rps in figures.items():
        if lean_u in figures and figures[lean_u]:
            same.setdefault(key, []).append(rps / figures[lean_u])
vs_lean = {k: statistics.median(v) for k, v in same.items()}
print("against the lean peer on uvicorn in the same compare.sh call (median; each call):")
for key, values in same.items():
    if key != lean_u:
        print(f"  {key[0]}({key[1]}) = {vs_lean[key]:.2f}  [{' '.join(f'{v:.2f}' for v in values)}]")
if gw_g in vs_lean and gw_u in vs_lean:
    print(f"  so gateway(granian) / gateway(uvicorn) = {vs_lean[gw_g] / vs_lean[gw_u]:.2f}")
if any(m[3] for m in med.values()):
    print("WARNING: non-2xx answers: a figure with errors does not count")
if out:
    day = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    fh = sys.stdout if out == "-" else open(out, "w", newline="")
    w = csv.writer(fh, lineterminator="\n")
    w.writerow(["contender", "server", "rps", "p50_ms", "p99_ms", "vs_lean_same_call", "rounds", "load_avg",
                "measured", "commit"])
    for (name, server), (rps, p50, p99, bad, n) in med.items():
        rel = vs_lean.get((name, server))
        w.writerow([name, server, f"{rps:.0f}", f"{p50:.2f}", f"{p99:.2f}", "" if rel is None else f"{rel:.2f}", n,
                    f"{before.split()[0]}-{after.split()[0]}", day, commit])
    if fh is not sys.stdout:
        fh.close()
        print(f"wrote {out}")
PY

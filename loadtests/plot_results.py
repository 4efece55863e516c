"""Draws loadtests/results.csv (written by loadtests/transports.sh) as the PNG that loadtests/RESULTS.md shows.

    .venv/bin/python loadtests/plot_results.py [--data loadtests/results.csv] [--out loadtests/results.png]

Two panels side by side, one bar per contender and server (the transport it ran on), coloured by server, each
bar labelled with its value: requests/s (log scale: nginx and the raw peer are ten times the Python proxies)
and p99 latency in ms. The title carries the measurement's date, commit and load average, from the file.
Needs matplotlib (the ``load`` extra).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLUMNS = ("contender", "server", "rps", "p50_ms", "p99_ms", "rounds", "load_avg", "measured", "commit")
COLOURS = {"nginx": "#4d4d4d", "uvloop": "#8c6bb1", "uvicorn": "#2b8cbe", "granian": "#e6550d"}
# Bars in this order (the references first, then each Python proxy on its servers side by side); others after.
ORDER = ("nginx", "raw", "lean", "gateway")


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of the data file, checked: every column present, the figures numbers."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: no rows")
    for n, row in enumerate(rows, start=2):
        for column in ("rps", "p50_ms", "p99_ms"):
            try:
                float(row[column])
            except ValueError:
                raise ValueError(f"{path}, line {n}: {column} is {row[column]!r}, not a number") from None
    return rows


def plot(rows: list[dict[str, str]], out: Path) -> None:
    """Write the two-panel PNG of ``rows`` to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: (ORDER.index(r["contender"]) if r["contender"] in ORDER else len(ORDER),
                                       list(COLOURS).index(r["server"]) if r["server"] in COLOURS else 0))
    labels = [f"{r['contender']}\n{r['server']}" for r in rows]
    colours = [COLOURS.get(r["server"], "#999999") for r in rows]
    fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for ax, column, title, fmt in ((ax_rps, "rps", "requests/s (higher is better, log scale)", "{:,.0f}"),
                                   (ax_p99, "p99_ms", "p99 latency, ms (lower is better)", "{:.1f}")):
        values = [float(r[column]) for r in rows]
        bars = ax.bar(labels, values, color=colours)
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], fontsize=8, padding=2)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.margins(y=0.15)
    ax_rps.set_yscale("log")
    ax_rps.set_ylim(bottom=1000)  # a fixed floor, so bar heights compare the same way from one plot to the next
    first = rows[0]
    fig.suptitle(f"Proxying GET /v1/servers, 32 connections, loopback; {first['measured']}, commit "
                 f"{first['commit']}, load average {first['load_avg']} (before-after)", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / "results.csv")
    parser.add_argument("--out", type=Path, default=HERE / "results.png")
    args = parser.parse_args(argv)
    try:
        rows = read_rows(args.data)
    except (OSError, ValueError) as exc:
        print(f"plot_results.py: {exc}", file=sys.stderr)
        return 2
    plot(rows, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

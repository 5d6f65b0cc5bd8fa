#!/usr/bin/env python3
"""Draws the latency percentile curves of the benchmark runs.

Usage: plot.py OUT.png CSV...

Each CSV is what `tally-bench … --percentiles-csv` writes: a header
`series,percentile,ms` and one row per (series, percentile); percentile 100
is the maximum. Every series becomes one curve: latency (ms, log scale)
against the percentile on a "nines" axis (50, 90, 99, 99.9, max), so the
tail is as readable as the median.
"""

import csv
import math
import sys
from collections import OrderedDict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Where the maximum is drawn on the nines axis (a bit past 99.9).
MAX_AT = 99.97


def nines(p):
    """50 -> 0.3, 90 -> 1, 99 -> 2, 99.9 -> 3."""
    return -math.log10(1.0 - min(p, MAX_AT) / 100.0)


def read(paths):
    series = OrderedDict()
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                name = row["series"]
                series.setdefault(name, []).append(
                    (float(row["percentile"]), float(row["ms"]))
                )
    return series


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, paths = sys.argv[1], sys.argv[2:]
    series = read(paths)
    if not series:
        sys.exit("no data in " + ", ".join(paths))
    fig, ax = plt.subplots(figsize=(10, 6), dpi=120)
    for name, points in series.items():
        points.sort()
        xs = [nines(p) for p, _ in points]
        ys = [max(ms, 0.01) for _, ms in points]
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.6, label=name)
    ax.set_yscale("log")
    ticks = [50, 90, 99, 99.9, 100]
    ax.set_xticks([nines(p) for p in ticks])
    ax.set_xticklabels(["p50", "p90", "p99", "p99.9", "max"])
    ax.set_xlim(nines(0.5), nines(100) + 0.15)
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title("Tally benchmarks: latency percentiles")
    ax.grid(True, which="major", alpha=0.5)
    ax.grid(True, which="minor", alpha=0.15)
    ax.axhline(10, color="grey", linestyle=":", linewidth=1)
    ax.text(nines(1), 10, " 10 ms (query p99 target)", va="bottom", color="grey", fontsize=8)
    ax.axhline(100, color="grey", linestyle=":", linewidth=1)
    ax.text(nines(1), 100, " 100 ms (lag p99 target)", va="bottom", color="grey", fontsize=8)
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Per-kernel device time of one decode step, from Nsight Compute's CSV.

Run longctx-bench under ncu with the capture range around one step:

    ncu --profile-from-start off --clock-control none --csv \
        --metrics gpu__time_duration.sum longctx-bench ... --profile_step > step.csv
    tools/bench/profile_decode_step.py step.csv

Prints one row per kernel name (launches, total and mean microseconds) and the
sum, which excludes the gaps between kernels: compare it with the step time the
bench reports to see what the launches and host work cost.
"""
import collections
import csv
import sys


def main():
    rows = []
    with open(sys.argv[1], newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "ns")
        scale = {"ns": 1e-3, "nsecond": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3}.get(unit, 1e-3)
        name = r["Kernel Name"].split("(")[0]
        rows.append((name, value * scale))
    by = collections.OrderedDict()
    for name, us in rows:
        n, t = by.get(name, (0, 0.0))
        by[name] = (n + 1, t + us)
    total = sum(t for _, t in by.values())
    print(f"| kernel | launches | total us | mean us | share |")
    print(f"|---|---:|---:|---:|---:|")
    for name, (n, t) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        print(f"| {name[:70]} | {n} | {t:.1f} | {t / n:.2f} | {100 * t / total:.1f}% |")
    print(f"| all | {len(rows)} | {total:.1f} | {total / max(len(rows), 1):.2f} | 100% |")


if __name__ == "__main__":
    main()

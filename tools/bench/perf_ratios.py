#!/usr/bin/env python3
"""Ratios longctx / transformers from the tables of run_perf_h200.sh: prefill
tok/s and batch-1 decode tok/s (longctx with step graphs on) per model and
context. Reads OUTDIR/default.md, OUTDIR/7b.md and OUTDIR/hf.md; prints a
Markdown table; cells missing on either side stay empty.

  python3 tools/bench/perf_ratios.py OUTDIR
"""
import os
import sys


def rows(path, section=None):
    """Markdown table rows of a file as lists of cells (header rows included),
    only under a '### <section>...' heading when `section` is given."""
    out = []
    if not os.path.exists(path):
        return out
    current = None
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.strip()
        if line.startswith("#"):
            current = line.lstrip("#").strip()
        elif line.startswith("|") and not line.startswith("|---"):
            if section is None or (current or "").startswith(section):
                out.append([c.strip() for c in line.strip("|").split("|")])
    return out


def num(s):
    try:
        return float(s)
    except ValueError:
        return None


def longctx(path):
    """{context: (prefill tok/s, batch-1 decode tok/s with graphs on or '-')}"""
    prefill, decode = {}, {}
    for r in rows(path, "Prefill"):
        if len(r) >= 3 and num(r[0]) is not None:
            prefill[int(r[0])] = num(r[2])
    for r in rows(path, "Decode"):
        if len(r) >= 5 and num(r[0]) is not None and r[1] == "1" and r[2] in ("on", "-"):
            decode[int(r[0])] = num(r[4])
    return prefill, decode


def main():
    out = sys.argv[1]
    hf = {}
    for r in rows(os.path.join(out, "hf.md")):
        if len(r) >= 6 and num(r[1]) is not None:
            hf[(r[0], int(r[1]))] = (num(r[3]), num(r[5]))
    print("| model | context | prefill longctx / transformers | decode b=1 longctx / transformers |")
    print("|---|---:|---:|---:|")
    for key, name in (("default", "default.md"), ("llama2-7b", "7b.md")):
        prefill, decode = longctx(os.path.join(out, name))
        for T in sorted(set(prefill) | set(decode)):
            h = hf.get((key, T), (None, None))
            cells = []
            for ours, theirs in ((prefill.get(T), h[0]), (decode.get(T), h[1])):
                cells.append(f"{ours / theirs:.2f}" if ours and theirs else "")
            print(f"| {key} | {T} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()

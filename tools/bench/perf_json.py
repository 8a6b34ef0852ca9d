#!/usr/bin/env python3
"""The outputs of tools/bench/run_prefill_compare.sh as one JSON file of rows.

Reads every *.md file of OUTDIR and tells the programs' outputs apart by their
first line: longctx-bench ("backend=... model=... layers=..."),
longctx-attention-bench ("backend=... prefill_kernel=..."),
hf_transformers_bench.py ("device=... transformers=...") and attention_sdpa.py
("device=... cudnn=..."). A file may hold several outputs one after another.
A longctx-bench output is paired with the transformers model "llama2-7b" when
its file name contains "7b", with "smollm2-135m" when it ran the synthetic
SmolLM2-135M shape, with "default" otherwise. Rows:

  prefill                 end-to-end prefill tok/s of one session (batch 1),
                          longctx-bench against transformers (sdpa, bf16)
  decode                  batch-1 decode tok/s (longctx with step graphs on
                          where both settings ran), against transformers
  attention_prefill_dca   causal attention prefill TFLOP/s of one sequence,
  attention_prefill_rope  longctx-attention-bench (the default kernel, DCA or
                          plain RoPE) against PyTorch SDPA flash and cuDNN

Each row: {bench, model, heads, head_dim, tokens, batch, unit, longctx,
baseline_name, baseline, ratio}, ratio = longctx / baseline (> 1: longctx
ahead), rounded to 4 digits. A side that did not run (a failed or timed-out
phase) is null, and so is the ratio. heads are query heads; the model name
gives the key/value heads of attention rows.

  python3 tools/bench/perf_json.py OUTDIR --device "NVIDIA H100 80GB HBM3" \\
      --driver 580.159.04 --commit HASH --date 2026-12-07T12:00:00+00:00 \\
      [--out FILE] [--markdown]

Without --out the file is OUTDIR/<date>-<device slug>-prefill.json, e.g.
2026-12-07-h100-prefill.json. --markdown prints the rows as a table.
"""
import argparse
import glob
import json
import os
import re
import sys

HF_NAME = "transformers (sdpa, bf16)"
SDPA_NAMES = {"flash": "PyTorch SDPA flash", "cudnn": "PyTorch SDPA cuDNN"}
ROW_KEYS = ("bench", "model", "heads", "head_dim", "tokens", "batch", "unit", "longctx",
            "baseline_name", "baseline", "ratio")


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def key_values(line):
    """{key: value} of the key=value words of a header line."""
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S+)", line))


def outputs(text):
    """The program outputs in text, in order: each a dict with `kind`, `head`
    (its first line), `params` (that line's key=value pairs), `labels` (the
    "- key: label" lines) and `tables`: (section heading, [{column: cell}])."""
    found, current, section, header = [], None, "", None
    for raw in text.splitlines():
        line = raw.strip()
        kind = output_kind(line)
        if kind:
            current = dict(kind=kind, head=line, params=key_values(line), labels={}, tables=[])
            found.append(current)
            section, header = "", None
            continue
        if current is None:
            continue
        if line.startswith("#"):
            section, header = line.lstrip("#").strip(), None
        elif line.startswith("- ") and ":" in line:
            key, label = line[2:].split(":", 1)
            current["labels"][key.strip()] = label.strip()
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
                current["tables"].append((section, []))
            elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current["tables"][-1][1].append(dict(zip(header, cells)))
        else:
            header = None
    return found


def output_kind(line):
    if line.startswith("backend=") and " layers=" in line:
        return "longctx_bench"
    if line.startswith("backend=") and " prefill_kernel=" in line:
        return "attention_bench"
    if line.startswith("device=") and " transformers=" in line:
        return "hf"
    if line.startswith("device=") and " cudnn=" in line:
        return "sdpa"
    return None


def model_name(head):
    m = re.search(r" model=(.*?) layers=", head)
    return m.group(1) if m else ""


def table_rows(out, section_prefix=""):
    for section, rows in out["tables"]:
        if section.startswith(section_prefix):
            yield from rows


def longctx_e2e(out):
    """({tokens: prefill tok/s}, {tokens: batch-1 decode tok/s})"""
    prefill = {int(r["context"]): num(r["prefill tok/s"]) for r in table_rows(out, "Prefill")
               if num(r.get("context")) is not None and num(r.get("prefill tok/s"))}
    decode, graphs = {}, {}
    for r in table_rows(out, "Decode"):
        if r.get("sessions") != "1" or num(r.get("tok/s")) is None:
            continue
        T = int(r["context"])
        # Graphs on where both settings ran: the setting longctxd uses.
        if T not in decode or r.get("graphs") == "on" or graphs[T] != "on":
            decode[T], graphs[T] = num(r["tok/s"]), r.get("graphs")
    return prefill, decode


def hf_rows(outs):
    """({(model key, tokens): (prefill tok/s, decode tok/s)}, {model key: label})"""
    rows, labels = {}, {}
    for out in outs:
        labels.update(out["labels"])
        for r in table_rows(out):
            if num(r.get("context")) is not None:
                rows[(r["model"], int(r["context"]))] = (num(r.get("prefill tok/s")),
                                                         num(r.get("decode tok/s")))
    return rows, labels


def row(bench, model, heads, head_dim, tokens, unit, longctx, baseline_name, baseline):
    ratio = round(longctx / baseline, 4) if longctx and baseline else None
    return dict(bench=bench, model=model, heads=heads, head_dim=head_dim, tokens=tokens, batch=1,
                unit=unit, longctx=longctx, baseline_name=baseline_name, baseline=baseline,
                ratio=ratio)


def e2e_rows(lc_outs, hf_outs):
    """lc_outs: [(model key, longctx-bench output)]."""
    hf, labels = hf_rows(hf_outs)
    out = []
    for key, lc in lc_outs:
        p = lc["params"]
        name, heads, head_dim = model_name(lc["head"]), int(p["heads"]), int(p["head_dim"])
        baseline_name = HF_NAME
        if "random weights" in labels.get(key, "") and "synthetic" not in name:
            baseline_name += ", same shape with random weights"
        prefill, decode = longctx_e2e(lc)
        theirs = {T: v for (k, T), v in hf.items() if k == key}
        for bench, ours, col in (("prefill", prefill, 0), ("decode", decode, 1)):
            for T in sorted(set(ours) | {T for T, v in theirs.items() if v[col]}):
                base = theirs.get(T, (None, None))[col]
                out.append(row(bench, name, heads, head_dim, T, "tok/s", ours.get(T),
                               baseline_name, base))
    return out


def attention_rows(lc_outs, sdpa_outs):
    # {(heads, kv_heads, head_dim): {(mode, kernel, tokens): TFLOP/s}}; rows of a
    # kernel other than the default one (--prefill_kernel) get its name in their
    # bench: attention_prefill_dca_wgmma_serial.
    ours, theirs, layouts = {}, {}, {}
    kernels = set()
    for out in lc_outs:
        p = out["params"]
        kernel = p.get("prefill_kernel", "auto")
        kernels.add(kernel)
        shape = (int(p["heads"]), int(p["kv_heads"]), int(p["head_dim"]))
        for r in table_rows(out):
            if r.get("run") == "prefill" and num(r.get("TFLOP/s")) is not None:
                ours.setdefault(shape, {})[(r["attention"], kernel, int(r["tokens"]))] = \
                    num(r["TFLOP/s"])
    for out in sdpa_outs:
        p = out["params"]
        shape = (int(p["heads"]), int(p["kv_heads"]), int(p["head_dim"]))
        for r in table_rows(out):
            if r.get("backend") in SDPA_NAMES and num(r.get("TFLOP/s")) is not None:
                theirs.setdefault(shape, {})[(r["backend"], int(r["tokens"]))] = num(r["TFLOP/s"])
                layouts[(shape, r["backend"])] = r.get("K/V", "")
    rows = []
    for shape in sorted(set(ours) | set(theirs), key=lambda s: (-s[2], -s[0])):
        H, KV, D = shape
        mine, base = ours.get(shape, {}), theirs.get(shape, {})
        lengths = sorted({T for _, _, T in mine} | {T for _, T in base})
        for kernel in sorted(kernels, key=lambda k: k != "auto"):
            suffix = "" if kernel == "auto" else "_" + re.sub(r"[^a-z0-9]+", "_", kernel.lower())
            for T in lengths:
                for mode in ("DCA", "RoPE"):
                    bench = "attention_prefill_" + mode.lower() + suffix
                    for backend, name in SDPA_NAMES.items():
                        layout = layouts.get((shape, backend), "")
                        if layout and layout != "GQA":
                            name += f" (K/V {layout})"
                        ours_v = mine.get((mode, kernel, T))
                        if kernel != "auto" and ours_v is None:
                            continue
                        rows.append(row(bench, f"attention, {H} q / {KV} kv heads", H, D, T,
                                        "TFLOP/s", ours_v, name, base.get((backend, T))))
    return [r for r in rows if r["longctx"] is not None or r["baseline"] is not None]


def transformers_key(stem, head):
    """The hf_transformers_bench.py model a longctx-bench output is paired with:
    "llama2-7b" for a file named so, "smollm2-135m" for the synthetic SmolLM2
    shape (random weights on both sides), else "default" (the default model)."""
    if "7b" in stem.lower():
        return "llama2-7b"
    name = model_name(head)
    if "synthetic" in name and "SmolLM2-135M" in name:
        return "smollm2-135m"
    return "default"


def collect(outdir):
    """Rows from every *.md file of outdir, and the software versions seen."""
    lc, attn, hf, sdpa, software = [], [], [], [], {}
    for path in sorted(glob.glob(os.path.join(outdir, "*.md"))):
        stem = os.path.splitext(os.path.basename(path))[0]
        with open(path, encoding="utf-8", errors="replace") as f:
            for out in outputs(f.read()):
                if out["kind"] == "longctx_bench":
                    lc.append((transformers_key(stem, out["head"]), out))
                elif out["kind"] == "attention_bench":
                    attn.append(out)
                else:
                    (hf if out["kind"] == "hf" else sdpa).append(out)
                    for k in ("torch", "transformers", "cudnn"):
                        if k in out["params"]:
                            software[k] = out["params"][k]
    lc.sort(key=lambda item: item[0] != "default")
    return e2e_rows(lc, hf) + attention_rows(attn, sdpa), software


def device_slug(device):
    """"NVIDIA H100 80GB HBM3" -> "h100"."""
    words = [w for w in re.split(r"\s+", device.strip()) if w.upper() != "NVIDIA"]
    return re.sub(r"[^a-z0-9]+", "-", (words[0] if words else "gpu").lower()).strip("-")


def markdown(rows):
    lines = ["| bench | model | tokens | unit | longctx | baseline | baseline value | ratio |",
             "|---|---|---:|---|---:|---|---:|---:|"]
    for r in rows:
        cells = ["" if r[k] is None else str(r[k]) for k in ("longctx", "baseline", "ratio")]
        lines.append(f"| {r['bench']} | {r['model']} | {r['tokens']} | {r['unit']} | {cells[0]} "
                     f"| {r['baseline_name']} | {cells[1]} | {cells[2]} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--device", required=True)
    ap.add_argument("--driver", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--date", required=True, help="ISO 8601, e.g. 2026-12-07T12:00:00+00:00")
    ap.add_argument("--method", default="", help="how the numbers were measured, one paragraph")
    ap.add_argument("--out", help="default OUTDIR/<date>-<device slug>-prefill.json")
    ap.add_argument("--markdown", action="store_true", help="also print the rows as a table")
    args = ap.parse_args(argv)
    rows, software = collect(args.outdir)
    doc = dict(device=args.device, driver=args.driver, commit=args.commit, date=args.date)
    if args.method:
        doc["method"] = args.method
    doc["software"] = software
    doc["rows"] = rows
    path = args.out or os.path.join(
        args.outdir, f"{args.date[:10]}-{device_slug(args.device)}-prefill.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"{path}: {len(rows)} rows")
    if args.markdown:
        print(markdown(rows))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())

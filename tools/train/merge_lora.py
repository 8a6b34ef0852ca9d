#!/usr/bin/env python3
"""Merges the low-rank q/k/v/o deltas of train_gates.py into a GGUF model file.

lora.safetensors holds, per layer l and projection n (attn_q, attn_k, attn_v,
attn_output), A = `l_n_a` [r, in] and B = `l_n_b` [out, r]; infini_model.py
adds scale·(x·Aᵀ)·Bᵀ to x·Wᵀ, so the merged weight is W + scale·B·A, with
scale = α/r (the file's `lora_scale` metadata; 1 when absent, as train_gates.py
trains with α = r). The deltas are in the engine's layout: llama q/k rows are
half-split there and pair-interleaved in the file, so the delta is permuted
back to the file's order (weights.permute_rows) before it is added, and the
engine's un-permutation gives W + scale·B·A again.

Every other tensor and every metadata key of the input are copied verbatim;
the merged tensors are written as F16 (which the engine's loader reads for any
matrix), and longctx.lora.{rank,scale,layers,source,base} record the merge.
With --gates, that sidecar is copied beside OUT where the engine looks for it
(`<OUT without .gguf>.infini_gates.safetensors`).

  tools/train/merge_lora.py --model=M.gguf --lora=run/lora.safetensors \\
      --gates=run/gates.safetensors --out=run/model-lora.gguf
"""
import argparse
import json
import os
import re
import shutil
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from weights import permute_rows  # noqa: E402

PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output")
_LORA_NAME = re.compile(r"^(\d+)_(" + "|".join(PROJECTIONS) + r")_([ab])$")
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def read_safetensors(path):
    """({name: float64 array}, metadata) of a safetensors file of float tensors."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, e in header.items():
        if e["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} is {e['dtype']}, not a float type")
        a, b = e["data_offsets"]
        x = np.frombuffer(data[a:b], dtype=_SAFETENSORS_DTYPES[e["dtype"]])
        if e["dtype"] == "BF16":
            x = (x.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = x.astype(np.float64).reshape(e["shape"])
    return tensors, meta


def lora_pairs(tensors, path="lora"):
    """{(layer, projection): (A [r, in], B [out, r])}, every factor paired and of one rank."""
    factors = {}
    for name, x in tensors.items():
        m = _LORA_NAME.match(name)
        if m is None or x.ndim != 2:
            raise ValueError(f"{path}: {name} {list(x.shape)} is not a q/k/v/o LoRA factor")
        factors[(int(m[1]), m[2], m[3])] = x
    pairs, ranks = {}, set()
    for (l, n, side) in sorted(factors):
        if side == "b":
            continue
        a, b = factors[(l, n, "a")], factors.get((l, n, "b"))
        if b is None or b.shape[1] != a.shape[0]:
            raise ValueError(f"{path}: {l}_{n}_a {list(a.shape)} has no matching "
                             f"{l}_{n}_b [out, {a.shape[0]}]")
        pairs[(l, n)] = (a, b)
        ranks.add(a.shape[0])
    unpaired = {(l, n) for (l, n, _) in factors} - set(pairs)
    if unpaired:
        l, n = min(unpaired)
        raise ValueError(f"{path}: {l}_{n}_b has no {l}_{n}_a")
    if len(ranks) > 1:
        raise ValueError(f"{path}: factors of several ranks {sorted(ranks)}")
    return pairs


def _key(reader, key, default=None):
    f = reader.get_field(key)
    if f is None:
        if default is None:
            raise KeyError(f"GGUF: missing key {key}")
        return default
    return f.contents()


def gates_path(model_path):
    """Where the engine looks for a model's gates (DefaultInfiniGatesPath)."""
    stem = model_path[:-5] if model_path.endswith(".gguf") else model_path
    return stem + ".infini_gates.safetensors"


def merge(model, lora, out, gates=None, scale=None):
    """Writes `out`: `model` with the deltas of `lora` merged. Returns a summary dict."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    if gates and not os.path.isfile(gates):
        raise ValueError(f"{gates}: no such gates file")
    factors, meta = read_safetensors(lora)
    pairs = lora_pairs(factors, lora)
    if not pairs:
        raise ValueError(f"{lora}: no LoRA factors")
    if scale is None:
        scale = float(meta.get("lora_scale", 1.0))
    r = GGUFReader(model)
    if any(k.startswith("longctx.lora.") for k in r.fields):
        raise ValueError(f"{model}: already carries a merged LoRA (longctx.lora.*)")
    arch = _key(r, "general.architecture")
    heads = {}
    if arch == "llama":  # the only architecture whose q/k rows the engine un-permutes
        n_heads = int(_key(r, "llama.attention.head_count"))
        heads = {"attn_q": n_heads,
                 "attn_k": int(_key(r, "llama.attention.head_count_kv", n_heads))}
    shapes = {t.name: [int(x) for x in reversed(t.shape)] for t in r.tensors}
    plan = {}  # tensor name -> (A, B, heads to permute the delta's rows with, or 0)
    for (l, n), (a, b) in pairs.items():
        name = f"blk.{l}.{n}.weight"
        if shapes.get(name) != [b.shape[0], a.shape[1]]:
            raise ValueError(f"{lora}: {l}_{n} makes [{b.shape[0]}, {a.shape[1]}], {model} has "
                             f"{name} {shapes.get(name, 'absent')}")
        plan[name] = (a, b, heads.get(n, 0))
    rank = next(iter(pairs.values()))[0].shape[0]
    layers = sorted({l for (l, _) in pairs})

    tmp = out + ".tmp"
    try:
        w = GGUFWriter(tmp, arch, endianess=r.endianess)
        for f in r.fields.values():
            # The writer states the architecture itself; GGUF.* are the reader's header fields.
            if f.name == "general.architecture" or f.name.startswith("GGUF."):
                continue
            if f.name == "general.alignment":
                w.data_alignment = int(f.contents())
            sub = f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None
            w.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
        w.add_uint32("longctx.lora.rank", rank)
        w.add_float32("longctx.lora.scale", scale)
        w.add_key_value("longctx.lora.layers", layers, GGUFValueType.ARRAY,
                        sub_type=GGUFValueType.UINT32)
        w.add_string("longctx.lora.source", os.path.basename(lora))
        w.add_string("longctx.lora.base", os.path.basename(model))
        for t in r.tensors:
            if t.name in plan:
                w.add_tensor(t.name, _merged(t, *plan[t.name], scale))
            else:
                w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type, tensor_endianess=r.endianess)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    summary = dict(out=out, rank=rank, scale=scale, layers=len(layers), tensors=len(plan))
    if gates:
        summary["gates"] = gates_path(out)
        shutil.copyfile(gates, summary["gates"])
    return summary


def _merged(t, a, b, heads, scale):
    """F16 W + scale·B·A of GGUF tensor t, the delta's rows in the file's order."""
    from gguf.quants import dequantize

    delta = scale * (b @ a)
    if heads:
        delta = permute_rows(delta, heads)
    w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64).reshape(delta.shape)
    merged = (w + delta).astype(np.float16)
    if not np.isfinite(merged).all():
        raise ValueError(f"{t.name}: the merged weight overflows F16")
    return merged


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the GGUF the LoRA was trained on")
    ap.add_argument("--lora", required=True, help="lora.safetensors of train_gates.py")
    ap.add_argument("--gates", help="a gates sidecar to put beside OUT")
    ap.add_argument("--out", required=True, help="the merged GGUF")
    ap.add_argument("--scale", type=float, help="α/r; default: the LoRA file's lora_scale, or 1")
    a = ap.parse_args(argv)
    try:
        s = merge(a.model, a.lora, a.out, gates=a.gates, scale=a.scale)
    except (OSError, ValueError, KeyError) as e:
        print(f"merge_lora: {e}", file=sys.stderr)
        return 1
    print(" ".join(f"{k}={v}" for k, v in s.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

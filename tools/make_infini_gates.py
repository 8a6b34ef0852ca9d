#!/usr/bin/env python3
"""Writes a safetensors sidecar of Infini-attention gates blk.N.infini_beta.

The gates here are constants, not trained: they exist to exercise the mixing
path (longctx-eval --infini_gates=FILE --infini_mix) and to measure what an
untrained gate does. sigmoid(beta) is the memory's share of each head's output.

  tools/make_infini_gates.py --layers 30 --heads 9 --beta 0 --out gates.safetensors
"""
import argparse
import json
import struct


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True, help="query heads")
    ap.add_argument("--beta", type=float, default=0.0, help="gate value for every head")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    header, data = {"__metadata__": {"note": f"constant gates beta={args.beta}"}}, b""
    for layer in range(args.layers):
        blob = struct.pack(f"<{args.heads}f", *([args.beta] * args.heads))
        header[f"blk.{layer}.infini_beta"] = {
            "dtype": "F32",
            "shape": [args.heads],
            "data_offsets": [len(data), len(data) + len(blob)],
        }
        data += blob
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(args.out, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + data)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""One long document streamed through longctxd's Ingest against the engine's
own prefill of as many tokens, in one run on one machine.

For each --segment_bytes a fresh longctxd (loopback, its own state_dir) is
warmed with a short ingest, then longctx-loadgen streams --doc_bytes of
--document into one session in segments of that size; the rate is the tokens
the server acknowledged over the stream's wall time. The engine's side is
longctx-bench on the same model: one session prefilled in pieces of --chunk
(longctxd's GPU prefill budget) to the token count the server reported. Each
side is measured --rounds times, interleaved, and the medians are compared
(ratio > 1: the server is faster). Writes the JSON of docs/benchmarks.md
("device", "driver", "commit", "date", "rows") to --out.

  tools/bench/ingest_bench.py --bin=BUNDLE/bin --model=/tmp/model.gguf \\
      --backend=cuda --document=book.txt --doc_bytes=540000 \\
      --segment_bytes=2048,32768 --out=docs/perf/2026-12-07-h100-ingest.json
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import durability_bench  # noqa: E402  (Server, loadgen, header, row)
import perf_json  # noqa: E402  (longctx-bench's tables)


def engine_rate(args: argparse.Namespace, tokens: int) -> float:
    """longctx-bench's prefill tok/s of one session of `tokens` tokens."""
    out = subprocess.run(
        [f"{args.bin}/longctx-bench", f"--backend={args.backend}", f"--model={args.model}",
         f"--lengths={tokens}", "--batch=1", "--decode=0", f"--chunk={args.chunk}",
         "--graphs=on", "--repeats=1"]
        # On a CPU, longctxd's default weights (longctx-bench's default is f32).
        + (["--cpu_weights=quantized"] if args.backend == "cpu" else []),
        capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"longctx-bench failed:\n{out.stdout}\n{out.stderr}")
    for o in perf_json.outputs(out.stdout):
        if o["kind"] == "longctx_bench":
            prefill, _ = perf_json.longctx_e2e(o)
            if tokens in prefill:
                return prefill[tokens]
    raise RuntimeError(f"no prefill rate at {tokens} tokens in:\n{out.stdout}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", required=True, help="longctxd, longctx, longctx-loadgen, longctx-bench")
    p.add_argument("--model", required=True)
    p.add_argument("--model_name", default="")
    p.add_argument("--backend", default="cuda")
    p.add_argument("--document", required=True)
    p.add_argument("--doc_bytes", type=int, default=540_000, help="about 128k tokens of English")
    p.add_argument("--segment_bytes", default="2048,32768", help="comma-separated")
    p.add_argument("--durability", default="none", help="longctxd's --durability")
    p.add_argument("--chunk", type=int, default=8192, help="longctx-bench's prefill pieces")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--kv_cache_bytes", default="20GiB")
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--commit", default="")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    segments = [int(s) for s in args.segment_bytes.split(",") if s]

    result = durability_bench.header(args)
    served: Dict[int, List[float]] = {s: [] for s in segments}
    engine: List[float] = []
    tokens = 0
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        for rnd in range(args.rounds):
            for seg in segments:
                work = pathlib.Path(tmp) / f"{seg}-{rnd}"
                work.mkdir()
                server = durability_bench.Server(args, work, args.durability)
                server.start()
                try:
                    durability_bench.loadgen(_with_segment(args, seg), server, 1, 16384)  # warm-up
                    tok, sec = durability_bench.loadgen(_with_segment(args, seg), server, 1,
                                                        args.doc_bytes)
                finally:
                    server.stop()
                tokens = tok
                served[seg].append(tok / sec)
                print(f"round {rnd} segments of {seg} bytes: {tok} tokens, {tok / sec:.0f} tok/s",
                      flush=True)
            engine.append(engine_rate(args, tokens))
            print(f"round {rnd} longctx-bench prefill {tokens} tokens: {engine[-1]:.0f} tok/s",
                  flush=True)
    base = statistics.median(engine)
    for seg in segments:
        value = statistics.median(served[seg])
        r = durability_bench.row(args, f"ingest_grpc_segments_{seg}", tokens, 1, "tok/s", value,
                                 f"longctx-bench prefill (pieces of {args.chunk})", base,
                                 value / base)
        result["rows"].append(r)
        print(f"| {seg} | {tokens} | {value:.0f} | {base:.0f} | {value / base:.3f} |")
    result["rounds"] = args.rounds
    result["durability"] = args.durability
    result["samples"] = {"engine": [round(v, 1) for v in engine],
                         **{f"segments_{s}": [round(v, 1) for v in r] for s, r in served.items()}}
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def _with_segment(args: argparse.Namespace, seg: int) -> argparse.Namespace:
    a = argparse.Namespace(**vars(args))
    a.segment_bytes = seg
    return a


if __name__ == "__main__":
    sys.exit(main())

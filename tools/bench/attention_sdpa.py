#!/usr/bin/env python3
"""Causal attention throughput of PyTorch scaled_dot_product_attention, the
baseline of longctx-attention-bench (same shapes, same FLOP count).

Backends: FLASH_ATTENTION and CUDNN_ATTENTION, bf16, causal, batch 1, GQA through
enable_gqa=True (K/V not repeated); a backend that rejects that gets K/V
repeated to the query heads, and the table says so. FLOPs: 4 * D * H * T * (T + 1) / 2,
as in tools/attention_bench_main.cc. Time: at each length and backend, one
untimed call, then the median of --reps CUDA-event timings, as
longctx-attention-bench times its side. Prints a Markdown table.

  python3 tools/bench/attention_sdpa.py --lengths 8192,32768,131072 --heads 32 \
      --kv-heads 8 --head-dim 128
"""
import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_ms(fn, reps):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="8192,32768,131072")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    H, KV, D = args.heads, args.kv_heads, args.head_dim
    print(f"device={torch.cuda.get_device_name()} torch={torch.__version__} "
          f"cudnn={torch.backends.cudnn.version()} heads={H} kv_heads={KV} head_dim={D} "
          f"reps={args.reps}\n")
    print("| backend | tokens | K/V | ms | TFLOP/s |")
    print("|---|---:|---|---:|---:|")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for T in [int(x) for x in args.lengths.split(",")]:
        q = torch.randn(1, H, T, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        k = torch.randn(1, KV, T, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        v = torch.randn(1, KV, T, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        flops = 4.0 * D * H * T * (T + 1) / 2
        for name, backend in (("flash", SDPBackend.FLASH_ATTENTION),
                              ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            with sdpa_kernel([backend]):
                try:
                    fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                enable_gqa=True)
                    ms = time_ms(fn, args.reps)
                    layout = "GQA"
                except RuntimeError:
                    kr = k.repeat_interleave(H // KV, dim=1)
                    vr = v.repeat_interleave(H // KV, dim=1)
                    fn = lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=True)
                    try:
                        ms = time_ms(fn, args.reps)
                        layout = "repeated"
                    except RuntimeError as e:
                        print(f"| {name} | {T} | unsupported: {str(e).splitlines()[0][:80]} | | |")
                        continue
                    del kr, vr
            print(f"| {name} | {T} | {layout} | {ms:.3f} | {flops / ms / 1e9:.1f} |", flush=True)
        del q, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

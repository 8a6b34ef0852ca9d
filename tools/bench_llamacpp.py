#!/usr/bin/env python3
"""llama.cpp (through llama-cpp-python) on the same GGUF and threads, for the
side-by-side table in docs/benchmarks.md: prefill tokens/s at the given prompt
lengths (random token ids, batch = 512) and decode tokens/s after each.

  pip install llama-cpp-python   # builds llama.cpp from source for this CPU
  python3 tools/bench_llamacpp.py MODEL.gguf --threads 2 --lengths 512,2048,8192 --decode 64
"""
import argparse
import time

import numpy as np
from llama_cpp import Llama


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", default="512,2048,8192")
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    lengths = [int(x) for x in a.lengths.split(",")]
    llm = Llama(model_path=a.model, n_ctx=max(lengths) + a.decode + 16, n_batch=512,
                n_ubatch=512, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    rng = np.random.default_rng(7)
    print(f"llama.cpp threads={a.threads}")
    print("| prompt tokens | prefill s | prefill tok/s | decode tokens | decode tok/s |")
    print("|---:|---:|---:|---:|---:|")
    for n in lengths:
        best_p, best_d = 1e30, 1e30
        for _ in range(a.repeats):
            toks = rng.integers(100, llm.n_vocab(), size=n).tolist()
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(toks)
            best_p = min(best_p, time.perf_counter() - t0)
            t0 = time.perf_counter()
            # The decoded token's identity does not change the cost of a step.
            for i in range(a.decode):
                llm.eval([toks[i % n]])
            best_d = min(best_d, time.perf_counter() - t0)
        print(f"| {n} | {best_p:.3f} | {n / best_p:.1f} | {a.decode} | {a.decode / best_d:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""longctx-bench and llama.cpp's llama-bench on the same GGUF, threads and prompt
lengths, back to back in one run, repeated until the spread is small; writes one
JSON file under docs/perf/ and prints the table for docs/benchmarks.md.

llama.cpp is built from a pinned source package, the llama-cpp-python sdist from
PyPI (it vendors llama.cpp), into a cache outside the repository:

  tools/bench/llamacpp_side_by_side.py --model=$M --threads=2 \\
      --prefill=512,2048,8192 --decode-at=512,4096 [--cache=~/.cache/longctx/llamacpp]

Prefill: tokens/s of a prompt of N tokens from an empty context (llama-bench
-p N, batch 2048 / micro-batch 512 as it defaults; longctx pieces of 512).
Decode: tokens/s of single-token steps after a context of N tokens (llama-bench
-n D -d N; longctx-bench decode steps after a prefill of N). Each round runs
both programs once, alternately; rounds repeat (at least --min-rounds) until the
spread (max − min) / median of every figure is at most --spread or --max-rounds
is reached. Figures are medians over rounds.
"""
import argparse
import datetime
import functools
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tarfile

LLAMA_CPP_PYTHON = "0.3.16"
ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(cmd, env=None, cwd=None, merge_stderr=False):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, env=env, cwd=cwd, check=True, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT if merge_stderr else None).stdout


def build_llama_bench(cache: pathlib.Path) -> pathlib.Path:
    exe = cache / f"build-{LLAMA_CPP_PYTHON}" / "bin" / "llama-bench"
    if exe.exists():
        return exe
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.exists():
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(cache)])
    src = cache / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    if not src.exists():
        with tarfile.open(sdist) as t:
            t.extractall(cache, filter="data")
    build = cache / f"build-{LLAMA_CPP_PYTHON}"
    run(["cmake", "-S", str(src / "vendor" / "llama.cpp"), "-B", str(build), "-G", "Ninja",
         "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
         "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
         "-DLLAMA_BUILD_SERVER=OFF"])
    run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target",
         "llama-bench"])
    return exe


def llama_round(exe, model, threads, prefill, decode_at, decode_n):
    """{(bench, tokens): tok/s} from one llama-bench call per kind."""
    out = {}
    pp = json.loads(run([exe, "-m", model, "-t", str(threads), "-r", "1", "-o", "json",
                         "-p", ",".join(map(str, prefill)), "-n", "0"]))
    for row in pp:
        out[("prefill", row["n_prompt"])] = row["avg_ts"]
    tg = json.loads(run([exe, "-m", model, "-t", str(threads), "-r", "1", "-o", "json",
                         "-p", "0", "-n", str(decode_n), "-d",
                         ",".join(map(str, decode_at))]))
    for row in tg:
        out[("decode", row["n_depth"])] = row["avg_ts"]
    return out


def longctx_round(exe, model, threads, prefill, decode_at, decode_n, cpu_weights):
    lengths = sorted(set(prefill) | set(decode_at))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="active")
    text = run([exe, f"--model={model}", "--backend=cpu", f"--lengths={','.join(map(str, lengths))}",
                f"--decode={decode_n}", f"--cpu_weights={cpu_weights}", "--repeats=1"], env=env,
               merge_stderr=True)
    shape = re.search(r" heads=(\d+) .*head_dim=(\d+)", text)
    out = {("shape", "heads"): int(shape.group(1)), ("shape", "head_dim"): int(shape.group(2))}
    for m in re.finditer(r"^prefill (\d+) tokens: .*?([\d.]+) tok/s$", text, re.M):
        if int(m.group(1)) in prefill:
            out[("prefill", int(m.group(1)))] = float(m.group(2))
    for m in re.finditer(r"^decode (\d+) tokens x 1 sessions, graphs -: ([\d.]+) ms/step",
                         text, re.M):
        if int(m.group(1)) in decode_at:
            out[("decode", int(m.group(1)))] = 1e3 / float(m.group(2))
    return out


def spread(values):
    return (max(values) - min(values)) / statistics.median(values)


def cpu_model():
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", default="512,2048,8192")
    ap.add_argument("--decode-at", default="512,4096")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--min-rounds", type=int, default=3)
    ap.add_argument("--max-rounds", type=int, default=6)
    ap.add_argument("--spread", type=float, default=0.05)
    ap.add_argument("--cache", default=str(pathlib.Path.home() / ".cache/longctx/llamacpp"))
    ap.add_argument("--longctx-bench", default=str(ROOT / "build/bin/longctx-bench"))
    ap.add_argument("--cpu-weights", default="quantized", choices=["quantized", "f32"],
                    help="longctx's CPU weight path (quantized: the GGUF blocks, like llama.cpp)")
    ap.add_argument("--out-dir", default=str(ROOT / "docs/perf"))
    a = ap.parse_args()
    prefill = [int(x) for x in a.prefill.split(",")]
    decode_at = [int(x) for x in a.decode_at.split(",")]
    llama = build_llama_bench(pathlib.Path(a.cache).expanduser())
    samples = {"longctx": {}, "llama.cpp": {}}
    for r in range(a.max_rounds):
        ours = functools.partial(longctx_round, cpu_weights=a.cpu_weights)
        for name, fn, exe in (("longctx", ours, a.longctx_bench),
                              ("llama.cpp", llama_round, str(llama))):
            for key, v in fn(exe, a.model, a.threads, prefill, decode_at,
                             a.decode_tokens).items():
                samples[name].setdefault(key, []).append(v)
        spreads = {f"{n} {k[0]} {k[1]}": round(spread(v), 3) for n, s in samples.items()
                   for k, v in s.items() if k[0] != "shape"}
        worst = max(spreads.values())
        print(f"round {r + 1}: spreads {spreads}", file=sys.stderr, flush=True)
        if r + 1 >= a.min_rounds and worst <= a.spread:
            break
    write_results(a, prefill, decode_at, samples, r + 1)


def write_results(a, prefill, decode_at, samples, rounds):
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            text=True, stdout=subprocess.PIPE).stdout.strip()
    date = datetime.date.today().isoformat()
    rows = []
    keys = [("prefill", n) for n in prefill] + [("decode", n) for n in decode_at]
    print(f"| bench | tokens | longctx tok/s | llama.cpp tok/s | ratio | spread longctx / llama.cpp |")
    print("|---|---:|---:|---:|---:|---:|")
    for key in keys:
        ours, base = samples["longctx"][key], samples["llama.cpp"][key]
        lo, bl = statistics.median(ours), statistics.median(base)
        rows.append({"bench": key[0], "model": pathlib.Path(a.model).name,
                     "heads": samples["longctx"][("shape", "heads")][0],
                     "head_dim": samples["longctx"][("shape", "head_dim")][0], "tokens": key[1], "batch": 1, "unit": "tok/s",
                     "longctx": round(lo, 2), "baseline_name": f"llama.cpp (llama-cpp-python "
                     f"{LLAMA_CPP_PYTHON} sdist, llama-bench)", "baseline": round(bl, 2),
                     "ratio": round(lo / bl, 3),
                     "samples": {"longctx": [round(x, 2) for x in ours],
                                 "baseline": [round(x, 2) for x in base]}})
        print(f"| {key[0]} | {key[1]} | {lo:.1f} | {bl:.1f} | {lo / bl:.2f} | "
              f"{spread(ours):.1%} / {spread(base):.1%} |")
    doc = {"device": cpu_model(), "threads": a.threads, "commit": commit, "date": date,
           "rounds": rounds, "rows": rows}
    device = re.sub(r'[^a-z0-9]+', '-', cpu_model().lower()).strip('-')
    name = f"{date}-{device}-llamacpp-{commit}.json"  # one file per run
    out = pathlib.Path(a.out_dir) / name
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

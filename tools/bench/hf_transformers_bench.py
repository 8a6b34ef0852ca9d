#!/usr/bin/env python3
"""Hugging Face transformers baseline of longctx-bench on the same GPU.

bf16 weights, attn_implementation="sdpa", batch 1: prefill tokens/s of one
prompt of T random token ids (one forward call; pieces of --chunk tokens only if
one call runs out of memory), then batch-1 greedy decode tokens/s over
--decode steps. Models:

  default    the GGUF file given by --gguf (transformers' GGUF loader, which
             needs the `gguf` package); when it cannot be loaded, a
             LlamaConfig of the same shape (SmolLM2-135M) with random weights,
             and the table says so
  llama2-7b  a LlamaForCausalLM of the Llama-2-7B shape with random weights,
             built on the GPU from a LlamaConfig (nothing downloaded)

Timing, measured as longctx-bench measures its side: at each length one
untimed prefill, then --repeats timed prefills (each into a fresh cache, the
previous one freed first); the table gives the median, the fastest and the
slowest. Decode continues the last prefill's cache: 3 untimed steps (as
longctx-bench's), then --repeats timed series of --decode steps; the table
gives the median series' time per step. Each timing is
torch.cuda.synchronize() and CUDA events around the phase. Prefill runs the
decoder stack and the lm head on the last position only (no [T, vocab]
logits). The KV cache is transformers' default DynamicCache (grown by
concatenation every step). Prints a Markdown table.

  python3 tools/bench/hf_transformers_bench.py --gguf /tmp/model.gguf \
      --models default,llama2-7b --lengths 8192,32768,131072 --decode 32 --repeats 3
"""
import argparse
import os
import statistics
import sys
import time

import torch


SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
# Untimed decode steps before the timed series, as in longctx-bench.
DECODE_WARMUP = 3


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def random_llama(shape, max_len):
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(max_position_embeddings=max_len, **shape)
    torch.manual_seed(0)
    with torch.device("cuda"):
        try:
            model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa",
                                                  torch_dtype=torch.bfloat16)
        except (TypeError, ValueError, AttributeError):
            config._attn_implementation = "sdpa"
            model = LlamaForCausalLM(config).to(torch.bfloat16)
    return model.eval()


def load_default(gguf, max_len):
    """(model, label): the GGUF model, or its shape with random weights."""
    try:
        from transformers import AutoModelForCausalLM
        folder, name = os.path.split(os.path.abspath(gguf))
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                     torch_dtype=torch.bfloat16,
                                                     attn_implementation="sdpa")
        return model.to("cuda").eval(), f"{name} (GGUF weights dequantized to bf16)"
    except Exception as e:  # any loader failure: missing gguf package, file, format
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        log(f"GGUF load failed ({reason}); using the SmolLM2-135M shape with random weights")
        return (random_llama(SMOLLM2_135M, max_len),
                f"SmolLM2-135M shape, random weights (GGUF not loadable: {reason})")


class Timer:
    def __enter__(self):
        torch.cuda.synchronize()
        self.a = torch.cuda.Event(enable_timing=True)
        self.b = torch.cuda.Event(enable_timing=True)
        self.a.record()
        return self

    def __exit__(self, *exc):
        self.b.record()
        torch.cuda.synchronize()
        self.ms = self.a.elapsed_time(self.b)


def new_cache():
    from transformers import DynamicCache
    return DynamicCache()


@torch.inference_mode()
def prefill(model, ids, chunk):
    """Runs ids [1, T] into a fresh cache; returns (cache, next token [1, 1])."""
    cache = new_cache()
    T = ids.shape[1]
    step = T if chunk <= 0 else chunk
    hidden = None
    for at in range(0, T, step):
        piece = ids[:, at:at + step]
        pos = torch.arange(at, at + piece.shape[1], device="cuda").unsqueeze(0)
        out = model.model(input_ids=piece, past_key_values=cache, use_cache=True,
                          position_ids=pos, cache_position=pos[0])
        cache = out.past_key_values
        hidden = out.last_hidden_state[:, -1:]
    logits = model.lm_head(hidden)
    return cache, logits.argmax(-1)


@torch.inference_mode()
def decode(model, cache, token, start, steps):
    for i in range(steps):
        pos = torch.tensor([[start + i]], device="cuda")
        out = model.model(input_ids=token, past_key_values=cache, use_cache=True,
                          position_ids=pos, cache_position=pos[0])
        cache = out.past_key_values
        token = model.lm_head(out.last_hidden_state).argmax(-1)
    return token


def prefill_runs(model, ids, args):
    """One untimed prefill of ids [1, T], then args.repeats timed ones, each into
    a fresh cache. Returns (seconds per run, last cache, its next token, note).
    One forward call, or pieces of args.chunk when the untimed one runs out of
    memory (then every run is in pieces)."""
    chunk, note = 0, ""
    try:
        prefill(model, ids, 0)
    except torch.cuda.OutOfMemoryError:
        chunk, note = args.chunk, f"prefill in pieces of {args.chunk}"
    if chunk:
        # Outside the except block, so its traceback no longer holds memory.
        torch.cuda.empty_cache()
        prefill(model, ids, chunk)
    seconds, cache, tok = [], None, None
    for _ in range(args.repeats):
        cache = tok = None  # the previous run's cache is freed before the next run
        with Timer() as t:
            cache, tok = prefill(model, ids, chunk)
        seconds.append(t.ms / 1e3)
    return seconds, cache, tok, note


def decode_runs(model, cache, tok, start, args):
    """DECODE_WARMUP untimed steps after position start, then args.repeats timed
    series of args.decode steps; the median series' milliseconds per step."""
    tok = decode(model, cache, tok, start, DECODE_WARMUP)
    pos = start + DECODE_WARMUP
    per_step = []
    for _ in range(args.repeats):
        with Timer() as t:
            tok = decode(model, cache, tok, pos, args.decode)
        pos += args.decode
        per_step.append(t.ms / args.decode)
    return statistics.median(per_step)


def run_model(label_key, model, label, lengths, args, rows, deadline):
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cuda").manual_seed(0)
    for T in lengths:
        row = dict(model=label_key, label=label, T=T, note="")
        if time.time() > deadline:
            row["note"] = "skipped: time budget spent"
            rows.append(row)
            continue
        ids = torch.randint(100, vocab, (1, T), device="cuda", generator=gen)
        cache = None
        try:
            seconds, cache, tok, row["note"] = prefill_runs(model, ids, args)
            row["prefill_s"] = statistics.median(seconds)
            row["prefill_min_s"], row["prefill_max_s"] = min(seconds), max(seconds)
            if args.decode > 0:
                row["decode_ms"] = decode_runs(model, cache, tok, T, args)
        except torch.cuda.OutOfMemoryError as e:
            row["note"] = (row["note"] + "; " if row["note"] else "") + \
                f"out of memory: {str(e).splitlines()[0][:80]}"
        finally:
            cache = tok = None
            torch.cuda.empty_cache()
        log(f"{label_key} T={T}: {row}")
        rows.append(row)


def print_table(rows, repeats):
    print(f"Prefill: median of {repeats} timed runs after an untimed one at the same length; "
          f"decode: median of {repeats} timed series after {DECODE_WARMUP} untimed steps.\n")
    print("| model | context | prefill s | prefill tok/s | decode ms/step | decode tok/s "
          "| fastest s | slowest s | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        p = r.get("prefill_s")
        d = r.get("decode_ms")
        cells = ["", "", "", "", "", ""]
        if p is not None:
            cells[0:2] = [f"{p:.3f}", f"{r['T'] / p:.1f}"]
            cells[4:6] = [f"{r['prefill_min_s']:.3f}", f"{r['prefill_max_s']:.3f}"]
        if d is not None:
            cells[2:4] = [f"{d:.2f}", f"{1e3 / d:.1f}"]
        print(f"| {r['model']} | {r['T']} | " + " | ".join(cells) + f" | {r['note']} |",
              flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default="/tmp/model.gguf")
    ap.add_argument("--models", default="default,llama2-7b")
    ap.add_argument("--lengths", default="8192,32768,131072")
    ap.add_argument("--decode", type=int, default=32,
                    help="decode steps per timed series (0: no decode)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed prefills (and decode series) per length; the median is reported")
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--time-budget", type=float, default=1e9,
                    help="seconds; lengths not started by then are skipped")
    args = ap.parse_args()
    start = time.time()
    deadline = start + args.time_budget
    lengths = [int(x) for x in args.lengths.split(",")]
    args.repeats = max(1, args.repeats)
    max_len = max(lengths) + DECODE_WARMUP + args.repeats * max(0, args.decode) + 16
    import transformers
    print(f"device={torch.cuda.get_device_name()} torch={torch.__version__} "
          f"transformers={transformers.__version__} attn_implementation=sdpa dtype=bf16 "
          f"batch=1 cache=DynamicCache\n", flush=True)
    rows = []
    labels = {}
    for key in args.models.split(","):
        if time.time() > deadline:
            log(f"{key}: skipped, time budget spent")
            continue
        t0 = time.time()
        if key == "default":
            model, label = load_default(args.gguf, max_len)
        elif key == "smollm2-135m":
            model = random_llama(SMOLLM2_135M, max_len)
            label = "SmolLM2-135M shape, random weights"
        elif key == "llama2-7b":
            model = random_llama(LLAMA2_7B, max_len)
            label = "Llama-2-7B shape, random weights"
        else:
            log(f"unknown model {key}")
            continue
        labels[key] = label
        log(f"{key}: {label}, built in {time.time() - t0:.1f} s")
        try:
            run_model(key, model, label, lengths, args, rows, deadline)
        finally:
            del model
            torch.cuda.empty_cache()
    for key, label in labels.items():
        print(f"- {key}: {label}")
    print()
    print_table(rows, args.repeats)
    print(f"\ntotal {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Checks that tools/train's model computes what longctx-eval computes.

For each case (full DCA; window + slide; window + compress with mixing off;
window + compress with mixing on under constant gates β, linear and delta
updates) longctx-eval scores every token of the text's first --length tokens
(--dump_nll) and the PyTorch model scores the same token ids with the same
settings, in float32 and in float64. The tolerance is earned, not chosen: per
case, the engine (float32) must lie no further from the float64 model than
--factor (2) times the float32 model does, on average over the tokens, and
--max_factor (4) times in the worst token:

  mean|engine − model64| ≤ factor · mean|model32 − model64|
  max|engine − model64|  ≤ max_factor · max|model32 − model64|

(The worst token is one ill-conditioned position where every float32
computation strays most, by 1e-4 nats here, and the two float32 computations
sum in different orders, so their worst cases differ more than their means.)

With --eval the engine runs here (CPU backend) and its dumps and cases.json
are kept in --work; with --reference=DIR instead, such a directory made
earlier is read (e.g. made where the C++ build is, checked on a machine that
has only PyTorch). Exit status 1 when a case fails.

  tools/train/check_equivalence.py --model=M.gguf --eval=build/bin/longctx-eval \\
      --text=anna_karenina.txt --work=/tmp/eq
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="GGUF model file")
    ap.add_argument("--eval", help="longctx-eval binary: run the engine here (CPU backend)")
    ap.add_argument("--text", help="UTF-8 text (with --eval)")
    ap.add_argument("--reference", help="directory of an earlier --eval run (cases.json)")
    ap.add_argument("--work", default="/tmp/longctx-equivalence", help="where dumps go")
    ap.add_argument("--length", type=int, default=1024, help="tokens of the text used")
    ap.add_argument("--pretrain_len", type=int, default=256)
    ap.add_argument("--chunk_size", type=int, default=192)
    ap.add_argument("--local_window", type=int, default=64)
    ap.add_argument("--window", type=int, default=256, help="--infini_window")
    ap.add_argument("--sinks", type=int, default=64, help="--infini_sinks")
    ap.add_argument("--betas", default="0,-2", help="constant gates of the mixing cases")
    ap.add_argument("--rules", default="linear,delta", help="update rules of the mixing cases")
    ap.add_argument("--no_full", action="store_true", help="skip the full-DCA case")
    ap.add_argument("--factor", type=float, default=2.0, help="bound on the mean error ratio")
    ap.add_argument("--max_factor", type=float, default=4.0, help="bound on the max error ratio")
    ap.add_argument("--engine_only", action="store_true",
                    help="with --eval: write the engine's dumps and cases.json, compare nothing")
    ap.add_argument("--lock", help="run each engine call under `flock LOCK` (shared cores)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="JSON report")
    return ap.parse_args(argv)


def make_cases(a):
    """[{name, flags (longctx-eval), settings (infini_model.Settings fields), beta}]."""
    w = dict(window=a.window, sinks=a.sinks)
    cases = []
    if not a.no_full:
        cases.append(dict(name="dca", flags=["--infini=none"], settings={}, beta=None))
    cases.append(dict(name="slide", flags=["--infini=slide"], settings=dict(w, overflow="slide"),
                      beta=None))
    cases.append(dict(name="compress", flags=["--infini=compress"],
                      settings=dict(w, overflow="compress"), beta=None))
    for rule in a.rules.split(","):
        for beta in (float(b) for b in a.betas.split(",")):
            cases.append(dict(
                name=f"compress+mix {rule} beta={beta:g}",
                flags=["--infini=compress", f"--infini_update={rule}", "--infini_mix"],
                settings=dict(w, overflow="compress", rule=rule, mix=True), beta=beta))
    return cases


def run_engine(a, cfg, cases):
    """One longctx-eval run per case; dumps and cases.json go into a.work."""
    import torch
    from infini_model import write_gates

    os.makedirs(a.work, exist_ok=True)
    dca = [f"--pretrain_len={a.pretrain_len}", f"--chunk_size={a.chunk_size}",
           f"--local_window={a.local_window}"]
    for i, case in enumerate(cases):
        case["dump"] = f"case{i}.jsonl"
        cmd = [a.eval, "ppl", "--backend=cpu", f"--model={a.model}", f"--text={a.text}",
               f"--lengths={a.length}", "--windows=1", f"--score_last={a.length - 1}",
               "--modes=dca", *dca, f"--infini_window={a.window}", f"--infini_sinks={a.sinks}",
               f"--dump_nll={os.path.join(a.work, case['dump'])}", *case["flags"]]
        if case["beta"] is not None:
            gates = os.path.join(a.work, f"case{i}_gates.safetensors")
            write_gates(gates, torch.full((cfg.n_layers, cfg.n_heads), case["beta"]))
            cmd.append(f"--infini_gates={gates}")
        t0 = time.time()
        subprocess.run(["flock", a.lock, *cmd] if a.lock else cmd, check=True,
                       stdout=subprocess.DEVNULL)
        case["engine_seconds"] = round(time.time() - t0, 1)
        print(f"engine: {case['name']}: {case['engine_seconds']} s", flush=True)
    from infini_model import resolve_dca

    C, L = resolve_dca(cfg.context_length, a.pretrain_len, a.chunk_size, a.local_window)
    meta = dict(model=os.path.basename(a.model), length=a.length, pretrain_len=a.pretrain_len,
                chunk_size=C, local_window=C - L, cases=cases)
    with open(os.path.join(a.work, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def model_nll(cfg, weights, meta, case, dtype, device):
    import torch
    from infini_model import InfiniLlama, Settings, resolve_dca

    C, L = resolve_dca(cfg.context_length, meta["pretrain_len"], meta["chunk_size"],
                       meta["local_window"])
    s = Settings(chunk_len=L, chunk_size=C, **case["settings"])
    beta = torch.full((cfg.n_layers, cfg.n_heads), case["beta"] or 0.0)
    m = InfiniLlama(cfg, weights, s, beta=beta).to(device=device, dtype=dtype)
    with open(os.path.join(meta["dir"], case["dump"])) as f:
        row = json.loads(f.readline())
    tokens = torch.tensor(row["tokens"], device=device)
    with torch.no_grad():
        nll = m.token_nll(tokens, first=row["first_scored"]).double().cpu()
    return nll, torch.tensor(row["nll"], dtype=torch.float64)


def main(argv=None):
    a = parse_args(argv)
    import torch
    from weights import load_gguf

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg, weights = load_gguf(a.model)
    if a.eval:
        meta = run_engine(a, cfg, make_cases(a))
        meta["dir"] = a.work
        if a.engine_only:
            return 0
    elif a.reference:
        with open(os.path.join(a.reference, "cases.json")) as f:
            meta = json.load(f)
        meta["dir"] = a.reference
    else:
        sys.exit("check_equivalence: give --eval (and --text) or --reference")
    C, L = meta["chunk_size"], meta["chunk_size"] - meta["local_window"]
    print(f"model {meta['model']}, {meta['length']} tokens, c={meta['pretrain_len']} C={C} "
          f"L={L}, device {a.device}; bounds: |engine-f64| <= {a.factor:g} x |f32-f64| "
          f"on average, <= {a.max_factor:g} x at the worst token (nats per token)")
    print("| case | engine PPL | model f32 PPL | max engine-f32 | mean engine-f64 "
          "| mean f32-f64 | max engine-f64 | max f32-f64 | ok |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    report, failed = [], 0
    for case in meta["cases"]:
        t0 = time.time()
        n32, engine = model_nll(cfg, weights, meta, case, torch.float32, a.device)
        n64, _ = model_nll(cfg, weights, meta, case, torch.float64, a.device)
        if n32.shape != engine.shape:
            sys.exit(f"{case['name']}: {n32.shape[0]} losses, the engine has {engine.shape[0]}")
        r = dict(name=case["name"], tokens=int(engine.shape[0]),
                 engine_ppl=math.exp(engine.mean().item()), f32_ppl=math.exp(n32.mean().item()),
                 f64_ppl=math.exp(n64.mean().item()),
                 max_engine_f32=(engine - n32).abs().max().item(),
                 mean_engine_f64=(engine - n64).abs().mean().item(),
                 mean_f32_f64=(n32 - n64).abs().mean().item(),
                 max_engine_f64=(engine - n64).abs().max().item(),
                 max_f32_f64=(n32 - n64).abs().max().item(),
                 model_seconds=round(time.time() - t0, 1))
        r["ok"] = (r["mean_engine_f64"] <= a.factor * r["mean_f32_f64"]
                   and r["max_engine_f64"] <= a.max_factor * r["max_f32_f64"])
        failed += not r["ok"]
        report.append(r)
        print(f"| {r['name']} | {r['engine_ppl']:.4f} | {r['f32_ppl']:.4f} | "
              f"{r['max_engine_f32']:.2e} | {r['mean_engine_f64']:.2e} | "
              f"{r['mean_f32_f64']:.2e} | {r['max_engine_f64']:.2e} | {r['max_f32_f64']:.2e} | "
              f"{'yes' if r['ok'] else 'NO'} |", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(dict(meta={k: v for k, v in meta.items() if k != "cases"}, device=a.device,
                           factor=a.factor, max_factor=a.max_factor, cases=report), f,
                      indent=1)
    print(f"{len(report) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

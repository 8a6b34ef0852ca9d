#!/usr/bin/env python3
"""Trains the Infini-attention gates β (and optionally low-rank q/k/v/o deltas).

Runs tools/train's model of the engine's forward (infini_model.py) over
sequences of --seq_len tokens drawn from a token file (longctx-eval tokens),
each a session of windowed DCA with chunks folded into the memory and mixed
through the gates, and backpropagates the loss of the tokens at and after
--loss_from (default: the window, the first token whose memory is not empty)
through every segment of the sequence, the memory recurrence included. The
last --holdout of the token file is never trained on: the validation loss
comes from there, beside the loss of the same sequences under SLIDE (the
window alone), which is what the memory has to beat.

Writes into --out: gates.safetensors (blk.N.infini_beta, the sidecar
longctx-eval --infini_gates and the server read), log.jsonl (one line per
step and per validation), and lora.safetensors with --lora_rank > 0 (which
merge_lora.py merges into a model file). With --eval_tokens it ends with
perplexities of SLIDE and of COMPRESS with the trained memory on that text
under longctx-eval's aligned protocol (windows ending every max(--eval_lengths)
tokens, the last --eval_score_last scored).

  tools/train/train_gates.py --model=M.gguf --tokens=crime.i32 --out=run/ \\
      --pretrain_len=2048 --window=2560 --sinks=64 --seq_len=10240 --minutes=6
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True, help="int32 token ids (longctx-eval tokens)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--pretrain_len", type=int, default=2048)
    ap.add_argument("--chunk_size", type=int, default=0, help="0: 3c/4")
    ap.add_argument("--local_window", type=int, default=0, help="0: c/8")
    ap.add_argument("--window", type=int, default=2560)
    ap.add_argument("--sinks", type=int, default=64)
    ap.add_argument("--rule", default="linear", choices=["linear", "delta"])
    ap.add_argument("--seq_len", type=int, default=10240)
    ap.add_argument("--loss_from", type=int, default=-1, help="default: --window")
    ap.add_argument("--holdout", type=float, default=0.1, help="share of the tokens kept out")
    ap.add_argument("--val_seqs", type=int, default=2)
    ap.add_argument("--val_every", type=int, default=25)
    ap.add_argument("--steps", type=int, default=1000000)
    ap.add_argument("--minutes", type=float, default=6.0, help="training time bound")
    ap.add_argument("--beta_init", type=float, default=-4.0)
    ap.add_argument("--lr", type=float, default=0.05, help="gates")
    ap.add_argument("--lora_rank", type=int, default=0, help="0: gates only")
    ap.add_argument("--lora_lr", type=float, default=1e-4)
    ap.add_argument("--same_sequence", action="store_true",
                    help="train on one fixed sequence (a smoke test: the loss must fall)")
    ap.add_argument("--eval_tokens", help="token file to report on at the end, as longctx-eval "
                    "ppl --score_last does (aligned windows); never trained on")
    ap.add_argument("--eval_lengths", default="10240,20480")
    ap.add_argument("--eval_score_last", type=int, default=1024)
    ap.add_argument("--eval_windows", type=int, default=2)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matrix products")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    import torch
    from infini_model import InfiniLlama, Settings, resolve_dca, write_gates
    from weights import load_gguf

    torch.manual_seed(a.seed)
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    os.makedirs(a.out, exist_ok=True)
    cfg, weights = load_gguf(a.model)
    C, L = resolve_dca(cfg.context_length, a.pretrain_len, a.chunk_size, a.local_window)
    settings = Settings(chunk_len=L, chunk_size=C, window=a.window, sinks=a.sinks,
                        overflow="compress", rule=a.rule, mix=True)
    beta = torch.full((cfg.n_layers, cfg.n_heads), a.beta_init)
    model = InfiniLlama(cfg, weights, settings, beta=beta, lora_rank=a.lora_rank)
    model = model.to(a.device)
    model.checkpoint_layers = True
    slide = InfiniLlama(cfg, weights, Settings(chunk_len=L, chunk_size=C, window=a.window,
                                               sinks=a.sinks, overflow="slide")).to(a.device)
    del weights
    groups = [{"params": [model.beta], "lr": a.lr}]
    if a.lora_rank:
        groups.append({"params": list(model.lora.parameters()), "lr": a.lora_lr})
    opt = torch.optim.Adam(groups)

    tokens = np.fromfile(a.tokens, dtype="<i4")
    split = int(len(tokens) * (1 - a.holdout))
    train, held = tokens[:split], tokens[split:]
    if len(train) < a.seq_len or len(held) < a.seq_len:
        sys.exit(f"{a.tokens}: {len(tokens)} tokens are too few for --seq_len={a.seq_len}")
    loss_from = a.window if a.loss_from < 0 else a.loss_from
    rng = np.random.default_rng(a.seed)
    val = [held[i * a.seq_len:(i + 1) * a.seq_len]
           for i in range(min(a.val_seqs, len(held) // a.seq_len))]

    def as_tensor(seq):
        return torch.from_numpy(seq.astype(np.int64)).to(a.device)

    def validate():
        with torch.no_grad():
            mem = [model.token_nll(as_tensor(s), first=loss_from).mean().item() for s in val]
            sl = [slide.token_nll(as_tensor(s), first=loss_from).mean().item() for s in val]
        return float(np.mean(mem)), float(np.mean(sl))

    log = open(os.path.join(a.out, "log.jsonl"), "w")

    def record(**kw):
        log.write(json.dumps(kw) + "\n")
        log.flush()
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in kw.items()), flush=True)

    def save(step):
        meta = dict(step=step, window=a.window, sinks=a.sinks, chunk_size=C, chunk_len=L,
                    rule=a.rule, seq_len=a.seq_len, tokens=os.path.basename(a.tokens))
        write_gates(os.path.join(a.out, "gates.safetensors"), model.beta, meta)
        if a.lora_rank:
            from safetensors.torch import save_file
            # merge_lora.py reads the scale α/r from here.
            lora_meta = dict(meta, lora_rank=a.lora_rank, lora_scale=model.lora_scale)
            save_file({k: v.detach().cpu().contiguous() for k, v in model.lora.items()},
                      os.path.join(a.out, "lora.safetensors"),
                      {k: str(v) for k, v in lora_meta.items()})

    v_mem, v_slide = validate()
    record(step=0, val_loss=v_mem, val_slide_loss=v_slide, seconds=0.0)
    t0 = time.time()
    fixed = train[:a.seq_len]
    step = 0
    while step < a.steps and time.time() - t0 < a.minutes * 60:
        start = 0 if a.same_sequence else int(rng.integers(0, len(train) - a.seq_len + 1))
        seq = fixed if a.same_sequence else train[start:start + a.seq_len]
        loss = model.token_nll(as_tensor(seq), first=loss_from).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        b = model.beta.detach()
        record(step=step, loss=loss.item(), ppl=math.exp(loss.item()), start=start,
               beta_mean=b.mean().item(), beta_min=b.min().item(), beta_max=b.max().item(),
               seconds=round(time.time() - t0, 1))
        if step % a.val_every == 0:
            v_mem, v_slide = validate()
            record(step=step, val_loss=v_mem, val_slide_loss=v_slide,
                   seconds=round(time.time() - t0, 1))
            save(step)
    v_mem, v_slide = validate()
    record(step=step, val_loss=v_mem, val_slide_loss=v_slide, seconds=round(time.time() - t0, 1),
           final=True)
    save(step)
    if a.eval_tokens:
        text = np.fromfile(a.eval_tokens, dtype="<i4")
        lengths = [int(x) for x in a.eval_lengths.split(",")]
        span = max(lengths)
        for n in lengths:
            res = {}
            for name, m in (("slide", slide), ("compress", model)):
                nll = []
                for w in range(min(a.eval_windows, len(text) // span)):
                    seq = text[(w + 1) * span - n:(w + 1) * span]
                    with torch.no_grad():
                        nll.append(m.token_nll(as_tensor(seq), first=n - a.eval_score_last - 1))
                res[name] = math.exp(torch.cat(nll).double().mean().item())
            record(eval_tokens=os.path.basename(a.eval_tokens), length=n,
                   score_last=a.eval_score_last, windows=len(nll), slide_ppl=res["slide"],
                   compress_ppl=res["compress"],
                   change_pct=100.0 * (res["compress"] / res["slide"] - 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

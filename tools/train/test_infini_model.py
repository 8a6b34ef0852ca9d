"""Tests of tools/train (pytest; skipped where PyTorch is absent).

The model's windowed DCA + memory attention against a plain per-query
reference written from docs/design.md §3-§4, the gradient path through the
memory, the gate sidecar format, the q/k un-permutation, and, where the real
model and a build of longctx-eval exist (LONGCTX_MODEL, build/bin), the
equivalence with the engine.
"""
import math
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from infini_model import InfiniLlama, Settings, read_gates, write_gates  # noqa: E402
from weights import ModelConfig, unpermute_rows  # noqa: E402

H, KV, D = 4, 2, 8


def tiny_model(settings, n_layers=2, seed=0):
    rng = np.random.default_rng(seed)
    d_model, d_ff, vocab = H * D, 48, 50
    cfg = ModelConfig("llama", n_layers, d_model, H, KV, D, d_ff, vocab, 64, 10000.0, 1e-5, True,
                      False)

    def m(r, c, s):
        return (rng.standard_normal((r, c)) * s).astype(np.float32)

    t = {"token_embd.weight": m(vocab, d_model, 1.0),
         "output_norm.weight": np.ones(d_model, np.float32)}
    for l in range(n_layers):
        p = f"blk.{l}."
        t[p + "attn_norm.weight"] = np.ones(d_model, np.float32)
        t[p + "ffn_norm.weight"] = np.ones(d_model, np.float32)
        t[p + "attn_q.weight"] = m(H * D, d_model, 0.4)
        t[p + "attn_k.weight"] = m(KV * D, d_model, 0.4)
        t[p + "attn_v.weight"] = m(KV * D, d_model, 0.2)
        t[p + "attn_output.weight"] = m(d_model, H * D, 0.2)
        t[p + "ffn_gate.weight"] = m(d_ff, d_model, 0.2)
        t[p + "ffn_up.weight"] = m(d_ff, d_model, 0.2)
        t[p + "ffn_down.weight"] = m(d_model, d_ff, 0.2)
    beta = torch.tensor(rng.standard_normal((n_layers, H)), dtype=torch.float32)
    return InfiniLlama(cfg, t, settings, beta=beta).double()


def sigma(x):
    return x + 1 if x > 0 else math.exp(x)


def rotate(x, p, inv):
    h = len(x) // 2
    out = np.empty_like(x)
    for i in range(h):
        c, s = math.cos(p * inv[i]), math.sin(p * inv[i])
        out[i] = x[i] * c - x[i + h] * s
        out[i + h] = x[i + h] * c + x[i] * s
    return out


def reference_attention(q, k, v, beta, s, inv):
    """Per query, per head, from the definitions; float64 numpy."""
    N = q.shape[0]
    L, C, W, S = s.chunk_len, s.chunk_size, s.window, s.sinks
    G = H // KV
    out = np.zeros_like(q)
    M = np.zeros((KV, D, D))
    z = np.zeros((KV, D))
    folded = S
    for i in range(N):
        c = i // L
        ws = max(S, (c - W // L + 1) * L) if W else 0
        # Fold the chunks that left the window, one chunk per update.
        while W and folded < ws:
            end = min(ws, (folded // L + 1) * L)
            if s.overflow == "compress":
                dM, dz = np.zeros_like(M), np.zeros_like(z)
                for j in range(folded, end):
                    for g in range(KV):
                        sk = np.array([sigma(x) for x in k[j, g]])
                        u = v[j, g].copy()
                        if s.rule == "delta":
                            u -= (sk @ M[g]) / max(sk @ z[g], s.eps)
                        dM[g] += np.outer(sk, u)
                        dz[g] += sk
                M, z = M + dM, z + dz
            folded = end
        for h in range(H):
            g = h // G
            scores, vals = [], []
            for j in range(i + 1):
                if W and ws > S and S <= j < ws:
                    continue
                dist = c - j // L
                qp = [i % L, min(i % L + L, C), C][min(dist, 2)]
                qr = rotate(q[i, h], qp, inv)
                kr = rotate(k[j, g], j % L, inv)
                scores.append(qr @ kr / math.sqrt(D))
                vals.append(v[j, g])
            p = np.exp(np.array(scores) - max(scores))
            a_dca = (p / p.sum()) @ np.array(vals)
            if s.mix:
                sq = np.array([sigma(x) for x in q[i, h]])
                den = sq @ z[g]
                a_mem = np.zeros(D) if den == 0 else (sq @ M[g]) / max(den, s.eps)
                gate = 1 / (1 + math.exp(-beta[h]))
                out[i, h] = gate * a_mem + (1 - gate) * a_dca
            else:
                out[i, h] = a_dca
    return out


CASES = [
    Settings(chunk_len=8, chunk_size=12),
    Settings(chunk_len=8, chunk_size=12, window=16, sinks=4, overflow="slide"),
    Settings(chunk_len=8, chunk_size=12, window=16, sinks=4, overflow="compress", mix=True),
    Settings(chunk_len=8, chunk_size=12, window=16, sinks=4, overflow="compress", rule="delta",
             mix=True),
    Settings(chunk_len=8, chunk_size=10, window=8, sinks=0, overflow="compress", mix=True),
]


@pytest.mark.parametrize("s", CASES, ids=lambda s: f"W{s.window}-S{s.sinks}-{s.overflow}-"
                                                    f"{s.rule}-mix{int(s.mix)}")
def test_attention_matches_per_query_reference(s):
    model = tiny_model(s)
    rng = np.random.default_rng(1)
    N = 45  # not a multiple of L: the last chunk is partial
    q = rng.standard_normal((N, H, D))
    k = rng.standard_normal((N, KV, D))
    v = rng.standard_normal((N, KV, D))
    beta = rng.standard_normal(H)
    got = model.attention(torch.tensor(q), torch.tensor(k), torch.tensor(v),
                          torch.tensor(beta)).numpy()
    want = reference_attention(q, k, v, beta, s, model.inv_freq.numpy())
    # The model rounds its cos/sin tables to float32, as the engine does (6e-8
    # relative each); a wrong key set, position or fold is off by far more.
    assert np.abs(got - want).max() < 1e-6


def test_gradient_reaches_folded_tokens_only_through_the_memory():
    rng = np.random.default_rng(2)
    N = 40
    base = dict(chunk_len=8, chunk_size=12, window=16, sinks=4)
    grads = {}
    for name, s in {"mix": Settings(**base, mix=True),
                    "slide": Settings(**base, overflow="slide")}.items():
        model = tiny_model(s)
        v = torch.tensor(rng.standard_normal((N, KV, D)), requires_grad=True)
        q = torch.tensor(rng.standard_normal((N, H, D)))
        k = torch.tensor(rng.standard_normal((N, KV, D)))
        out = model.attention(q, k, v, torch.zeros(H, dtype=torch.float64))
        out[32:].sum().backward()  # the last chunk: its window is chunks 3-4 and the sinks
        grads[name] = v.grad[4:24].abs().sum().item()  # tokens folded before chunk 4
    assert grads["slide"] == 0
    assert grads["mix"] > 0


def test_token_nll_gradient_reaches_the_gates():
    s = Settings(chunk_len=8, chunk_size=12, window=16, sinks=4, mix=True)
    model = tiny_model(s)
    tokens = torch.tensor(np.random.default_rng(3).integers(0, 50, 40))
    model.token_nll(tokens, first=16).mean().backward()
    assert torch.isfinite(model.beta.grad).all()
    assert (model.beta.grad.abs() > 0).all()


def test_gate_sidecar_round_trip_and_format(tmp_path):
    beta = torch.randn(3, 5)
    write_gates(tmp_path / "g.safetensors", beta, {"step": 7})
    assert torch.equal(read_gates(tmp_path / "g.safetensors"), beta)
    # Same bytes as the repository's constant-gate writer.
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_infini_gates.py"),
                    "--layers", "3", "--heads", "5", "--beta", "-1.5", "--out",
                    str(tmp_path / "c.safetensors")], check=True)
    assert torch.equal(read_gates(tmp_path / "c.safetensors"), torch.full((3, 5), -1.5))


def test_unpermute_undoes_the_gguf_pair_layout():
    n_heads, hd, cols = 3, 8, 5
    w = np.arange(n_heads * hd * cols, dtype=np.float32).reshape(n_heads * hd, cols)
    # The GGUF writer's order: per head, the two halves interleaved pair by pair.
    permuted = w.reshape(n_heads, 2, hd // 2, cols).swapaxes(1, 2).reshape(n_heads * hd, cols)
    assert np.array_equal(unpermute_rows(permuted, n_heads), w)
    assert not np.array_equal(permuted, w)


@pytest.mark.skipif(not os.environ.get("LONGCTX_MODEL")
                    or not os.path.exists(os.path.join(ROOT, "build/bin/longctx-eval")),
                    reason="needs LONGCTX_MODEL and build/bin/longctx-eval")
def test_engine_equivalence_on_a_small_window(tmp_path):
    import check_equivalence

    rc = check_equivalence.main([
        f"--model={os.environ['LONGCTX_MODEL']}",
        f"--eval={os.path.join(ROOT, 'build/bin/longctx-eval')}",
        f"--text={os.path.join(ROOT, 'README.md')}", "--length=448", "--window=128",
        "--sinks=64", "--pretrain_len=128", "--chunk_size=96", "--local_window=32",
        "--betas=-1", f"--work={tmp_path}"])
    assert rc == 0

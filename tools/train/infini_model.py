"""PyTorch model of the engine's segment-level forward (docs/design.md §3, §4).

The same computation as LlamaModel::Forward under an InfiniWindow session, on
the CPU or the GPU, with autograd through everything, the memory recurrence
included:

- Dual Chunk Attention: keys rotated once at j mod L; a query at i takes
  position i mod L against keys of its own chunk (causal), min(i mod L + L, C)
  against the previous chunk, and C against older chunks.
- The Infini window: query i sees the sinks (j < S) and the chunks from
  window_start(i) = max(S, (i//L - W/L + 1)·L) on (everything if that is ≤ S).
- The memory (compress): chunks leaving the window are folded, one chunk per
  update, oldest first, into M (D×D) and z (D) per layer and kv head, from
  un-rotated keys with σ = ELU + 1, by the linear rule M += σ(K)ᵀV or the
  delta rule M += σ(K)ᵀ(V − σ(K)M / max(σ(K)·z, ε)); z += Σσ(K_t). A chunk
  reads the memory as it was before any of its own tokens could be folded.
- Retrieval σ(q)M / max(σ(q)·z, ε) from un-rotated queries (0 while empty),
  mixed per q head: sigmoid(β)·A_mem + (1 − sigmoid(β))·A_dca.

Segments are the DCA chunks: the engine never lets a step cross a chunk
boundary while a window is on, so all queries of a chunk share one window and
one memory state, and the whole sequence runs layer by layer, chunk by chunk.

Trainable: the gates β [n_layers, n_heads] and, optionally, low-rank deltas of
the q/k/v/o projections (W + (α/r)·B·A, B starting at zero).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class Settings:
    """The session settings longctx-eval takes (tools/eval_main.cc flags)."""

    chunk_len: int  # L = C − w
    chunk_size: int  # C
    window: int = 0  # W (--infini_window), a multiple of L; 0 = full DCA, no window
    sinks: int = 0  # S (--infini_sinks)
    overflow: str = "compress"  # compress | slide (--infini)
    rule: str = "linear"  # linear | delta (--infini_update)
    mix: bool = False  # --infini_mix
    eps: float = 1e-6

    def validate(self):
        L, W = self.chunk_len, self.window
        if not 0 < L <= self.chunk_size:
            raise ValueError(f"need 0 < L={L} <= C={self.chunk_size}")
        if W < 0 or W % L:
            raise ValueError(f"window {W} must be a non-negative multiple of L={L}")
        if self.overflow not in ("compress", "slide") or self.rule not in ("linear", "delta"):
            raise ValueError(f"overflow {self.overflow!r}, rule {self.rule!r}")
        if self.mix and (W == 0 or self.overflow != "compress"):
            raise ValueError("mixing needs a window under compress")


def resolve_dca(context_length, pretrain_len=0, chunk_size=0, local_window=0):
    """(C, L) as DcaConfig::Resolve: C = 3c/4 and w = c/8, both rounded down to 64."""
    c = pretrain_len or context_length
    C = chunk_size or c * 3 // 4 // 64 * 64
    w = local_window or c // 8 // 64 * 64
    if not 0 < w < C <= c:
        raise ValueError(f"DCA needs 0 < w={w} < C={C} <= c={c}")
    return C, C - w


def _tensor(a):
    return torch.from_numpy(a.copy())


def elu1(x):
    # exp only of the non-positive part: the other branch's gradient stays finite.
    return torch.where(x > 0, x + 1, torch.exp(torch.clamp(x, max=0)))


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class InfiniLlama(torch.nn.Module):
    """The model of `tensors` (weights.load_gguf) under `settings`.

    dtype float32 follows the engine's CPU backend; float64 gives the reference
    the f32 spread is measured against. Weights are frozen buffers.
    """

    def __init__(self, cfg, tensors, settings, beta=None, lora_rank=0, lora_alpha=None,
                 lora_layers=None):
        super().__init__()
        settings.validate()
        self.cfg, self.s = cfg, settings
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.checkpoint_layers = False
        self.register_buffer("embed", _tensor(tensors["token_embd.weight"]))
        if not cfg.tied_embeddings:
            self.register_buffer("untied_head", _tensor(tensors["output.weight"]))
        self.register_buffer("out_norm", _tensor(tensors["output_norm.weight"]))
        names = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
                 "ffn_gate", "ffn_up", "ffn_down"]
        for l in range(cfg.n_layers):
            for n in names:
                self.register_buffer(f"w{l}_{n}", _tensor(tensors[f"blk.{l}.{n}.weight"]))
            for n in ("attn_q", "attn_k", "attn_v"):
                b = tensors.get(f"blk.{l}.{n}.bias")
                self.register_buffer(f"b{l}_{n}", None if b is None else _tensor(b))
        # Frequencies as the engine has them (f32 from a double pow); angles in double.
        d = cfg.head_dim
        inv = torch.tensor([cfg.rope_theta ** (-2.0 * i / d) for i in range(d // 2)],
                           dtype=torch.float64).float().double()
        self.register_buffer("inv_freq", inv, persistent=False)
        if beta is None:
            beta = torch.zeros(cfg.n_layers, cfg.n_heads)
        self.beta = torch.nn.Parameter(torch.as_tensor(beta, dtype=torch.float32).clone())
        self.lora_rank = lora_rank
        self.lora_scale = (lora_alpha or lora_rank) / max(lora_rank, 1)
        self.lora = torch.nn.ParameterDict()
        if lora_rank > 0:
            layers = range(cfg.n_layers) if lora_layers is None else lora_layers
            g = torch.Generator().manual_seed(0)
            for l in layers:
                for n in ("attn_q", "attn_k", "attn_v", "attn_output"):
                    rows, cols = tensors[f"blk.{l}.{n}.weight"].shape
                    a = torch.randn(lora_rank, cols, generator=g) / math.sqrt(cols)
                    self.lora[f"{l}_{n}_a"] = torch.nn.Parameter(a)
                    self.lora[f"{l}_{n}_b"] = torch.nn.Parameter(torch.zeros(rows, lora_rank))

    # --- pieces -------------------------------------------------------------

    @property
    def head(self):
        return self.embed if self.cfg.tied_embeddings else self.untied_head

    def _w(self, l, n):
        return getattr(self, f"w{l}_{n}")

    def _linear(self, x, l, n):
        y = x @ self._w(l, n).T
        b = getattr(self, f"b{l}_{n}", None)
        if b is not None:
            y = y + b
        a = self.lora[f"{l}_{n}_a"] if f"{l}_{n}_a" in self.lora else None
        if a is not None:
            y = y + (x @ a.to(x.dtype).T) @ self.lora[f"{l}_{n}_b"].to(x.dtype).T * self.lora_scale
        return y

    def merged_weight(self, l, n):
        """W + (α/r)·B·A of one projection (engine layout), for writing a model file."""
        w = self._w(l, n)
        if f"{l}_{n}_a" not in self.lora:
            return w
        return w + self.lora_scale * (self.lora[f"{l}_{n}_b"] @ self.lora[f"{l}_{n}_a"]).to(w.dtype)

    def _rope(self, x, pos):
        """x [T, heads, D] rotated at pos [T] (half-split pairs, as cpu::Rope)."""
        ang = pos.to(torch.float64)[:, None] * self.inv_freq[None, :]
        c = torch.cos(ang).float().to(x.dtype)[:, None, :]
        s = torch.sin(ang).float().to(x.dtype)[:, None, :]
        h = x.shape[-1] // 2
        x1, x2 = x[..., :h], x[..., h:]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)

    def _scores(self, q, k):
        """q [Tq, H, D], k [Tk, KV, D] -> scaled scores [KV, G, Tq, Tk]."""
        KV = k.shape[1]
        Tq, H, D = q.shape
        qh = q.reshape(Tq, KV, H // KV, D).permute(1, 2, 0, 3)
        return (qh @ k.permute(1, 2, 0).unsqueeze(1)) * self.scale

    def _fold(self, mem, k, v):
        """Folds one segment (k un-rotated, v: [T, KV, D]) into mem = (M [KV,D,D], z [KV,D])."""
        sk = elu1(k).transpose(0, 1)  # [KV, T, D]
        u = v.transpose(0, 1)
        M, z = mem
        if self.s.rule == "delta":
            den = (sk * z[:, None, :]).sum(-1, keepdim=True)
            u = u - (sk @ M) / den.clamp_min(self.s.eps)
        return M + sk.transpose(1, 2) @ u, z + sk.sum(1)

    def _retrieve(self, q, mem):
        """A_mem of q (un-rotated, [T, H, D]) from mem."""
        M, z = mem
        T, H, D = q.shape
        KV = M.shape[0]
        sq = elu1(q).reshape(T, KV, H // KV, D)
        num = torch.einsum("tkgd,kde->tkge", sq, M)
        den = torch.einsum("tkgd,kd->tkg", sq, z)[..., None]
        return (num / den.clamp_min(self.s.eps)).reshape(T, H, D)

    def attention(self, q, k, v, beta):
        """Windowed DCA with the memory, q [N, H, D], k and v [N, KV, D] -> [N, H, D]."""
        s = self.s
        N, H, D = q.shape
        L, C, W, S = s.chunk_len, s.chunk_size, s.window, s.sinks
        dev = q.device
        pos = torch.arange(N, device=dev)
        t = pos % L
        k_rot = self._rope(k, t)
        # Query rotations by version: 0 intra, 1 successive, 2 inter.
        q_ver = [self._rope(q, t), self._rope(q, torch.clamp(t + L, max=C)),
                 self._rope(q, torch.full_like(t, C))]
        compress = W > 0 and s.overflow == "compress"
        mem, evicted = None, S
        gate = torch.sigmoid(beta).to(q.dtype)[None, :, None]
        out = []
        for c in range((N + L - 1) // L):
            i0, i1 = c * L, min(c * L + L, N)
            ranges = [(0, i1)]
            if W > 0:
                ws = max(S, (c - W // L + 1) * L)
                while evicted < ws:  # one chunk per fold, oldest first
                    end = min(ws, (evicted // L + 1) * L)
                    if compress:
                        if mem is None:
                            KV = k.shape[1]
                            mem = (q.new_zeros(KV, D, D), q.new_zeros(KV, D))
                        mem = self._fold(mem, k[evicted:end], v[evicted:end])
                    evicted = end
                if ws > S:
                    ranges = [(0, S), (ws, i1)]
            # Keys by chunk distance: inter (older than c−1), successive (c−1), intra (c).
            bounds = [(2, 0, i0 - L), (1, i0 - L, i0), (0, i0, i1)]
            parts_s, parts_v = [], []
            for ver, lo, hi in bounds:
                for a, b in ranges:
                    a, b = max(a, lo, 0), min(b, hi)
                    if a >= b:
                        continue
                    sc = self._scores(q_ver[ver][i0:i1], k_rot[a:b])
                    if ver == 0:
                        causal = pos[a:b][None, :] > pos[i0:i1][:, None]
                        sc = sc.masked_fill(causal, float("-inf"))
                    parts_s.append(sc)
                    parts_v.append(v[a:b])
            p = torch.softmax(torch.cat(parts_s, dim=-1), dim=-1)
            vv = torch.cat(parts_v, dim=0).permute(1, 0, 2).unsqueeze(1)  # [KV, 1, Tk, D]
            o = (p @ vv).permute(2, 0, 1, 3).reshape(i1 - i0, H, D)
            if s.mix:
                a_mem = self._retrieve(q[i0:i1], mem) if mem is not None else torch.zeros_like(o)
                o = gate * a_mem + (1 - gate) * o
            out.append(o)
        return torch.cat(out, dim=0)

    def layer(self, l, x):
        cfg = self.cfg
        N = x.shape[0]
        h = rms_norm(x, self._w(l, "attn_norm"), cfg.rms_eps)
        q = self._linear(h, l, "attn_q").reshape(N, cfg.n_heads, cfg.head_dim)
        k = self._linear(h, l, "attn_k").reshape(N, cfg.n_kv_heads, cfg.head_dim)
        v = self._linear(h, l, "attn_v").reshape(N, cfg.n_kv_heads, cfg.head_dim)
        a = self.attention(q, k, v, self.beta[l]).reshape(N, -1)
        x = x + self._linear(a, l, "attn_output")
        h = rms_norm(x, self._w(l, "ffn_norm"), cfg.rms_eps)
        g = F.silu(h @ self._w(l, "ffn_gate").T) * (h @ self._w(l, "ffn_up").T)
        return x + g @ self._w(l, "ffn_down").T

    def hidden(self, tokens):
        """Final-normed hidden states [N, d_model] of token ids [N]."""
        x = self.embed[tokens]
        for l in range(self.cfg.n_layers):
            if self.checkpoint_layers and torch.is_grad_enabled():
                x = checkpoint(self.layer, l, x, use_reentrant=False)
            else:
                x = self.layer(l, x)
        return rms_norm(x, self.out_norm, self.cfg.rms_eps)

    def token_nll(self, tokens, first=0, rows=512):
        """−log p(tokens[t+1] | tokens[..t]) for t in [first, N−2], nats, shape [N−1−first].

        Logits are made `rows` positions at a time (and recomputed in the
        backward pass), so the [N, vocab] matrix never exists whole.
        """
        h = self.hidden(tokens)
        out = []
        for r0 in range(first, tokens.shape[0] - 1, rows):
            r1 = min(r0 + rows, tokens.shape[0] - 1)

            def piece(hh, tgt):
                logits = hh @ self.head.T
                return torch.logsumexp(logits, -1) - logits.gather(1, tgt[:, None])[:, 0]

            args = (h[r0:r1], tokens[r0 + 1:r1 + 1])
            if torch.is_grad_enabled():
                out.append(checkpoint(piece, *args, use_reentrant=False))
            else:
                out.append(piece(*args))
        return torch.cat(out)


def write_gates(path, beta, metadata=None):
    """A safetensors sidecar of blk.N.infini_beta (F32, one per q head), as
    engine/model/infini_gates.h reads it."""
    import json
    import struct

    beta = beta.detach().to(torch.float32).cpu()
    header = {"__metadata__": {k: str(v) for k, v in (metadata or {}).items()}}
    data = b""
    for l in range(beta.shape[0]):
        blob = struct.pack(f"<{beta.shape[1]}f", *beta[l].tolist())
        header[f"blk.{l}.infini_beta"] = {"dtype": "F32", "shape": [beta.shape[1]],
                                          "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + data)


def read_gates(path):
    """The gates of a sidecar written by write_gates (or tools/make_infini_gates.py)."""
    import json
    import struct

    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    layers = sorted(int(k.split(".")[1]) for k in header if k.startswith("blk."))
    rows = []
    for l in layers:
        e = header[f"blk.{l}.infini_beta"]
        if e["dtype"] != "F32":
            raise ValueError(f"{path}: blk.{l}.infini_beta is {e['dtype']}, want F32")
        a, b = e["data_offsets"]
        rows.append(struct.unpack(f"<{(b - a) // 4}f", data[a:b]))
    return torch.tensor(rows, dtype=torch.float32)

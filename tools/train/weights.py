"""Reads a llama or qwen2 GGUF model into f32 numpy arrays, as the engine does.

The tensors are dequantized with the gguf package's pure Python reader. Two
facts of the engine's loader (engine/model/gguf_model.cc) are reproduced:
llama-arch q/k weights (and biases) are stored permuted for adjacent-pair RoPE
and are un-permuted here to the half-split layout the engine rotates, and an
absent output.weight means the head is tied to token_embd.weight.
"""
from dataclasses import dataclass

import numpy as np


@dataclass
class ModelConfig:
    architecture: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    vocab_size: int
    context_length: int
    rope_theta: float
    rms_eps: float
    tied_embeddings: bool
    qkv_bias: bool


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise KeyError(f"GGUF: missing key {key}")
        return default
    part = f.parts[f.data[0]]
    if f.types and f.types[0].name == "STRING":
        return bytes(part).decode()
    return part[0].item()


def unpermute_rows(w, n_heads):
    """Row h*hd + 2i + s of the file goes to h*hd + s*hd/2 + i (one head's pairs split)."""
    rows = w.shape[0]
    hd = rows // n_heads
    rest = w.shape[1:]
    return w.reshape(n_heads, hd // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def permute_rows(w, n_heads):
    """The inverse of unpermute_rows: engine-layout rows back to the GGUF pair order."""
    rows = w.shape[0]
    hd = rows // n_heads
    rest = w.shape[1:]
    return w.reshape(n_heads, 2, hd // 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def load_gguf(path):
    """Returns (ModelConfig, {name: f32 array}) with engine-layout q/k weights."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(path)
    arch = _field(r, "general.architecture")
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"GGUF: architecture {arch!r} is not llama or qwen2")
    a = arch + "."
    if a + "rope.scaling.type" in r.fields and _field(r, a + "rope.scaling.type") != "none":
        raise ValueError("GGUF: rope scaling is not supported by tools/train")
    n_heads = int(_field(r, a + "attention.head_count"))
    d_model = int(_field(r, a + "embedding_length"))
    tensors = {}
    for t in r.tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        # The reader gives rows first (GGUF lists the fastest dimension first).
        w = w.reshape([int(x) for x in reversed(t.shape)] if len(t.shape) > 1 else [-1])
        tensors[t.name] = w
    n_kv = int(_field(r, a + "attention.head_count_kv", n_heads))
    cfg = ModelConfig(
        architecture=arch,
        n_layers=int(_field(r, a + "block_count")),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=int(_field(r, a + "attention.key_length", d_model // n_heads)),
        d_ff=int(_field(r, a + "feed_forward_length")),
        vocab_size=tensors["token_embd.weight"].shape[0],
        context_length=int(_field(r, a + "context_length")),
        rope_theta=float(_field(r, a + "rope.freq_base", 10000.0)),
        rms_eps=float(_field(r, a + "attention.layer_norm_rms_epsilon", 1e-5)),
        tied_embeddings="output.weight" not in tensors,
        qkv_bias="blk.0.attn_q.bias" in tensors,
    )
    if arch == "llama":
        for name in list(tensors):
            if not name.startswith("blk."):
                continue
            if name.endswith((".attn_q.weight", ".attn_q.bias")):
                tensors[name] = unpermute_rows(tensors[name], cfg.n_heads)
            elif name.endswith((".attn_k.weight", ".attn_k.bias")):
                tensors[name] = unpermute_rows(tensors[name], cfg.n_kv_heads)
    return cfg, tensors

#!/usr/bin/env python3
"""Expected values for tests/model_loader_test.cc, computed from a GGUF model with
the `gguf` Python package (gguf.quants.dequantize) and Hugging Face transformers'
GGUF q/k reverse permutation, independently of the C++ loader.

Usage: tools/gen_loader_fixtures.py MODEL.gguf > tests/fixtures/loader/smollm2_q4_1.txt

Line format (one fact per line, whitespace separated):
  config KEY VALUE
  vocab KEY VALUE            (strings are hex-encoded UTF-8)
  tensor NAME ROWS COLS      (shape outermost first; COLS 0 for a vector)
  value NAME ROW COL BITS    (f32 bit pattern in hex; exact match expected)
  permuted NAME ROW COL BITS (value of the file's row order, before un-permuting)
"""
import sys

import numpy as np
from gguf import GGUFReader, quants
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


def unpermute_numpy(w, n_head):
    # Inverse of the converter's w.reshape(n_head, 2, hd/2, in).swapaxes(1, 2).
    rows = w.shape[0]
    hd = rows // n_head
    return w.reshape(n_head, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def bits(x):
    return "%08x" % int(np.float32(x).view(np.uint32))


def main():
    path = sys.argv[1]
    r = GGUFReader(path)
    arch = field(r, "general.architecture")
    a = arch + "."
    n_head = int(field(r, a + "attention.head_count"))
    n_kv = int(field(r, a + "attention.head_count_kv"))
    d_model = int(field(r, a + "embedding_length"))
    tensors = {t.name: t for t in r.tensors}
    out = []
    out.append(f"config architecture {arch}")
    out.append(f"config n_layers {int(field(r, a + 'block_count'))}")
    out.append(f"config d_model {d_model}")
    out.append(f"config n_heads {n_head}")
    out.append(f"config n_kv_heads {n_kv}")
    out.append(f"config head_dim {d_model // n_head}")
    out.append(f"config d_ff {int(field(r, a + 'feed_forward_length'))}")
    out.append(f"config vocab_size {int(tensors['token_embd.weight'].shape[1])}")
    out.append(f"config context_length {int(field(r, a + 'context_length'))}")
    out.append(f"config rope_theta {bits(field(r, a + 'rope.freq_base'))}")
    out.append(f"config rms_eps {bits(field(r, a + 'attention.layer_norm_rms_epsilon'))}")
    out.append(f"config tied_embeddings {int('output.weight' not in tensors)}")
    out.append(f"config n_tensors {len(r.tensors)}")

    toks = field(r, "tokenizer.ggml.tokens")
    merges = field(r, "tokenizer.ggml.merges")
    out.append(f"vocab model {field(r, 'tokenizer.ggml.model').encode().hex()}")
    out.append(f"vocab pre {field(r, 'tokenizer.ggml.pre').encode().hex()}")
    out.append(f"vocab n_tokens {len(toks)}")
    out.append(f"vocab n_merges {len(merges)}")
    for key in ["bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"]:
        out.append(f"vocab {key} {int(field(r, 'tokenizer.ggml.' + key))}")
    for i in [0, 1, 2, 100, 1000, len(toks) - 1]:
        out.append(f"vocab token_{i} {toks[i].encode().hex()}")
    out.append(f"vocab merge_0 {merges[0].encode().hex()}")
    out.append(f"vocab merge_last {merges[-1].encode().hex()}")
    types = field(r, "tokenizer.ggml.token_type")
    out.append(f"vocab type_0 {int(types[0])}")
    out.append(f"vocab type_1000 {int(types[1000])}")

    processor = LlamaTensorProcessor(config={"num_attention_heads": n_head,
                                             "num_key_value_heads": n_kv})
    rng = np.random.default_rng(1234)
    n_layers = int(field(r, a + "block_count"))
    names = ["token_embd.weight", "output_norm.weight", "blk.0.attn_norm.weight",
             "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight",
             "blk.0.attn_output.weight", "blk.0.ffn_gate.weight", "blk.0.ffn_down.weight",
             f"blk.{n_layers - 1}.attn_q.weight", f"blk.{n_layers - 1}.attn_k.weight",
             f"blk.{n_layers - 1}.ffn_up.weight"]
    for name in names:
        t = tensors[name]
        w = quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        file_rows = w.reshape(-1, w.shape[-1]) if w.ndim > 1 else w
        permuted = arch == "llama" and (".attn_q." in name or ".attn_k." in name)
        if permuted:
            heads = n_head if ".attn_q." in name else n_kv
            mine = unpermute_numpy(w, heads)
            ref = processor.process(w, name).weights
            assert np.array_equal(mine, ref), name
            w = ref
        if w.ndim == 1:
            out.append(f"tensor {name} {w.shape[0]} 0")
            for c in rng.choice(w.shape[0], 8, replace=False):
                out.append(f"value {name} 0 {c} {bits(w[c])}")
            continue
        out.append(f"tensor {name} {w.shape[0]} {w.shape[1]}")
        rows = list(rng.choice(w.shape[0], 12, replace=False)) + [0, 1, w.shape[0] - 1]
        for row in rows:
            for c in rng.choice(w.shape[1], 3, replace=False):
                out.append(f"value {name} {row} {c} {bits(w[row, c])}")
                if permuted:
                    out.append(f"permuted {name} {row} {c} {bits(file_rows[row, c])}")
    print("\n".join(out))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Seed corpus for the GGUF fuzzer (tests/fuzz/gguf_fuzz.cc), written with the
`gguf` package's GGUFWriter, a writer independent of our reader.

Usage: tools/gen_gguf_seeds.py tests/fuzz/corpus

  tiny_llama.gguf  a complete 1-layer llama model (LoadGgufModel accepts it)
  tiny_qwen2.gguf  the same as qwen2 with q/k/v biases and an output matrix
  all_types.gguf   one small tensor of every supported ggml type and metadata
                   of every value type, nested arrays included
tests/gguf_hostile_test.cc parses all three and loads the two models.
"""
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V
from gguf import GGUFWriter, quants

D, HEADS, KV_HEADS, FF, VOCAB = 32, 4, 2, 64, 16
HD = D // HEADS


def add(w, rng, name, shape, qtype=T.F32):
    x = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    if qtype == T.F32:
        w.add_tensor(name, x)
    else:
        q = quants.quantize(x, qtype)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)


def tiny_model(path, arch, rng):
    w = GGUFWriter(path, arch)
    w.add_name("tiny " + arch)
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(D)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2" if arch == "qwen2" else "smollm")
    tokens = ["<s>", "</s>"] + [chr(ord("a") + i) for i in range(VOCAB - 2)]
    w.add_token_list(tokens)
    w.add_token_types([3, 3] + [1] * (VOCAB - 2))
    w.add_token_merges(["a b", "c d"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_chat_template("{{ messages }}")
    add(w, rng, "token_embd.weight", (VOCAB, D), T.Q8_0)
    add(w, rng, "output_norm.weight", (D,))
    if arch == "qwen2":
        add(w, rng, "output.weight", (VOCAB, D), T.Q4_0)
    add(w, rng, "blk.0.attn_norm.weight", (D,))
    add(w, rng, "blk.0.attn_q.weight", (HEADS * HD, D), T.Q4_0)
    add(w, rng, "blk.0.attn_k.weight", (KV_HEADS * HD, D), T.Q4_1)
    add(w, rng, "blk.0.attn_v.weight", (KV_HEADS * HD, D), T.Q5_0)
    if arch == "qwen2":
        add(w, rng, "blk.0.attn_q.bias", (HEADS * HD,))
        add(w, rng, "blk.0.attn_k.bias", (KV_HEADS * HD,))
        add(w, rng, "blk.0.attn_v.bias", (KV_HEADS * HD,))
    add(w, rng, "blk.0.attn_output.weight", (D, HEADS * HD), T.Q5_1)
    add(w, rng, "blk.0.ffn_norm.weight", (D,))
    add(w, rng, "blk.0.ffn_gate.weight", (FF, D), T.Q4_0)
    add(w, rng, "blk.0.ffn_up.weight", (FF, D), T.Q4_0)
    add(w, rng, "blk.0.ffn_down.weight", (D, FF), T.F16)
    finish(w)


def all_types(path, rng):
    w = GGUFWriter(path, "llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 1.5)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "h\u00e9llo")
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", -2.25)
    w.add_key_value("t.arr_i16", [1, -2, 3], V.ARRAY, sub_type=V.INT16)
    w.add_key_value("t.arr_f64", [0.5, 1.5], V.ARRAY, sub_type=V.FLOAT64)
    w.add_array("t.arr_str", ["x", "", "yz"])
    w.add_array("t.arr_nested", [[1, 2], [3]])
    for i, qtype in enumerate([T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]):
        add(w, rng, f"t{i}.{qtype.name}", (2, 64), qtype)
    for qtype in [T.Q4_K, T.Q5_K, T.Q6_K]:
        block, size = quants.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size, dtype=np.uint32).astype(np.uint8)
        scale_at = [208] if qtype == T.Q6_K else [0, 2]
        for off in scale_at:
            raw[off:off + 2] = np.array([0.01], dtype=np.float16).view(np.uint8)
        w.add_tensor(f"k.{qtype.name}", raw.reshape(1, size), raw_shape=(1, size),
                     raw_dtype=qtype)
    add(w, rng, "t.3d", (2, 3, 32))
    finish(w)


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)
    tiny_model(os.path.join(out, "tiny_llama.gguf"), "llama", rng)
    tiny_model(os.path.join(out, "tiny_qwen2.gguf"), "qwen2", rng)
    all_types(os.path.join(out, "all_types.gguf"), rng)


if __name__ == "__main__":
    main()

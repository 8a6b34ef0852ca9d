#!/usr/bin/env python3
"""Tiny Hugging Face model directories for tests/safetensors_test.cc, written
with the `safetensors` and `tokenizers` packages (writers independent of our
reader).

Usage: tools/gen_hf_fixtures.py tests/fixtures/loader

  hf_tiny_llama/    llama, tied embeddings, one model.safetensors (F32 + F16)
  hf_tiny_qwen2/    qwen2 (q/k/v bias, lm_head), two shards + index.json
  hf_expected.txt   "value DIR HF_NAME ROW COL BITS" lines: f32 bit patterns
                    the loader must reproduce exactly (F16 -> f32 is exact)
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

D, HEADS, KV_HEADS, FF = 16, 4, 2, 32
HD = D // HEADS


def byte_level_tokenizer():
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("\u0120", "w")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    return tok


def weights(rng, arch, vocab_size):
    w = {}

    def add(name, shape, dtype=np.float32):
        w[name] = (rng.standard_normal(shape) * 0.1).astype(dtype)

    add("model.embed_tokens.weight", (vocab_size, D), np.float16)
    add("model.norm.weight", (D,))
    if arch == "qwen2":
        add("lm_head.weight", (vocab_size, D), np.float16)
    for layer in range(2):
        p = f"model.layers.{layer}."
        add(p + "input_layernorm.weight", (D,))
        add(p + "post_attention_layernorm.weight", (D,))
        add(p + "self_attn.q_proj.weight", (HEADS * HD, D), np.float16)
        add(p + "self_attn.k_proj.weight", (KV_HEADS * HD, D), np.float16)
        add(p + "self_attn.v_proj.weight", (KV_HEADS * HD, D))
        add(p + "self_attn.o_proj.weight", (D, HEADS * HD))
        if arch == "qwen2":
            add(p + "self_attn.q_proj.bias", (HEADS * HD,))
            add(p + "self_attn.k_proj.bias", (KV_HEADS * HD,))
            add(p + "self_attn.v_proj.bias", (KV_HEADS * HD,))
        add(p + "mlp.gate_proj.weight", (FF, D), np.float16)
        add(p + "mlp.up_proj.weight", (FF, D))
        add(p + "mlp.down_proj.weight", (D, FF))
    return w


def config(arch, vocab_size):
    c = {
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "model_type": arch,
        "hidden_size": D,
        "intermediate_size": FF,
        "num_hidden_layers": 2,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-05,
        "rope_theta": 100000.0,
        "vocab_size": vocab_size,
        "bos_token_id": vocab_size - 2,
        "eos_token_id": [vocab_size - 1, vocab_size - 2],
        "tie_word_embeddings": arch == "llama",
        "torch_dtype": "float32",
    }
    if arch == "llama":
        c["rope_scaling"] = {"rope_type": "linear", "factor": 2.0}
    else:
        c["rope_scaling"] = None
        c["use_sliding_window"] = False
        c["sliding_window"] = 4096
    return c


def bits(x):
    return "%08x" % int(np.float32(x).view(np.uint32))


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(99)
    tok = byte_level_tokenizer()
    vocab_size = tok.get_vocab_size()
    expected = [f"vocab_size {vocab_size}"]
    for arch in ["llama", "qwen2"]:
        d = os.path.join(out, f"hf_tiny_{arch}")
        os.makedirs(d, exist_ok=True)
        tok.save(os.path.join(d, "tokenizer.json"))
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"add_bos_token": False, "eos_token": "<|im_end|>",
                       "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"},
                      f, indent=2)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config(arch, vocab_size), f, indent=2)
        w = weights(rng, arch, vocab_size)
        if arch == "llama":
            save_file(w, os.path.join(d, "model.safetensors"), metadata={"format": "np"})
        else:
            names = sorted(w)
            shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
                      "model-00002-of-00002.safetensors": names[len(names) // 2:]}
            weight_map = {}
            for file, members in shards.items():
                save_file({n: w[n] for n in members}, os.path.join(d, file),
                          metadata={"format": "np"})
                weight_map.update({n: file for n in members})
            with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": sum(x.nbytes for x in w.values())},
                           "weight_map": weight_map}, f, indent=2)
        for name in ["model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight",
                     "model.layers.0.self_attn.k_proj.weight", "model.layers.1.mlp.down_proj.weight",
                     "model.norm.weight"] + (["lm_head.weight", "model.layers.0.self_attn.q_proj.bias"]
                                             if arch == "qwen2" else []):
            x = w[name].astype(np.float32)
            x2 = x.reshape(x.shape[0], -1)
            for r in rng.choice(x2.shape[0], 3, replace=False):
                c = int(rng.integers(0, x2.shape[1]))
                expected.append(f"value hf_tiny_{arch} {name} {r} {c} {bits(x2[r, c])}")
    with open(os.path.join(out, "hf_expected.txt"), "w") as f:
        f.write("\n".join(expected) + "\n")


if __name__ == "__main__":
    main()

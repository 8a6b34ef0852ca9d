#!/usr/bin/env python3
"""Golden logits of the default model from an independent implementation (llama.cpp
through llama-cpp-python), for tests/model_golden_test.cc.

The reference runs on an F32 copy of the model: every tensor of the Q4_1 GGUF is
dequantized with the `gguf` package and written back as F32 with the same metadata,
so llama.cpp computes in f32 from exactly the weights longctx dequantizes, with no
activation quantization in its matrix products and an f32 KV cache. Differences left are summation order
and transcendental functions.

Output (tests/fixtures/model/golden_logits.bin, little endian):
  magic "LCGL", u32 version=1, u32 n_prompts, u32 n_cols
  per prompt: u32 n_tokens, i32 tokens[n_tokens], u32 n_greedy, i32 greedy[n_greedy],
              per position: i32 cols[n_cols], f32 logits[n_cols], f32 logsumexp
The columns per position are the reference's top 16 and 48 fixed random vocabulary ids.

  pip install gguf numpy llama-cpp-python
  python3 tools/gen_golden_logits.py MODEL.gguf tests/fixtures/model/golden_logits.bin
"""
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import gguf
from llama_cpp import Llama

N_TOP, N_RANDOM, N_GREEDY = 16, 48, 40


def write_f32_copy(src: str, dst: str) -> None:
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        t = field.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, field.contents(), t, sub_type=field.types[-1])
        else:
            w.add_key_value(name, field.contents(), t)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in r.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(x) for x in reversed(t.shape)]  # numpy order
        w.add_tensor(t.name, data.reshape(shape), raw_dtype=gguf.GGMLQuantizationType.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    model, out = sys.argv[1], sys.argv[2]
    books = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "books"
    text = (books / "anna_karenina.txt").read_text(encoding="utf-8")
    prompts = [
        "The",
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        text[2000:2600],
        text[10000:13000],
    ]
    with tempfile.TemporaryDirectory() as tmp:
        f32 = str(Path(tmp) / "model-f32.gguf")
        write_f32_copy(model, f32)
        # type_k/type_v 0 = GGML_TYPE_F32: llama.cpp caches K/V in f16 unless told otherwise.
        llm = Llama(model_path=f32, n_ctx=1024, n_batch=1024, n_threads=2, logits_all=True,
                    type_k=0, type_v=0, verbose=False)
        rng = np.random.default_rng(1234)
        vocab = llm.n_vocab()
        records = []
        for p in prompts:
            toks = llm.tokenize(p.encode(), add_bos=False, special=True)[:512]
            llm.reset()
            llm.eval(toks)
            logits = np.array(llm.scores[: len(toks)], dtype=np.float64)
            greedy = []
            for _ in range(N_GREEDY):
                nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                greedy.append(nxt)
                llm.eval([nxt])
            fixed = rng.choice(vocab, size=N_RANDOM, replace=False)
            records.append((toks, greedy, logits, fixed))
            print(f"prompt of {len(toks)} tokens, greedy {greedy[:8]}...", file=sys.stderr)
    n_cols = N_TOP + N_RANDOM
    with open(out, "wb") as f:
        f.write(b"LCGL" + struct.pack("<III", 1, len(records), n_cols))
        for toks, greedy, logits, fixed in records:
            f.write(struct.pack("<I", len(toks)) + np.array(toks, "<i4").tobytes())
            f.write(struct.pack("<I", len(greedy)) + np.array(greedy, "<i4").tobytes())
            for row in logits:
                top = np.argsort(-row)[:N_TOP]
                cols = np.concatenate([top, fixed]).astype("<i4")
                m = row.max()
                lse = m + np.log(np.exp(row - m).sum())
                f.write(cols.tobytes() + row[cols].astype("<f4").tobytes() +
                        struct.pack("<f", lse))


if __name__ == "__main__":
    main()

"""Tests of merge_lora.py (pytest; skipped where numpy or gguf are absent).

On tiny GGUF files written here (q/k/v/o in Q8_0, Q4_1, F16 and F32): zero
factors give the originals rounded to F16 and leave everything else as it was;
random factors give W + scale·B·A in the engine's layout (q/k un-permuted as
the engine does) to F16 rounding; malformed factor files are refused; and,
where PyTorch is present, a file as train_gates.py saves it merges into what
InfiniLlama.merged_weight says.
"""
import json
import os
import re
import struct
import sys

import pytest

np = pytest.importorskip("numpy")
gguf = pytest.importorskip("gguf")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import merge_lora  # noqa: E402
from weights import load_gguf, permute_rows, unpermute_rows  # noqa: E402

H, KV, D, D_MODEL, D_FF, VOCAB, LAYERS = 4, 2, 8, 32, 64, 40, 2
Q = gguf.GGMLQuantizationType
TYPES = {"attn_q": Q.Q8_0, "attn_k": Q.Q4_1, "attn_v": Q.F16, "attn_output": Q.F32}


def write_tiny_gguf(path, arch="llama", seed=0):
    """A model of LAYERS layers whose q/k/v/o are stored as TYPES say."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    a = arch + "."
    w.add_uint32(a + "block_count", LAYERS)
    w.add_uint32(a + "context_length", 64)
    w.add_uint32(a + "embedding_length", D_MODEL)
    w.add_uint32(a + "feed_forward_length", D_FF)
    w.add_uint32(a + "attention.head_count", H)
    w.add_uint32(a + "attention.head_count_kv", KV)
    w.add_float32(a + "attention.layer_norm_rms_epsilon", 1e-5)
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(VOCAB)])

    def add(name, shape, qtype=Q.F32):
        x = (rng.standard_normal(shape) * 0.3).astype(np.float32)
        if qtype == Q.F32:
            w.add_tensor(name, x)
        elif qtype == Q.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)

    add("token_embd.weight", (VOCAB, D_MODEL))
    add("output_norm.weight", (D_MODEL,))
    for l in range(LAYERS):
        p = f"blk.{l}."
        add(p + "attn_norm.weight", (D_MODEL,))
        add(p + "attn_q.weight", (H * D, D_MODEL), TYPES["attn_q"])
        add(p + "attn_k.weight", (KV * D, D_MODEL), TYPES["attn_k"])
        add(p + "attn_v.weight", (KV * D, D_MODEL), TYPES["attn_v"])
        add(p + "attn_output.weight", (D_MODEL, H * D), TYPES["attn_output"])
        add(p + "ffn_norm.weight", (D_MODEL,))
        add(p + "ffn_gate.weight", (D_FF, D_MODEL), Q.Q8_0)
        add(p + "ffn_up.weight", (D_FF, D_MODEL), Q.Q8_0)
        add(p + "ffn_down.weight", (D_MODEL, D_FF), Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_safetensors(path, tensors, metadata=None):
    """F32 safetensors, the layout safetensors.torch.save_file writes."""
    header = {"__metadata__": {k: str(v) for k, v in (metadata or {}).items()}}
    data = b""
    for name, x in tensors.items():
        blob = np.ascontiguousarray(x, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(x.shape),
                        "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + data)


def lora_factors(rank, layers, seed=None):
    """{l_n_a, l_n_b} for q/k/v/o of `layers`: zeros, or random with a seed."""
    rng = np.random.default_rng(seed)
    rows = {"attn_q": H * D, "attn_k": KV * D, "attn_v": KV * D, "attn_output": D_MODEL}
    out = {}
    for l in layers:
        for n, r in rows.items():
            if seed is None:
                out[f"{l}_{n}_a"] = np.zeros((rank, D_MODEL), np.float32)
                out[f"{l}_{n}_b"] = np.zeros((r, rank), np.float32)
            else:
                out[f"{l}_{n}_a"] = rng.standard_normal((rank, D_MODEL)).astype(np.float32)
                out[f"{l}_{n}_b"] = (rng.standard_normal((r, rank)) * 0.1).astype(np.float32)
    return out


def assert_f16_rounding_of(got, want):
    """got is want rounded once to F16: half an F16 ulp of want, or of the subnormal step."""
    bound = np.maximum(np.abs(want) * 2.0**-11, 2.0**-25)
    assert np.all(np.abs(got - want) <= bound), np.abs(got - want).max()


def fields(reader):
    return {k: (f.types, f.contents()) for k, f in reader.fields.items()
            if not k.startswith("GGUF.")}


def test_permute_rows_inverts_unpermute_rows():
    w = np.arange(3 * 8 * 5, dtype=np.float32).reshape(24, 5)
    assert np.array_equal(unpermute_rows(permute_rows(w, 3), 3), w)
    assert np.array_equal(permute_rows(unpermute_rows(w, 3), 3), w)


def test_zero_lora_rounds_the_touched_tensors_to_f16_and_copies_the_rest(tmp_path):
    src, out = tmp_path / "in.gguf", tmp_path / "out.gguf"
    write_tiny_gguf(src)
    write_safetensors(tmp_path / "lora.safetensors", lora_factors(3, [1]))
    (tmp_path / "gates.safetensors").write_bytes(b"gates")
    assert merge_lora.main([f"--model={src}", f"--lora={tmp_path / 'lora.safetensors'}",
                            f"--gates={tmp_path / 'gates.safetensors'}", f"--out={out}"]) == 0
    a, b = gguf.GGUFReader(src), gguf.GGUFReader(out)
    fa, fb = fields(a), fields(b)
    lora_keys = {k for k in fb if k.startswith("longctx.lora.")}
    assert {k: fb[k] for k in fb if k not in lora_keys} == fa
    assert fb["longctx.lora.rank"][1] == 3
    assert fb["longctx.lora.scale"][1] == 1.0
    assert fb["longctx.lora.layers"][1] == [1]
    assert fb["longctx.lora.source"][1] == "lora.safetensors"
    assert fb["longctx.lora.base"][1] == "in.gguf"
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    touched = {f"blk.1.{n}.weight" for n in TYPES}
    for ta, tb in zip(a.tensors, b.tensors):
        if ta.name in touched:
            assert tb.tensor_type == Q.F16
            assert list(tb.shape) == list(ta.shape)
            want = gguf.quants.dequantize(ta.data, ta.tensor_type).astype(np.float16)
            assert np.array_equal(tb.data, want.reshape(tb.data.shape)), ta.name
        else:
            assert tb.tensor_type == ta.tensor_type
            assert np.array_equal(tb.data, ta.data), ta.name
    assert (tmp_path / "out.infini_gates.safetensors").read_bytes() == b"gates"
    assert not (tmp_path / "out.gguf.tmp").exists()
    with pytest.raises(ValueError, match="already carries a merged LoRA"):
        merge_lora.merge(str(out), str(tmp_path / "lora.safetensors"), str(tmp_path / "twice.gguf"))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_random_lora_merges_to_w_plus_scaled_ba_in_the_engine_layout(tmp_path, arch):
    src, out = tmp_path / "in.gguf", tmp_path / "out.gguf"
    write_tiny_gguf(src, arch)
    factors = lora_factors(2, [0, 1], seed=1)
    write_safetensors(tmp_path / "lora.safetensors", factors, {"lora_scale": 0.5})
    merge_lora.merge(str(src), str(tmp_path / "lora.safetensors"), str(out))
    # load_gguf un-permutes llama q/k rows as engine/model/gguf_model.cc does.
    _, before = load_gguf(str(src))
    _, after = load_gguf(str(out))
    assert gguf.GGUFReader(out).fields["longctx.lora.scale"].contents() == 0.5
    for l in range(LAYERS):
        for n in TYPES:
            name = f"blk.{l}.{n}.weight"
            delta = 0.5 * (factors[f"{l}_{n}_b"].astype(np.float64) @ factors[f"{l}_{n}_a"])
            assert_f16_rounding_of(after[name], before[name] + delta)
            if arch == "llama" and n in ("attn_q", "attn_k"):
                # The rows matter: the delta added in the file's order is far off.
                heads = H if n == "attn_q" else KV
                wrong = unpermute_rows(permute_rows(before[name], heads) + delta, heads)
                assert np.abs(after[name] - wrong).max() > 100 * np.abs(delta).max() * 2.0**-11
    for name in before:
        if name.split(".")[-2] not in TYPES:
            assert np.array_equal(after[name], before[name]), name


@pytest.mark.parametrize("drop,shape,message", [
    ("0_attn_k_a", None, "0_attn_k_b has no 0_attn_k_a"),
    (None, ("1_attn_v_a", (2, D_MODEL + 1)), "1_attn_v makes"),
    (None, ("1_attn_v_b", (KV * D, 3)), "1_attn_v_a [2, 32] has no matching"),
])
def test_malformed_lora_is_refused_before_writing(tmp_path, drop, shape, message):
    src, out = tmp_path / "in.gguf", tmp_path / "out.gguf"
    write_tiny_gguf(src)
    factors = lora_factors(2, [0, 1], seed=2)
    if drop:
        del factors[drop]
    if shape:
        factors[shape[0]] = np.ones(shape[1], np.float32)
    write_safetensors(tmp_path / "lora.safetensors", factors)
    with pytest.raises(ValueError, match=re.escape(message)):
        merge_lora.merge(str(src), str(tmp_path / "lora.safetensors"), str(out))
    assert not out.exists()


def test_trainer_lora_file_merges_to_the_model_merged_weight(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    from infini_model import InfiniLlama, Settings

    src, out = tmp_path / "in.gguf", tmp_path / "out.gguf"
    write_tiny_gguf(src)
    cfg, tensors = load_gguf(str(src))
    model = InfiniLlama(cfg, tensors, Settings(chunk_len=8, chunk_size=12), lora_rank=2,
                        lora_alpha=6).double()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for k, p in model.lora.items():
            if k.endswith("_b"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    # As train_gates.py saves it.
    st.save_file({k: v.detach().float().contiguous() for k, v in model.lora.items()},
                 str(tmp_path / "lora.safetensors"), {"lora_scale": str(model.lora_scale)})
    merge_lora.merge(str(src), str(tmp_path / "lora.safetensors"), str(out))
    _, after = load_gguf(str(out))
    x = torch.randn(5, D_MODEL, generator=g, dtype=torch.float64)
    for l in range(LAYERS):
        for n in TYPES:
            want = model.merged_weight(l, n)
            # merged_weight is what the LoRA forward computes.
            y = model._linear(x, l, n)
            assert torch.allclose(y, x @ want.T, rtol=1e-12, atol=1e-12)
            assert_f16_rounding_of(after[f"blk.{l}.{n}.weight"], want.detach().numpy())

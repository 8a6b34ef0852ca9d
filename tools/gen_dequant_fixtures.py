#!/usr/bin/env python3
"""Dequantization fixtures for tests/dequant_test.cc, produced by the `gguf`
Python package (gguf.quants), an implementation independent of ours.

Usage: tools/gen_dequant_fixtures.py > tests/fixtures/loader/dequant.bin

For each type, row 0 is gguf.quants.quantize() of random normal data (types the
package can quantize) and the remaining rows are random block bytes with finite
f16 scales, so every bit of every field is exercised; the expected values are
gguf.quants.dequantize() of those bytes.

Binary layout (little-endian):
  "LDQF" u32 n_cases
  per case: u32 ggml_type, u32 rows, u32 cols, u32 n_src_bytes,
            src bytes, rows * cols f32 expected values
"""
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

# (type, cols, byte offsets of f16 scales inside a block)
CASES = [
    (T.F16, 96, None),
    (T.BF16, 96, None),
    (T.Q4_0, 256, [0]),
    (T.Q4_1, 256, [0, 2]),
    (T.Q5_0, 256, [0]),
    (T.Q5_1, 256, [0, 2]),
    (T.Q8_0, 256, [0]),
    (T.Q4_K, 512, [0, 2]),
    (T.Q5_K, 512, [0, 2]),
    (T.Q6_K, 512, [208]),
]
QUANTIZABLE = {T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}


def finite_halves(rng, n, scale):
    h = (rng.standard_normal(n) * scale).astype(np.float16)
    return h.view(np.uint8).reshape(n, 2)


def random_row_bytes(rng, qtype, cols, scale_offsets):
    block, size = GGML_QUANT_SIZES[qtype]
    nb = cols // block
    if scale_offsets is None:
        # Plain 16-bit floats: random bit patterns minus NaN/Inf, plus edge cases.
        bits = rng.integers(0, 1 << 16, cols, dtype=np.uint32).astype(np.uint16)
        exp_mask = 0x7C00 if qtype == T.F16 else 0x7F80
        bits[(bits & exp_mask) == exp_mask] &= np.uint16(0x83FF if qtype == T.F16 else 0x807F)
        if qtype == T.F16:
            edge = [0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00, 0x7C00,
                    0xFC00]
        else:
            edge = [0x0000, 0x8000, 0x0001, 0x8001, 0x007F, 0x0080, 0x7F7F, 0xFF7F, 0x3F80, 0x7F80,
                    0xFF80]
        bits[: len(edge)] = edge
        return bits.view(np.uint8)
    blocks = rng.integers(0, 256, (nb, size), dtype=np.uint32).astype(np.uint8)
    for off in scale_offsets:
        blocks[:, off:off + 2] = finite_halves(rng, nb, 0.02)
    return blocks.reshape(-1)


def main():
    rng = np.random.default_rng(20240601)
    out = bytearray(b"LDQF")
    out += struct.pack("<I", len(CASES))
    for qtype, cols, scale_offsets in CASES:
        rows = []
        if qtype in QUANTIZABLE:
            x = rng.standard_normal((1, cols)).astype(np.float32)
            x[0, :32] *= 0.0  # an all-zero block
            q = quants.quantize(x, qtype)
            rows.append(np.ascontiguousarray(q).view(np.uint8).reshape(-1))
        while len(rows) < 3:
            rows.append(random_row_bytes(rng, qtype, cols, scale_offsets))
        src = np.stack(rows)
        n_rows = src.shape[0]
        if qtype == T.F16:
            expected = src.view(np.float16).astype(np.float32)
        else:
            expected = quants.dequantize(src, qtype)
        expected = np.ascontiguousarray(expected, dtype=np.float32)
        assert expected.shape == (n_rows, cols), (qtype, expected.shape)
        assert np.all(np.isfinite(expected) | np.isinf(expected))
        out += struct.pack("<IIII", int(qtype), n_rows, cols, src.nbytes)
        out += src.tobytes()
        out += expected.tobytes()
    sys.stdout.buffer.write(bytes(out))


if __name__ == "__main__":
    main()

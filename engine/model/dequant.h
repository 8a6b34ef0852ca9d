// ggml tensor element types and their dequantization to f32.
//
// Block layouts follow the GGUF/ggml format: a row of `n` elements is n /
// block_size blocks of type_size bytes each, little-endian. Dequantized values
// are bit-identical to the reference formulas (d * q + m etc. in f32 without
// fused multiply-add), which tests/dequant_test.cc checks against fixtures made
// by the `gguf` Python package.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace longctx {

// ggml type ids as stored in GGUF tensor infos.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kBF16 = 30,
};

struct GgmlTypeTraits {
  const char* name;    // "Q4_K"
  int64_t block_size;  // elements per block
  int64_t type_size;   // bytes per block
  bool dequantizable;  // DequantizeRows supports it
};

// Traits of a ggml type id, or nullptr when the id is not a known ggml type
// (ids of known types this loader cannot dequantize return traits with
// dequantizable = false, so errors can name them).
const GgmlTypeTraits* GgmlTypeInfo(uint32_t type);

// Bytes of one row of `n` elements; InvalidArgument when `n` is not a multiple
// of the block size, the type is unknown, or the size overflows.
absl::StatusOr<int64_t> GgmlRowBytes(uint32_t type, int64_t n);

// f16 / bf16 bit patterns to f32 (exact).
float HalfToFloat(uint16_t h);
float Bf16ToFloat(uint16_t h);

// Dequantizes one row of `n` elements from `src` into `dst`.
// REQUIRES: type dequantizable, n a multiple of its block size, `src` holds
// GgmlRowBytes(type, n) bytes, `dst` holds n floats.
void DequantizeRow(GgmlType type, const uint8_t* src, int64_t n, float* dst);

// Dequantizes `rows` rows of `cols` elements, in parallel over rows (OpenMP).
// Row r of the source goes to row dst_row(r) of `dst` when a row map is given
// (used to un-permute q/k rows while dequantizing), else to row r.
// Checks the type, the block alignment of `cols` and that `src` holds exactly
// rows * GgmlRowBytes(type, cols) bytes and `dst` rows * cols floats.
absl::Status DequantizeRows(uint32_t type, std::span<const uint8_t> src, int64_t rows, int64_t cols,
                            std::span<float> dst, std::span<const int64_t> dst_row = {});

}  // namespace longctx

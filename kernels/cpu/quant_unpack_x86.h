// One Q4_0 / Q4_1 / Q8_0 block's 32 values as unsigned bytes in element order
// (4-bit: the 16 low nibbles, then the 16 high ones; 8-bit: offset by 128), for
// the direct products of the AVX2 and AVX-512 files (both compile with AVX2).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "kernels/ops.h"

namespace longctx::cpu {

template <WeightFormat F>
inline __m256i UnpackBlockBytes(const uint8_t* blk) {
  if constexpr (F == WeightFormat::kQ8_0) {
    return _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2)),
                            _mm256_set1_epi8(static_cast<char>(0x80)));
  } else {
    const __m128i q =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + (F == WeightFormat::kQ4_1 ? 4 : 2)));
    const __m128i m = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m), _mm_and_si128(q, m));
  }
}

}  // namespace longctx::cpu

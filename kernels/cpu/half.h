// IEEE binary16 rows to and from f32, for the CPU KV cache. With F16C (every
// AVX2 and AVX-512 CPU) one instruction converts 8 or 16 values; without it a
// portable scalar form gives the same bits (round to nearest even, subnormals,
// infinities and NaN kept). Written here because the compiler's _Float16 does
// not use F16C in GCC 12 and no packaged library converts whole rows.
//
// The functions are static: files built with other target flags (the
// quantized kernels, one per instruction set) each keep their own copy, never
// one the linker picked from a file built for a wider instruction set.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace longctx::cpu {

static inline float HalfToFloat(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  const uint32_t sign = static_cast<uint32_t>(h >> 15) << 31;
  const uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float f;
  if (exp == 0) {
    f = static_cast<float>(mant) * 0x1p-24f;  // zero or subnormal, exact
    return sign ? -f : f;
  }
  const uint32_t bits =
      sign | (exp == 31 ? 0x7f800000u | (mant << 13) : ((exp + 112) << 23) | (mant << 13));
  std::memcpy(&f, &bits, 4);
  return f;
#endif
}

static inline uint16_t FloatToHalf(float f) {
#if defined(__F16C__)
  return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t abs = x & 0x7fffffff;
  if (abs >= 0x7f800000) {  // inf or NaN (quiet, payload's top bits kept)
    return sign | 0x7c00 | (abs > 0x7f800000 ? 0x200 | ((abs >> 13) & 0x3ff) : 0);
  }
  if (abs >= 0x477ff000) return sign | 0x7c00;  // rounds past 65504
  if (abs < 0x38800000) {  // below 2^-14: subnormal half (or 0)
    float v;
    std::memcpy(&v, &abs, 4);
    // v · 2^24 rounded to nearest even by the FPU's default mode.
    return sign | static_cast<uint16_t>(__builtin_nearbyintf(v * 0x1p24f));
  }
  const uint32_t rounded = abs + 0xfff + ((abs >> 13) & 1);  // to nearest even at bit 13
  return sign | static_cast<uint16_t>((rounded - (112u << 23)) >> 13);
#endif
}

static inline void HalfToFloatRow(const uint16_t* src, float* dst, int n) {
  int i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(dst + i,
                     _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
#endif
  for (; i < n; ++i) dst[i] = HalfToFloat(src[i]);
}

static inline void FloatToHalfRow(const float* src, uint16_t* dst, int n) {
  int i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  }
#endif
  for (; i < n; ++i) dst[i] = FloatToHalf(src[i]);
}

}  // namespace longctx::cpu

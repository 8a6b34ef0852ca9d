// QuantLinear with AVX2 (pmaddwd on bytes widened to 16 bits: no saturation for
// any u8 × s8 pair). Built with AVX2 target flags and AVX-512 off
// (kernels/CMakeLists.txt), so this is the code an AVX2-only CPU runs.
#include <immintrin.h>

#define LONGCTX_QUANT_ISA avx2
#include "kernels/cpu/quant_impl.h"
#include "kernels/cpu/quant_unpack_x86.h"

namespace longctx::cpu::quant::avx2 {
namespace {

inline float HorizontalSum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

struct Kernel {
  static constexpr int kRows = 2;
  static constexpr int kCols = 2;

  // One activation block (32 elements, two groups) of R rows × C weight rows.
  template <int R, int C>
  static inline void Step(const TileIn& in, int k, __m256 (&acc)[R][C]) {
    const int K = in.K;
    const int G = K / kGroup;
    __m256i lo[R], hi[R];
    __m256 sa[R];
    float da[R];
    for (int r = 0; r < R; ++r) {
      sa[r] = _mm256_zextps128_ps256(_mm_castpd_ps(
          _mm_load_sd(reinterpret_cast<const double*>(in.s + int64_t{r} * G + k / kGroup))));
      const int8_t* a = in.a + int64_t{r} * K + k;
      lo[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a)));
      hi[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + 16)));
      da[r] = in.d[int64_t{r} * (K / kActBlock) + k / kActBlock];
    }
    for (int c = 0; c < C; ++c) {
      const uint8_t* u = in.w[c].u + k;
      const __m256i ulo = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(u)));
      const __m256i uhi =
          _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(u + 16)));
      const float s0 = in.w[c].scale[k / kGroup], s1 = in.w[c].scale[k / kGroup + 1];
      // Lanes 0 and 1: the two groups' offset terms, offset[g] · s[g].
      const __m256 off = _mm256_zextps128_ps256(_mm_castpd_ps(
          _mm_load_sd(reinterpret_cast<const double*>(in.w[c].offset + k / kGroup))));
      for (int r = 0; r < R; ++r) {
        acc[r][c] = _mm256_fmadd_ps(off, sa[r], acc[r][c]);
        const __m256 p0 = _mm256_cvtepi32_ps(_mm256_madd_epi16(ulo, lo[r]));
        const __m256 p1 = _mm256_cvtepi32_ps(_mm256_madd_epi16(uhi, hi[r]));
        acc[r][c] = _mm256_fmadd_ps(p0, _mm256_set1_ps(s0 * da[r]), acc[r][c]);
        acc[r][c] = _mm256_fmadd_ps(p1, _mm256_set1_ps(s1 * da[r]), acc[r][c]);
      }
    }
  }

  // Direct products (quant_impl.h): a block's 32 values as unsigned bytes in
  // element order (4-bit: the 16 low nibbles, then the 16 high ones), widened
  // to 16 bits as in Step.
  static constexpr bool kDirect = true;

  template <WeightFormat F>
  static inline __m256i Unpack(const uint8_t* blk) {
    return UnpackBlockBytes<F>(blk);
  }

  template <WeightFormat F, int R>
  static void Direct(const DirectIn& in, DirectOut& out) {
    constexpr int kBytes = kLegacyBytes<F>;
    const int nb = in.K / kActBlock;
    __m256 acc[R];
    float off[R];
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm256_setzero_ps();
      off[r] = 0.f;
    }
    for (int b = 0; b < nb; ++b) {
      const uint8_t* blk = in.w + int64_t{kBytes} * b;
      float scale, offset;
      LegacyScale<F>(blk, &scale, &offset);
      const __m256i u = Unpack<F>(blk);
      const __m256i ulo = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(u));
      const __m256i uhi = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(u, 1));
      for (int r = 0; r < R; ++r) {
        const int8_t* a = in.a + int64_t{r} * in.K + kActBlock * b;
        const __m256i alo =
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a)));
        const __m256i ahi =
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + 16)));
        const __m256i dot =
            _mm256_add_epi32(_mm256_madd_epi16(ulo, alo), _mm256_madd_epi16(uhi, ahi));
        const float* s = in.s + int64_t{r} * 2 * nb + 2 * b;
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot),
                                 _mm256_set1_ps(scale * in.d[int64_t{r} * nb + b]), acc[r]);
        off[r] += offset * (s[0] + s[1]);
      }
    }
    for (int r = 0; r < R; ++r) out[r] = HorizontalSum(acc[r]) + off[r];
  }

  template <int R, int C>
  static void Tile(const TileIn& in, TileOut& out) {
    __m256 acc[R][C];
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
    }
    for (int k = 0; k < in.K; k += kActBlock) Step<R, C>(in, k, acc);
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < C; ++c) out[r][c] = HorizontalSum(acc[r][c]);
    }
  }
};

}  // namespace

void Linear(const LinearArgs& args) { RunLinear<Kernel>(args); }

}  // namespace longctx::cpu::quant::avx2

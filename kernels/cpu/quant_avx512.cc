// QuantLinear with AVX-512 VNNI (vpdpbusd: 64 u8 × s8 products summed in fours
// into 16 int32 lanes). Built with AVX-512 target flags (kernels/CMakeLists.txt);
// quant_linear.cc calls it only on CPUs that have them.
#include <immintrin.h>

#define LONGCTX_QUANT_ISA avx512
#include "kernels/cpu/quant_impl.h"
#include "kernels/cpu/quant_unpack_x86.h"

namespace longctx::cpu::quant::avx512 {
namespace {

struct Kernel {
  static constexpr int kRows = 4;
  static constexpr int kCols = 4;

  // 64 elements (Tail: the last 32) of R activation rows × C weight rows. Lane j
  // of a product holds elements 4j..4j+3: group j / 4, activation block j / 8.
  template <int R, int C, bool Tail>
  static inline void Step(const TileIn& in, int k, __m512 (&acc)[R][C]) {
    const __m512i kGroupLanes = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i kBlockLanes = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __mmask64 bytes = Tail ? 0xffffffffull : ~0ull;
    const int K = in.K;
    const __mmask8 groups = Tail ? 3 : 15;
    const int G = K / kGroup;
    __m512i a[R];
    __m512 da[R], sa[R];
    for (int r = 0; r < R; ++r) {
      a[r] = _mm512_maskz_loadu_epi8(bytes, in.a + int64_t{r} * K + k);
      const float* d = in.d + int64_t{r} * (K / kActBlock) + k / kActBlock;
      da[r] = _mm512_permutexvar_ps(kBlockLanes,
                                    _mm512_zextps128_ps512(_mm_maskz_loadu_ps(Tail ? 1 : 3, d)));
      sa[r] = _mm512_zextps128_ps512(_mm_maskz_loadu_ps(groups, in.s + int64_t{r} * G + k / kGroup));
    }
    for (int c = 0; c < C; ++c) {
      const __m512i u = _mm512_maskz_loadu_epi8(bytes, in.w[c].u + k);
      const __m512 sw = _mm512_permutexvar_ps(
          kGroupLanes,
          _mm512_zextps128_ps512(_mm_maskz_loadu_ps(groups, in.w[c].scale + k / kGroup)));
      const __m512 off =
          _mm512_zextps128_ps512(_mm_maskz_loadu_ps(groups, in.w[c].offset + k / kGroup));
      for (int r = 0; r < R; ++r) {
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, a[r]);
        // Lanes 0..3 also take the groups' offset terms, offset[g] · s[g].
        const __m512 with_off = _mm512_mask3_fmadd_ps(off, sa[r], acc[r][c], 0x000f);
        acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(sw, da[r]), with_off);
      }
    }
  }

  // Direct products (quant_impl.h): a block's 32 values as unsigned bytes in
  // element order (4-bit: the 16 low nibbles, then the 16 high ones).
  static constexpr bool kDirect = true;

  template <WeightFormat F>
  static inline __m256i Unpack(const uint8_t* blk) {
    return UnpackBlockBytes<F>(blk);
  }

  // Blocks b and b + 1 (Pair) or block b alone of one weight row × R activation
  // rows: lanes 0..7 hold block b, lanes 8..15 block b + 1.
  template <WeightFormat F, int R, bool Pair>
  static inline void DirectStep(const DirectIn& in, int b, __m512 (&acc)[R], float (&off)[R]) {
    constexpr int kBytes = kLegacyBytes<F>;
    const int nb = in.K / kActBlock;
    const uint8_t* blk = in.w + int64_t{kBytes} * b;
    float s0, o0, s1 = 0.f, o1 = 0.f;
    LegacyScale<F>(blk, &s0, &o0);
    __m512i u = _mm512_zextsi256_si512(Unpack<F>(blk));
    if constexpr (Pair) {
      LegacyScale<F>(blk + kBytes, &s1, &o1);
      u = _mm512_inserti64x4(u, Unpack<F>(blk + kBytes), 1);
    }
    for (int r = 0; r < R; ++r) {
      const int8_t* a = in.a + int64_t{r} * in.K + kActBlock * b;
      const float* d = in.d + int64_t{r} * nb + b;
      const float* s = in.s + int64_t{r} * 2 * nb + 2 * b;
      const __m512i ar = _mm512_maskz_loadu_epi8(Pair ? ~0ull : 0xffffffffull, a);
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, ar);
      const __m512 sc = Pair ? _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(s0 * d[0]),
                                                    _mm512_set1_ps(s1 * d[Pair ? 1 : 0]))
                             : _mm512_set1_ps(s0 * d[0]);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc[r]);
      off[r] += o0 * (s[0] + s[1]);
      if constexpr (Pair) off[r] += o1 * (s[2] + s[3]);
    }
  }

  template <WeightFormat F, int R>
  static void Direct(const DirectIn& in, DirectOut& out) {
    __m512 acc[R];
    float off[R];
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm512_setzero_ps();
      off[r] = 0.f;
    }
    const int nb = in.K / kActBlock;
    int b = 0;
    for (; b + 2 <= nb; b += 2) DirectStep<F, R, true>(in, b, acc, off);
    if (b < nb) DirectStep<F, R, false>(in, b, acc, off);
    for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(acc[r]) + off[r];
  }

  template <int R, int C>
  static void Tile(const TileIn& in, TileOut& out) {
    __m512 acc[R][C];
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    }
    int k = 0;
    for (; k + 64 <= in.K; k += 64) Step<R, C, false>(in, k, acc);
    if (k < in.K) Step<R, C, true>(in, k, acc);  // K is a multiple of 32
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < C; ++c) out[r][c] = _mm512_reduce_add_ps(acc[r][c]);
    }
  }
};

}  // namespace

void Linear(const LinearArgs& args) { RunLinear<Kernel>(args); }

}  // namespace longctx::cpu::quant::avx512

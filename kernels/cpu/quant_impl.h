// The body of QuantLinear, compiled once per instruction set: quant_avx512.cc,
// quant_avx2.cc and quant_scalar.cc each define LONGCTX_QUANT_ISA (their
// namespace) and a `Kernel` with the integer dot products, then include this
// file and call RunLinear<Kernel>. Everything here lives in that namespace, so the
// three compilations (different target flags) never share a symbol.
//
// The method. Every block format is first expanded, one weight row at a time,
// to one form: unsigned 8-bit values u with a scale and an offset per group of
// 16 (w[i] = scale[g] u[i] + offset[g], g = i / 16): 4-bit and 5-bit values as
// they are, Q8_0 shifted by 128, Q6_K's 6-bit values before their −32. Each
// activation row is quantized to int8 a in blocks of 32 with a scale d (amax /
// 127), and keeps the scaled sum of each group, s[g] = d Σ a. Then
//   Σ w x ≈ Σ_g scale[g] d(g) Σ_{i∈g} u a  +  Σ_g offset[g] s[g],
// the first sum by integer dot products (u8 × s8), the second in f32. A tile of
// weight rows is expanded once and reused for every activation row, so prefill
// pays the unpacking once per weight. Decode would pay it once per token, as
// much as the products themselves; so for a few activation rows the legacy
// formats (Q4_0, Q4_1, Q8_0) skip the expanded form: a kernel with `Direct`
// unpacks each block in registers and takes its dot products at once, with the
// same sums (scale and offset per block of 32, that is per pair of groups).
#ifndef LONGCTX_QUANT_ISA
#error "define LONGCTX_QUANT_ISA before including quant_impl.h"
#endif

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "kernels/cpu/half.h"
#include "kernels/cpu/quant_internal.h"

namespace longctx::cpu::quant::LONGCTX_QUANT_ISA {

// --- scalars of the formats ------------------------------------------------------

inline float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return HalfToFloat(h);
}

inline float Bf16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// --- expansion of block rows -------------------------------------------------------

// One weight row in the expanded form: u [K], scale and offset [K / 16].
struct Expanded {
  uint8_t* u = nullptr;
  float* scale = nullptr;
  float* offset = nullptr;
};

// 32 4-bit values: low nibbles are elements 0..15, high nibbles 16..31.
inline void Nibbles(const uint8_t* qs, uint8_t* u) {
  for (int j = 0; j < 16; ++j) {
    u[j] = qs[j] & 0x0f;
    u[j + 16] = qs[j] >> 4;
  }
}

inline void SetGroups(const Expanded& e, int g, int n, float scale, float offset) {
  for (int i = 0; i < n; ++i) {
    e.scale[g + i] = scale;
    e.offset[g + i] = offset;
  }
}

// The legacy formats, one loop each (the format tested once per row): Q4_0
// (d, 4-bit q − 8), Q4_1 (d, m, 4-bit q), Q8_0 (d, q + 128 as unsigned).
inline void ExpandQ4_0(const uint8_t* row, int K, const Expanded& e) {
  for (int b = 0; b < K / 32; ++b) {
    const uint8_t* blk = row + 18 * b;
    const float d = Half(blk);
    Nibbles(blk + 2, e.u + 32 * b);
    SetGroups(e, 2 * b, 2, d, -8.f * d);
  }
}

inline void ExpandQ4_1(const uint8_t* row, int K, const Expanded& e) {
  for (int b = 0; b < K / 32; ++b) {
    const uint8_t* blk = row + 20 * b;
    Nibbles(blk + 4, e.u + 32 * b);
    SetGroups(e, 2 * b, 2, Half(blk), Half(blk + 2));
  }
}

inline void ExpandQ8_0(const uint8_t* row, int K, const Expanded& e) {
  for (int b = 0; b < K / 32; ++b) {
    const uint8_t* blk = row + 34 * b;
    const float d = Half(blk);
    uint8_t* u = e.u + 32 * b;
    for (int j = 0; j < 32; ++j) u[j] = blk[2 + j] ^ 0x80;
    SetGroups(e, 2 * b, 2, d, -128.f * d);
  }
}

// 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K super-block.
inline void ScaleMinK4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q4_K (176 = false) or Q5_K: super-blocks of 256, sub-blocks of 32.
inline void ExpandK45(bool five, const uint8_t* row, int K, const Expanded& e) {
  const int bytes = five ? 176 : 144;
  for (int s = 0; s < K / 256; ++s) {
    const uint8_t* blk = row + int64_t{bytes} * s;
    const float d = Half(blk), dmin = Half(blk + 2);
    const uint8_t* scales = blk + 4;
    const uint8_t* qh = blk + 16;
    const uint8_t* q = five ? qh + 32 : blk + 16;
    uint8_t* u = e.u + 256 * s;
    for (int j = 0; j < 8; j += 2, q += 32, u += 64) {
      for (int l = 0; l < 32; ++l) {
        const int h0 = five ? ((qh[l] >> j) & 1) << 4 : 0;
        const int h1 = five ? ((qh[l] >> (j + 1)) & 1) << 4 : 0;
        u[l] = static_cast<uint8_t>((q[l] & 0x0f) | h0);
        u[l + 32] = static_cast<uint8_t>((q[l] >> 4) | h1);
      }
      for (int h = 0; h < 2; ++h) {
        int sc, m;
        ScaleMinK4(j + h, scales, &sc, &m);
        SetGroups(e, 16 * s + 2 * (j + h), 2, d * static_cast<float>(sc),
                  -(dmin * static_cast<float>(m)));
      }
    }
  }
}

// Q6_K: super-blocks of 256, 16 sub-blocks of 16 with int8 scales, values q − 32.
inline void ExpandQ6K(const uint8_t* row, int K, const Expanded& e) {
  for (int s = 0; s < K / 256; ++s) {
    const uint8_t* ql = row + int64_t{210} * s;
    const uint8_t* qh = ql + 128;
    const auto* sc = reinterpret_cast<const int8_t*>(ql + 192);
    const float d = Half(ql + 208);
    uint8_t* u = e.u + 256 * s;
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, u += 128) {
      for (int l = 0; l < 32; ++l) {
        u[l] = static_cast<uint8_t>((ql[l] & 0x0f) | ((qh[l] & 3) << 4));
        u[l + 32] = static_cast<uint8_t>((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4));
        u[l + 64] = static_cast<uint8_t>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
        u[l + 96] = static_cast<uint8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
      }
    }
    for (int g = 0; g < 16; ++g) {
      const float scale = d * static_cast<float>(sc[g]);
      SetGroups(e, 16 * s + g, 1, scale, -32.f * scale);
    }
  }
}

// REQUIRES: a block format.
inline void ExpandRow(WeightFormat f, const uint8_t* row, int K, const Expanded& e) {
  switch (f) {
    case WeightFormat::kQ4_K:
      return ExpandK45(false, row, K, e);
    case WeightFormat::kQ5_K:
      return ExpandK45(true, row, K, e);
    case WeightFormat::kQ6_K:
      return ExpandQ6K(row, K, e);
    case WeightFormat::kQ4_0:
      return ExpandQ4_0(row, K, e);
    case WeightFormat::kQ4_1:
      return ExpandQ4_1(row, K, e);
    default:
      return ExpandQ8_0(row, K, e);
  }
}

inline bool IsFloatFormat(WeightFormat f) {
  return f == WeightFormat::kF16 || f == WeightFormat::kBF16;
}

// Any format to f32 (block formats through the expanded form).
inline void RowToFloat(WeightFormat f, const uint8_t* row, int K, float* out) {
  if (IsFloatFormat(f)) {
    for (int i = 0; i < K; ++i) {
      out[i] = f == WeightFormat::kF16 ? Half(row + 2 * i) : Bf16(row + 2 * i);
    }
    return;
  }
  std::vector<uint8_t> u(static_cast<size_t>(K));
  std::vector<float> scale(static_cast<size_t>(K / kGroup)), offset(scale.size());
  ExpandRow(f, row, K, Expanded{u.data(), scale.data(), offset.data()});
  for (int i = 0; i < K; ++i) {
    out[i] = scale[i / kGroup] * static_cast<float>(u[i]) + offset[i / kGroup];
  }
}

// The legacy formats read in place (decode, kDirectRows rows or fewer): bytes of a
// block, and its scale and offset in the form w = scale · u + offset, u as
// Unpack gives it (nibbles as they are, Q8_0 shifted by 128).
inline constexpr int kDirectRows = 4;

template <WeightFormat F>
inline constexpr int kLegacyBytes = F == WeightFormat::kQ4_1   ? 20
                                    : F == WeightFormat::kQ8_0 ? 34
                                                               : 18;

template <WeightFormat F>
inline void LegacyScale(const uint8_t* blk, float* scale, float* offset) {
  *scale = Half(blk);
  if constexpr (F == WeightFormat::kQ4_1) {
    *offset = Half(blk + 2);
  } else {
    *offset = (F == WeightFormat::kQ8_0 ? -128.f : -8.f) * *scale;
  }
}

// --- activations -------------------------------------------------------------------

// Rows of activations quantized: a [T, K] int8, d [T, K / 32], s [T, K / 16].
struct Acts {
  std::vector<int8_t> a;
  std::vector<float> d, s;
};

// One row: per block of 32, d = amax / 127 and a = x · 127 / amax rounded half
// away from zero (all 0 when the block is 0); s[g] = d Σ_{i∈g} a.
// (Written lane by lane, 16 wide, so that the compiler vectorizes it.)
inline void QuantizeRow(const float* x, int K, int8_t* a, float* d, float* s) {
  for (int b = 0; b < K / kActBlock; ++b) {
    const float* xb = x + kActBlock * b;
    float lane[kGroup];
    for (int i = 0; i < kGroup; ++i) {
      const float u = std::fabs(xb[i]), v = std::fabs(xb[i + kGroup]);
      lane[i] = u > v ? u : v;
    }
    float amax = 0.f;
    for (float v : lane) amax = v > amax ? v : amax;
    const float id = amax > 0.f ? 127.f / amax : 0.f;
    int8_t* ab = a + kActBlock * b;
    int32_t q[kActBlock];
    for (int i = 0; i < kActBlock; ++i) {
      const float v = xb[i] * id;
      q[i] = static_cast<int32_t>(v + (v >= 0.f ? 0.5f : -0.5f));
      ab[i] = static_cast<int8_t>(q[i]);
    }
    int32_t sum[2] = {0, 0};
    for (int i = 0; i < kActBlock; ++i) sum[i / kGroup] += q[i];
    d[b] = amax / 127.f;
    s[2 * b] = d[b] * static_cast<float>(sum[0]);
    s[2 * b + 1] = d[b] * static_cast<float>(sum[1]);
  }
}



// --- the product ---------------------------------------------------------------------

// What a tile of the kernel reads: activation rows r0.. and expanded weight rows.
struct TileIn {
  const int8_t* a = nullptr;  // row r at a + r * K
  const float* d = nullptr;   // row r at d + r * (K / 32)
  const float* s = nullptr;   // row r at s + r * (K / 16): the scaled group sums
  const Expanded* w = nullptr;
  int K = 0;
};
inline constexpr int kMaxTile = 4;
using TileOut = float[kMaxTile][kMaxTile];  // [row][col]: Σ w x without bias
using TileFn = void (*)(const TileIn&, TileOut&);

template <class Kernel, int R, int... C>
constexpr std::array<TileFn, sizeof...(C)> TileRow(std::integer_sequence<int, C...>) {
  return {&Kernel::template Tile<R, C + 1>...};
}
template <class Kernel, int... R>
constexpr auto TileTable(std::integer_sequence<int, R...>) {
  return std::array<std::array<TileFn, Kernel::kCols>, sizeof...(R)>{
      TileRow<Kernel, R + 1>(std::make_integer_sequence<int, Kernel::kCols>())...};
}

// f32 products of a tile (f16 / bf16 weights expanded to f32).
template <int R, int C>
void FloatTile(const float* x, int ldx, const float* w, int K, TileOut& out) {
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      const float* xr = x + int64_t{r} * ldx;
      const float* wc = w + int64_t{c} * K;
      float part[16] = {};
      int k = 0;
      for (; k + 16 <= K; k += 16) {
        for (int i = 0; i < 16; ++i) part[i] += xr[k + i] * wc[k + i];
      }
      float sum = 0.f;
      for (; k < K; ++k) sum += xr[k] * wc[k];
      for (float p : part) sum += p;
      out[r][c] = sum;
    }
  }
}

template <int... R>
constexpr auto FloatTileTable(std::integer_sequence<int, R...>) {
  auto row = []<int Rr, int... C>(std::integer_sequence<int, C...>) {
    return std::array<void (*)(const float*, int, const float*, int, TileOut&), sizeof...(C)>{
        &FloatTile<Rr, C + 1>...};
  };
  using Row = decltype(row.template operator()<1>(std::make_integer_sequence<int, kMaxTile>()));
  return std::array<Row, sizeof...(R)>{
      row.template operator()<R + 1>(std::make_integer_sequence<int, kMaxTile>())...};
}

// What a direct product reads: one weight row in its blocks and every activation row.
struct DirectIn {
  const uint8_t* w = nullptr;  // [K / 32 blocks]
  const int8_t* a = nullptr;   // row r at a + r * K
  const float* d = nullptr;    // row r at d + r * (K / 32)
  const float* s = nullptr;    // row r at s + r * (K / 16)
  int K = 0;
};
using DirectOut = float[kDirectRows];  // [row]: Σ w x without bias

// Output columns [c0, c0 + nc) of the p.T ≤ kDirectRows rows, weights read in place.
template <class Kernel, WeightFormat F>
void DirectColumnsOf(const LinearArgs& p, const Acts& acts, int c0, int nc) {
  using Fn = void (*)(const DirectIn&, DirectOut&);
  static constexpr Fn kRows[kDirectRows] = {
      &Kernel::template Direct<F, 1>, &Kernel::template Direct<F, 2>,
      &Kernel::template Direct<F, 3>, &Kernel::template Direct<F, 4>};
  DirectOut res = {};
  for (int c = c0; c < c0 + nc; ++c) {
    const DirectIn in{p.w + c * p.row_bytes, acts.a.data(), acts.d.data(), acts.s.data(), p.K};
    kRows[p.T - 1](in, res);
    for (int r = 0; r < p.T; ++r) {
      p.out[int64_t{r} * p.N + c] = res[r] + (p.bias != nullptr ? p.bias[c] : 0.f);
    }
  }
}

// True when the columns were computed here: a kernel with direct products, a
// legacy format and few rows.
template <class Kernel>
bool DirectColumns(const LinearArgs& p, const Acts& acts, int c0, int nc) {
  if constexpr (requires { Kernel::kDirect; }) {
    if (p.T > kDirectRows) return false;
    switch (p.format) {
      case WeightFormat::kQ4_0:
        DirectColumnsOf<Kernel, WeightFormat::kQ4_0>(p, acts, c0, nc);
        return true;
      case WeightFormat::kQ4_1:
        DirectColumnsOf<Kernel, WeightFormat::kQ4_1>(p, acts, c0, nc);
        return true;
      case WeightFormat::kQ8_0:
        DirectColumnsOf<Kernel, WeightFormat::kQ8_0>(p, acts, c0, nc);
        return true;
      default:
        return false;
    }
  }
  return false;
}

// Per-thread scratch of one column tile.
struct ColumnScratch {
  explicit ColumnScratch(int K)
      : u(static_cast<size_t>(kMaxTile) * K),
        scale(static_cast<size_t>(kMaxTile) * (K / kGroup + 1)),
        offset(scale.size()),
        wf(static_cast<size_t>(kMaxTile) * K) {}
  std::vector<uint8_t> u;
  std::vector<float> scale, offset, wf;
};

// Output columns [c0, c0 + nc) of every row, block formats.
template <class Kernel>
void BlockColumns(const LinearArgs& p, const Acts& acts, int c0, int nc, ColumnScratch& cs) {
  static constexpr auto kTiles = TileTable<Kernel>(std::make_integer_sequence<int, Kernel::kRows>());
  const int K = p.K, G = K / kGroup;
  Expanded w[kMaxTile];
  for (int c = 0; c < nc; ++c) {
    w[c] = Expanded{cs.u.data() + int64_t{c} * K, cs.scale.data() + int64_t{c} * G,
                    cs.offset.data() + int64_t{c} * G};
    ExpandRow(p.format, p.w + (c0 + c) * p.row_bytes, K, w[c]);
  }
  TileOut res = {};
  for (int r0 = 0; r0 < p.T; r0 += Kernel::kRows) {
    const int nr = std::min(Kernel::kRows, p.T - r0);
    const TileIn in{acts.a.data() + int64_t{r0} * K, acts.d.data() + int64_t{r0} * (K / kActBlock),
                    acts.s.data() + int64_t{r0} * G, w, K};
    kTiles[nr - 1][nc - 1](in, res);
    for (int r = 0; r < nr; ++r) {
      float* out = p.out + int64_t{r0 + r} * p.N + c0;
      for (int c = 0; c < nc; ++c) out[c] = res[r][c] + (p.bias != nullptr ? p.bias[c0 + c] : 0.f);
    }
  }
}

// Output columns [c0, c0 + nc) of every row, f16 / bf16 weights.
inline void FloatColumns(const LinearArgs& p, int c0, int nc, ColumnScratch& cs) {
  static constexpr auto kTiles = FloatTileTable(std::make_integer_sequence<int, kMaxTile>());
  const int K = p.K;
  for (int c = 0; c < nc; ++c) {
    RowToFloat(p.format, p.w + (c0 + c) * p.row_bytes, K, cs.wf.data() + int64_t{c} * K);
  }
  TileOut res = {};
  for (int r0 = 0; r0 < p.T; r0 += kMaxTile) {
    const int nr = std::min(kMaxTile, p.T - r0);
    kTiles[nr - 1][nc - 1](p.x + int64_t{r0} * K, K, cs.wf.data(), K, res);
    for (int r = 0; r < nr; ++r) {
      float* out = p.out + int64_t{r0 + r} * p.N + c0;
      for (int c = 0; c < nc; ++c) {
        out[c] = res[r][c] + (p.bias != nullptr ? p.bias[c0 + c] : 0.f);
      }
    }
  }
}

// Rows [t0, t1) of x quantized into acts (sized for all of x's rows).
inline void QuantizeRows(const LinearArgs& p, int t0, int t1, Acts& acts) {
  const int K = p.K;
  for (int t = t0; t < t1; ++t) {
    QuantizeRow(p.x + int64_t{t} * K, K, acts.a.data() + int64_t{t} * K,
                acts.d.data() + int64_t{t} * (K / kActBlock),
                acts.s.data() + int64_t{t} * (K / kGroup));
  }
}

inline void ResizeActs(int T, int K, Acts& acts) {
  acts.a.resize(static_cast<size_t>(T) * K);
  acts.d.resize(static_cast<size_t>(T) * (K / kActBlock));
  acts.s.resize(static_cast<size_t>(T) * (K / kGroup));
}

// Below this many FLOPs a product runs on one thread. Decode's q, k, v and o
// projections of a small model (2-7e5) are above it: threads that spin briefly
// before sleeping (longctxd's OpenMP setting) start a region in about a
// microsecond, less than the product saves.
inline constexpr double kMinParallelWork = 1e5;

template <class Kernel>
void RunLinear(const LinearArgs& p) {
  const bool blocks = !IsFloatFormat(p.format);
  const int K = p.K;
  const int tile = blocks ? Kernel::kCols : kMaxTile;
  // A few rows (decode) every thread quantizes for itself: cheaper than the
  // barrier that sharing them would take.
  const bool own_acts = blocks && p.T <= kDirectRows;
  Acts shared;
  if (blocks && !own_acts) ResizeActs(p.T, K, shared);
  const int n_tiles = (p.N + tile - 1) / tile;
  const double work = 2.0 * p.T * p.N * K;
#pragma omp parallel if (work > kMinParallelWork)
  {
    Acts own;
    if (own_acts) {
      ResizeActs(p.T, K, own);
      QuantizeRows(p, 0, p.T, own);
    } else if (blocks) {
#pragma omp for schedule(static)
      for (int t = 0; t < p.T; ++t) QuantizeRows(p, t, t + 1, shared);
    }
    const Acts& acts = own_acts ? own : shared;
    std::optional<ColumnScratch> cs;
#pragma omp for schedule(static)
    for (int i = 0; i < n_tiles; ++i) {
      const int c0 = i * tile, nc = std::min(tile, p.N - c0);
      if (blocks && DirectColumns<Kernel>(p, acts, c0, nc)) continue;
      if (!cs) cs.emplace(K);
      if (blocks) {
        BlockColumns<Kernel>(p, acts, c0, nc, *cs);
      } else {
        FloatColumns(p, c0, nc, *cs);
      }
    }
  }
}

}  // namespace longctx::cpu::quant::LONGCTX_QUANT_ISA

// CPU Dual Chunk Attention over a paged KV cache (docs/design.md §3).
//
// Blocked, streaming (flash-style) attention. A work item is one kv head's group
// of q heads over a tile of consecutive queries, optionally restricted to a
// share of the keys. Query tiles and key tiles never cross a chunk boundary, so
// against one key tile every query of a tile uses the same one of its three
// rotations (intra, successive, inter); the three rotations are made once per
// query and item. Per key tile: scores as a small (keys × rows) product, online
// softmax per row in base 2 (log2 e folded into the query scale), and a
// (rows × keys) · (keys × D) product into per-row accumulators. No [T, T]
// matrix exists.
//
// Scores are kept key-major ([key][row]) and queries transposed ([D][row]), so
// keys are read straight from the paged cache (no packing), and the softmax
// statistics of all rows are vector operations across rows (no horizontal
// reductions).
//
// Work is spread over OpenMP threads by work item, largest first. When there are
// too few items for the threads (decode, short appends) the keys of each query
// tile are split into shares whose partial results (m, l, o) are merged by
// log-sum-exp at the end.
//
// Vector code uses GCC/Clang vector extensions at the widest native width
// (AVX-512, AVX or 128-bit), so one code path serves every target.
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/half.h"
#include "kernels/ops.h"

namespace longctx::cpu {
namespace {

// Micro-kernel shapes fill the register file: 32 vector registers with
// AVX-512, 16 otherwise.
#if defined(__AVX512F__)
constexpr int kW = 16;
constexpr int kKeyBlock = 8;  // keys per score micro-kernel
constexpr int kRowVecs = 3;   // row vectors per score micro-kernel (8 × 3 accumulators)
constexpr int kRowBlock = 6;  // rows per accumulate micro-kernel (6 × 4 accumulators)
#elif defined(__AVX__)
constexpr int kW = 8;
constexpr int kKeyBlock = 4;
constexpr int kRowVecs = 2;
constexpr int kRowBlock = 2;
#else
constexpr int kW = 4;
constexpr int kKeyBlock = 4;
constexpr int kRowVecs = 2;
constexpr int kRowBlock = 2;
#endif
typedef float VecF __attribute__((vector_size(kW * sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(kW * sizeof(int32_t))));

constexpr int kKeyTile = 64;        // keys per key tile
constexpr int kDimVecs = 4;         // vectors of D per accumulate micro-kernel
constexpr int kRowsPerTile = 192;   // target rows (queries × group heads) per item
constexpr int kItemsPerThread = 8;  // below this many items per thread, keys are shared out
// Below this many FLOPs a call runs on one thread: a parallel region's start and
// end cost more than they save (and far more when the cores are oversubscribed).
constexpr double kMinParallelFlops = 1 << 20;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
static_assert(kKeyTile % kKeyBlock == 0, "key tiles split into key blocks");
static_assert(kRowBlock % 2 == 0 && kRowBlock <= 6, "AccumulateTile handles even remainders");
static_assert(kRowVecs <= 3, "ScoreTile handles remainders of 1 and 2 row vectors");

// x − 0 is exactly x for every x (0 + x is not: −0), so this is one broadcast.
inline VecF Splat(float x) { return x - VecF{}; }
inline VecF Load(const float* p) {
  VecF v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void Store(float* p, VecF v) { std::memcpy(p, &v, sizeof v); }
inline VecF Max(VecF a, VecF b) { return a > b ? a : b; }

// 2^x for x ≤ 0: round to nearest integer n, 2^f on [-0.5, 0.5] by a degree-6
// polynomial (relative error 1.6e-8 before float rounding), n added to the
// exponent. Below −125 (including −inf) the result is exactly 0.
inline VecF Exp2(VecF x) {
  const VecF lo = Splat(-125.f);
  const VecF xc = x < lo ? lo : x;
  const VecF magic = Splat(12582912.f);  // 1.5 · 2^23: adding it rounds to an integer
  const VecF r = (xc + magic) - magic;
  const VecF f = xc - r;
  VecF p = Splat(1.5337580407503992e-4f);
  p = p * f + 1.339986571110785e-3f;
  p = p * f + 9.618519805371761e-3f;
  p = p * f + 5.550329014658928e-2f;
  p = p * f + 2.4022646248340607e-1f;
  p = p * f + 6.931471824645996e-1f;
  p = p * f + 1.f;
  const VecI bits = std::bit_cast<VecI>(p) + (__builtin_convertvector(r, VecI) << 23);
  const VecF y = std::bit_cast<VecF>(bits);
  return x < lo ? Splat(0.f) : y;
}

// s[k][0:RV·kW] = Σ_d krows[k][d] · qt[d][0:RV·kW] for kKeyBlock keys; s and qt
// have leading dimension ld and start at the same row.
template <int RV>
__attribute__((noinline)) void ScoreBlock(float* s, int ld, const float* qt,
                                          const float* const* krows, int D) {
  VecF acc[kKeyBlock][RV] = {};
  for (int d = 0; d < D; ++d) {
    VecF q[RV];
#pragma GCC unroll 4
    for (int c = 0; c < RV; ++c) q[c] = Load(qt + d * ld + c * kW);
#pragma GCC unroll 8
    for (int k = 0; k < kKeyBlock; ++k) {
      const VecF kv = Splat(krows[k][d]);
#pragma GCC unroll 4
      for (int c = 0; c < RV; ++c) acc[k][c] += kv * q[c];
    }
  }
  for (int k = 0; k < kKeyBlock; ++k) {
    for (int c = 0; c < RV; ++c) Store(s + k * ld + c * kW, acc[k][c]);
  }
}

// o[r][0:NV·kW] = o[r][0:NV·kW] · corr[r] + Σ_k p[k][r] · v[k][col:col+NV·kW] for
// R rows (o and corr start at the first row, p at the first row of key 0; p has
// leading dimension ldp).
template <int R, int NV>
__attribute__((noinline)) void AccumulateBlock(float* o, int ldo, const float* corr, const float* p,
                                               int ldp, const float* const* vrows, int col,
                                               int nk) {
  VecF acc[R][NV];
  for (int r = 0; r < R; ++r) {
    const VecF cr = Splat(corr[r]);
    for (int c = 0; c < NV; ++c) acc[r][c] = Load(o + r * ldo + c * kW) * cr;
  }
  for (int k = 0; k < nk; ++k) {
    VecF v[NV];
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) v[c] = Load(vrows[k] + col + c * kW);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const VecF pv = Splat(p[k * ldp + r]);
#pragma GCC unroll 4
      for (int c = 0; c < NV; ++c) acc[r][c] += pv * v[c];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < NV; ++c) Store(o + r * ldo + c * kW, acc[r][c]);
  }
}

// One call's fixed facts.
struct Problem {
  const float* q;
  const PagedKvView* kv;
  int64_t L, C;
  int n_q, q_start, H, D, G;
  int q_tile;         // queries per query tile
  int rows_pad;       // rows of the largest query tile, rounded up to kW
  const float* rope;  // [n_q][3][D] cos (first D/2) and sin (last D/2) per version
  int64_t sink = 0;          // keys j with sink ≤ j < window_start are absent (Infini window)
  int64_t window_start = 0;
};

struct QueryTile {
  int i0 = 0;  // absolute index of the first query
  int n = 0;   // queries
};

struct KeyTile {
  int j0 = 0;
  int n = 0;
  int version = 0;  // 0 intra, 1 successive, 2 inter
};

// The key tiles query tile qt attends to, in key order.
void ListKeyTiles(const Problem& pb, const QueryTile& qt, std::vector<KeyTile>* tiles) {
  tiles->clear();
  const int64_t last = qt.i0 + qt.n - 1;
  const int64_t n_last = last / pb.L;
  for (int64_t chunk = 0; chunk <= n_last; ++chunk) {
    const int64_t begin = chunk * pb.L;
    const int64_t end = std::min((chunk + 1) * pb.L, last + 1);
    const int version = static_cast<int>(std::min<int64_t>(n_last - chunk, 2));
    // Present keys of the chunk: before the sinks' end, and from the window start.
    const int64_t ranges[2][2] = {{begin, pb.window_start > pb.sink ? std::min(end, pb.sink) : end},
                                  {pb.window_start > pb.sink ? std::max(begin, pb.window_start) : end, end}};
    for (const auto& r : ranges) {
      for (int64_t j = r[0]; j < r[1]; j += kKeyTile) {
        tiles->push_back(
            {static_cast<int>(j), static_cast<int>(std::min<int64_t>(kKeyTile, r[1] - j)), version});
      }
    }
  }
}

struct Item {
  int tile = 0;   // query tile index
  int group = 0;  // kv head
  int share = 0;  // key share (0 .. n_shares − 1)
};

// Per-thread working memory, reused across items.
struct Scratch {
  std::vector<float> qt;  // [3][D][rows_pad] rotated, scaled queries, transposed
  std::vector<float> s;   // [kKeyTile][rows_pad] scores, then probabilities
  std::vector<float> o;   // [rows_pad][D] accumulators
  std::vector<float> m, l, corr, tile_max, tile_sum;  // [rows_pad]
  std::vector<const float*> krows, vrows;             // [kKeyTile]
  std::vector<float> khalf, vhalf;  // [kKeyTile][D]: a tile of a half KV cache in f32
  std::vector<KeyTile> tiles;

  explicit Scratch(const Problem& pb)
      : qt(size_t{3} * pb.D * pb.rows_pad, 0.f),
        s(size_t{kKeyTile} * pb.rows_pad, 0.f),
        o(size_t(pb.rows_pad) * pb.D),
        m(pb.rows_pad),
        l(pb.rows_pad),
        corr(pb.rows_pad),
        tile_max(pb.rows_pad),
        tile_sum(pb.rows_pad),
        krows(kKeyTile),
        vrows(kKeyTile),
        khalf(pb.kv->k16 != nullptr ? size_t{kKeyTile} * pb.D : 0),
        vhalf(khalf.size()) {}
};

// Fills the rotated queries of the versions query tile qt needs, for kv head g.
// Row qi·G + hh is query qt.i0 + qi, q head g·G + hh.
void RotateQueries(const Problem& pb, const QueryTile& qt, int g, int versions, float scale,
                   Scratch& sc) {
  const int D = pb.D, half = D / 2, ld = pb.rows_pad;
  for (int v = 0; v < versions; ++v) {
    float* dst = sc.qt.data() + size_t(v) * D * ld;
    for (int qi = 0; qi < qt.n; ++qi) {
      const int r = qt.i0 + qi - pb.q_start;
      const float* cs = pb.rope + (size_t(r) * 3 + v) * D;
      const float* sn = cs + half;
      for (int hh = 0; hh < pb.G; ++hh) {
        const float* x = pb.q + (int64_t{r} * pb.H + g * pb.G + hh) * D;
        const int row = qi * pb.G + hh;
        for (int i = 0; i < half; ++i) {
          dst[size_t(i) * ld + row] = (x[i] * cs[i] - x[i + half] * sn[i]) * scale;
          dst[size_t(i + half) * ld + row] = (x[i + half] * cs[i] + x[i] * sn[i]) * scale;
        }
      }
    }
    // Rows past the tile's queries are zero (finite scores; results never read).
    for (int d = 0; d < D; ++d) {
      std::fill(dst + size_t(d) * ld + qt.n * pb.G, dst + size_t(d + 1) * ld, 0.f);
    }
  }
}

// Online-softmax update for one key tile: scores s [kKeyTile][rows_pad] of nk
// keys become probabilities; m, l are updated and corr receives each row's
// factor for its old accumulators. A row that has seen no visible key yet (only
// possible in a share of the keys) keeps m = −inf and gets p = 0, corr = 1.
void SoftmaxTile(Scratch& sc, int ld, int nk) {
  for (int r = 0; r < ld; r += kW) Store(sc.tile_max.data() + r, Splat(kNegInf));
  for (int r = 0; r < ld; r += kW) Store(sc.tile_sum.data() + r, VecF{});
  for (int k = 0; k < nk; ++k) {
    const float* sk = sc.s.data() + size_t(k) * ld;
    for (int r = 0; r < ld; r += kW) {
      Store(sc.tile_max.data() + r, Max(Load(sc.tile_max.data() + r), Load(sk + r)));
    }
  }
  const VecF neg_inf = Splat(kNegInf);
  for (int r = 0; r < ld; r += kW) {
    const VecF m_old = Load(sc.m.data() + r);
    const VecF m_new = Max(m_old, Load(sc.tile_max.data() + r));
    Store(sc.corr.data() + r, m_new == neg_inf ? Splat(1.f) : Exp2(m_old - m_new));
    Store(sc.m.data() + r, m_new);
  }
  for (int k = 0; k < nk; ++k) {
    float* sk = sc.s.data() + size_t(k) * ld;
    for (int r = 0; r < ld; r += kW) {
      const VecF m = Load(sc.m.data() + r);
      const VecF p = m == neg_inf ? VecF{} : Exp2(Load(sk + r) - m);
      Store(sk + r, p);
      Store(sc.tile_sum.data() + r, Load(sc.tile_sum.data() + r) + p);
    }
  }
  for (int r = 0; r < ld; r += kW) {
    Store(sc.l.data() + r,
          Load(sc.l.data() + r) * Load(sc.corr.data() + r) + Load(sc.tile_sum.data() + r));
  }
}

// Scores of key tile kt against all rows: s[k][row] for k < kt.n (the score
// micro-kernel runs whole key blocks; keys past kt.n read a zero row).
void ScoreTile(const Problem& pb, const KeyTile& kt, Scratch& sc) {
  const int D = pb.D, ld = pb.rows_pad, nvec = ld / kW;
  const float* qt = sc.qt.data() + size_t(kt.version) * D * ld;
  for (int k0 = 0; k0 < kt.n; k0 += kKeyBlock) {
    const float* const* krows = sc.krows.data() + k0;
    float* s = sc.s.data() + size_t(k0) * ld;
    int v = 0;
    for (; v + kRowVecs <= nvec; v += kRowVecs) {
      ScoreBlock<kRowVecs>(s + v * kW, ld, qt + v * kW, krows, D);
    }
    switch (nvec - v) {
      case 1:
        ScoreBlock<1>(s + v * kW, ld, qt + v * kW, krows, D);
        break;
      case 2:
        ScoreBlock<2>(s + v * kW, ld, qt + v * kW, krows, D);
        break;
      default:
        break;
    }
  }
}

// o[r] = o[r] · corr[r] + Σ_k p[k][r] · v[k] for R rows starting at row r0.
template <int R>
void AccumulateRows(const Problem& pb, const KeyTile& kt, int r0, Scratch& sc) {
  const int D = pb.D, ld = pb.rows_pad;
  const float* const* vrows = sc.vrows.data();
  float* o = sc.o.data() + size_t(r0) * D;
  const float* p = sc.s.data() + r0;
  const float* corr = sc.corr.data() + r0;
  int col = 0;
  for (; col + kDimVecs * kW <= D; col += kDimVecs * kW) {
    AccumulateBlock<R, kDimVecs>(o + col, D, corr, p, ld, vrows, col, kt.n);
  }
  for (; col + kW <= D; col += kW) {
    AccumulateBlock<R, 1>(o + col, D, corr, p, ld, vrows, col, kt.n);
  }
  for (; col < D; ++col) {
    for (int rr = 0; rr < R; ++rr) {
      float acc = o[size_t(rr) * D + col] * corr[rr];
      for (int k = 0; k < kt.n; ++k) acc += p[size_t(k) * ld + rr] * vrows[k][col];
      o[size_t(rr) * D + col] = acc;
    }
  }
}

// Accumulates p · V of key tile kt into the first `rows` rows (rounded up to
// even; rows_pad is a multiple of kW, so that stays inside) after scaling them
// by corr.
void AccumulateTile(const Problem& pb, const KeyTile& kt, int rows, Scratch& sc) {
  const int even = (rows + 1) / 2 * 2;
  int r = 0;
  for (; r + kRowBlock <= even; r += kRowBlock) AccumulateRows<kRowBlock>(pb, kt, r, sc);
  switch (even - r) {
    case 2:
      AccumulateRows<2>(pb, kt, r, sc);
      break;
    case 4:
      AccumulateRows<4>(pb, kt, r, sc);
      break;
    default:
      break;
  }
}

// Runs key tiles [t_begin, t_end) of sc.tiles for query tile qt, kv head g.
void AttendTiles(const Problem& pb, const QueryTile& qt, int g, int t_begin, int t_end,
                 const float* zero_row, Scratch& sc) {
  const PagedKvView& kv = *pb.kv;
  const int D = pb.D, ld = pb.rows_pad, rows = qt.n * pb.G;
  std::fill(sc.m.begin(), sc.m.end(), kNegInf);
  std::fill(sc.l.begin(), sc.l.end(), 0.f);
  std::fill(sc.o.begin(), sc.o.end(), 0.f);
  // Element offset of key j's row for kv head g (K and V alike).
  const auto row_at = [&](int j) {
    return int64_t{kv.block_table[j / kv.block_size]} * kv.block_stride +
           (int64_t{j % kv.block_size} * kv.n_kv_heads + g) * D;
  };
  const int row_bytes = D * (kv.k16 != nullptr ? 2 : 4);
  for (int t = t_begin; t < t_end; ++t) {
    const KeyTile& kt = sc.tiles[t];
    // The next tile's rows lie in another block, pages away: their loads are
    // started now, so that its products do not wait on each row in turn.
    if (t + 1 < t_end) {
      const KeyTile& next = sc.tiles[t + 1];
      const char* kb = kv.k16 != nullptr ? reinterpret_cast<const char*>(kv.k16)
                                         : reinterpret_cast<const char*>(kv.k);
      const char* vb = kv.k16 != nullptr ? reinterpret_cast<const char*>(kv.v16)
                                         : reinterpret_cast<const char*>(kv.v);
      const int elem = row_bytes / D;
      for (int k = 0; k < next.n; ++k) {
        const int64_t at = row_at(next.j0 + k) * elem;
        for (int b = 0; b < row_bytes; b += 64) {
          __builtin_prefetch(kb + at + b);
          __builtin_prefetch(vb + at + b);
        }
      }
    }
    for (int k = 0; k < kt.n; ++k) {
      const int64_t at = row_at(kt.j0 + k);
      if (kv.k16 != nullptr) {
        // A half cache: the tile's rows in f32 once, then the same products.
        float* kf = sc.khalf.data() + size_t(k) * D;
        float* vf = sc.vhalf.data() + size_t(k) * D;
        HalfToFloatRow(kv.k16 + at, kf, D);
        HalfToFloatRow(kv.v16 + at, vf, D);
        sc.krows[k] = kf;
        sc.vrows[k] = vf;
      } else {
        sc.krows[k] = kv.k + at;
        sc.vrows[k] = kv.v + at;
      }
    }
    std::fill(sc.krows.begin() + kt.n, sc.krows.end(), zero_row);
    ScoreTile(pb, kt, sc);
    // Causal mask on the diagonal: key j is hidden from rows of queries before j,
    // which are the first (j − i0)·G rows.
    if (kt.j0 + kt.n - 1 > qt.i0) {
      for (int k = 0; k < kt.n; ++k) {
        const int hidden = std::clamp((kt.j0 + k - qt.i0) * pb.G, 0, rows);
        float* sk = sc.s.data() + size_t(k) * ld;
        std::fill(sk, sk + hidden, kNegInf);
      }
    }
    SoftmaxTile(sc, ld, kt.n);
    AccumulateTile(pb, kt, rows, sc);
  }
}

// out rows of query tile qt, kv head g: accumulators over l.
void WriteRows(const Problem& pb, const QueryTile& qt, int g, const Scratch& sc, float* out) {
  const int D = pb.D;
  for (int row = 0; row < qt.n * pb.G; ++row) {
    const int r = qt.i0 + row / pb.G - pb.q_start;
    const int h = g * pb.G + row % pb.G;
    float* o = out + (int64_t{r} * pb.H + h) * D;
    const float* acc = sc.o.data() + size_t(row) * D;
    const float inv = 1.f / sc.l[row];
    for (int d = 0; d < D; ++d) o[d] = acc[d] * inv;
  }
}

// A share's partial result: o [rows_pad][D], then m [rows_pad], then l [rows_pad].
size_t PartialStride(const Problem& pb) { return size_t(pb.rows_pad) * (pb.D + 2); }

void SavePartial(const Problem& pb, const QueryTile& qt, const Scratch& sc, float* part) {
  const int rows = qt.n * pb.G, D = pb.D;
  std::memcpy(part, sc.o.data(), sizeof(float) * size_t(rows) * D);
  std::memcpy(part + size_t(pb.rows_pad) * D, sc.m.data(), sizeof(float) * rows);
  std::memcpy(part + size_t(pb.rows_pad) * (D + 1), sc.l.data(), sizeof(float) * rows);
}

// Merges the partial results of `shares` consecutive shares (base-2
// log-sum-exp) and writes the rows of query tile qt, kv head g.
void MergeShares(const Problem& pb, const QueryTile& qt, int g, int shares, const float* parts,
                 size_t stride, float* out) {
  const int D = pb.D;
  const size_t m_at = size_t(pb.rows_pad) * D, l_at = size_t(pb.rows_pad) * (D + 1);
  for (int row = 0; row < qt.n * pb.G; ++row) {
    float m = kNegInf;
    for (int s = 0; s < shares; ++s) m = std::max(m, parts[s * stride + m_at + row]);
    const int r = qt.i0 + row / pb.G - pb.q_start;
    const int h = g * pb.G + row % pb.G;
    float* o = out + (int64_t{r} * pb.H + h) * D;
    std::fill(o, o + D, 0.f);
    float l = 0.f;
    for (int s = 0; s < shares; ++s) {
      const float* part = parts + s * stride;
      const float ms = part[m_at + row];
      if (ms == kNegInf) continue;  // no visible key in this share
      const float w = std::exp2(ms - m);
      l += w * part[l_at + row];
      for (int d = 0; d < D; ++d) o[d] += w * part[size_t(row) * D + d];
    }
    const float inv = 1.f / l;
    for (int d = 0; d < D; ++d) o[d] *= inv;
  }
}

// cos and sin of each query's three positions: intra t(i), successive
// min(t(i) + L, C), inter C. Angles in double (positions reach 1e5+).
std::vector<float> QueryRopeTable(const float* inv_freq, int64_t L, int64_t C, int n_q, int q_start,
                                  int D) {
  const int half = D / 2;
  std::vector<float> table(size_t(n_q) * 3 * D);
#pragma omp parallel for schedule(static) if (n_q > 64)
  for (int r = 0; r < n_q; ++r) {
    const int64_t i = q_start + r;
    const int64_t t = i % L;
    const int64_t pos[3] = {t, std::min(t + L, C), C};
    const int versions = static_cast<int>(std::min<int64_t>(i / L, 2)) + 1;
    for (int v = 0; v < versions; ++v) {
      float* cs = table.data() + (size_t(r) * 3 + v) * D;
      for (int k = 0; k < half; ++k) {
        const double a = static_cast<double>(pos[v]) * inv_freq[k];
        cs[k] = static_cast<float>(std::cos(a));
        cs[half + k] = static_cast<float>(std::sin(a));
      }
    }
  }
  return table;
}

}  // namespace

void DcaAttention(float* out, const float* q, const PagedKvView& kv, const float* inv_freq,
                  const DcaParams& p, int n_q, int q_start, int H, int D) {
  if (n_q <= 0) return;
  Problem pb;
  pb.q = q;
  pb.kv = &kv;
  pb.L = p.chunk_len;
  pb.C = p.chunk_size;
  pb.n_q = n_q;
  pb.q_start = q_start;
  pb.H = H;
  pb.D = D;
  pb.G = H / kv.n_kv_heads;
  pb.sink = p.sink_tokens;
  pb.window_start = p.window_start;
  pb.q_tile = std::max(1, kRowsPerTile / pb.G);
  const std::vector<float> rope = QueryRopeTable(inv_freq, pb.L, pb.C, n_q, q_start, D);
  pb.rope = rope.data();

  // Query tiles: at most q_tile queries, never across a chunk boundary.
  std::vector<QueryTile> qtiles;
  for (int i = q_start; i < q_start + n_q;) {
    const int64_t chunk_end = (i / pb.L + 1) * pb.L;
    const int n =
        static_cast<int>(std::min<int64_t>({pb.q_tile, chunk_end - i, int64_t{q_start} + n_q - i}));
    qtiles.push_back({i, n});
    i += n;
  }
  int max_rows = 0;
  for (const QueryTile& qt : qtiles) max_rows = std::max(max_rows, qt.n * pb.G);
  pb.rows_pad = (max_rows + kW - 1) / kW * kW;
  const std::vector<float> zero_row(D, 0.f);

  // Key shares when the items are too few to keep every thread busy.
  const double flops = 4.0 * H * D * (double(n_q) * q_start + 0.5 * n_q * (n_q + 1.0));
  const int threads = flops < kMinParallelFlops ? 1 : omp_get_max_threads();
  const int base_items = static_cast<int>(qtiles.size()) * kv.n_kv_heads;
  const int max_key_tiles = (q_start + n_q + kKeyTile - 1) / kKeyTile;
  int shares = 1;
  if (threads > 1 && base_items < kItemsPerThread * threads) {
    shares = (kItemsPerThread * threads + base_items - 1) / base_items;
    shares = std::clamp(shares, 1, std::max(1, max_key_tiles / 2));
  }

  // Largest first: later query tiles see more keys.
  std::vector<Item> items;
  items.reserve(size_t(base_items) * shares);
  for (int t = static_cast<int>(qtiles.size()) - 1; t >= 0; --t) {
    for (int g = 0; g < kv.n_kv_heads; ++g) {
      for (int s = 0; s < shares; ++s) items.push_back({t, g, s});
    }
  }

  // Partial results per item when keys are shared out.
  const size_t part_stride = PartialStride(pb);
  std::vector<float> partial(shares > 1 ? items.size() * part_stride : 0);
  const float qscale = p.softmax_scale * kLog2e;

#pragma omp parallel num_threads(threads)
  {
    Scratch sc(pb);
#pragma omp for schedule(dynamic, 1)
    for (size_t n = 0; n < items.size(); ++n) {
      const Item& it = items[n];
      const QueryTile& qt = qtiles[it.tile];
      ListKeyTiles(pb, qt, &sc.tiles);
      const int n_tiles = static_cast<int>(sc.tiles.size());
      const int t_begin = static_cast<int>(int64_t{n_tiles} * it.share / shares);
      const int t_end = static_cast<int>(int64_t{n_tiles} * (it.share + 1) / shares);
      const int versions = sc.tiles.empty() ? 1 : sc.tiles.front().version + 1;
      RotateQueries(pb, qt, it.group, versions, qscale, sc);
      AttendTiles(pb, qt, it.group, t_begin, t_end, zero_row.data(), sc);
      if (shares == 1) {
        WriteRows(pb, qt, it.group, sc, out);
      } else {
        SavePartial(pb, qt, sc, partial.data() + n * part_stride);
      }
    }
    if (shares > 1) {
      // Items of one (query tile, kv head) are consecutive, share 0 first.
#pragma omp for schedule(static)
      for (size_t first = 0; first < items.size(); first += shares) {
        MergeShares(pb, qtiles[items[first].tile], items[first].group, shares,
                    partial.data() + first * part_stride, part_stride, out);
      }
    }
  }
}

}  // namespace longctx::cpu

// cpu::DcaAttention against ref::DcaAttention (kernels/ref/ops_ref.h): the query
// rotated at its DCA position per key, a dense softmax in double, over the same
// paged cache (keys rotated at j mod L and stored in float).
//
// Tolerance. Outputs are convex combinations of values in [-1, 1], so absolute
// error is the measure. The kernel works in float32 (rotations, dot products over
// D, exponentials, sums over up to a few thousand keys); the same naive loop in
// float32 (ref::DcaAttention<float>) against the double one shows what float32
// costs on each case. The kernel may be at most 2x that, plus 2e-6 absolute
// (about 16 ulp at 1.0) so that cases where the float32 reference happens to be
// nearly exact do not demand bit-exactness from a differently ordered
// computation.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "kernels/ref/ops_ref.h"

namespace longctx {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Case {
  int C = 0;      // chunk_size; kDcaUnbounded for plain RoPE
  int w = 0;      // local window; L = C − w
  int block = 0;  // KV block size (divides L)
  int T = 0;      // sequence length after this call
  int n_q = 0;    // new queries: tokens T − n_q .. T − 1
  int H = 0;      // query heads
  int Hkv = 0;    // kv heads
  int D = 0;      // head dim
  float theta = 10000.f;
  float temperature = 1.f;  // multiplies the softmax scale (length temperature sf²)
  // Infini window: keys sink ≤ j < window are absent (window ≤ T − n_q).
  int sink = 0;
  int window = 0;
  int L() const { return C == cpu::kDcaUnbounded ? cpu::kDcaUnbounded : C - w; }
  std::string Name() const {
    return absl::StrCat("C=", C, " w=", w, " block=", block, " T=", T, " n_q=", n_q, " H=", H,
                        " Hkv=", Hkv, " D=", D, " sink=", sink, " window=", window);
  }
};

std::vector<float> InvFreq(int D, float theta) {
  std::vector<float> f(D / 2);
  for (int i = 0; i < D / 2; ++i) {
    f[i] = static_cast<float>(std::pow(static_cast<double>(theta), -2.0 * i / D));
  }
  return f;
}

// A paged KV arena laid out like the backend's (blocks further apart than one
// layer's K and V, a shuffled block table, NaN in every slot the sequence does
// not own and in the slots of absent keys) holding keys rotated at j mod L.
struct PagedKv {
  std::vector<float> arena;
  std::vector<int32_t> table;
  cpu::PagedKvView view;
};

PagedKv MakePagedKv(const Case& c, const std::vector<float>& k, const std::vector<float>& v,
                    const std::vector<float>& inv_freq, std::mt19937& rng) {
  const int D = c.D, Hkv = c.Hkv;
  const int n_logical = (c.T + c.block - 1) / c.block;
  const int n_physical = n_logical + 3;
  const int64_t plane = int64_t{c.block} * Hkv * D;
  const int64_t stride = 2 * plane + 17;
  PagedKv kv;
  kv.arena.assign(n_physical * stride, kNaN);
  std::vector<int32_t> perm(n_physical);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  kv.table.assign(perm.begin(), perm.begin() + n_logical);
  std::vector<float> rotated = k;
  std::vector<int32_t> pos(c.T);
  for (int j = 0; j < c.T; ++j) pos[j] = j % c.L();
  ref::Rope(rotated.data(), pos.data(), inv_freq.data(), c.T, Hkv, D);
  for (int j = 0; j < c.T; ++j) {
    if (j >= c.sink && j < c.window) continue;
    const int64_t base = kv.table[j / c.block] * stride + int64_t{j % c.block} * Hkv * D;
    for (int hd = 0; hd < Hkv * D; ++hd) {
      kv.arena[base + hd] = rotated[int64_t{j} * Hkv * D + hd];
      kv.arena[base + plane + hd] = v[int64_t{j} * Hkv * D + hd];
    }
  }
  kv.view.k = kv.arena.data();
  kv.view.v = kv.arena.data() + plane;
  kv.view.block_stride = stride;
  kv.view.block_table = kv.table.data();
  kv.view.block_size = c.block;
  kv.view.n_kv_heads = Hkv;
  return kv;
}

struct Inputs {
  std::vector<float> q, k, v, inv_freq;
  float scale = 0;
};

// q scaled so that scores have a standard deviation of about 2: softmax rows are
// neither uniform nor one-hot, so positions matter.
Inputs MakeInputs(const Case& c, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  Inputs in;
  in.q.resize(static_cast<size_t>(c.n_q) * c.H * c.D);
  in.k.resize(static_cast<size_t>(c.T) * c.Hkv * c.D);
  in.v.resize(in.k.size());
  for (float& x : in.q) x = 6.f * u(rng);
  for (float& x : in.k) x = u(rng);
  for (float& x : in.v) x = u(rng);
  in.inv_freq = InvFreq(c.D, c.theta);
  in.scale = c.temperature / std::sqrt(static_cast<float>(c.D));
  return in;
}

cpu::DcaParams ParamsOf(const Case& c, const Inputs& in, int L, int C) {
  cpu::DcaParams p;
  p.chunk_len = L;
  p.chunk_size = C;
  p.softmax_scale = in.scale;
  p.sink_tokens = c.sink;
  p.window_start = c.window;
  return p;
}

std::vector<float> RunKernel(const Case& c, const Inputs& in, const PagedKv& kv, int L, int C) {
  std::vector<float> out(in.q.size(), kNaN);
  cpu::DcaAttention(out.data(), in.q.data(), kv.view, in.inv_freq.data(), ParamsOf(c, in, L, C),
                    c.n_q, c.T - c.n_q, c.H, c.D);
  return out;
}

// The reference, accumulating in Acc: double is the oracle, float the yardstick.
template <typename Acc>
std::vector<float> RunRef(const Case& c, const Inputs& in, const PagedKv& kv, int L, int C) {
  std::vector<float> out(in.q.size(), kNaN);
  ref::DcaAttention<Acc>(out.data(), in.q.data(), kv.view, in.inv_freq.data(),
                         ParamsOf(c, in, L, C), c.n_q, c.T - c.n_q, c.H, c.D);
  return out;
}

template <typename A, typename B>
double MaxAbsDiff(const std::vector<A>& a, const std::vector<B>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (std::isnan(d)) return std::numeric_limits<double>::infinity();
    m = std::max(m, d);
  }
  return m;
}

void CheckAgainstRef(const Case& c, uint32_t seed) {
  SCOPED_TRACE(c.Name());
  std::mt19937 rng(seed);
  const Inputs in = MakeInputs(c, rng);
  const PagedKv kv = MakePagedKv(c, in.k, in.v, in.inv_freq, rng);
  const std::vector<float> got = RunKernel(c, in, kv, c.L(), c.C);
  const std::vector<float> ref = RunRef<double>(c, in, kv, c.L(), c.C);
  const std::vector<float> ref32 = RunRef<float>(c, in, kv, c.L(), c.C);
  const double err = MaxAbsDiff(got, ref);
  const double err32 = MaxAbsDiff(ref32, ref);
  EXPECT_LE(err, 2 * err32 + 2e-6) << "float32 naive error " << err32;
}

// Hand-picked cases: chunk edges (T = L − 1, L, L + 1), lengths not a multiple of
// L, decode (n_q = 1), appends crossing one or more chunk boundaries, GQA groups
// 1, 3, 4, head dims 64 and 128 (and 72, whose tail is not a multiple of 16).
TEST(DcaAttentionTest, MatchesReferenceOnChosenCases) {
  const std::vector<Case> cases = {
      // C=16, w=4: L=12.
      {16, 4, 4, 11, 11, 2, 2, 64},
      {16, 4, 4, 12, 12, 3, 1, 64},
      {16, 4, 3, 13, 13, 4, 1, 64},
      {16, 4, 12, 25, 25, 6, 2, 64},
      {16, 4, 6, 37, 1, 9, 3, 64},
      {16, 4, 2, 30, 7, 8, 2, 128},
      {16, 4, 4, 61, 61, 3, 3, 128},
      {16, 4, 1, 50, 29, 4, 1, 72},
      // C=48, w=8: L=40.
      {48, 8, 8, 39, 39, 3, 1, 64},
      {48, 8, 5, 41, 41, 9, 3, 64},
      {48, 8, 40, 97, 1, 12, 3, 128},
      {48, 8, 20, 130, 70, 6, 2, 64},
      {48, 8, 8, 203, 203, 4, 1, 64},
      {48, 8, 10, 120, 45, 2, 2, 128, 100000.f},
      // C=96, w=32: L=64.
      {96, 32, 16, 63, 63, 9, 3, 64},
      {96, 32, 64, 65, 65, 4, 1, 128},
      {96, 32, 32, 200, 1, 9, 3, 64},
      {96, 32, 16, 300, 300, 9, 3, 64, 100000.f},
      {96, 32, 8, 257, 130, 8, 2, 128, 10000.f, 1.3f},
      {96, 32, 64, 129, 2, 3, 1, 64},
      // Long sequences, few queries: many chunks, inter-chunk parts dominate, and
      // the kernel splits keys between threads.
      {96, 32, 16, 2500, 1, 9, 3, 64},
      {48, 8, 8, 1700, 5, 4, 1, 128},
      {16, 4, 4, 900, 3, 6, 2, 64},
      {96, 32, 32, 1000, 70, 9, 3, 64},
  };
  for (size_t n = 0; n < cases.size(); ++n) CheckAgainstRef(cases[n], 1000 + n);
}

// The Infini window: keys sink ≤ j < window are absent (NaN in the cache, so
// reading one fails) and the others keep their absolute positions.
TEST(DcaAttentionTest, MatchesReferenceWithAbsentKeys) {
  const Case cases[] = {
      {48, 8, 8, 300, 40, 9, 3, 64, 10000.f, 1.f, 16, 200},
      {48, 8, 8, 300, 1, 4, 1, 128, 10000.f, 1.f, 0, 120},
      {96, 32, 16, 1000, 70, 9, 3, 64, 10000.f, 1.f, 64, 640},
      {cpu::kDcaUnbounded, 0, 16, 500, 3, 6, 2, 64, 10000.f, 1.f, 32, 400},
  };
  for (size_t n = 0; n < std::size(cases); ++n) CheckAgainstRef(cases[n], 9000 + n);
}

// The result does not depend on how many threads share the work (the kernel
// splits keys between threads when queries are few, and merges the parts).
TEST(DcaAttentionTest, ThreadCountDoesNotChangeResult) {
  const Case cases[] = {
      {96, 32, 16, 1500, 1, 9, 3, 64},
      {48, 8, 8, 700, 40, 8, 2, 128},
  };
  const int saved = omp_get_max_threads();
  std::mt19937 rng(19);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.Name());
    const Inputs in = MakeInputs(c, rng);
    const PagedKv kv = MakePagedKv(c, in.k, in.v, in.inv_freq, rng);
    const std::vector<float> ref = RunRef<double>(c, in, kv, c.L(), c.C);
    const std::vector<float> ref32 = RunRef<float>(c, in, kv, c.L(), c.C);
    for (int threads : {1, 2, 3, 5, 8}) {
      omp_set_num_threads(threads);
      const std::vector<float> got = RunKernel(c, in, kv, c.L(), c.C);
      EXPECT_LE(MaxAbsDiff(got, ref), 2 * MaxAbsDiff(ref32, ref) + 2e-6) << threads << " threads";
    }
  }
  omp_set_num_threads(saved);
}

// A seeded sweep over the same axes, for combinations nobody thought of.
TEST(DcaAttentionTest, MatchesReferenceOnRandomCases) {
  struct Cw {
    int C, w;
  };
  const Cw chunks[] = {{16, 4}, {20, 8}, {48, 8}, {96, 32}, {64, 48}};
  const int groups[][2] = {{1, 1}, {3, 1}, {4, 1}, {6, 2}, {9, 3}, {8, 2}, {12, 4}};
  std::mt19937 rng(7);
  for (int n = 0; n < 40; ++n) {
    const Cw cw = chunks[rng() % std::size(chunks)];
    Case c;
    c.C = cw.C;
    c.w = cw.w;
    const int L = c.L();
    std::vector<int> divisors;
    for (int b = 1; b <= L; ++b) {
      if (L % b == 0) divisors.push_back(b);
    }
    c.block = divisors[rng() % divisors.size()];
    c.T = 1 + static_cast<int>(rng() % (4 * L + 20));
    switch (rng() % 3) {
      case 0:
        c.n_q = 1;
        break;
      case 1:
        c.n_q = c.T;
        break;
      default:
        c.n_q = 1 + static_cast<int>(rng() % c.T);
        break;
    }
    const auto* g = groups[rng() % std::size(groups)];
    c.H = g[0];
    c.Hkv = g[1];
    c.D = rng() % 2 == 0 ? 64 : 128;
    c.theta = rng() % 2 == 0 ? 10000.f : 100000.f;
    CheckAgainstRef(c, 5000 + n);
  }
}

// For seq_len ≤ L every key is intra-chunk at its own position and every query at
// its own position: DCA is standard RoPE attention. Both settings read the same
// cache (j mod L = j), so the outputs agree to float32 rounding, and both match
// the standard reference.
TEST(DcaAttentionTest, ShortSequenceEqualsStandardRope) {
  const Case cases[] = {
      {96, 32, 16, 64, 64, 9, 3, 64},  // T = L exactly
      {96, 32, 8, 40, 1, 9, 3, 64},
      {48, 8, 20, 33, 33, 8, 2, 128},
      {16, 4, 4, 12, 5, 4, 1, 64},
  };
  std::mt19937 rng(11);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.Name());
    const Inputs in = MakeInputs(c, rng);
    const PagedKv kv = MakePagedKv(c, in.k, in.v, in.inv_freq, rng);
    const std::vector<float> dca = RunKernel(c, in, kv, c.L(), c.C);
    const std::vector<float> rope = RunKernel(c, in, kv, cpu::kDcaUnbounded, cpu::kDcaUnbounded);
    EXPECT_LE(MaxAbsDiff(dca, rope), 4 * std::numeric_limits<float>::epsilon());
    const std::vector<float> ref =
        RunRef<double>(c, in, kv, cpu::kDcaUnbounded, cpu::kDcaUnbounded);
    EXPECT_LE(MaxAbsDiff(rope, ref), 2e-6);
  }
}

// Plain RoPE mode (chunk_len = chunk_size = kDcaUnbounded) is standard causal
// RoPE attention at any length, including positions far past any chunk size.
TEST(DcaAttentionTest, PlainRopeModeEqualsStandardAttention) {
  const Case cases[] = {
      {cpu::kDcaUnbounded, 0, 16, 300, 300, 9, 3, 64},
      {cpu::kDcaUnbounded, 0, 64, 5000, 3, 4, 1, 128, 100000.f},
      {cpu::kDcaUnbounded, 0, 7, 150, 1, 6, 2, 64},
  };
  std::mt19937 rng(13);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.Name());
    const Inputs in = MakeInputs(c, rng);
    const PagedKv kv = MakePagedKv(c, in.k, in.v, in.inv_freq, rng);
    const std::vector<float> got = RunKernel(c, in, kv, cpu::kDcaUnbounded, cpu::kDcaUnbounded);
    const std::vector<float> ref = RunRef<double>(c, in, kv, c.L(), c.C);
    const std::vector<float> ref32 = RunRef<float>(c, in, kv, c.L(), c.C);
    EXPECT_LE(MaxAbsDiff(got, ref), 2 * MaxAbsDiff(ref32, ref) + 2e-6);
  }
}

// Queries computed in several calls of random sizes (a prefill in segments, then
// decode steps) equal the same queries computed in one call.
TEST(DcaAttentionTest, SegmentedCallsEqualOneCall) {
  const Case c = {48, 8, 8, 230, 230, 9, 3, 64};
  std::mt19937 rng(17);
  const Inputs in = MakeInputs(c, rng);
  const PagedKv kv = MakePagedKv(c, in.k, in.v, in.inv_freq, rng);
  const std::vector<float> whole = RunKernel(c, in, kv, c.L(), c.C);
  cpu::DcaParams p;
  p.chunk_len = c.L();
  p.chunk_size = c.C;
  p.softmax_scale = in.scale;
  std::vector<float> pieces(whole.size(), kNaN);
  const int64_t row = int64_t{c.H} * c.D;
  int start = 0;
  while (start < c.T) {
    const int n = start > 200 ? 1 : std::min(c.T - start, 1 + static_cast<int>(rng() % 60));
    cpu::DcaAttention(pieces.data() + start * row, in.q.data() + start * row, kv.view,
                      in.inv_freq.data(), p, n, start, c.H, c.D);
    start += n;
  }
  // Both are within the 2e-6 floor of the exact result on this size (checked by
  // the reference tests); differently split float32 sums differ by less.
  EXPECT_LE(MaxAbsDiff(pieces, whole), 4e-6);
}

// DCA never presents a query-key distance above C (≤ the pretraining length),
// and distances inside a chunk are the true ones.
TEST(DcaAttentionTest, RelativePositionsStayWithinChunkSize) {
  const int C = 48, w = 8, L = C - w;
  for (int i = 0; i < 5 * L; ++i) {
    for (int j = 0; j <= i; ++j) {
      const int64_t rel = ref::DcaQueryPosition(i, j, L, C) - j % L;
      ASSERT_GE(rel, 0) << i << " " << j;
      ASSERT_LE(rel, C) << i << " " << j;
      if (i / L == j / L) {
        ASSERT_EQ(rel, i - j) << "intra-chunk distances are exact";
      }
      if (i - j <= w) {
        ASSERT_EQ(rel, i - j) << "the local window is exact";
      }
    }
  }
}

}  // namespace
}  // namespace longctx

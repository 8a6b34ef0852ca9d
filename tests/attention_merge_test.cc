// Context-parallel attention ops (kernels/ops.h, docs/design.md §7): keys split over R
// "ranks" by chunk, partial (o, lse) per rank, log-sum-exp merge — must equal
// DcaAttention over all keys.
//
// Tolerance: the merged result and cpu::DcaAttention are compared with
// ref::DcaPartialAttention over all keys (double); the merged error must stay
// within 2× the single-pass f32 error plus 2e-6 (outputs are O(1): v in
// [-1, 1]). Each rank's partial o is held to 2× the same naive loop in float32
// (ref::DcaPartialAttention<float>) plus 2e-6. Every lse (partial and merged)
// must match the double reference within 1e-5 relative.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "kernels/ref/ops_ref.h"

namespace longctx {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

std::vector<float> RandomVector(size_t n, std::mt19937& rng, float scale = 1.f) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> x(n);
  for (float& v : x) v = u(rng);
  return x;
}

// A paged K/V store of `tokens` rows whose physical blocks are shuffled and
// interleaved with unused blocks, so a wrong block lookup reads garbage.
class PagedStore {
 public:
  PagedStore(int tokens, int block_size, int n_kv_heads, int D, std::mt19937& rng)
      : block_size_(block_size), n_kv_heads_(n_kv_heads), D_(D) {
    const int n_blocks = (tokens + block_size - 1) / block_size;
    std::vector<int32_t> phys(static_cast<size_t>(2 * n_blocks + 1));
    std::iota(phys.begin(), phys.end(), 0);
    std::shuffle(phys.begin(), phys.end(), rng);
    table_.assign(phys.begin(), phys.begin() + n_blocks);
    const size_t elements = phys.size() * static_cast<size_t>(Stride());
    k_ = RandomVector(elements, rng, 100.f);  // garbage where nothing was written
    v_ = RandomVector(elements, rng, 100.f);
  }

  int64_t Stride() const { return int64_t{block_size_} * n_kv_heads_ * D_; }

  // Writes one token's k, v ([n_kv_heads, D] each) at local index `local`.
  void Write(int local, const float* k, const float* v) {
    const int64_t base = table_[static_cast<size_t>(local / block_size_)] * Stride() +
                         int64_t{local % block_size_} * n_kv_heads_ * D_;
    std::copy(k, k + n_kv_heads_ * D_, k_.begin() + base);
    std::copy(v, v + n_kv_heads_ * D_, v_.begin() + base);
  }

  cpu::PagedKvView View() const {
    cpu::PagedKvView view;
    view.k = k_.data();
    view.v = v_.data();
    view.block_stride = Stride();
    view.block_table = table_.data();
    view.block_size = block_size_;
    view.n_kv_heads = n_kv_heads_;
    return view;
  }

 private:
  int block_size_, n_kv_heads_, D_;
  std::vector<int32_t> table_;
  std::vector<float> k_, v_;
};

struct Case {
  int H, n_kv_heads, D;
  int chunk_len, chunk_size;  // DCA L and C (kDcaUnbounded for plain RoPE)
  int span;                   // placement unit: keys [c·span, (c+1)·span) go to rank c mod R
  int q_start, n_q;
  int block_size;
};

// The reference partial attention over `runs` of `store`, accumulating in Acc.
struct Partial {
  std::vector<float> o, lse;
};
template <typename Acc>
Partial RefPartial(const Case& c, const std::vector<float>& q, const PagedStore& store,
                   const cpu::KeyRuns& runs, const std::vector<float>& inv_freq,
                   const cpu::DcaParams& p) {
  Partial ref{std::vector<float>(q.size(), kNaN),
              std::vector<float>(static_cast<size_t>(c.n_q) * c.H, kNaN)};
  ref::DcaPartialAttention<Acc>(ref.o.data(), ref.lse.data(), q.data(), store.View(), runs,
                                inv_freq.data(), p, c.n_q, c.q_start, c.H, c.D);
  return ref;
}

// max |got − want|; NaN in got is infinite error, equal infinities agree.
double MaxAbsError(const float* got, const std::vector<float>& want) {
  double e = 0.0;
  for (size_t n = 0; n < want.size(); ++n) {
    if (std::isnan(got[n])) return std::numeric_limits<double>::infinity();
    if (got[n] == want[n]) continue;
    e = std::max(e, std::abs(double{got[n]} - want[n]));
  }
  return e;
}

void ExpectLseNear(const float* got, const std::vector<float>& want, const char* what) {
  for (size_t n = 0; n < want.size(); ++n) {
    if (want[n] == kNegInf) {
      ASSERT_EQ(got[n], kNegInf) << what << " row " << n << " sees no key";
      continue;
    }
    ASSERT_NEAR(got[n], want[n], 1e-5 * std::max(1.f, std::abs(want[n]))) << what << " row " << n;
  }
}

// Splits the keys of random q/k/v over R ranks (placement unit c.span,
// round-robin), attends per rank, merges, and compares with the references.
void CheckSplit(const Case& c, int R, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << "R=" << R << " H=" << c.H << " Hkv=" << c.n_kv_heads
                                  << " D=" << c.D << " L=" << c.chunk_len << " span=" << c.span
                                  << " q_start=" << c.q_start << " n_q=" << c.n_q);
  std::mt19937 rng(seed);
  const int T = c.q_start + c.n_q;
  const int kv_width = c.n_kv_heads * c.D;
  const std::vector<float> q = RandomVector(static_cast<size_t>(c.n_q) * c.H * c.D, rng);
  const std::vector<float> k = RandomVector(static_cast<size_t>(T) * kv_width, rng);
  const std::vector<float> v = RandomVector(static_cast<size_t>(T) * kv_width, rng);
  std::vector<float> inv_freq(static_cast<size_t>(c.D / 2));
  for (int d = 0; d < c.D / 2; ++d) {
    inv_freq[static_cast<size_t>(d)] = static_cast<float>(std::pow(1e4, -2.0 * d / c.D));
  }
  cpu::DcaParams p;
  p.chunk_len = c.chunk_len;
  p.chunk_size = c.chunk_size;
  // Scores of several units make the softmax peaked, as in a real model.
  p.softmax_scale = 3.f / std::sqrt(static_cast<float>(c.D));

  // Single-pass reference over all keys.
  PagedStore all(T, c.block_size, c.n_kv_heads, c.D, rng);
  for (int j = 0; j < T; ++j)
    all.Write(j, &k[static_cast<size_t>(j) * kv_width], &v[static_cast<size_t>(j) * kv_width]);
  std::vector<float> single(q.size(), kNaN);
  cpu::DcaAttention(single.data(), q.data(), all.View(), inv_freq.data(), p, c.n_q, c.q_start, c.H,
                    c.D);

  // Per rank: its runs, stored back to back in its own paged store.
  const int64_t N = int64_t{c.n_q} * c.H;
  const int64_t part_stride = N * c.D + N;  // packed [o | lse] per rank, as gathered
  std::vector<float> parts(static_cast<size_t>(R * part_stride), kNaN);
  for (int rank = 0; rank < R; ++rank) {
    std::vector<int32_t> first, count;
    for (int start = rank * c.span; start < T; start += R * c.span) {
      first.push_back(start);
      count.push_back(std::min(c.span, T - start));
    }
    const int held = std::accumulate(count.begin(), count.end(), 0);
    PagedStore mine(std::max(held, 1), c.block_size, c.n_kv_heads, c.D, rng);
    int local = 0;
    for (size_t s = 0; s < first.size(); ++s) {
      for (int j = first[s]; j < first[s] + count[s]; ++j, ++local) {
        mine.Write(local, &k[static_cast<size_t>(j) * kv_width],
                   &v[static_cast<size_t>(j) * kv_width]);
      }
    }
    cpu::KeyRuns runs{first.data(), count.data(), static_cast<int>(first.size())};
    float* o = parts.data() + rank * part_stride;
    cpu::DcaPartialAttention(o, o + N * c.D, q.data(), mine.View(), runs, inv_freq.data(), p, c.n_q,
                             c.q_start, c.H, c.D);
    const Partial want = RefPartial<double>(c, q, mine, runs, inv_freq, p);
    const Partial naive32 = RefPartial<float>(c, q, mine, runs, inv_freq, p);
    const double err_naive = MaxAbsError(naive32.o.data(), want.o);
    EXPECT_LE(MaxAbsError(o, want.o), 2 * err_naive + 2e-6)
        << "rank " << rank << " o, naive f32 error " << err_naive;
    ExpectLseNear(o + N * c.D, want.lse, "partial lse");
  }
  std::vector<float> merged(q.size(), kNaN), merged_lse(static_cast<size_t>(N), kNaN);
  cpu::MergeAttention(merged.data(), merged_lse.data(), parts.data(), parts.data() + N * c.D,
                      part_stride, R, N, c.D);

  const int32_t all_first = 0;
  const Partial ref = RefPartial<double>(c, q, all, cpu::KeyRuns{&all_first, &T, 1}, inv_freq, p);
  const double err_single = MaxAbsError(single.data(), ref.o);
  const double err_merged = MaxAbsError(merged.data(), ref.o);
  EXPECT_LE(err_merged, 2 * err_single + 2e-6) << "single-pass error " << err_single;
  for (size_t n = 0; n < merged.size(); ++n) {
    ASSERT_NEAR(merged[n], single[n], 1e-5) << "element " << n;
  }
  ExpectLseNear(merged_lse.data(), ref.lse, "merged lse");
}

TEST(AttentionMergeTest, SplitByDcaChunkEqualsFullAttention) {
  // Prefill crossing many chunks; L = 16, C = 20; GQA 6:2; D = 24.
  const Case prefill{6, 2, 24, 16, 20, 16, 37, 45, 4};
  for (int R : {2, 3, 4}) CheckSplit(prefill, R, 100 + R);
}

TEST(AttentionMergeTest, SplitWithoutGqa) {
  const Case mha{3, 3, 16, 12, 15, 12, 20, 31, 4};
  for (int R : {2, 3, 4}) CheckSplit(mha, R, 200 + R);
}

TEST(AttentionMergeTest, DecodeOneToken) {
  // One new query at the end of a long sequence, as in a decode step.
  const Case decode{6, 2, 24, 16, 20, 16, 150, 1, 8};
  for (int R : {2, 3, 4}) CheckSplit(decode, R, 300 + R);
}

TEST(AttentionMergeTest, PlacementUnitNotAChunk) {
  // Runs shorter than, and straddling, DCA chunks (span 12 vs L 16): positions
  // must still follow absolute chunk indices.
  const Case odd{6, 3, 16, 16, 22, 12, 29, 40, 4};
  for (int R : {2, 3, 4}) CheckSplit(odd, R, 400 + R);
}

TEST(AttentionMergeTest, PlainRopeSplit) {
  const Case rope{4, 2, 16, cpu::kDcaUnbounded, cpu::kDcaUnbounded, 8, 10, 35, 4};
  for (int R : {2, 3, 4}) CheckSplit(rope, R, 500 + R);
}

TEST(AttentionMergeTest, RankWithNoVisibleKeysGivesNegInfLse) {
  // The rank holds keys [8, 16) only; queries 0..3 see none of them.
  std::mt19937 rng(7);
  const int H = 2, D = 8;
  PagedStore store(8, 4, 1, D, rng);
  std::vector<float> kv = RandomVector(D, rng);
  for (int j = 0; j < 8; ++j) store.Write(j, kv.data(), kv.data());
  const std::vector<float> q = RandomVector(static_cast<size_t>(4) * H * D, rng);
  const std::vector<float> inv_freq(D / 2, 0.1f);
  cpu::DcaParams p;
  p.softmax_scale = 0.3f;
  const int32_t first[] = {8}, count[] = {8};
  std::vector<float> out(q.size(), kNaN), lse(8, kNaN);
  cpu::DcaPartialAttention(out.data(), lse.data(), q.data(), store.View(),
                           cpu::KeyRuns{first, count, 1}, inv_freq.data(), p, 4, 0, H, D);
  for (float x : out) EXPECT_EQ(x, 0.f);
  for (float x : lse) EXPECT_EQ(x, kNegInf);
}

TEST(AttentionMergeTest, MergeSkipsEmptyPartialsAndKeepsAllEmptyRowsZero) {
  const int D = 3;
  // Row 0: partial 0 empty, partial 1 carries everything. Row 1: both empty.
  // Row 2: equal lse, so the mean.
  const float o[2][3][D] = {{{9, 9, 9}, {9, 9, 9}, {1, 2, 3}}, {{4, 5, 6}, {7, 7, 7}, {3, 2, 1}}};
  const float l[2][3] = {{kNegInf, kNegInf, 0.5f}, {2.f, kNegInf, 0.5f}};
  // Packed like a gather: [o (3 rows × D) | lse (3)] per partial.
  std::vector<float> packed;
  for (int r = 0; r < 2; ++r) {
    for (int n = 0; n < 3; ++n) packed.insert(packed.end(), o[r][n], o[r][n] + D);
    packed.insert(packed.end(), l[r], l[r] + 3);
  }
  const int64_t stride = 3 * D + 3;
  std::vector<float> out(3 * D, kNaN), lse(3, kNaN);
  cpu::MergeAttention(out.data(), lse.data(), packed.data(), packed.data() + 3 * D, stride, 2, 3,
                      D);
  EXPECT_EQ(out[0], 4.f);
  EXPECT_EQ(out[2], 6.f);
  EXPECT_FLOAT_EQ(lse[0], 2.f);
  EXPECT_EQ(out[3], 0.f);
  EXPECT_EQ(lse[1], kNegInf);
  EXPECT_FLOAT_EQ(out[6], 2.f);
  EXPECT_FLOAT_EQ(out[7], 2.f);
  EXPECT_FLOAT_EQ(lse[2], 0.5f + std::log(2.f));
}

// Random partials, about one row in four of each empty (lse −inf, o NaN: an
// empty partial's o must not be read). cpu::MergeAttention takes weights in
// double, then sums R float products per element: within (R + 1) float
// roundings of max |o_r|; the test allows twice that. The merged lse is one
// float rounding of a double value: 2^-24 relative, allowed twice.
TEST(AttentionMergeTest, MergeMatchesReferenceOnRandomPartials) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> lse_dist(-20.f, 20.f);
  const double u = std::ldexp(1.0, -24);
  for (int R : {1, 2, 3, 5}) {
    for (int D : {1, 24, 67}) {
      const int64_t N = 41, stride = N * D + N + 5;
      std::vector<float> parts = RandomVector(static_cast<size_t>(R * stride), rng, 3.f);
      for (int r = 0; r < R; ++r) {
        for (int64_t n = 0; n < N; ++n) {
          float* lse = parts.data() + r * stride + N * D + n;
          *lse = lse_dist(rng);
          if (n % 9 == 0 || rng() % 4 == 0) {
            *lse = kNegInf;
            std::fill_n(parts.data() + r * stride + n * D, D, kNaN);
          }
        }
      }
      std::vector<float> got(static_cast<size_t>(N * D), kNaN), got_lse(N, kNaN);
      std::vector<float> want(got.size(), kNaN), want_lse(N, kNaN);
      cpu::MergeAttention(got.data(), got_lse.data(), parts.data(), parts.data() + N * D, stride, R,
                          N, D);
      ref::MergeAttention(want.data(), want_lse.data(), parts.data(), parts.data() + N * D, stride,
                          R, N, D);
      SCOPED_TRACE(testing::Message() << "R=" << R << " D=" << D);
      for (int64_t n = 0; n < N; ++n) {
        double o_max = 0;
        for (int r = 0; r < R; ++r) {
          if (parts[r * stride + N * D + n] == kNegInf) continue;
          for (int d = 0; d < D; ++d)
            o_max = std::max(o_max, double{std::abs(parts[r * stride + n * D + d])});
        }
        for (int d = 0; d < D; ++d) {
          ASSERT_NEAR(got[n * D + d], want[n * D + d], 2 * (R + 1) * u * o_max)
              << "row " << n << " d " << d;
        }
        if (want_lse[n] == kNegInf) {
          ASSERT_EQ(got_lse[n], kNegInf) << "row " << n;
        } else {
          ASSERT_NEAR(got_lse[n], want_lse[n], 2 * u * std::abs(want_lse[n])) << "row " << n;
        }
      }
    }
  }
}

TEST(AttentionMergeTest, OneRunOverAllKeysEqualsDcaAttention) {
  const Case c{6, 2, 24, 16, 20, 16, 37, 45, 4};
  CheckSplit(c, 1, 600);
}

}  // namespace
}  // namespace longctx

// Context-parallel attention ops (kernels/ops.h, docs/design.md §7): keys split over R
// "ranks" by chunk, partial (o, lse) per rank, log-sum-exp merge — must equal
// DcaAttention over all keys.
//
// Tolerance: both the merged result and cpu::DcaAttention are compared with a
// double-precision DCA reference; the merged error must stay within 2× the
// single-pass f32 error plus 2e-6 (outputs are O(1): v in [-1, 1]). The merged
// lse must match the reference lse within 1e-5 relative.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ops.h"

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

struct Reference {
  std::vector<double> out, lse;
};

// DCA attention in double precision from the definition (docs/design.md §3).
Reference DoubleDca(const Case& c, const std::vector<float>& q, const std::vector<float>& k,
                    const std::vector<float>& v, const std::vector<float>& inv_freq, float scale) {
  const int D = c.D, half = D / 2, L = c.chunk_len, C = c.chunk_size;
  const int group = c.H / c.n_kv_heads;
  Reference ref;
  ref.out.assign(static_cast<size_t>(c.n_q) * c.H * D, 0.0);
  ref.lse.assign(static_cast<size_t>(c.n_q) * c.H, 0.0);
  std::vector<double> qr(static_cast<size_t>(D));
  for (int r = 0; r < c.n_q; ++r) {
    const int i = c.q_start + r;
    for (int h = 0; h < c.H; ++h) {
      const float* qh = q.data() + (static_cast<size_t>(r) * c.H + h) * D;
      std::vector<double> s(static_cast<size_t>(i + 1));
      for (int j = 0; j <= i; ++j) {
        const int delta = i / L - j / L;
        const int pos = delta == 0 ? i % L : delta == 1 ? std::min(i % L + L, C) : C;
        for (int d = 0; d < half; ++d) {
          const double a = static_cast<double>(pos) * inv_freq[static_cast<size_t>(d)];
          qr[static_cast<size_t>(d)] = qh[d] * std::cos(a) - qh[d + half] * std::sin(a);
          qr[static_cast<size_t>(d + half)] = qh[d + half] * std::cos(a) + qh[d] * std::sin(a);
        }
        const float* kj = k.data() + (static_cast<size_t>(j) * c.n_kv_heads + h / group) * D;
        double dot = 0.0;
        for (int d = 0; d < D; ++d) dot += qr[static_cast<size_t>(d)] * kj[d];
        s[static_cast<size_t>(j)] = dot * scale;
      }
      const double m = *std::max_element(s.begin(), s.end());
      double l = 0.0;
      double* o = ref.out.data() + (static_cast<size_t>(r) * c.H + h) * D;
      for (int j = 0; j <= i; ++j) {
        const double e = std::exp(s[static_cast<size_t>(j)] - m);
        l += e;
        const float* vj = v.data() + (static_cast<size_t>(j) * c.n_kv_heads + h / group) * D;
        for (int d = 0; d < D; ++d) o[d] += e * vj[d];
      }
      for (int d = 0; d < D; ++d) o[d] /= l;
      ref.lse[static_cast<size_t>(r) * c.H + h] = m + std::log(l);
    }
  }
  return ref;
}

double MaxAbsError(const std::vector<float>& got, const std::vector<double>& want) {
  double e = 0.0;
  for (size_t n = 0; n < got.size(); ++n) {
    if (std::isnan(got[n])) return std::numeric_limits<double>::infinity();
    e = std::max(e, std::abs(double{got[n]} - want[n]));
  }
  return e;
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
  }
  std::vector<float> merged(q.size(), kNaN), merged_lse(static_cast<size_t>(N), kNaN);
  cpu::MergeAttention(merged.data(), merged_lse.data(), parts.data(), parts.data() + N * c.D,
                      part_stride, R, N, c.D);

  const Reference ref = DoubleDca(c, q, k, v, inv_freq, p.softmax_scale);
  const double err_single = MaxAbsError(single, ref.out);
  const double err_merged = MaxAbsError(merged, ref.out);
  EXPECT_LE(err_merged, 2 * err_single + 2e-6) << "single-pass error " << err_single;
  for (size_t n = 0; n < merged.size(); ++n) {
    ASSERT_NEAR(merged[n], single[n], 1e-5) << "element " << n;
  }
  for (int64_t n = 0; n < N; ++n) {
    ASSERT_NEAR(merged_lse[static_cast<size_t>(n)], ref.lse[static_cast<size_t>(n)],
                1e-5 * std::max(1.0, std::abs(ref.lse[static_cast<size_t>(n)])))
        << "lse row " << n;
  }
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

TEST(AttentionMergeTest, OneRunOverAllKeysEqualsDcaAttention) {
  const Case c{6, 2, 24, 16, 20, 16, 37, 45, 4};
  CheckSplit(c, 1, 600);
}

}  // namespace
}  // namespace longctx

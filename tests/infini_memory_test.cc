// Infini-attention memory ops (kernels/cpu/infini_memory.cc) against the
// reference of the paper's equations (kernels/ref/ops_ref.h; Munkhdalai et al.
// 2024, "Leave No Context Behind": retrieval, linear and delta updates) keeping
// its memory in double, run segment by segment: each segment first reads the
// memory left by the previous segments, then is folded in.
#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "kernels/ref/ops_ref.h"

namespace longctx {
namespace {

using cpu::InfiniUpdateRule;

constexpr float kEps = 1e-6f;

std::vector<float> RandomVector(size_t n, std::mt19937& rng, float scale = 1.f) {
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

template <typename Real>
double MaxAbs(const Real* x, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::abs(double{x[i]}));
  return m;
}

struct Case {
  int T, H, n_kv, D, segment;
  InfiniUpdateRule rule;
};

// Runs the ops and the reference segment by segment; checks every retrieval
// and the final memory against the double reference. Tolerances: z is a sum of
// T positive f32 terms, within T·u·|z| (u = 2^-24, the classical bound); M and
// the retrievals (sums of ≤ 100 mixed-sign terms, then a ratio) within 1e-5 of
// the largest reference value, where ≤ 4e-7 was measured.
void RunCase(const Case& c, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << "T=" << c.T << " H=" << c.H << " n_kv=" << c.n_kv
                                  << " D=" << c.D << " segment=" << c.segment << " rule="
                                  << (c.rule == InfiniUpdateRule::kDelta ? "delta" : "linear"));
  std::mt19937 rng(seed);
  const size_t qw = static_cast<size_t>(c.H) * c.D, kw = static_cast<size_t>(c.n_kv) * c.D;
  const std::vector<float> q = RandomVector(c.T * qw, rng), k = RandomVector(c.T * kw, rng),
                           v = RandomVector(c.T * kw, rng);
  std::vector<float> mem(kw * c.D, 0.f), z(kw, 0.f);
  std::vector<double> ref_mem(mem.size(), 0.0), ref_z(z.size(), 0.0);
  for (int t0 = 0; t0 < c.T; t0 += c.segment) {
    const int n = std::min(c.segment, c.T - t0);
    std::vector<float> got(n * qw, std::numeric_limits<float>::quiet_NaN()), want(got.size());
    cpu::InfiniRetrieve(got.data(), q.data() + t0 * qw, mem.data(), z.data(), n, c.H, c.n_kv, c.D,
                        kEps);
    ref::InfiniRetrieve(want.data(), q.data() + t0 * qw, ref_mem.data(), ref_z.data(), n, c.H,
                        c.n_kv, c.D, kEps);
    for (int t = 0; t < n; ++t) {
      const double tol = 1e-5 * std::max(1.0, MaxAbs(want.data() + t * qw, qw));
      for (size_t i = 0; i < qw; ++i) {
        if (t0 == 0) {
          ASSERT_EQ(got[t * qw + i], 0.f) << "retrieval from an empty memory must be exactly 0";
        } else {
          ASSERT_NEAR(got[t * qw + i], want[t * qw + i], tol)
              << "segment at " << t0 << " row " << t << " i " << i;
        }
      }
    }
    cpu::InfiniFold(mem.data(), z.data(), k.data() + t0 * kw, v.data() + t0 * kw, n, c.n_kv, c.D,
                    c.rule, kEps);
    ref::InfiniFold(ref_mem.data(), ref_z.data(), k.data() + t0 * kw, v.data() + t0 * kw, n, c.n_kv,
                    c.D, c.rule, kEps);
  }
  const double mtol = 1e-5 * MaxAbs(ref_mem.data(), ref_mem.size()),
               ztol = c.T * std::ldexp(1.0, -24) * MaxAbs(ref_z.data(), ref_z.size());
  for (size_t i = 0; i < mem.size(); ++i) ASSERT_NEAR(mem[i], ref_mem[i], mtol) << "M[" << i << "]";
  for (size_t i = 0; i < z.size(); ++i) ASSERT_NEAR(z[i], ref_z[i], ztol) << "z[" << i << "]";
}

TEST(InfiniMemoryTest, MatchesPaperEquationsLinear) {
  uint32_t seed = 1;
  for (int group : {1, 3}) {
    for (int segment : {1, 7, 32, 97}) {
      RunCase({97, 2 * group, 2, 24, segment, InfiniUpdateRule::kLinear}, seed++);
    }
  }
  RunCase({80, 9, 3, 64, 16, InfiniUpdateRule::kLinear}, seed++);
}

TEST(InfiniMemoryTest, MatchesPaperEquationsDelta) {
  uint32_t seed = 100;
  for (int group : {1, 3}) {
    for (int segment : {1, 7, 32, 97}) {
      RunCase({97, 2 * group, 2, 24, segment, InfiniUpdateRule::kDelta}, seed++);
    }
  }
  RunCase({80, 9, 3, 64, 16, InfiniUpdateRule::kDelta}, seed++);
}

TEST(InfiniMemoryTest, LinearFoldDoesNotDependOnSegmentationDeltaDoes) {
  std::mt19937 rng(7);
  const int T = 64, n_kv = 2, D = 16;
  const std::vector<float> k = RandomVector(T * n_kv * D, rng), v = RandomVector(T * n_kv * D, rng);
  auto fold = [&](int segment, InfiniUpdateRule rule) {
    std::vector<float> mem(n_kv * D * D, 0.f), z(n_kv * D, 0.f);
    for (int t0 = 0; t0 < T; t0 += segment) {
      cpu::InfiniFold(mem.data(), z.data(), k.data() + t0 * n_kv * D, v.data() + t0 * n_kv * D,
                      std::min(segment, T - t0), n_kv, D, rule, kEps);
    }
    return mem;
  };
  const std::vector<float> a = fold(64, InfiniUpdateRule::kLinear),
                           b = fold(8, InfiniUpdateRule::kLinear);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-4f * (1.f + std::abs(a[i])));
  const std::vector<float> c = fold(64, InfiniUpdateRule::kDelta),
                           d = fold(8, InfiniUpdateRule::kDelta);
  double diff = 0;
  for (size_t i = 0; i < c.size(); ++i) diff = std::max(diff, double{std::abs(c[i] - d[i])});
  EXPECT_GT(diff, 1e-2) << "the delta rule reads the memory per segment, so segmentation matters";
}

TEST(InfiniMemoryTest, EluPlusOneIsPositiveAndContinuous) {
  const float xs[] = {-100.f, -3.f, -1e-7f, 0.f, 1e-7f, 2.5f};
  float out[6];
  cpu::EluPlusOne(out, xs, 6);
  EXPECT_GT(out[0], -1e-30f);
  EXPECT_FLOAT_EQ(out[1], std::exp(-3.f));
  EXPECT_NEAR(out[2], 1.f, 1e-6f);
  EXPECT_EQ(out[3], 1.f);
  EXPECT_NEAR(out[4], 1.f, 1e-6f);
  EXPECT_EQ(out[5], 3.5f);
}

// Against the reference on random values: x + 1 is one float rounding and e^x
// within an ulp, the reference one rounding of the double value: two ulps.
TEST(InfiniMemoryTest, EluPlusOneMatchesReference) {
  std::mt19937 rng(21);
  const std::vector<float> x = RandomVector(1000, rng, 4.f);
  std::vector<float> got(x.size()), want(x.size());
  cpu::EluPlusOne(got.data(), x.data(), static_cast<int64_t>(x.size()));
  ref::EluPlusOne(want.data(), x.data(), static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], 2 * std::ldexp(std::abs(want[i]), -23)) << "x=" << x[i];
  }
}

TEST(InfiniMemoryTest, RetrievalOfEmptyMemoryIsExactlyZero) {
  std::mt19937 rng(3);
  const int T = 5, H = 6, n_kv = 2, D = 32;
  // Large queries too: an empty memory must never produce NaN or inf.
  const std::vector<float> q = RandomVector(T * H * D, rng, 50.f);
  std::vector<float> mem(n_kv * D * D, 0.f), z(n_kv * D, 0.f);
  std::vector<float> out(T * H * D, std::numeric_limits<float>::quiet_NaN());
  cpu::InfiniRetrieve(out.data(), q.data(), mem.data(), z.data(), T, H, n_kv, D, kEps);
  for (float x : out) ASSERT_EQ(x, 0.f);
}

TEST(InfiniMemoryTest, GqaHeadsReadTheirOwnKvHead) {
  // Only kv head 1 holds anything: q heads 0..2 (group 3, kv head 0) read 0,
  // heads 3..5 read the stored value (one key, so retrieval returns it exactly).
  const int H = 6, n_kv = 2, D = 8, group = 3;
  std::vector<float> k(n_kv * D, 0.f), v(n_kv * D, 0.f);
  for (int d = 0; d < D; ++d) {
    k[D + d] = 0.5f * d;
    v[D + d] = 1.f + d;
  }
  std::vector<float> mem(n_kv * D * D, 0.f), z(n_kv * D, 0.f);
  // Fold one token into kv head 1 only: fold a [1, 1, D] slice with n_kv = 1.
  cpu::InfiniFold(mem.data() + D * D, z.data() + D, k.data() + D, v.data() + D, 1, 1, D,
                  InfiniUpdateRule::kLinear, kEps);
  std::mt19937 rng(11);
  const std::vector<float> q = RandomVector(H * D, rng);
  std::vector<float> out(H * D, std::numeric_limits<float>::quiet_NaN());
  cpu::InfiniRetrieve(out.data(), q.data(), mem.data(), z.data(), 1, H, n_kv, D, kEps);
  for (int h = 0; h < H; ++h) {
    for (int d = 0; d < D; ++d) {
      if (h / group == 0) {
        EXPECT_EQ(out[h * D + d], 0.f) << "h=" << h;
      } else {
        EXPECT_NEAR(out[h * D + d], v[D + d], 1e-5f * (1.f + d)) << "h=" << h;
      }
    }
  }
}

TEST(InfiniMemoryTest, InverseRotationRecoversUnrotatedKeys) {
  // Keys are cached rotated at j mod L; the fold rotates them back at −(j mod L).
  // Two rotations by f32 cos/sin of the same angle, per (x_i, x_{i+D/2}) pair of
  // norm r: the round trip is within 16 units of f32 rounding of r.
  std::mt19937 rng(5);
  const int T = 300, n_kv = 3, D = 64, L = 1984;
  std::vector<float> inv_freq(D / 2);
  for (int i = 0; i < D / 2; ++i) inv_freq[i] = static_cast<float>(std::pow(1e5, -2.0 * i / D));
  const std::vector<float> k = RandomVector(T * n_kv * D, rng, 3.f);
  std::vector<int32_t> pos(T), neg(T);
  const int start = 123457;  // absolute token index of the first key
  for (int t = 0; t < T; ++t) {
    pos[t] = (start + t) % L;
    neg[t] = -pos[t];
  }
  std::vector<float> x = k;
  cpu::Rope(x.data(), pos.data(), inv_freq.data(), T, n_kv, D);
  double moved = 0;
  for (size_t i = 0; i < x.size(); ++i) moved = std::max(moved, double{std::abs(x[i] - k[i])});
  EXPECT_GT(moved, 1.0) << "the forward rotation must change the keys";
  cpu::Rope(x.data(), neg.data(), inv_freq.data(), T, n_kv, D);
  const double u = std::ldexp(1.0, -24);
  for (int t = 0; t < T; ++t) {
    for (int g = 0; g < n_kv; ++g) {
      const float* a = k.data() + (t * n_kv + g) * D;
      const float* b = x.data() + (t * n_kv + g) * D;
      for (int i = 0; i < D / 2; ++i) {
        const double r = std::hypot(a[i], a[i + D / 2]);
        ASSERT_NEAR(b[i], a[i], 16 * u * r) << "t=" << t << " g=" << g << " i=" << i;
        ASSERT_NEAR(b[i + D / 2], a[i + D / 2], 16 * u * r) << "t=" << t << " g=" << g;
      }
    }
  }
}

TEST(InfiniMemoryTest, MixFollowsTheGate) {
  std::mt19937 rng(9);
  const int T = 3, H = 4, D = 16;
  const std::vector<float> a_mem = RandomVector(T * H * D, rng),
                           a_dca = RandomVector(T * H * D, rng);
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> beta = {-inf, inf, 0.f, -1e4f};
  std::vector<float> out(T * H * D, std::numeric_limits<float>::quiet_NaN());
  cpu::InfiniMix(out.data(), a_mem.data(), a_dca.data(), beta.data(), T, H, D);
  for (int t = 0; t < T; ++t) {
    for (int d = 0; d < D; ++d) {
      const int i0 = (t * H + 0) * D + d, i1 = (t * H + 1) * D + d, i2 = (t * H + 2) * D + d,
                i3 = (t * H + 3) * D + d;
      EXPECT_EQ(out[i0], a_dca[i0]) << "β → −∞ is exactly the local attention";
      EXPECT_EQ(out[i1], a_mem[i1]) << "β → +∞ is exactly the memory";
      EXPECT_NEAR(out[i2], 0.5f * (a_mem[i2] + a_dca[i2]), 1e-6f);
      EXPECT_EQ(out[i3], a_dca[i3]);
    }
  }
  // Against the reference: a float sigmoid, 1 − s, two products and a sum, each
  // within a few float roundings of |a_mem| + |a_dca|; allowed 8.
  std::vector<float> want(out.size());
  ref::InfiniMix(want.data(), a_mem.data(), a_dca.data(), beta.data(), T, H, D);
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_NEAR(out[i], want[i], 8 * std::ldexp(std::abs(a_mem[i]) + std::abs(a_dca[i]), -24));
  }
  // In place over a_dca, as the forward uses it.
  std::vector<float> inplace = a_dca;
  cpu::InfiniMix(inplace.data(), a_mem.data(), inplace.data(), beta.data(), T, H, D);
  EXPECT_EQ(inplace, out);
}

}  // namespace
}  // namespace longctx

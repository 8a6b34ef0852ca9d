// The CPU row ops (kernels/cpu/basic_ops.cc) against their references
// (kernels/ref/ops_ref.h, double) on random inputs of awkward sizes, outputs
// poisoned with NaN first. Each bound counts the float roundings the op makes
// (u = 2^-24, one rounding's relative error) and allows twice that.
#include <cmath>
#include <limits>
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
const double kU = std::ldexp(1.0, -24);

std::vector<float> RandomVector(size_t n, std::mt19937& rng, float scale = 1.f) {
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// RMSNorm sums squares in double, then rounds 1/rms, x · (1/rms) and the product
// with w: three roundings relative to the output, four with the reference's;
// allowed 8.
TEST(BasicOpsTest, RmsNormMatchesReference) {
  std::mt19937 rng(1);
  for (int T : {1, 3, 17, 20}) {
    for (int D : {1, 7, 64, 129, 4097}) {
      const std::vector<float> x = RandomVector(static_cast<size_t>(T) * D, rng, 3.f);
      const std::vector<float> w = RandomVector(D, rng);
      std::vector<float> got(x.size(), kNaN), want(x.size(), kNaN);
      cpu::RmsNorm(got.data(), x.data(), w.data(), T, D, 1e-5f);
      ref::RmsNorm(want.data(), x.data(), w.data(), T, D, 1e-5f);
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_NEAR(got[i], want[i], 8 * kU * std::abs(want[i])) << "T=" << T << " D=" << D;
      }
      // In place, as the model calls it.
      std::vector<float> inplace = x;
      ref::RmsNorm(inplace.data(), inplace.data(), w.data(), T, D, 1e-5f);
      EXPECT_EQ(inplace, want) << "T=" << T << " D=" << D;
    }
  }
}

// silu(g) · u in float: e^−g within an ulp (two roundings), then 1 + ·, the
// quotient and the product: five roundings relative to the output, six with the
// reference's; allowed 10 (|g| stays far from e^−g overflowing).
TEST(BasicOpsTest, SwiGluMatchesReference) {
  std::mt19937 rng(2);
  for (int T : {1, 5, 33}) {
    for (int F : {1, 13, 1000, 70000}) {
      const std::vector<float> g = RandomVector(static_cast<size_t>(T) * F, rng, 3.f);
      const std::vector<float> up = RandomVector(g.size(), rng);
      std::vector<float> got(g.size(), kNaN), want(g.size(), kNaN);
      cpu::SwiGlu(got.data(), g.data(), up.data(), T, F);
      ref::SwiGlu(want.data(), g.data(), up.data(), T, F);
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_NEAR(got[i], want[i], 10 * kU * std::abs(want[i])) << "T=" << T << " F=" << F;
      }
    }
  }
}

// A float dot product of K terms is within K·u·Σ|x w| of the exact one (the
// classical bound, whatever the summation order BLAS picks); the bias add and
// the store add a rounding of the output each (the reference's store too).
TEST(BasicOpsTest, LinearMatchesReference) {
  struct Shape {
    int T, N, K;
  };
  // The last shape is large enough to be split over threads.
  const Shape shapes[] = {{1, 1, 1}, {1, 17, 300}, {5, 130, 9}, {33, 17, 300}, {40, 300, 200}};
  std::mt19937 rng(3);
  for (const Shape& s : shapes) {
    for (bool with_bias : {false, true}) {
      const std::vector<float> x = RandomVector(static_cast<size_t>(s.T) * s.K, rng);
      const std::vector<float> w = RandomVector(static_cast<size_t>(s.N) * s.K, rng, 0.1f);
      const std::vector<float> bias = RandomVector(s.N, rng);
      const float* b = with_bias ? bias.data() : nullptr;
      std::vector<float> got(static_cast<size_t>(s.T) * s.N, kNaN), want(got.size(), kNaN);
      cpu::Linear(got.data(), x.data(), w.data(), b, s.T, s.N, s.K);
      ref::Linear(want.data(), x.data(), w.data(), b, s.T, s.N, s.K);
      const std::string what = absl::StrCat("T=", s.T, " N=", s.N, " K=", s.K, " bias=", with_bias);
      for (int t = 0; t < s.T; ++t) {
        for (int n = 0; n < s.N; ++n) {
          double abs_sum = 0;
          for (int k = 0; k < s.K; ++k) {
            abs_sum += std::abs(double{x[int64_t{t} * s.K + k]} * w[int64_t{n} * s.K + k]);
          }
          const float y = want[int64_t{t} * s.N + n];
          ASSERT_NEAR(got[int64_t{t} * s.N + n], y, s.K * kU * abs_sum + 2 * kU * std::abs(y))
              << what << " t=" << t << " n=" << n;
        }
      }
    }
  }
}

// Per pair (a, b) of norm r: cos and sin rounded to float (√2 roundings of r),
// two products (√2) and a sum (1), and the reference's store (1): under five
// roundings of r; allowed 10. Positions up to ±200000, where a
// float angle would be off by radians: both sides take the angle in double.
TEST(BasicOpsTest, RopeMatchesReference) {
  std::mt19937 rng(4);
  std::uniform_int_distribution<int> pick(-200000, 200000);
  for (int T : {1, 7, 40}) {
    for (int D : {2, 64, 72, 128}) {
      for (int H : {1, 3}) {
        std::vector<float> inv_freq(D / 2);
        for (int i = 0; i < D / 2; ++i) inv_freq[i] = std::pow(1e5f, -2.f * i / D);
        std::vector<int32_t> pos(T);
        for (int32_t& p : pos) p = pick(rng);
        const std::vector<float> x = RandomVector(static_cast<size_t>(T) * H * D, rng);
        std::vector<float> got = x, want = x;
        cpu::Rope(got.data(), pos.data(), inv_freq.data(), T, H, D);
        ref::Rope(want.data(), pos.data(), inv_freq.data(), T, H, D);
        for (int64_t row = 0; row < int64_t{T} * H; ++row) {
          for (int i = 0; i < D / 2; ++i) {
            const int64_t a = row * D + i, b = a + D / 2;
            const double r = std::hypot(x[a], x[b]);
            ASSERT_NEAR(got[a], want[a], 10 * kU * r) << "T=" << T << " D=" << D << " i=" << i;
            ASSERT_NEAR(got[b], want[b], 10 * kU * r) << "T=" << T << " D=" << D << " i=" << i;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace longctx

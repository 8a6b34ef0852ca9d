#include "engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <vector>

#include "engine/backend/cpu_backend.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "tests/cuda_test_util.h"

namespace longctx {
namespace {

const std::vector<float> kLogits = {1.f, 3.f, 2.f, 0.5f, 2.9f};

TEST(SamplerTest, GreedyPicksArgmax) {
  Sampler s(SamplingParams{});
  EXPECT_EQ(s.Sample(kLogits), 1);
}

TEST(SamplerTest, GreedyOnlyWithoutTemperatureOrPenalty) {
  EXPECT_TRUE(Sampler(SamplingParams{}).greedy());
  SamplingParams warm;
  warm.temperature = 0.7f;
  EXPECT_FALSE(Sampler(warm).greedy());
  SamplingParams penalized;
  penalized.repetition_penalty = 1.2f;
  EXPECT_FALSE(Sampler(penalized).greedy());
}

// The argmax the device computes for greedy tokens (Backend::ArgMaxRows): the
// sampler's choice on finite rows, the first of equals, NaN never chosen.
TEST(ArgMaxTest, FirstOfEqualsAndNaNNeverWins) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(cpu::ArgMax(kLogits.data(), 5), Sampler(SamplingParams{}).Sample(kLogits));
  const std::vector<float> ties = {1.f, 4.f, 2.f, 4.f};
  EXPECT_EQ(cpu::ArgMax(ties.data(), 4), 1);
  const std::vector<float> with_nan = {nan, -1.f, nan, 3.f, nan};
  EXPECT_EQ(cpu::ArgMax(with_nan.data(), 5), 3);
  const std::vector<float> all_nan = {nan, nan};
  EXPECT_EQ(cpu::ArgMax(all_nan.data(), 2), 0);
  const std::vector<float> minus_inf = {nan, -inf, -inf};
  EXPECT_EQ(cpu::ArgMax(minus_inf.data(), 3), 1);
}

TEST(ArgMaxTest, BackendRowsByDefaultAndRowCountChecked) {
  CpuBackend cpu;
  const std::vector<float> x = {0.f, 2.f, 1.f, /**/ 5.f, 5.f, -1.f, /**/ -3.f, -2.f, -2.f};
  auto t = testing_cuda::MakeTensor(&cpu, DType::kF32, 3, 3, x);
  std::vector<int32_t> out(3, -1);
  ASSERT_TRUE(cpu.ArgMaxRows(t.t, out).ok());
  EXPECT_EQ(out, (std::vector<int32_t>{1, 0, 1}));
  std::vector<int32_t> two(2);
  EXPECT_EQ(cpu.ArgMaxRows(t.t, two).code(), absl::StatusCode::kInvalidArgument);
}

TEST(SamplerTest, SameSeedSameTokensDifferentSeedDiffers) {
  SamplingParams p;
  p.temperature = 1.5f;
  p.seed = 42;
  Sampler a(p), b(p);
  p.seed = 43;
  Sampler c(p);
  std::vector<int> ta, tb, tc;
  for (int i = 0; i < 64; ++i) {
    ta.push_back(a.Sample(kLogits));
    tb.push_back(b.Sample(kLogits));
    tc.push_back(c.Sample(kLogits));
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

TEST(SamplerTest, TopKRestrictsToKBest) {
  SamplingParams p;
  p.temperature = 5.f;
  p.top_k = 2;
  Sampler s(p);
  for (int i = 0; i < 200; ++i) {
    const int t = s.Sample(kLogits);
    EXPECT_TRUE(t == 1 || t == 4) << t;
  }
}

TEST(SamplerTest, TopPKeepsSmallestNucleus) {
  // Probabilities at T=1: softmax(kLogits); ids 1 and 4 carry ~0.66 together.
  SamplingParams p;
  p.temperature = 1.f;
  p.top_p = 0.6f;
  Sampler s(p);
  std::map<int, int> seen;
  for (int i = 0; i < 400; ++i) ++seen[s.Sample(kLogits)];
  for (const auto& [tok, n] : seen) EXPECT_TRUE(tok == 1 || tok == 4) << tok;
  EXPECT_EQ(seen.size(), 2u);
}

TEST(SamplerTest, TemperatureFollowsSoftmax) {
  SamplingParams p;
  p.temperature = 1.f;
  p.seed = 7;
  Sampler s(p);
  const std::vector<float> two = {0.f, std::log(3.f)};  // p = 0.25, 0.75
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += s.Sample(two);
  EXPECT_NEAR(static_cast<double>(ones) / n, 0.75, 0.015);
}

// A draw sorts only as much of the vocabulary as the cut and the draw reach.
// A flat distribution over a large vocabulary reaches all of it: every token
// is drawn about equally often, and top_p keeps the lowest ids (ties go to
// the lower id) up to the nucleus.
TEST(SamplerTest, FlatDistributionOverLargeVocabulary) {
  const int V = 5000;
  const std::vector<float> flat(V, 0.25f);
  SamplingParams p;
  p.temperature = 1.f;
  p.seed = 11;
  Sampler all(p);
  std::vector<int> count(V, 0);
  const int draws = 5000;
  for (int i = 0; i < draws; ++i) ++count[static_cast<size_t>(all.Sample(flat))];
  int low = 0, high = 0;
  for (int t = 0; t < V; ++t) (t < V / 2 ? low : high) += count[static_cast<size_t>(t)];
  EXPECT_NEAR(static_cast<double>(high) / draws, 0.5, 0.03);
  EXPECT_GT(*std::max_element(count.begin() + V - 100, count.end()), 0) << "last ids drawn";

  p.top_p = 0.3f;
  Sampler nucleus(p);
  int max_id = 0;
  for (int i = 0; i < 2000; ++i) max_id = std::max(max_id, nucleus.Sample(flat));
  EXPECT_LT(max_id, 1500 + 1);
  EXPECT_GT(max_id, 1400);
}

// A peaked distribution over a large vocabulary: the draws follow the
// softmax of the few tokens that carry the mass.
TEST(SamplerTest, PeakedDistributionOverLargeVocabulary) {
  std::vector<float> logits(50000, -20.f);
  logits[777] = 2.f;
  logits[31337] = 2.f + std::log(3.f);  // 0.25 / 0.75 of nearly all the mass
  SamplingParams p;
  p.temperature = 1.f;
  p.seed = 3;
  Sampler s(p);
  int hits = 0, other = 0;
  for (int i = 0; i < 2000; ++i) {
    const int t = s.Sample(logits);
    hits += t == 31337;
    other += t != 31337 && t != 777;
  }
  EXPECT_NEAR(hits / 2000.0, 0.75, 0.035);
  EXPECT_LE(other, 2);
}

TEST(SamplerTest, ValidateRejectsBadParameters) {
  SamplingParams p;
  EXPECT_TRUE(p.Validate().ok());
  p.temperature = -1.f;
  EXPECT_EQ(p.Validate().code(), absl::StatusCode::kInvalidArgument);
  p = {};
  p.temperature = NAN;
  EXPECT_EQ(p.Validate().code(), absl::StatusCode::kInvalidArgument);
  p = {};
  p.top_k = -3;
  EXPECT_EQ(p.Validate().code(), absl::StatusCode::kInvalidArgument);
  p = {};
  p.top_p = 0.f;
  EXPECT_EQ(p.Validate().code(), absl::StatusCode::kInvalidArgument);
  p.top_p = 1.5f;
  EXPECT_EQ(p.Validate().code(), absl::StatusCode::kInvalidArgument);
  for (float r : {0.f, -1.f, 11.f, float(NAN)}) {
    p = {};
    p.repetition_penalty = r;
    EXPECT_EQ(p.Validate().code(), absl::StatusCode::kInvalidArgument) << r;
  }
}

TEST(SamplerTest, RepetitionPenaltyDiscountsSeenTokens) {
  // Token 2 leads; once seen, 4.0 / 2 = 2.0 falls below token 1's 3.0. A
  // negative logit is multiplied: token 0 at -1 becomes -2, never chosen.
  const std::vector<float> logits = {-1.f, 3.f, 4.f, 0.5f};
  SamplingParams p;
  p.repetition_penalty = 2.f;
  Sampler s(p);
  EXPECT_EQ(s.Sample(logits), 2);
  s.Observe(2);
  EXPECT_EQ(s.Sample(logits), 1);
  s.Observe(1);  // 1.5 vs 2.0: token 2 again
  EXPECT_EQ(s.Sample(logits), 2);
  // Off (1): observing changes nothing.
  Sampler off(SamplingParams{});
  off.Observe(2);
  EXPECT_EQ(off.Sample(logits), 2);
  // With temperature, a penalized token is drawn less often.
  SamplingParams hot;
  hot.temperature = 1.f;
  hot.seed = 5;
  hot.repetition_penalty = 4.f;
  Sampler a(hot), b(SamplingParams{1.f, 0, 1.f, 5, 1.f});
  a.Observe(2);
  int a2 = 0, b2 = 0;
  for (int i = 0; i < 2000; ++i) {
    a2 += a.Sample(logits) == 2;
    b2 += b.Sample(logits) == 2;
  }
  EXPECT_LT(a2, b2 / 2);
}

}  // namespace
}  // namespace longctx

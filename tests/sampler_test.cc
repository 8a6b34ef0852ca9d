#include "engine/sampling/sampler.h"

#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace longctx {
namespace {

const std::vector<float> kLogits = {1.f, 3.f, 2.f, 0.5f, 2.9f};

TEST(SamplerTest, GreedyPicksArgmax) {
  Sampler s(SamplingParams{});
  EXPECT_EQ(s.Sample(kLogits), 1);
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

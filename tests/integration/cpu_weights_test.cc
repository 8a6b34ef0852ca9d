// The CPU backend's quantized weight path through longctxd (cpu_weights=quantized):
// the server starts on it, serves a session, and scores the same text as the
// f32 path within the quantization's error; a bad value is refused at start.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon.h"
#include "tests/integration/helpers.h"

namespace longctx::testing {
namespace {

// The log-probability of a fixed continuation after a fixed document.
double ScoreOn(Daemon& d) {
  auto stub = d.Stub();
  auto s = CreateSession(stub.get());
  EXPECT_TRUE(s.ok()) << s.status();
  if (!s.ok()) return NAN;
  EXPECT_TRUE(IngestTexts(stub.get(), s->id(), Paragraphs(2)).ok());
  auto score = Score(stub.get(), s->id(), " The river keeper walked along the bank.");
  EXPECT_TRUE(score.ok()) << score.status();
  return score.ok() ? score->logprob() : NAN;
}

TEST(CpuWeightsTest, QuantizedServerScoresAsTheF32One) {
  if (ModelPath().empty()) GTEST_SKIP() << "LONGCTX_MODEL is not set";
  double logprob[2];
  const char* paths[2] = {"--cpu_weights=f32", "--cpu_weights=quantized"};
  for (int i = 0; i < 2; ++i) {
    auto d = Daemon::Start({paths[i]});
    ASSERT_TRUE(d.ok()) << d.status();
    ASSERT_TRUE((*d)->WaitServing(absl::Minutes(2)).ok()) << (*d)->LogTail();
    logprob[i] = ScoreOn(**d);
  }
  ASSERT_TRUE(std::isfinite(logprob[0]) && std::isfinite(logprob[1]));
  // Int8 activations over 4-bit blocks: tests/model_quantized_test.cc bounds
  // the per-token KL; over ~10 scored tokens the sum moves by a few percent.
  EXPECT_NEAR(logprob[1], logprob[0], 0.05 * std::abs(logprob[0]));
  EXPECT_NE(logprob[1], logprob[0]) << "the quantized path ran";
}

TEST(CpuWeightsTest, AnUnknownPathIsRefusedAtStart) {
  if (ModelPath().empty()) GTEST_SKIP() << "LONGCTX_MODEL is not set";
  auto d = Daemon::Start({"--cpu_weights=int3"});
  ASSERT_TRUE(d.ok()) << d.status();
  auto code = (*d)->Wait(absl::Minutes(1));
  ASSERT_TRUE(code.ok());
  EXPECT_NE(*code, 0);
  EXPECT_THAT((*d)->LogTail(), ::testing::HasSubstr("cpu_weights"));
}

}  // namespace
}  // namespace longctx::testing

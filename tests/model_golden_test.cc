// The CPU forward pass against an independent implementation: llama.cpp running an
// F32 copy of the default model (tools/gen_golden_logits.py wrote the fixture).
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend/cpu_backend.h"
#include "engine/model/host_weights.h"
#include "engine/model/llama_model.h"
#include "gtest/gtest.h"
#include "tests/model_test_util.h"

namespace longctx {
namespace {

struct GoldenPrompt {
  std::vector<int32_t> tokens, greedy;
  std::vector<std::vector<int32_t>> cols;   // per position
  std::vector<std::vector<float>> logits;   // per position, at cols
  std::vector<float> lse;                   // per position, over the whole vocabulary
};

std::vector<GoldenPrompt> ReadGolden() {
  std::ifstream in(std::string(LONGCTX_SOURCE_DIR) + "/tests/fixtures/model/golden_logits.bin",
                   std::ios::binary);
  auto u32 = [&] {
    uint32_t v = 0;
    in.read(reinterpret_cast<char*>(&v), 4);
    return v;
  };
  auto i32s = [&](size_t n) {
    std::vector<int32_t> v(n);
    in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(4 * n));
    return v;
  };
  char magic[4];
  in.read(magic, 4);
  EXPECT_EQ(std::string(magic, 4), "LCGL");
  EXPECT_EQ(u32(), 1u);
  const uint32_t n_prompts = u32(), n_cols = u32();
  std::vector<GoldenPrompt> out(n_prompts);
  for (auto& p : out) {
    p.tokens = i32s(u32());
    p.greedy = i32s(u32());
    for (size_t t = 0; t < p.tokens.size(); ++t) {
      p.cols.push_back(i32s(n_cols));
      std::vector<float> v(n_cols);
      in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(4 * n_cols));
      p.logits.push_back(std::move(v));
      float lse;
      in.read(reinterpret_cast<char*>(&lse), 4);
      p.lse.push_back(lse);
    }
  }
  EXPECT_TRUE(in.good());
  return out;
}

class ModelGoldenTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const HostModel* host = TestHostModel();
    if (host == nullptr) return;
    backend_ = new CpuBackend();
    KvCacheConfig kv;
    kv.max_bytes = int64_t{256} << 20;
    auto model = LlamaModel::Create(*host, backend_, kv);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete backend_;
    model_ = nullptr;
    backend_ = nullptr;
  }
  void SetUp() override {
    if (model_ == nullptr) GTEST_SKIP() << "LONGCTX_MODEL is not set: no model to test";
  }
  static CpuBackend* backend_;
  static LlamaModel* model_;
};
CpuBackend* ModelGoldenTest::backend_ = nullptr;
LlamaModel* ModelGoldenTest::model_ = nullptr;

double LogSumExp(const float* row, int n) {
  double m = row[0];
  for (int i = 1; i < n; ++i) m = std::max(m, double{row[i]});
  double s = 0;
  for (int i = 0; i < n; ++i) s += std::exp(row[i] - m);
  return m + std::log(s);
}

// Tolerances. Both sides compute in f32 from identical weights; they differ in
// summation order (BLAS blocking vs ggml's) and in exp/rsqrt implementations, which
// after 30 layers leaves logit differences of order 1e-4 relative to the logit
// scale. We allow 2e-3 relative error of each position's checked logits (a bug —
// a wrong RoPE pairing, a missed un-permute, a bias or norm error — gives errors of
// order 1e-1 and more). Log-probabilities may differ by 5e-3 plus 5e-4 of their
// magnitude: errors grow with |logit|, and far-tail entries (log p near -30) are
// the largest numbers in the sum. Top-1 must agree wherever the reference's top
// two are more than 1e-2 apart.
constexpr double kRelTol = 5e-4;
constexpr double kLogProbAbsTol = 1e-3;
constexpr double kLogProbRelTol = 1e-4;

TEST_F(ModelGoldenTest, LogitsMatchIndependentImplementationAtEveryPosition) {
  const int V = model_->config().vocab_size;
  for (const GoldenPrompt& p : ReadGolden()) {
    KvSequence seq;
    std::vector<float> logits;
    StepItem item{&seq, p.tokens, LogitsMode::kAll, {}};
    ASSERT_TRUE(model_->Forward({&item, 1}, &logits).ok());
    ASSERT_EQ(logits.size(), p.tokens.size() * V);
    for (size_t t = 0; t < p.tokens.size(); ++t) {
      const float* row = logits.data() + t * V;
      double err2 = 0, ref2 = 0;
      const double lse = LogSumExp(row, V);
      for (size_t c = 0; c < p.cols[t].size(); ++c) {
        const double ours = row[p.cols[t][c]], ref = p.logits[t][c];
        err2 += (ours - ref) * (ours - ref);
        ref2 += ref * ref;
        const double ref_logp = ref - p.lse[t];
        EXPECT_NEAR(ours - lse, ref_logp, kLogProbAbsTol + kLogProbRelTol * std::abs(ref_logp))
            << "position " << t << " col " << c;
      }
      EXPECT_LE(std::sqrt(err2 / ref2), kRelTol) << "position " << t << " of " << p.tokens.size();
      const int ours_top = static_cast<int>(std::max_element(row, row + V) - row);
      if (p.logits[t][0] - p.logits[t][1] > 1e-2) {
        EXPECT_EQ(ours_top, p.cols[t][0]) << "top-1 differs at position " << t;
      }
    }
    model_->kv_cache().Release(seq);
  }
}

TEST_F(ModelGoldenTest, GreedyContinuationMatchesFor32Tokens) {
  const int V = model_->config().vocab_size;
  for (const GoldenPrompt& p : ReadGolden()) {
    KvSequence seq;
    std::vector<float> logits;
    StepItem item{&seq, p.tokens, LogitsMode::kLast, {}};
    ASSERT_TRUE(model_->Forward({&item, 1}, &logits).ok());
    std::vector<int32_t> ours;
    for (int i = 0; i < 32; ++i) {
      const int32_t next =
          static_cast<int32_t>(std::max_element(logits.begin(), logits.begin() + V) - logits.begin());
      ours.push_back(next);
      StepItem step{&seq, {&ours.back(), 1}, LogitsMode::kLast, {}};
      ASSERT_TRUE(model_->Forward({&step, 1}, &logits).ok());
    }
    EXPECT_EQ(ours, std::vector<int32_t>(p.greedy.begin(), p.greedy.begin() + 32))
        << "prompt of " << p.tokens.size() << " tokens";
    model_->kv_cache().Release(seq);
  }
}

}  // namespace
}  // namespace longctx

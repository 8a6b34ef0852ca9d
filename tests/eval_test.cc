// Perplexity evaluation (engine/eval/eval.*): the per-token losses kept for
// comparisons with tools/train/ against an independent log-softmax of the
// session's own logits. Runs on a small synthetic Llama model (no model file).
#include "engine/eval/eval.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "engine/backend/cpu_backend.h"
#include "engine/model/infini_window.h"
#include "engine/model/synthetic_model.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

constexpr int kVocab = 101;

ModelConfig TinyConfig() {
  ModelConfig c;
  c.architecture = "llama";
  c.name = "eval-tiny";
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.d_model = 32;
  c.d_ff = 64;
  c.vocab_size = kVocab;
  c.context_length = 64;
  c.rope_theta = 10000.f;
  c.tied_embeddings = true;
  return c;
}

class EvalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    KvCacheConfig kv;
    kv.block_size = 8;
    kv.max_bytes = 4 << 20;
    auto m = LlamaModel::Create(SyntheticHostModelFor(TinyConfig(), 7), &backend_, kv);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = *std::move(m);
    DcaOverrides o;
    o.chunk_size = 24;
    o.local_window = 8;  // L = 16
    auto d = DcaConfig::Resolve(model_->config(), o);
    ASSERT_TRUE(d.ok()) << d.status();
    dca_ = *d;
    std::mt19937 rng(3);
    std::uniform_int_distribution<int32_t> tok(0, kVocab - 1);
    tokens_.resize(200);
    for (int32_t& t : tokens_) t = tok(rng);
  }

  // −log softmax(row)[target] in double, from one run of the whole window.
  std::vector<double> DirectNll(std::span<const int32_t> win, const InfiniConfig& infini) {
    auto w = InfiniWindow::Create(model_.get(), infini,
                                  dca_.ToParams(model_->config().head_dim, win.size()));
    EXPECT_TRUE(w.ok()) << w.status();
    std::vector<float> logits;
    EXPECT_TRUE((*w)->Ingest(win, LogitsMode::kAll, &logits).ok());
    std::vector<double> nll;
    for (size_t t = 0; t + 1 < win.size(); ++t) {
      const float* row = logits.data() + t * kVocab;
      double mx = row[0];
      for (int v = 1; v < kVocab; ++v) mx = std::max<double>(mx, row[v]);
      double s = 0;
      for (int v = 0; v < kVocab; ++v) s += std::exp(row[v] - mx);
      nll.push_back(mx + std::log(s) - row[win[t + 1]]);
    }
    return nll;
  }

  CpuBackend backend_;
  std::unique_ptr<LlamaModel> model_;
  DcaConfig dca_;
  std::vector<int32_t> tokens_;
};

TEST_F(EvalTest, KeptTokenLossesMatchTheLogitsAndTheMean) {
  InfiniConfig infini;
  infini.window_tokens = 32;
  infini.sink_tokens = 8;
  infini.overflow = InfiniOverflow::kCompress;
  PplProtocol p;
  p.aligned_span = 96;
  p.score_last = 95;  // every position but the first token's
  p.keep_token_nll = true;
  auto r = EvalPerplexity(*model_, tokens_, 96, 2, dca_, 40, p, infini);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->token_nll.size(), 2u);
  double sum = 0;
  for (int w = 0; w < 2; ++w) {
    const PplWindowNll& kept = r->token_nll[w];
    EXPECT_EQ(kept.first_token, 96 * w);
    EXPECT_EQ(kept.first_scored, 0);
    const std::vector<double> direct =
        DirectNll(std::span<const int32_t>(tokens_).subspan(96 * w, 96), infini);
    ASSERT_EQ(kept.nll.size(), direct.size());
    for (size_t k = 0; k < direct.size(); ++k) {
      // Pieces of 40 split steps where one Ingest does not: float rounding only.
      EXPECT_NEAR(kept.nll[k], direct[k], 1e-4 * (1 + direct[k])) << "window " << w << " k " << k;
      sum += kept.nll[k];
    }
  }
  EXPECT_EQ(r->scored_tokens, 2 * 95);
  EXPECT_NEAR(sum / r->scored_tokens, r->nll, 1e-12);
}

TEST_F(EvalTest, SecondHalfProtocolKeepsItsScoredRange) {
  PplProtocol p;
  p.keep_token_nll = true;
  auto r = EvalPerplexity(*model_, tokens_, 64, 1, dca_, 64, p);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->token_nll.size(), 1u);
  EXPECT_EQ(r->token_nll[0].first_scored, 31);
  EXPECT_EQ(r->token_nll[0].nll.size(), 32u);
  const std::vector<double> direct =
      DirectNll(std::span<const int32_t>(tokens_).subspan(0, 64), InfiniConfig{});
  // One step, the same logits: the two differ only in where the log-sum-exp
  // subtracts the maximum in float rather than double.
  for (size_t k = 0; k < 32; ++k) {
    EXPECT_NEAR(r->token_nll[0].nll[k], direct[31 + k], 1e-6 * (1 + direct[31 + k]));
  }
}

TEST_F(EvalTest, LossesAreNotKeptUnlessAsked) {
  auto r = EvalPerplexity(*model_, tokens_, 64, 2, dca_, 64);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->token_nll.empty());
  EXPECT_EQ(r->scored_tokens, 64);
}

}  // namespace
}  // namespace longctx

// The default model on the quantized CPU path (weights in their GGUF blocks,
// int8 activations, cpu::QuantLinear) against the same model on the f32 path
// (weights dequantized at load, BLAS), on the golden prompts' tokens.
//
// Tolerances. The weights are identical on both sides (the f32 path holds their
// exact dequantization); the quantized path only rounds each activation to one of
// 255 steps of its block of 32 before every product (at most amax / 254 per
// element), and these roundings compound over 30 layers of 7 products. We bound
// the KL divergence of the next-token distributions, KL(f32 || quantized), in
// nats: measured on these 105 positions, mean 0.0061 and largest 0.020; we allow
// 2.5x both (0.015 and 0.05). A wrong nibble order, scale, offset or group in any
// format gives KL of whole nats. Top-1 must agree wherever the f32 path's top two
// are more than 0.5 apart. (On text, perplexity moves by 0.3 %: docs/benchmarks.md.)
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "engine/backend/cpu_backend.h"
#include "engine/model/host_weights.h"
#include "engine/model/llama_model.h"
#include "engine/model/load_model.h"
#include "gtest/gtest.h"
#include "tests/model_test_util.h"

namespace longctx {
namespace {

constexpr double kMaxKl = 0.05;
constexpr double kMeanKl = 0.015;
constexpr double kTopMargin = 0.5;

double LogSumExp(const float* row, int n) {
  double m = row[0];
  for (int i = 1; i < n; ++i) m = std::max(m, double{row[i]});
  double s = 0;
  for (int i = 0; i < n; ++i) s += std::exp(row[i] - m);
  return m + std::log(s);
}

std::vector<float> AllLogits(LlamaModel& model, const std::vector<int32_t>& tokens) {
  KvSequence seq;
  std::vector<float> logits;
  StepItem item{&seq, tokens, LogitsMode::kAll, {}};
  EXPECT_TRUE(model.Forward({&item, 1}, &logits).ok());
  model.kv_cache().Release(seq);
  return logits;
}

TEST(ModelQuantizedTest, LogitsFollowTheF32PathOnTheSameWeights) {
  const HostModel* f32_host = TestHostModel();
  if (f32_host == nullptr) GTEST_SKIP() << "LONGCTX_MODEL is not set: no model to test";
  const char* path = std::getenv("LONGCTX_MODEL");
  CpuBackend quant_backend(CpuBackendOptions{.quantized_weights = true}),
      f32_backend(CpuBackendOptions{.quantized_weights = false});
  auto quant_host = LoadHostModel(path, HostLoadOptionsFor(quant_backend));
  ASSERT_TRUE(quant_host.ok()) << quant_host.status();
  ASSERT_EQ(quant_host->tensors.at("blk.0.attn_q.weight").dtype, DType::kQ4_1);
  ASSERT_EQ(quant_host->tensors.at("token_embd.weight").dtype, DType::kQ8_0);
  KvCacheConfig kv;
  kv.max_bytes = int64_t{64} << 20;
  auto quant = LlamaModel::Create(*quant_host, &quant_backend, kv);
  auto f32 = LlamaModel::Create(*f32_host, &f32_backend, kv);
  ASSERT_TRUE(quant.ok() && f32.ok());
  const int V = (*f32)->config().vocab_size;
  // A chat-like prompt and a run of prose token ids from the vocabulary's middle.
  std::vector<std::vector<int32_t>> prompts = {{1, 9690, 198, 2683, 314, 253, 5356, 11173, 30}};
  std::vector<int32_t> prose;
  for (int i = 0; i < 96; ++i) prose.push_back(200 + (i * 7919) % 20000);
  prompts.push_back(prose);
  double kl_sum = 0;
  int positions = 0;
  for (const auto& tokens : prompts) {
    const std::vector<float> q = AllLogits(**quant, tokens), r = AllLogits(**f32, tokens);
    ASSERT_EQ(q.size(), r.size());
    for (size_t t = 0; t < tokens.size(); ++t) {
      const float* qr = q.data() + t * V;
      const float* rr = r.data() + t * V;
      const double lse_q = LogSumExp(qr, V), lse_r = LogSumExp(rr, V);
      double kl = 0;
      for (int i = 0; i < V; ++i) {
        const double lp = rr[i] - lse_r;
        kl += std::exp(lp) * (lp - (qr[i] - lse_q));
      }
      EXPECT_LE(kl, kMaxKl) << "position " << t;
      kl_sum += kl;
      ++positions;
      const int64_t top = std::max_element(rr, rr + V) - rr;
      double second = -1e30;
      for (int i = 0; i < V; ++i) {
        if (i != top) second = std::max(second, double{rr[i]});
      }
      if (rr[top] - second > kTopMargin) {
        EXPECT_EQ(std::max_element(qr, qr + V) - qr, top) << "top-1 differs at position " << t;
      }
    }
  }
  EXPECT_LE(kl_sum / positions, kMeanKl);
}

}  // namespace
}  // namespace longctx

// Synthetic models (engine/model/synthetic_model.h) and the FillUniform op that
// makes their weights: the Llama-2-7B shape, loading by path, and a tiny
// synthetic model running on the CPU backend exactly like the same weights
// uploaded from the host.
#include "engine/model/synthetic_model.h"

#include <cmath>
#include <vector>

#include "engine/backend/cpu_backend.h"
#include "engine/model/llama_model.h"
#include "engine/model/weight_layout.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"

namespace longctx {
namespace {

TEST(FillUniformTest, DeterministicInRangeAndSeeded) {
  const int64_t n = 100000;
  std::vector<float> a(n), b(n), c(n), prefix(10);
  cpu::FillUniform(a.data(), n, 5, -2.f, 3.f);
  cpu::FillUniform(b.data(), n, 5, -2.f, 3.f);
  cpu::FillUniform(c.data(), n, 6, -2.f, 3.f);
  cpu::FillUniform(prefix.data(), 10, 5, -2.f, 3.f);
  EXPECT_EQ(a, b);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(prefix[i], a[i]) << i;
  double sum = 0, sq = 0;
  int64_t same = 0;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_GE(a[i], -2.f);
    ASSERT_LT(a[i], 3.f);
    sum += a[i];
    sq += (a[i] - 0.5) * (a[i] - 0.5);
    same += a[i] == c[i];
  }
  EXPECT_NEAR(sum / n, 0.5, 0.03);
  EXPECT_NEAR(sq / n, 25.0 / 12.0, 0.05);  // variance of U(-2, 3)
  EXPECT_LT(same, 10);
}

TEST(SyntheticModelTest, Llama2_7bShape) {
  auto m = SyntheticHostModel("llama2-7b");
  ASSERT_TRUE(m.ok()) << m.status();
  const ModelConfig& c = m->config;
  EXPECT_EQ(c.n_layers, 32);
  EXPECT_EQ(c.d_model, 4096);
  EXPECT_EQ(c.n_heads, 32);
  EXPECT_EQ(c.n_kv_heads, 32);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.d_ff, 11008);
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_NE(c.name.find("synthetic, random weights"), std::string::npos);
  ASSERT_TRUE(c.Validate().ok());
  const absl::Status shapes = CheckWeightShapes(c, [&](const std::string& name) {
    auto it = m->tensors.find(name);
    return it == m->tensors.end() ? std::nullopt
                                  : std::optional<std::vector<int64_t>>(it->second.shape);
  });
  EXPECT_TRUE(shapes.ok()) << shapes;
  // Llama-2-7B has 6,738,415,616 parameters.
  EXPECT_EQ(WeightBytes(c, 2), int64_t{6738415616} * 2);
  int64_t elements = 0;
  for (const auto& [name, t] : m->tensors) {
    EXPECT_TRUE(t.synthetic()) << name;
    elements += t.numel();
  }
  EXPECT_EQ(elements, int64_t{6738415616});
}

TEST(SyntheticModelTest, ByPathAndUnknownName) {
  auto m = LoadHostModel("synthetic:llama2-7b");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->config.n_layers, 32);
  auto bad = LoadHostModel("synthetic:gpt-17");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(bad.status().message().find("llama2-7b"), std::string::npos);
}

ModelConfig TinyConfig() {
  return ModelConfig{
      .architecture = "llama",
      .name = "tiny synthetic",
      .n_layers = 2,
      .d_model = 64,
      .n_heads = 4,
      .n_kv_heads = 2,
      .head_dim = 16,
      .d_ff = 96,
      .vocab_size = 300,
      .context_length = 512};
}

std::vector<float> Logits(const HostModel& host) {
  CpuBackend backend;
  KvCacheConfig kv;
  kv.max_bytes = int64_t{1} << 22;
  auto model = LlamaModel::Create(host, &backend, kv);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return {};
  KvSequence seq;
  const std::vector<int32_t> tokens = {1, 7, 42, 299, 5};
  StepItem item{&seq, tokens, LogitsMode::kAll, {}};
  std::vector<float> logits;
  const absl::Status s = (*model)->Forward({&item, 1}, &logits);
  EXPECT_TRUE(s.ok()) << s;
  return logits;
}

TEST(SyntheticModelTest, RunsLikeTheSameWeightsUploaded) {
  const HostModel synthetic = SyntheticHostModelFor(TinyConfig(), 3);
  HostModel uploaded = synthetic;
  for (auto& [name, t] : uploaded.tensors) {
    t.data.resize(static_cast<size_t>(t.numel()));
    cpu::FillUniform(t.data.data(), t.numel(), t.fill_seed, t.fill_lo, t.fill_hi);
    ASSERT_FALSE(t.synthetic());
  }
  const std::vector<float> a = Logits(synthetic);
  const std::vector<float> b = Logits(uploaded);
  ASSERT_EQ(a.size(), size_t{5} * 300);
  EXPECT_EQ(a, b);
  for (float x : a) ASSERT_TRUE(std::isfinite(x));
  const std::vector<float> other = Logits(SyntheticHostModelFor(TinyConfig(), 4));
  EXPECT_NE(a, other);
}

}  // namespace
}  // namespace longctx

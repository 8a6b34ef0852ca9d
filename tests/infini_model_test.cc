// The Infini window on the real default model (LONGCTX_MODEL; skipped without
// it): cached keys rotated back are the un-rotated keys the memory must see,
// and with mixing off compress and slide give identical logits.
#include <cmath>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "engine/backend/cpu_backend.h"
#include "engine/model/host_weights.h"
#include "engine/model/infini_window.h"
#include "gtest/gtest.h"
#include "tests/model_test_util.h"

namespace longctx {
namespace {

class InfiniModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    host_ = TestHostModel();
  }
  void SetUp() override {
    if (host_ == nullptr) GTEST_SKIP() << "LONGCTX_MODEL is not set";
    KvCacheConfig kv;
    kv.block_size = 64;
    kv.max_bytes = int64_t{256} << 20;
    auto m = LlamaModel::Create(*host_, &backend_, kv);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m);
  }
  static cpu::DcaParams Dca() {
    cpu::DcaParams p;
    p.chunk_len = 128;
    p.chunk_size = 160;
    return p;
  }
  static std::vector<int32_t> Tokens(int n) {
    std::mt19937 rng(1);
    std::uniform_int_distribution<int32_t> d(0, 49151);
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int32_t& x : t) x = d(rng);
    return t;
  }
  static const HostModel* host_;
  CpuBackend backend_;
  std::unique_ptr<LlamaModel> model_;
};
const HostModel* InfiniModelTest::host_ = nullptr;

// Layer 0's keys are RmsNorm(embedding) · Wk, computable here from the weights.
// The memory's keys (cached keys rotated back at −(j mod L)) must equal them:
// no position may leak into the memory.
TEST_F(InfiniModelTest, CachedKeysRotatedBackAreTheUnrotatedKeys) {
  const ModelConfig& c = model_->config();
  InfiniConfig config;
  auto w = InfiniWindow::Create(model_.get(), config, Dca());
  ASSERT_TRUE(w.ok()) << w.status();
  const int n = 300, L = Dca().chunk_len, D = c.head_dim, kvw = c.n_kv_heads * D;
  const std::vector<int32_t> tokens = Tokens(n);
  ASSERT_TRUE((*w)->Ingest(tokens, LogitsMode::kNone, nullptr).ok());

  std::vector<float> x(static_cast<size_t>(n) * c.d_model), want(static_cast<size_t>(n) * kvw);
  cpu::Embedding(x.data(), host_->tensors.at("token_embd.weight").data.data(), tokens.data(), n,
                 c.d_model);
  cpu::RmsNorm(x.data(), x.data(), host_->tensors.at("blk.0.attn_norm.weight").data.data(), n,
               c.d_model, c.rms_eps);
  cpu::Linear(want.data(), x.data(), host_->tensors.at("blk.0.attn_k.weight").data.data(),
              c.qkv_bias ? host_->tensors.at("blk.0.attn_k.bias").data.data() : nullptr, n, kvw,
              c.d_model);

  const KvGeometry& g = model_->kv_cache().geometry();
  std::vector<float> block(static_cast<size_t>(g.ElementsPerBlock()));
  double worst = 0, moved = 0;
  for (int j = 0; j < n; ++j) {
    ASSERT_TRUE(
        backend_.KvReadBlock((*w)->sequence().block_table()[j / g.block_size], block.data()).ok());
    std::vector<float> k(block.begin() + (j % g.block_size) * kvw,
                         block.begin() + (j % g.block_size + 1) * kvw);  // layer 0, K plane
    const int32_t back = -(j % L);
    for (int i = 0; i < kvw; ++i)
      moved = std::max(moved, double{std::abs(k[i] - want[j * kvw + i])});
    cpu::Rope(k.data(), &back, model_->inv_freq().data(), 1, c.n_kv_heads, D);
    for (int h = 0; h < c.n_kv_heads; ++h) {
      double norm = 0;
      for (int d = 0; d < D; ++d)
        norm = std::max(norm, double{std::abs(want[j * kvw + h * D + d])});
      for (int d = 0; d < D; ++d) {
        worst = std::max(worst, std::abs(k[h * D + d] - want[j * kvw + h * D + d]) / norm);
      }
    }
  }
  EXPECT_GT(moved, 0.1) << "cached keys are stored rotated";
  // Two f32 rotations and a differently blocked sgemm: within 2e-6 of each
  // head's largest entry (1.6e-7 measured).
  EXPECT_LT(worst, 2e-6);
}

TEST_F(InfiniModelTest, MixingOffCompressEqualsSlideAndTheMemoryIsFinite) {
  const ModelConfig& c = model_->config();
  InfiniConfig config;
  config.window_tokens = 256;
  config.sink_tokens = 64;
  const std::vector<int32_t> tokens = Tokens(4 * 128 + 17);
  std::vector<float> lc, ls;
  {
    auto w = InfiniWindow::Create(model_.get(), config, Dca());
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE((*w)->Ingest(tokens, LogitsMode::kLast, &lc).ok());
    const InfiniMemory& m = *(*w)->memory();
    EXPECT_EQ(m.folded_tokens(), 3 * 128 - 64);  // chunks 0-2 left, less the sinks
    EXPECT_EQ(m.bytes(),
              int64_t{c.n_layers} * c.n_kv_heads * (c.head_dim * c.head_dim + c.head_dim) * 4);
    for (int l = 0; l < c.n_layers; ++l) {
      for (int i = 0; i < c.n_kv_heads * c.head_dim * c.head_dim; ++i)
        ASSERT_TRUE(std::isfinite(m.mem(l)[i]));
      for (int i = 0; i < c.n_kv_heads * c.head_dim; ++i) ASSERT_GT(m.z(l)[i], 0.f);
    }
  }
  config.overflow = InfiniOverflow::kSlide;
  auto w = InfiniWindow::Create(model_.get(), config, Dca());
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE((*w)->Ingest(tokens, LogitsMode::kLast, &ls).ok());
  EXPECT_EQ(lc, ls);
  EXPECT_FALSE(model_->has_infini_gates()) << "the default model has no trained gates";
}

}  // namespace
}  // namespace longctx

// DCA through the whole model: ingesting a text in segments of random sizes gives
// the logits of one prefill, and decoding token by token after a prefill gives the
// logits of prefilling the extended text. DCA is set for c = 512 (C = 384,
// w = 64, L = 320) so a 700-token text spans three chunks and every segment
// boundary case (intra, successive, inter) is crossed.
#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "engine/backend/cpu_backend.h"
#include "engine/model/dca_config.h"
#include "engine/model/host_weights.h"
#include "engine/model/llama_model.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "tests/model_test_util.h"

namespace longctx {
namespace {

class ModelIncrementalTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const HostModel* host = TestHostModel();
    if (host == nullptr) return;
    backend_ = new CpuBackend();
    KvCacheConfig kv;
    kv.max_bytes = int64_t{128} << 20;
    auto model = LlamaModel::Create(*host, backend_, kv);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
    DcaOverrides o;
    o.pretrain_len = 512;
    auto dca = DcaConfig::Resolve(host->config, o);
    ASSERT_TRUE(dca.ok()) << dca.status();
    ASSERT_EQ(dca->chunk_len(), 320);
    params_ = dca->ToParams(host->config.head_dim, 0);
    std::mt19937 rng(11);
    std::uniform_int_distribution<int32_t> tok(200, host->config.vocab_size - 1);
    tokens_.resize(700);
    for (auto& t : tokens_) t = tok(rng);
  }
  static void TearDownTestSuite() {
    delete model_;
    delete backend_;
  }
  void SetUp() override {
    if (model_ == nullptr) GTEST_SKIP() << "LONGCTX_MODEL is not set: no model to test";
  }

  // Logits of every position from one prefill of tokens_[0, n).
  static std::vector<float> WholePrefill(int n) {
    KvSequence seq;
    std::vector<float> logits;
    StepItem item{&seq, {tokens_.data(), static_cast<size_t>(n)}, LogitsMode::kAll, params_};
    EXPECT_TRUE(model_->Forward({&item, 1}, &logits).ok());
    model_->kv_cache().Release(seq);
    return logits;
  }

  // Relative L2 difference, per position.
  static void ExpectClose(const std::vector<float>& a, const std::vector<float>& b, int V,
                          const char* what) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t t = 0; t < a.size() / V; ++t) {
      double err = 0, ref = 0;
      for (int v = 0; v < V; ++v) {
        const double d = double{a[t * V + v]} - b[t * V + v];
        err += d * d;
        ref += double{b[t * V + v]} * b[t * V + v];
      }
      // Same arithmetic in a different blocking (query tiles, key shares): f32
      // rounding differences only, amplified by 30 layers to ~1e-5.
      ASSERT_LE(std::sqrt(err / ref), 1e-4) << what << ", position " << t;
    }
  }

  static CpuBackend* backend_;
  static LlamaModel* model_;
  static cpu::DcaParams params_;
  static std::vector<int32_t> tokens_;
};
CpuBackend* ModelIncrementalTest::backend_ = nullptr;
LlamaModel* ModelIncrementalTest::model_ = nullptr;
cpu::DcaParams ModelIncrementalTest::params_;
std::vector<int32_t> ModelIncrementalTest::tokens_;

TEST_F(ModelIncrementalTest, SegmentsOfRandomSizesEqualOnePrefill) {
  const int V = model_->config().vocab_size;
  const std::vector<float> whole = WholePrefill(static_cast<int>(tokens_.size()));
  for (uint32_t seed : {1u, 2u}) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> size(1, 200);
    KvSequence seq;
    std::vector<float> pieces, logits;
    for (size_t first = 0; first < tokens_.size();) {
      const size_t n = std::min<size_t>(size(rng), tokens_.size() - first);
      StepItem item{&seq, {tokens_.data() + first, n}, LogitsMode::kAll, params_};
      ASSERT_TRUE(model_->Forward({&item, 1}, &logits).ok());
      pieces.insert(pieces.end(), logits.begin(), logits.end());
      first += n;
    }
    model_->kv_cache().Release(seq);
    ExpectClose(pieces, whole, V, "segmented ingest");
  }
}

TEST_F(ModelIncrementalTest, DecodeAfterPrefillEqualsPrefillOfExtendedText) {
  const int V = model_->config().vocab_size;
  const int prompt = 630, total = static_cast<int>(tokens_.size());  // decode crosses L = 640
  const std::vector<float> whole = WholePrefill(total);
  KvSequence seq;
  std::vector<float> logits;
  StepItem item{&seq, {tokens_.data(), static_cast<size_t>(prompt)}, LogitsMode::kLast, params_};
  ASSERT_TRUE(model_->Forward({&item, 1}, &logits).ok());
  std::vector<float> decoded(logits);
  for (int t = prompt; t < total - 1; ++t) {
    StepItem step{&seq, {tokens_.data() + t, 1}, LogitsMode::kLast, params_};
    ASSERT_TRUE(model_->Forward({&step, 1}, &logits).ok());
    decoded.insert(decoded.end(), logits.begin(), logits.end());
  }
  model_->kv_cache().Release(seq);
  ExpectClose(decoded,
              std::vector<float>(whole.begin() + static_cast<int64_t>(prompt - 1) * V,
                                 whole.begin() + static_cast<int64_t>(total - 1) * V),
              V, "decode");
}

// kGreedy items get the argmax of the logits a kLast item gets, in a decode
// step (one token per item) and in a prefill step, mixed with items that
// download their logits; only those come back as logit rows.
TEST_F(ModelIncrementalTest, GreedyItemsGetTheArgmaxOfTheirLogits) {
  const int V = model_->config().vocab_size;
  const int lengths[] = {40, 7, 25};
  const LogitsMode modes[] = {LogitsMode::kGreedy, LogitsMode::kAll, LogitsMode::kGreedy};
  // Two copies of three sessions: a reference (kLast everywhere), and the mix.
  KvSequence ref[3], mix[3];
  for (int step = 0; step < 3; ++step) {
    // Step 0 prefills several tokens per item; steps 1 and 2 decode one.
    std::vector<StepItem> ref_items, mix_items;
    int32_t greedy[3] = {-1, -1, -1};
    for (int i = 0; i < 3; ++i) {
      const int at = step == 0 ? 0 : lengths[i] + step - 1;
      const size_t n = step == 0 ? static_cast<size_t>(lengths[i]) : 1;
      const std::span<const int32_t> toks(tokens_.data() + 100 * i + at, n);
      ref_items.push_back(StepItem{&ref[i], toks, LogitsMode::kLast, params_});
      mix_items.push_back(StepItem{&mix[i], toks, modes[i], params_});
      mix_items.back().greedy_token = &greedy[i];
    }
    std::vector<float> ref_logits, mix_logits;
    ASSERT_TRUE(model_->Forward(ref_items, &ref_logits).ok());
    ASSERT_TRUE(model_->Forward(mix_items, &mix_logits).ok());
    ASSERT_EQ(ref_logits.size(), size_t{3} * V);
    const size_t all_rows = step == 0 ? static_cast<size_t>(lengths[1]) : 1;
    ASSERT_EQ(mix_logits.size(), all_rows * V) << "step " << step;
    for (int i : {0, 2}) {
      EXPECT_EQ(greedy[i], cpu::ArgMax(ref_logits.data() + size_t{1} * i * V, V))
          << "step " << step << ", item " << i;
    }
    // The kAll item's last row is the reference's kLast row.
    const std::vector<float> last(mix_logits.end() - V, mix_logits.end());
    const std::vector<float> ref_last(ref_logits.begin() + V, ref_logits.begin() + 2 * V);
    ExpectClose(last, ref_last, V, "kAll row beside greedy items");
  }
  // A greedy item without a place for its token is refused before anything runs.
  StepItem bad{&mix[0], {tokens_.data(), 1}, LogitsMode::kGreedy, params_};
  std::vector<float> logits;
  EXPECT_EQ(model_->Forward({&bad, 1}, &logits).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(mix[0].length(), lengths[0] + 2);
  for (int i = 0; i < 3; ++i) {
    model_->kv_cache().Release(ref[i]);
    model_->kv_cache().Release(mix[i]);
  }
}

}  // namespace
}  // namespace longctx

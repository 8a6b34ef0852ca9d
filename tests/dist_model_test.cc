// The real model (LONGCTX_MODEL) over a context-parallel session: a DCA session
// spread over 2 and 3 thread-ranks on the CPU backend gives the logits of the
// same session on one rank. Tolerance: max |Δlogit| ≤ 2e-5 · max |logit| per
// step (f32 summation order only), and the same greedy token.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "engine/backend/cpu_backend.h"
#include "engine/dist/context_parallel.h"
#include "engine/dist/inproc_communicator.h"
#include "engine/model/host_weights.h"
#include "engine/model/llama_model.h"
#include "gtest/gtest.h"
#include "tests/model_test_util.h"

namespace longctx {
namespace {

// Prefill in two pieces, then decode: 222 tokens, four DCA chunks of 64.
const std::vector<int> kSteps = {150, 70, 1, 1};

cpu::DcaParams Dca() {
  cpu::DcaParams d;
  d.chunk_len = 64;
  d.chunk_size = 96;
  return d;
}

KvCacheConfig KvConfig() {
  KvCacheConfig c;
  c.block_size = 16;
  c.max_bytes = int64_t{96} << 20;
  return c;
}

class DistModelTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    const HostModel* host = TestHostModel();
    if (host == nullptr) return;
    backend_ = new CpuBackend();
    auto model = LlamaModel::Create(*host, backend_, KvConfig());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(model).value().release();
    std::mt19937 rng(11);
    std::uniform_int_distribution<int32_t> id(0, model_->config().vocab_size - 1);
    int total = 0;
    for (int n : kSteps) total += n;
    tokens_ = new std::vector<int32_t>(static_cast<size_t>(total));
    for (int32_t& t : *tokens_) t = id(rng);
  }
  static void TearDownTestSuite() {
    delete model_;
    delete backend_;
    delete tokens_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (model_ == nullptr) GTEST_SKIP() << "LONGCTX_MODEL is not set";
  }

  // Last-token logits of each step on one rank (computed once).
  static const std::vector<std::vector<float>>& SingleRank() {
    static const std::vector<std::vector<float>> logits = RunSingleRank();
    return logits;
  }
  static std::vector<std::vector<float>> RunSingleRank() {
    KvSequence seq;
    std::vector<std::vector<float>> out;
    int at = 0;
    for (int n : kSteps) {
      StepItem item;
      item.seq = &seq;
      item.tokens = std::span<const int32_t>(*tokens_).subspan(static_cast<size_t>(at), n);
      item.dca = Dca();
      out.emplace_back();
      EXPECT_TRUE(model_->Forward({&item, 1}, &out.back()).ok());
      at += n;
    }
    model_->kv_cache().Release(seq);
    return out;
  }

  // The same steps with the session spread over `world` thread-ranks; the model
  // runs on `home`, the other ranks hold KV only.
  static std::vector<std::vector<float>> Spread(int world, int home) {
    const ModelConfig& c = model_->config();
    auto comms = InProcessCommunicator::CreateGroup(world, absl::Seconds(60));
    std::vector<std::vector<float>> out(kSteps.size());
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        CpuBackend worker_backend;
        std::unique_ptr<KvCache> worker_kv;
        Backend* backend = model_->backend();
        KvCache* kv = &model_->kv_cache();
        if (r != home) {
          auto created =
              KvCache::Create(&worker_backend, c.n_layers, c.n_kv_heads, c.head_dim, KvConfig());
          ASSERT_TRUE(created.ok()) << created.status();
          worker_kv = std::move(created).value();
          backend = &worker_backend;
          kv = worker_kv.get();
        }
        const auto inv = model_->inv_freq();
        ContextParallelAttention cp(comms[r].get(), backend, kv, c.n_heads,
                                    std::vector<float>(inv.begin(), inv.end()));
        ShardedSequence seq(*ChunkPlacement::Create(world, home, PlacementSpan(Dca())));
        int at = 0;
        for (size_t s = 0; s < kSteps.size(); ++s) {
          const int n = kSteps[s];
          if (r != home) {
            const absl::Status st = cp.ServeStep(seq, n, c.n_layers, Dca());
            ASSERT_TRUE(st.ok()) << st;
          } else {
            ASSERT_TRUE(cp.BeginStep(seq, n).ok());
            ContextParallelStep step(&cp, &seq, Dca(), c.n_layers);
            StepItem item;
            item.external = &step;
            item.tokens = std::span<const int32_t>(*tokens_).subspan(static_cast<size_t>(at), n);
            item.dca = Dca();
            const absl::Status st = step.Finish(model_->Forward({&item, 1}, &out[s]));
            ASSERT_TRUE(st.ok()) << st;
          }
          at += n;
          EXPECT_EQ(seq.length(), at);
        }
        EXPECT_EQ(seq.local().length(), seq.placement().CountHeld(r, 0, at));
        cp.Release(seq);
      });
    }
    for (std::thread& t : threads) t.join();
    return out;
  }

  static void ExpectSameLogits(const std::vector<std::vector<float>>& got,
                               const std::vector<std::vector<float>>& want) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t s = 0; s < want.size(); ++s) {
      ASSERT_EQ(got[s].size(), want[s].size()) << "step " << s;
      float scale = 0.f, diff = 0.f;
      for (size_t i = 0; i < want[s].size(); ++i) {
        scale = std::max(scale, std::abs(want[s][i]));
        diff = std::max(diff, std::abs(got[s][i] - want[s][i]));
      }
      EXPECT_LE(diff, 2e-5f * scale) << "step " << s << ": max |logit| " << scale;
      const auto argmax = [](const std::vector<float>& x) {
        return std::max_element(x.begin(), x.end()) - x.begin();
      };
      EXPECT_EQ(argmax(got[s]), argmax(want[s])) << "step " << s;
      std::printf("step %zu: max |Δlogit| %.3g, max |logit| %.3g\n", s, diff, scale);
    }
  }

  static CpuBackend* backend_;
  static LlamaModel* model_;
  static std::vector<int32_t>* tokens_;
};

CpuBackend* DistModelTest::backend_ = nullptr;
LlamaModel* DistModelTest::model_ = nullptr;
std::vector<int32_t>* DistModelTest::tokens_ = nullptr;

TEST_F(DistModelTest, TwoRanksHomeOneEqualsOneRank) {
  ExpectSameLogits(Spread(2, 1), SingleRank());
}

TEST_F(DistModelTest, ThreeRanksHomeZeroEqualsOneRank) {
  ExpectSameLogits(Spread(3, 0), SingleRank());
}

class NeverCalledAttention final : public ExternalAttention {
 public:
  int length() const override { return 0; }
  absl::Status Attend(int, Tensor, Tensor, Tensor, Tensor) override {
    ADD_FAILURE() << "attention of a rejected step";
    return absl::InternalError("unreachable");
  }
};

TEST_F(DistModelTest, ExternalAttentionItemMustRunAlone) {
  KvSequence seq;
  NeverCalledAttention external;
  const int32_t tok[] = {1, 2};
  StepItem a, b;
  a.seq = &seq;
  a.tokens = tok;
  b.external = &external;
  b.tokens = tok;
  EXPECT_EQ(model_->Forward(std::vector<StepItem>{a, b}, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  b.seq = &seq;  // both a sequence and external attention
  EXPECT_EQ(model_->Forward({&b, 1}, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(seq.length(), 0);
}

}  // namespace
}  // namespace longctx

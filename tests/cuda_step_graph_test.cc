// Step graphs of the CUDA backend (CudaBackendOptions::step_graphs): batched
// decode steps replayed from a recorded CUDA graph give the logits of the same
// steps run op by op, also when the batch changes and the graph is recorded
// again; and the FillUniform kernel that makes synthetic weights on the device
// matches its CPU reference.
#ifdef LONGCTX_WITH_CUDA

#include <algorithm>
#include <cstdio>
#include <memory>
#include <span>
#include <vector>

#include "engine/backend/backend_factory.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "engine/model/llama_model.h"
#include "engine/model/synthetic_model.h"
#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "tests/cuda_test_util.h"

namespace longctx {
namespace {

using testing_cuda::RelErr;
using testing_cuda::RoundBf16;

TEST(CudaFillUniformTest, MatchesCpuRoundedToBf16) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  auto backend = CreateCudaBackend();
  ASSERT_TRUE(backend.ok()) << backend.status();
  for (int64_t n : {1, 63, 4097, 1000003}) {
    for (DType t : {DType::kBF16, DType::kF32}) {
      Tensor dst{nullptr, t, 1, n};
      auto buf = (*backend)->Allocate(dst.bytes());
      ASSERT_TRUE(buf.ok());
      dst.data = buf->data();
      ASSERT_TRUE((*backend)->FillUniform(dst, 11, -0.5f, 0.25f).ok());
      std::vector<float> got(static_cast<size_t>(n)), want(static_cast<size_t>(n));
      ASSERT_TRUE((*backend)->Download(got.data(), dst).ok());
      cpu::FillUniform(want.data(), n, 11, -0.5f, 0.25f);
      if (t == DType::kBF16) want = RoundBf16(want);
      // The CPU build may fuse lo + span * u into one FMA: a last-bit difference.
      EXPECT_LE(RelErr(got, want), t == DType::kBF16 ? 4e-3 : 1e-6) << n;
    }
  }
}

ModelConfig SmallConfig() {
  return ModelConfig{
      .architecture = "llama",
      .name = "step graph test",
      .n_layers = 3,
      .d_model = 256,
      .n_heads = 8,
      .n_kv_heads = 2,
      .head_dim = 64,
      .d_ff = 512,
      .vocab_size = 1000,
      .context_length = 1024};
}

struct Runner {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<LlamaModel> model;
  std::vector<KvSequence> seqs = std::vector<KvSequence>(4);
};

Runner Make(bool graphs) {
  Runner r;
  CudaBackendOptions o;
  o.step_graphs = graphs;
  auto b = CreateCudaBackend(o);
  EXPECT_TRUE(b.ok()) << b.status();
  if (!b.ok()) return r;
  r.backend = std::move(*b);
  KvCacheConfig kv;
  kv.max_bytes = int64_t{64} << 20;
  auto m = LlamaModel::Create(SyntheticHostModelFor(SmallConfig(), 9), r.backend.get(), kv);
  EXPECT_TRUE(m.ok()) << m.status();
  if (m.ok()) r.model = std::move(*m);
  return r;
}

// One decode step of the first `n` sessions; token ids from the step number.
// Items take `modes[i]` where given (kLast otherwise); greedy tokens go to
// greedy[i].
std::vector<float> Step(Runner& r, int n, int step, std::span<const LogitsMode> modes = {},
                        int32_t* greedy = nullptr) {
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  std::vector<StepItem> items(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    tokens[i] = (37 * step + 11 * i) % 1000;
    cpu::DcaParams dca;
    dca.chunk_len = 128;  // DCA with chunks of two blocks
    dca.chunk_size = 192;
    const LogitsMode mode = i < static_cast<int>(modes.size()) ? modes[i] : LogitsMode::kLast;
    items[i] = StepItem{&r.seqs[i], {&tokens[i], 1}, mode, dca};
    if (greedy != nullptr) items[i].greedy_token = greedy + i;
  }
  std::vector<float> logits;
  const absl::Status s = r.model->Forward(items, &logits);
  EXPECT_TRUE(s.ok()) << s;
  return logits;
}

// Sessions of different lengths, prefilled op by op (several tokens per item).
void Prefill(Runner& r) {
  const int lengths[] = {70, 129, 250, 3};
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> prompt(static_cast<size_t>(lengths[i]));
    for (int j = 0; j < lengths[i]; ++j) prompt[j] = (j * 13 + i) % 1000;
    StepItem item{&r.seqs[i], prompt, LogitsMode::kNone, {}};
    item.dca.chunk_len = 128;
    item.dca.chunk_size = 192;
    ASSERT_TRUE(r.model->Forward({&item, 1}, nullptr).ok());
  }
}

TEST(CudaStepGraphTest, ReplayedDecodeMatchesOpByOp) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  Runner on = Make(true), off = Make(false);
  ASSERT_TRUE(on.model && off.model);
  Prefill(on);
  Prefill(off);
  double worst = 0;
  // 3 sessions for 70 steps (crossing block and chunk boundaries), then 4.
  for (int step = 0; step < 90; ++step) {
    const int n = step < 70 ? 3 : 4;
    const std::vector<float> a = Step(on, n, step);
    const std::vector<float> b = Step(off, n, step);
    ASSERT_EQ(a.size(), b.size());
    ASSERT_EQ(a.size(), size_t(n) * 1000);
    worst = std::max(worst, RelErr(a, b));
  }
  // The same kernels on the same data: equal up to summation order in cuBLAS.
  EXPECT_LE(worst, 1e-5);
  auto st = GetCudaStepGraphStats(*on.backend);
  ASSERT_TRUE(st.ok());
  std::printf(
      "[step graphs] eager %lld, captures %lld, replays %lld, aborted %lld, kernels %lld, "
      "nodes %lld, args %lld B, last abort '%s', disabled '%s'; worst rel. error %.2e\n",
      static_cast<long long>(st->eager_steps), static_cast<long long>(st->captures),
      static_cast<long long>(st->replays), static_cast<long long>(st->aborted),
      static_cast<long long>(st->graph_kernels), static_cast<long long>(st->graph_nodes),
      static_cast<long long>(st->args_bytes), st->last_abort.c_str(), st->disabled_reason.c_str(),
      worst);
  EXPECT_TRUE(st->enabled) << st->disabled_reason;
  EXPECT_GE(st->captures, 2);  // the batch grew from 3 to 4 sessions
  EXPECT_GE(st->replays, 60);
  // At least seven kernels per layer: the norm + q/k/v, o + residual, norm +
  // gate/up/SwiGLU and down + residual products, RoPE, the KV write, attention.
  EXPECT_GE(st->graph_kernels, 3 * 7);
  auto st_off = GetCudaStepGraphStats(*off.backend);
  ASSERT_TRUE(st_off.ok());
  EXPECT_EQ(st_off->captures, 0);
  EXPECT_EQ(st_off->replays, 0);
}

// Greedy items of replayed steps get the argmax (on the device) of the logits
// the same step gives kLast items; items beside them still get their logits.
TEST(CudaStepGraphTest, GreedyTokensOfReplayedStepsAreTheArgmaxOfTheLogits) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  Runner ref = Make(true), mix = Make(true);
  ASSERT_TRUE(ref.model && mix.model);
  Prefill(ref);
  Prefill(mix);
  const LogitsMode modes[] = {LogitsMode::kGreedy, LogitsMode::kLast, LogitsMode::kGreedy,
                              LogitsMode::kGreedy};
  const int V = SmallConfig().vocab_size;
  for (int step = 0; step < 20; ++step) {
    const int n = step < 10 ? 3 : 4;
    int32_t greedy[4] = {-1, -1, -1, -1};
    const std::vector<float> a = Step(ref, n, step);
    const std::vector<float> b = Step(mix, n, step, modes, greedy);
    ASSERT_EQ(a.size(), size_t(n) * V);
    ASSERT_EQ(b.size(), size_t{1} * V);
    EXPECT_LE(RelErr(b, std::vector<float>(a.begin() + V, a.begin() + 2 * V)), 1e-6);
    for (int i : {0, 2, 3}) {
      if (i >= n) continue;
      EXPECT_EQ(greedy[i], cpu::ArgMax(a.data() + int64_t{i} * V, V))
          << "step " << step << ", item " << i;
    }
  }
  auto st = GetCudaStepGraphStats(*mix.backend);
  ASSERT_TRUE(st.ok());
  EXPECT_GE(st->replays, 10);
}

TEST(CudaStepGraphTest, NotACudaBackend) {
  auto b = CreateBackend(BackendKind::kCpu);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(GetCudaStepGraphStats(**b).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SetCudaStepGraphs(**b, true).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace longctx

#endif  // LONGCTX_WITH_CUDA

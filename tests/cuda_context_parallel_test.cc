// Context-parallel attention (engine/dist/context_parallel.h) over the CUDA
// backend on one GPU: 2 and 3 ranks as threads, each with its own CudaBackend
// (own stream and KV arena) on device 0, joined by an InProcessCommunicator
// whose copies are device copies that have finished when they return. The home
// rank's attention, step after step (prefill in uneven pieces, decode, more
// prefill) and layer after layer, is compared with the plain CUDA attention of
// the same session on one backend, both against the CPU backend's f32
// attention over the same bf16 keys and values: the context-parallel error is
// at most 1e-2 relative and at most twice the single-GPU error (+1e-5).
//
// What this does not cover: NCCL between processes (tests/dist_nccl_test.cc and
// tools/dist/run_multi_gpu.sh on two GPUs).
#ifdef LONGCTX_WITH_CUDA

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu_backend.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "engine/dist/context_parallel.h"
#include "engine/dist/inproc_communicator.h"
#include "engine/kv/kv_cache.h"
#include "gtest/gtest.h"
#include "tests/cuda_test_util.h"

namespace longctx {
namespace {

using testing_cuda::Fetch;
using testing_cuda::MakePoisoned;
using testing_cuda::MakeTensor;
using testing_cuda::OwnedTensor;
using testing_cuda::RelErr;
using testing_cuda::RoundBf16;

// SmolLM2's heads; DCA chunks of 128 tokens (tile-aligned: the fast kernels run).
constexpr int kLayers = 2, kHeads = 9, kKvHeads = 3, kDim = 64, kBlock = 64;

struct StepInputs {
  std::vector<float> q, k, v;  // [n, H·D], [n, Hkv·D] (bf16 values), [n, Hkv·D] (bf16 values)
};

StepInputs Inputs(int step, int layer, int n) {
  std::mt19937 rng(static_cast<uint32_t>(1000 * step + layer));
  std::normal_distribution<float> u(0.f, 1.f);
  StepInputs in;
  in.q.resize(static_cast<size_t>(n) * kHeads * kDim);
  in.k.resize(static_cast<size_t>(n) * kKvHeads * kDim);
  in.v.resize(in.k.size());
  for (float& x : in.q) x = 2.f * u(rng);
  for (float& x : in.k) x = RoundBf16(u(rng));
  for (float& x : in.v) x = RoundBf16(u(rng));
  return in;
}

std::vector<float> InvFreq() {
  std::vector<float> f(kDim / 2);
  for (int i = 0; i < kDim / 2; ++i) f[static_cast<size_t>(i)] = std::pow(1e4f, -2.f * i / kDim);
  return f;
}

cpu::DcaParams Dca() {
  cpu::DcaParams d;
  d.chunk_len = 128;
  d.chunk_size = 160;
  d.softmax_scale = 1.f / std::sqrt(float{kDim});
  return d;
}

std::unique_ptr<KvCache> MakeKv(Backend* backend) {
  KvCacheConfig config;
  config.block_size = kBlock;
  config.max_bytes = int64_t{32} << 20;
  auto kv = KvCache::Create(backend, kLayers, kKvHeads, kDim, config);
  EXPECT_TRUE(kv.ok()) << kv.status();
  return kv.ok() ? std::move(kv).value() : nullptr;
}

using Outputs = std::vector<std::vector<std::vector<float>>>;  // [step][layer] = [n, H·D]

// Single-rank attention of the schedule on `backend`.
Outputs SingleRank(Backend* backend, const std::vector<int>& steps) {
  auto kv = MakeKv(backend);
  if (kv == nullptr) return {};
  KvSequence seq;
  Outputs out;
  const std::vector<float> inv_freq = InvFreq();
  for (size_t s = 0; s < steps.size(); ++s) {
    const int n = steps[s], start = seq.length();
    std::vector<int32_t> slots;
    EXPECT_TRUE(kv->Append(seq, n, &slots).ok());
    out.emplace_back();
    for (int l = 0; l < kLayers; ++l) {
      StepInputs in = Inputs(static_cast<int>(s), l, n);
      const int64_t kv_cols = kKvHeads * kDim, q_cols = kHeads * kDim;
      OwnedTensor q = MakeTensor(backend, DType::kF32, n, q_cols, in.q);
      OwnedTensor k = MakeTensor(backend, DType::kF32, n, kv_cols, in.k);
      OwnedTensor v = MakeTensor(backend, DType::kF32, n, kv_cols, in.v);
      OwnedTensor o = MakePoisoned(backend, n, q_cols);
      EXPECT_TRUE(backend->KvWrite(l, k.t, v.t, slots).ok());
      AttentionSeq a;
      a.n_q = n;
      a.q_start = start;
      a.block_table = seq.block_table();
      a.dca = Dca();
      EXPECT_TRUE(backend->Attention(o.t, q.t, l, kHeads, {&a, 1}, inv_freq).ok());
      EXPECT_TRUE(backend->Synchronize().ok());
      out.back().push_back(Fetch(backend, o.t));
    }
  }
  return out;
}

// Device copies between the ranks' buffers, finished on return.
absl::Status DeviceCopy(void* dst, const void* src, size_t bytes) {
  cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, cudaStreamLegacy);
  if (e == cudaSuccess) e = cudaStreamSynchronize(cudaStreamLegacy);
  if (e != cudaSuccess) {
    return absl::InternalError(absl::StrCat("cudaMemcpy: ", cudaGetErrorString(e)));
  }
  return absl::OkStatus();
}

// The home's outputs of the schedule run over `world` thread-ranks.
Outputs ContextParallel(int world, int home, const std::vector<int>& steps) {
  auto comms = InProcessCommunicator::CreateGroup(world, absl::Seconds(60), DeviceCopy);
  Outputs got(steps.size());
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      auto backend = CreateCudaBackend();
      ASSERT_TRUE(backend.ok()) << backend.status();
      Backend* b = backend->get();
      auto kv = MakeKv(b);
      ASSERT_NE(kv, nullptr);
      ContextParallelAttention cp(comms[r].get(), b, kv.get(), kHeads, InvFreq());
      auto placement = ChunkPlacement::Create(world, home, PlacementSpan(Dca()));
      ASSERT_TRUE(placement.ok());
      ShardedSequence seq(*placement);
      for (size_t s = 0; s < steps.size(); ++s) {
        const int n = steps[s];
        ASSERT_TRUE(cp.BeginStep(seq, n).ok());
        for (int l = 0; l < kLayers; ++l) {
          StepInputs in = Inputs(static_cast<int>(s), l, n);
          const int64_t kv_cols = kKvHeads * kDim, q_cols = kHeads * kDim;
          OwnedTensor q, k, v, o;
          if (r == home) {
            q = MakeTensor(b, DType::kF32, n, q_cols, in.q);
            k = MakeTensor(b, DType::kF32, n, kv_cols, in.k);
            v = MakeTensor(b, DType::kF32, n, kv_cols, in.v);
            o = MakePoisoned(b, n, q_cols);
          }
          const absl::Status st = cp.Attend(seq, l, Dca(), o.t, q.t, k.t, v.t);
          ASSERT_TRUE(st.ok()) << st;
          if (r == home) {
            ASSERT_TRUE(b->Synchronize().ok());
            got[s].push_back(Fetch(b, o.t));
          }
        }
        cp.EndStep(seq, true);
      }
      EXPECT_EQ(seq.local().length(), seq.placement().CountHeld(r, 0, seq.length()));
      cp.Release(seq);
    });
  }
  for (std::thread& t : threads) t.join();
  return got;
}

// 37 + 300 + 1 + 1 + 150 + 1 = 490 tokens: 4 DCA chunks, appends across them.
const std::vector<int> kSchedule = {37, 300, 1, 1, 150, 1};

TEST(CudaContextParallelTest, ThreadRanksOnOneGpuMatchSingleGpuAttention) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CpuBackend cpu;
  const Outputs want = SingleRank(&cpu, kSchedule);
  auto single_backend = CreateCudaBackend();
  ASSERT_TRUE(single_backend.ok()) << single_backend.status();
  const Outputs single = SingleRank(single_backend->get(), kSchedule);
  ASSERT_EQ(single.size(), kSchedule.size());
  for (auto [world, home] : {std::pair{2, 1}, std::pair{3, 0}}) {
    SCOPED_TRACE(absl::StrCat("world ", world, " home ", home));
    const Outputs got = ContextParallel(world, home, kSchedule);
    for (size_t s = 0; s < kSchedule.size(); ++s) {
      ASSERT_EQ(got[s].size(), static_cast<size_t>(kLayers)) << "step " << s;
      for (int l = 0; l < kLayers; ++l) {
        const double e_cp = RelErr(got[s][l], want[s][l]);
        const double e_single = RelErr(single[s][l], want[s][l]);
        EXPECT_LE(e_cp, testing_cuda::kBf16Bound) << "step " << s << " layer " << l;
        EXPECT_LE(e_cp, 2 * e_single + 1e-5)
            << "step " << s << " layer " << l << " single-GPU error " << e_single;
        std::printf("[cp] world %d step %zu layer %d cp_err=%.3e single_err=%.3e\n", world, s, l,
                    e_cp, e_single);
      }
    }
  }
}

}  // namespace
}  // namespace longctx

#endif  // LONGCTX_WITH_CUDA

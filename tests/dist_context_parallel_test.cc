// Context-parallel attention (engine/dist/context_parallel.h) with threads as
// ranks on the CPU backend: a session spread over R ranks gives the attention of
// the same session on one rank, step after step (prefill and decode), layer
// after layer. Tolerance 2e-5 absolute on outputs of magnitude ≤ 1 (v in
// [-1, 1]): the split changes only the f32 summation order.
#include <cmath>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "engine/backend/cpu_backend.h"
#include "engine/dist/context_parallel.h"
#include "engine/dist/inproc_communicator.h"
#include "engine/kv/kv_cache.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

constexpr int kLayers = 2, kHeads = 6, kKvHeads = 2, kDim = 16, kBlock = 4;

struct StepInputs {
  std::vector<float> q, k, v;  // [n, H·D], [n, Hkv·D], [n, Hkv·D]
};

// The same random inputs for a (step, layer) on every rank and the reference.
StepInputs Inputs(int step, int layer, int n) {
  std::mt19937 rng(static_cast<uint32_t>(1000 * step + layer));
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  StepInputs in;
  in.q.resize(static_cast<size_t>(n) * kHeads * kDim);
  in.k.resize(static_cast<size_t>(n) * kKvHeads * kDim);
  in.v.resize(in.k.size());
  for (float& x : in.q) x = 2.f * u(rng);  // larger scores: a peaked softmax
  for (float& x : in.k) x = u(rng);
  for (float& x : in.v) x = u(rng);
  return in;
}

std::vector<float> InvFreq() {
  std::vector<float> f(kDim / 2);
  for (int i = 0; i < kDim / 2; ++i) f[static_cast<size_t>(i)] = std::pow(1e4f, -2.f * i / kDim);
  return f;
}

Tensor HostTensor(std::vector<float>& x, int64_t rows) {
  return Tensor{x.data(), DType::kF32, rows, static_cast<int64_t>(x.size()) / rows};
}

struct Rank {
  CpuBackend backend;
  std::unique_ptr<KvCache> kv;
};

std::unique_ptr<Rank> MakeRank(int64_t kv_blocks) {
  auto r = std::make_unique<Rank>();
  KvCacheConfig config;
  config.block_size = kBlock;
  config.max_bytes = kv_blocks * int64_t{kLayers} * 2 * kBlock * kKvHeads * kDim * 4;
  auto kv = KvCache::Create(&r->backend, kLayers, kKvHeads, kDim, config);
  EXPECT_TRUE(kv.ok()) << kv.status();
  r->kv = std::move(kv).value();
  return r;
}

// Single-rank attention of the schedule: out[step][layer] = [n, H·D].
std::vector<std::vector<std::vector<float>>> Reference(const std::vector<int>& steps,
                                                       const cpu::DcaParams& dca) {
  auto rank = MakeRank(1024);
  KvSequence seq;
  std::vector<std::vector<std::vector<float>>> out;
  const std::vector<float> inv_freq = InvFreq();
  for (size_t s = 0; s < steps.size(); ++s) {
    const int n = steps[s], start = seq.length();
    std::vector<int32_t> slots;
    EXPECT_TRUE(rank->kv->Append(seq, n, &slots).ok());
    out.emplace_back();
    for (int l = 0; l < kLayers; ++l) {
      StepInputs in = Inputs(static_cast<int>(s), l, n);
      std::vector<float> o(in.q.size(), std::nanf(""));
      EXPECT_TRUE(rank->backend.KvWrite(l, HostTensor(in.k, n), HostTensor(in.v, n), slots).ok());
      AttentionSeq a;
      a.n_q = n;
      a.q_start = start;
      a.block_table = seq.block_table();
      a.dca = dca;
      a.dca.softmax_scale = 1.f / std::sqrt(float{kDim});
      EXPECT_TRUE(
          rank->backend
              .Attention(HostTensor(o, n), HostTensor(in.q, n), l, kHeads, {&a, 1}, inv_freq)
              .ok());
      out.back().push_back(std::move(o));
    }
  }
  return out;
}

// Runs the schedule on `world` thread-ranks (session homed on `home`) and
// compares the home's attention with the single-rank reference.
void CheckAgainstSingleRank(int world, int home, int span, const cpu::DcaParams& dca,
                            const std::vector<int>& steps) {
  SCOPED_TRACE(testing::Message() << "world " << world << " home " << home << " span " << span);
  const auto want = Reference(steps, dca);
  auto comms = InProcessCommunicator::CreateGroup(world, absl::Seconds(30));
  std::vector<std::vector<std::vector<float>>> got(steps.size());
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      auto rank = MakeRank(1024);
      ContextParallelAttention cp(comms[r].get(), &rank->backend, rank->kv.get(), kHeads,
                                  InvFreq());
      auto placement = ChunkPlacement::Create(world, home, span);
      ASSERT_TRUE(placement.ok());
      ShardedSequence seq(*placement);
      int length = 0;
      for (size_t s = 0; s < steps.size(); ++s) {
        const int n = steps[s];
        ASSERT_TRUE(cp.BeginStep(seq, n).ok());
        for (int l = 0; l < kLayers; ++l) {
          StepInputs in = Inputs(static_cast<int>(s), l, n);
          std::vector<float> out(in.q.size(), std::nanf(""));
          const absl::Status st = cp.Attend(seq, l, dca, HostTensor(out, n), HostTensor(in.q, n),
                                            HostTensor(in.k, n), HostTensor(in.v, n));
          ASSERT_TRUE(st.ok()) << st;
          if (r == home) got[s].push_back(std::move(out));
        }
        cp.EndStep(seq, true);
        length += n;
        EXPECT_EQ(seq.length(), length);
      }
      // Each rank holds exactly its spans.
      EXPECT_EQ(seq.local().length(), seq.placement().CountHeld(r, 0, seq.length()));
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t s = 0; s < steps.size(); ++s) {
    ASSERT_EQ(got[s].size(), static_cast<size_t>(kLayers)) << "step " << s;
    for (int l = 0; l < kLayers; ++l) {
      const auto& g = got[s][static_cast<size_t>(l)];
      const auto& w = want[s][static_cast<size_t>(l)];
      for (size_t i = 0; i < g.size(); ++i) {
        ASSERT_NEAR(g[i], w[i], 2e-5) << "step " << s << " layer " << l << " element " << i;
      }
    }
  }
}

cpu::DcaParams Dca(int chunk_len, int chunk_size) {
  cpu::DcaParams d;
  d.chunk_len = chunk_len;
  d.chunk_size = chunk_size;
  return d;
}

// Prefill in uneven pieces, decode steps, more prefill: 90 tokens, 6 DCA chunks.
const std::vector<int> kSchedule = {37, 30, 1, 1, 1, 19, 1};

TEST(DistContextParallelTest, DcaSessionOverTwoThreeFourRanksEqualsOneRank) {
  const cpu::DcaParams dca = Dca(16, 20);
  for (int world : {2, 3, 4}) {
    CheckAgainstSingleRank(world, world - 1, PlacementSpan(dca), dca, kSchedule);
  }
}

TEST(DistContextParallelTest, HomeZeroAndSingleRank) {
  const cpu::DcaParams dca = Dca(16, 20);
  CheckAgainstSingleRank(2, 0, PlacementSpan(dca), dca, kSchedule);
  CheckAgainstSingleRank(1, 0, PlacementSpan(dca), dca, kSchedule);
}

TEST(DistContextParallelTest, PlainRopeSessionWithASmallSpan) {
  const cpu::DcaParams rope;  // chunk_len = chunk_size = kDcaUnbounded
  CheckAgainstSingleRank(3, 1, PlacementSpan(rope, 8), rope, kSchedule);
}

TEST(DistContextParallelTest, KvExhaustedOnOneRankFailsTheStepOnEveryRank) {
  constexpr int kWorld = 2;
  const cpu::DcaParams dca = Dca(16, 20);
  auto comms = InProcessCommunicator::CreateGroup(kWorld, absl::Seconds(30));
  std::vector<absl::Status> big(kWorld);
  std::vector<int> length_after(kWorld, -1);
  std::vector<std::thread> threads;
  for (int r = 0; r < kWorld; ++r) {
    threads.emplace_back([&, r] {
      // Rank 1 has 5 blocks (20 tokens): enough for span 1 of the first step only.
      auto rank = MakeRank(r == 1 ? 5 : 1024);
      ContextParallelAttention cp(comms[r].get(), &rank->backend, rank->kv.get(), kHeads,
                                  InvFreq());
      ShardedSequence seq(*ChunkPlacement::Create(kWorld, 0, 16));
      auto run_step = [&](int n, int step_id) {
        if (absl::Status s = cp.BeginStep(seq, n); !s.ok()) return s;
        for (int l = 0; l < kLayers; ++l) {
          StepInputs in = Inputs(step_id, l, n);
          std::vector<float> out(in.q.size());
          if (absl::Status s = cp.Attend(seq, l, dca, HostTensor(out, n), HostTensor(in.q, n),
                                         HostTensor(in.k, n), HostTensor(in.v, n));
              !s.ok()) {
            return s;
          }
        }
        cp.EndStep(seq, true);
        return absl::OkStatus();
      };
      ASSERT_TRUE(run_step(20, 0).ok());  // rank 1 holds tokens 16..19
      const int held = seq.local().length();
      big[r] = run_step(40, 1);  // rank 1 would need 16..31 and 48..59
      EXPECT_EQ(seq.local().length(), held);
      EXPECT_TRUE(comms[r]->health().ok());
      EXPECT_TRUE(run_step(4, 2).ok());  // the group still works
      length_after[r] = seq.length();
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < kWorld; ++r) {
    EXPECT_EQ(big[r].code(), absl::StatusCode::kResourceExhausted) << "rank " << r << big[r];
    EXPECT_EQ(length_after[r], 24);
  }
  EXPECT_NE(big[0].message().find("rank 1"), absl::string_view::npos) << big[0];
}

TEST(DistContextParallelTest, DeadPeerFailsTheHomeWithUnavailable) {
  constexpr int kWorld = 2;
  const cpu::DcaParams dca = Dca(16, 20);
  auto comms = InProcessCommunicator::CreateGroup(kWorld, absl::Milliseconds(300));
  absl::Status home_status;
  absl::Duration waited;
  std::vector<std::thread> threads;
  for (int r = 0; r < kWorld; ++r) {
    threads.emplace_back([&, r] {
      auto rank = MakeRank(64);
      ContextParallelAttention cp(comms[r].get(), &rank->backend, rank->kv.get(), kHeads,
                                  InvFreq());
      ShardedSequence seq(*ChunkPlacement::Create(kWorld, 0, 16));
      ASSERT_TRUE(cp.BeginStep(seq, 8).ok());
      if (r == 1) return;  // dies before the first layer
      StepInputs in = Inputs(0, 0, 8);
      std::vector<float> out(in.q.size());
      const absl::Time start = absl::Now();
      home_status = cp.Attend(seq, 0, dca, HostTensor(out, 8), HostTensor(in.q, 8),
                              HostTensor(in.k, 8), HostTensor(in.v, 8));
      waited = absl::Now() - start;
      cp.EndStep(seq, false);
      EXPECT_EQ(seq.length(), 0);
      EXPECT_EQ(seq.local().length(), 0);
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(home_status.code(), absl::StatusCode::kUnavailable) << home_status;
  EXPECT_LT(waited, absl::Seconds(5));
  EXPECT_EQ(comms[0]->health().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace longctx

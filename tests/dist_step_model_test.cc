// The leader's StepModel over a group of thread-ranks (engine/dist/dist_step_model.h)
// with the real model (LONGCTX_MODEL) on the CPU backend: steps of two sessions
// (homed on rank 0 and on rank 1) give the logits of the same steps on one rank,
// rollback and release reach every rank, heartbeats keep an idle group alive,
// and a lost rank turns steps into UNAVAILABLE within the collective timeout.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/backend/cpu_backend.h"
#include "engine/dist/dist_step_model.h"
#include "engine/dist/inproc_communicator.h"
#include "engine/model/host_weights.h"
#include "engine/model/llama_model.h"
#include "gtest/gtest.h"
#include "tests/model_test_util.h"

namespace longctx {
namespace {

cpu::DcaParams Dca() {
  cpu::DcaParams d;
  d.chunk_len = 64;
  d.chunk_size = 96;
  return d;
}

KvCacheConfig KvConfig() {
  KvCacheConfig c;
  c.block_size = 16;
  c.max_bytes = int64_t{64} << 20;
  return c;
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  float d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}

float MaxAbs(const std::vector<float>& a) {
  float m = 0;
  for (float x : a) m = std::max(m, std::abs(x));
  return m;
}

class DistStepModelTest : public testing::Test {
 protected:
  static void SetUpTestSuite() { host_ = TestHostModel(); }
  void SetUp() override {
    if (host_ == nullptr) GTEST_SKIP() << "LONGCTX_MODEL is not set";
  }

  struct Rank {
    CpuBackend backend;
    std::unique_ptr<LlamaModel> model;
  };
  static std::unique_ptr<Rank> MakeRank() {
    auto r = std::make_unique<Rank>();
    auto m = LlamaModel::Create(*host_, &r->backend, KvConfig());
    EXPECT_TRUE(m.ok()) << m.status();
    if (m.ok()) r->model = *std::move(m);
    return r;
  }

  static std::vector<int32_t> Tokens(int n, int seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int32_t> id(0, host_->config.vocab_size - 1);
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int32_t& x : t) x = id(rng);
    return t;
  }

  static StepItem Item(KvSequence* seq, std::span<const int32_t> tokens) {
    StepItem item;
    item.seq = seq;
    item.tokens = tokens;
    item.dca = Dca();
    return item;
  }

  // Two thread-ranks over the model; collective timeout `timeout`.
  struct TwoRanks {
    explicit TwoRanks(absl::Duration timeout)
        : comms(InProcessCommunicator::CreateGroup(2, timeout)),
          r0(MakeRank()),
          r1(MakeRank()),
          leader(comms[0].get(), r0->model.get()),
          worker(comms[1].get(), r1->model.get()) {}
    std::vector<std::unique_ptr<InProcessCommunicator>> comms;
    std::unique_ptr<Rank> r0, r1;
    RankExecutor leader, worker;
  };

  // A worker rank that executes one command (of kind `op`) and then is gone
  // without a word, as a crashed process would be.
  static std::thread ServeOneCommandThenStop(RankExecutor& worker, GroupCommand::Op op) {
    return std::thread([&worker, op] {
      GroupCommand cmd;
      std::vector<int32_t> tokens;
      ASSERT_TRUE(worker.Exchange(&cmd, &tokens).ok());
      EXPECT_EQ(cmd.op, op);
      EXPECT_TRUE(worker.Execute(cmd, tokens, nullptr).ok());
    });
  }

  static const HostModel* host_;
};
const HostModel* DistStepModelTest::host_ = nullptr;

TEST_F(DistStepModelTest, GroupStepsMatchOneRankAndRollBackEverywhere) {
  // Two sessions of 150 + 70 + 1 tokens (four DCA chunks each): the first is
  // homed on rank 0, the second on rank 1; both are spread over both ranks.
  const std::vector<int> steps = {150, 70, 1};
  const std::vector<int32_t> a = Tokens(221, 1), b = Tokens(221, 2);

  // The reference: one rank, the same steps.
  auto single = MakeRank();
  ASSERT_NE(single->model, nullptr);
  std::vector<std::vector<float>> want;
  {
    KvSequence sa, sb;
    int at = 0;
    for (int n : steps) {
      for (KvSequence* s : {&sa, &sb}) {
        const auto& t = s == &sa ? a : b;
        StepItem item = Item(s, std::span<const int32_t>(t).subspan(at, n));
        std::vector<float> logits;
        ASSERT_TRUE(single->model->Forward({&item, 1}, &logits).ok());
        want.push_back(logits);
      }
      at += n;
    }
    single->model->kv_cache().Release(sa);
    single->model->kv_cache().Release(sb);
  }

  TwoRanks g(absl::Seconds(30));
  RankExecutor &leader = g.leader, &worker = g.worker;
  Rank &r0 = *g.r0, &r1 = *g.r1;
  absl::Status worker_status = absl::UnknownError("not run");
  std::thread serve([&] { worker_status = ServeRank(worker); });
  {
    DistStepModel group(&leader, absl::Seconds(5));
    EXPECT_EQ(group.kv_cache().total_blocks(), 2 * r0.model->kv_cache().total_blocks());
    KvSequence sa, sb;
    int at = 0;
    size_t k = 0;
    for (int n : steps) {
      for (KvSequence* s : {&sa, &sb}) {
        const auto& t = s == &sa ? a : b;
        StepItem item = Item(s, std::span<const int32_t>(t).subspan(at, n));
        std::vector<float> logits;
        ASSERT_TRUE(group.Forward({&item, 1}, &logits).ok());
        ASSERT_EQ(logits.size(), want[k].size());
        EXPECT_LE(MaxAbsDiff(logits, want[k]), 2e-5f * MaxAbs(want[k])) << "step " << k;
        ++k;
      }
      at += n;
    }
    EXPECT_EQ(sa.length(), 221);
    const std::vector<RankLoad> loads = group.Loads();
    ASSERT_EQ(loads.size(), 2u);
    EXPECT_EQ(loads[0].sessions, 1);  // one home each: the least loaded rank
    EXPECT_EQ(loads[1].sessions, 1);
    EXPECT_EQ(loads[0].tokens + loads[1].tokens, 2 * 221);
    EXPECT_GT(r1.model->kv_cache().free_blocks(), 0);
    EXPECT_LT(r1.model->kv_cache().free_blocks(), r1.model->kv_cache().total_blocks());

    // Roll the second session back by 71 tokens on every rank, step again:
    // the same logits as the first time.
    group.TruncateSequence(sb, 150);
    EXPECT_EQ(sb.length(), 150);
    StepItem again = Item(&sb, std::span<const int32_t>(b).subspan(150, 70));
    std::vector<float> logits;
    ASSERT_TRUE(group.Forward({&again, 1}, &logits).ok());
    EXPECT_LE(MaxAbsDiff(logits, want[3]), 2e-5f * MaxAbs(want[3]));

    // Two items in one Forward: rows in item order.
    StepItem both[2] = {Item(&sa, std::span<const int32_t>(a).subspan(0, 1)),
                        Item(&sb, std::span<const int32_t>(b).subspan(220, 1))};
    ASSERT_TRUE(group.Forward(both, &logits).ok());
    EXPECT_EQ(logits.size(), 2 * static_cast<size_t>(host_->config.vocab_size));

    // Release frees both ranks' blocks.
    group.ReleaseSequence(sa);
    group.ReleaseSequence(sb);
    group.Idle();
    EXPECT_EQ(group.kv_cache().free_blocks(), group.kv_cache().total_blocks());
  }  // the group's destructor ends the worker
  serve.join();
  EXPECT_TRUE(worker_status.ok()) << worker_status;
  EXPECT_EQ(r1.model->kv_cache().free_blocks(), r1.model->kv_cache().total_blocks());
  EXPECT_EQ(r0.model->kv_cache().free_blocks(), r0.model->kv_cache().total_blocks());
}

TEST_F(DistStepModelTest, HeartbeatsKeepAnIdleGroupAlive) {
  // Collective timeout 1 s; the leader idles for 2.5 s with heartbeats every
  // 250 ms, then steps: the worker must still be there.
  TwoRanks g(absl::Seconds(1));
  RankExecutor &leader = g.leader, &worker = g.worker;
  absl::Status worker_status = absl::UnknownError("not run");
  std::thread serve([&] { worker_status = ServeRank(worker); });
  {
    DistStepModel group(&leader, absl::Milliseconds(250));
    const absl::Time end = absl::Now() + absl::Milliseconds(2500);
    while (absl::Now() < end) {
      group.Idle();
      absl::SleepFor(absl::Milliseconds(50));
    }
    EXPECT_TRUE(group.health().ok()) << group.health();
    KvSequence s;
    const std::vector<int32_t> t = Tokens(8, 3);
    StepItem item = Item(&s, t);
    std::vector<float> logits;
    EXPECT_TRUE(group.Forward({&item, 1}, &logits).ok());
    group.ReleaseSequence(s);
  }
  serve.join();
  EXPECT_TRUE(worker_status.ok()) << worker_status;
}

TEST_F(DistStepModelTest, ARankLostWhileIdleIsNoticedByTheHeartbeat) {
  // Rank 1 answers one heartbeat, then is gone: the idle leader's next
  // heartbeat breaks the group within the interval plus the timeout.
  TwoRanks g(absl::Seconds(1));
  RankExecutor &leader = g.leader, &worker = g.worker;
  std::thread serve = ServeOneCommandThenStop(worker, GroupCommand::kHeartbeat);
  DistStepModel group(&leader, absl::Milliseconds(200));
  const absl::Time start = absl::Now();
  while (group.health().ok() && absl::Now() - start < absl::Seconds(10)) {
    group.Idle();
    absl::SleepFor(absl::Milliseconds(20));
  }
  serve.join();
  EXPECT_EQ(group.health().code(), absl::StatusCode::kUnavailable) << group.health();
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));
}

TEST_F(DistStepModelTest, ALostRankTurnsStepsIntoUnavailable) {
  // Rank 1 serves one session's first step, then is gone (its thread ends
  // without a word, as a crashed process would).
  TwoRanks g(absl::Seconds(1));
  RankExecutor &leader = g.leader, &worker = g.worker;
  std::thread serve = ServeOneCommandThenStop(worker, GroupCommand::kStep);
  DistStepModel group(&leader, absl::Milliseconds(250));
  KvSequence s;
  const std::vector<int32_t> t = Tokens(40, 4);
  StepItem first = Item(&s, std::span<const int32_t>(t).subspan(0, 30));
  std::vector<float> logits;
  ASSERT_TRUE(group.Forward({&first, 1}, &logits).ok());
  serve.join();

  const absl::Time start = absl::Now();
  StepItem next = Item(&s, std::span<const int32_t>(t).subspan(30, 10));
  const absl::Status lost = group.Forward({&next, 1}, &logits);
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(lost.code(), absl::StatusCode::kUnavailable) << lost;
  EXPECT_LT(took, absl::Seconds(5));
  EXPECT_EQ(s.length(), 30);  // the failed step grew nothing
  EXPECT_EQ(group.health().code(), absl::StatusCode::kUnavailable);
  // Later calls fail at once; nothing waits.
  const absl::Time again = absl::Now();
  EXPECT_EQ(group.Forward({&next, 1}, &logits).code(), absl::StatusCode::kUnavailable);
  group.Idle();
  group.TruncateSequence(s, 0);
  group.ReleaseSequence(s);
  EXPECT_LT(absl::Now() - again, absl::Seconds(1));
}

}  // namespace
}  // namespace longctx

// The batch planner's policy on plain snapshots: budgets, ordering and
// fairness, the KV ledger and its refusals, windowed sessions.
#include "engine/scheduler/batch_planner.h"

#include <algorithm>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

PlanJob Prefill(PlanWork work, uint64_t order, int64_t length, int64_t target) {
  PlanJob j;
  j.work = work;
  j.order = order;
  j.length = length;
  j.target = target;
  j.held_blocks = (length + 3) / 4;  // block size 4, no slack past the last block
  return j;
}

PlanJob Decoder(uint64_t order, int64_t length) {
  PlanJob j = Prefill(PlanWork::kGenerate, order, length, length);
  j.decoding = true;
  return j;
}

PlanLimits Limits(int64_t free_blocks = 1000) {
  PlanLimits l;
  l.prefill_budget = 512;
  l.prefill_budget_decoding = 512;
  l.max_decode_batch = 256;
  l.max_logit_rows = 128;
  l.block_size = 4;
  l.free_blocks = free_blocks;
  return l;
}

// The snapshot indices of the pieces, in order.
std::vector<size_t> Jobs(const BatchPlan& plan) {
  std::vector<size_t> out;
  for (const PlanPiece& p : plan.pieces) out.push_back(p.job);
  return out;
}

std::vector<int64_t> Sizes(const BatchPlan& plan) {
  std::vector<int64_t> out;
  for (const PlanPiece& p : plan.pieces) out.push_back(p.n);
  return out;
}

TEST(BatchPlannerTest, LongIngestIsCutToThePrefillBudget) {
  const std::vector<PlanJob> jobs = {Prefill(PlanWork::kIngest, 0, 8, 1000)};
  const BatchPlan plan = PlanBatch(jobs, Limits());
  ASSERT_EQ(plan.pieces.size(), 1u);
  EXPECT_EQ(plan.pieces[0].start, 8);
  EXPECT_EQ(plan.pieces[0].n, 512);
  EXPECT_EQ(plan.pieces[0].logits, PieceLogits::kNone);
  EXPECT_FALSE(plan.pieces[0].decode);
  EXPECT_EQ(plan.tokens, 512);
  EXPECT_THAT(plan.refused, IsEmpty());
}

TEST(BatchPlannerTest, PromptsFirstOldestFirstThenShortestRemaining) {
  const std::vector<PlanJob> jobs = {
      Prefill(PlanWork::kIngest, 0, 0, 100),    // 100 left
      Prefill(PlanWork::kScore, 1, 0, 20),      // 20 left
      Prefill(PlanWork::kGenerate, 5, 0, 300),  // a prompt, newer
      Prefill(PlanWork::kIngest, 2, 50, 70),    // 20 left, newer than the score
      Prefill(PlanWork::kGenerate, 3, 0, 30),   // a prompt, older
  };
  PlanLimits limits = Limits();
  limits.prefill_budget = 10000;
  limits.prefill_budget_decoding = 10000;
  const BatchPlan plan = PlanBatch(jobs, limits);
  EXPECT_THAT(Jobs(plan), ElementsAre(4, 2, 1, 3, 0));
  EXPECT_THAT(Sizes(plan), ElementsAre(30, 300, 20, 20, 100));
}

TEST(BatchPlannerTest, NewerShorterJobsPassAnOlderOneForABoundedTime) {
  // An ingest with 100 tokens left, then 200 newer 50-token Scores: only the
  // Scores that came within 50 arrivals of it go first (aging).
  std::vector<PlanJob> jobs = {Prefill(PlanWork::kIngest, 0, 0, 100)};
  for (uint64_t k = 1; k <= 200; ++k) jobs.push_back(Prefill(PlanWork::kScore, k, 0, 50));
  PlanLimits limits = Limits();
  limits.prefill_budget = limits.prefill_budget_decoding = 100000;
  limits.max_logit_rows = 100000;
  const std::vector<size_t> order = Jobs(PlanBatch(jobs, limits));
  const auto ingest = std::find(order.begin(), order.end(), 0u);
  ASSERT_NE(ingest, order.end());
  EXPECT_EQ(ingest - order.begin(), 49);  // Scores 1..49 passed it
  for (auto it = order.begin(); it != ingest; ++it) EXPECT_LT(jobs[*it].order, 50u);
}

TEST(BatchPlannerTest, BudgetRunsOutBeforeLaterJobsAreMet) {
  const std::vector<PlanJob> jobs = {Prefill(PlanWork::kIngest, 0, 0, 400),
                                     Prefill(PlanWork::kIngest, 1, 0, 300),
                                     Prefill(PlanWork::kIngest, 2, 0, 1000)};
  const BatchPlan plan = PlanBatch(jobs, Limits());
  EXPECT_THAT(Jobs(plan), ElementsAre(1, 0));
  EXPECT_THAT(Sizes(plan), ElementsAre(300, 212));
  EXPECT_THAT(plan.refused, IsEmpty());  // job 2 waits: not met, not refused
}

TEST(BatchPlannerTest, DecodeRowsComeFirstAndShrinkThePrefillBudget) {
  const std::vector<PlanJob> jobs = {Prefill(PlanWork::kIngest, 0, 0, 1000), Decoder(1, 9)};
  PlanLimits limits = Limits();
  limits.prefill_budget_decoding = 64;
  const BatchPlan plan = PlanBatch(jobs, limits);
  ASSERT_EQ(plan.pieces.size(), 2u);
  EXPECT_EQ(plan.pieces[0].job, 1u);
  EXPECT_TRUE(plan.pieces[0].decode);
  EXPECT_EQ(plan.pieces[0].start, 9);
  EXPECT_EQ(plan.pieces[0].n, 1);
  EXPECT_EQ(plan.pieces[0].logits, PieceLogits::kSample);
  EXPECT_EQ(plan.pieces[1].n, 64);
  EXPECT_EQ(plan.tokens, 65);
}

TEST(BatchPlannerTest, APromptFirstInLineAlsoTakesTheDecodingBudget) {
  std::vector<PlanJob> jobs = {Prefill(PlanWork::kGenerate, 1, 0, 200),
                               Prefill(PlanWork::kIngest, 0, 0, 1000)};
  PlanLimits limits = Limits();
  limits.prefill_budget_decoding = 100;
  EXPECT_THAT(Sizes(PlanBatch(jobs, limits)), ElementsAre(100));
  // Without a Generate under way the full budget applies.
  jobs[0].work = PlanWork::kScore;
  limits.max_logit_rows = 1000;
  EXPECT_THAT(Sizes(PlanBatch(jobs, limits)), ElementsAre(200, 312));
}

TEST(BatchPlannerTest, ThePromptsLastPieceSamples) {
  const std::vector<PlanJob> jobs = {Prefill(PlanWork::kGenerate, 0, 0, 600),
                                     Prefill(PlanWork::kGenerate, 1, 0, 10)};
  PlanLimits limits = Limits();
  limits.prefill_budget = 605;
  limits.prefill_budget_decoding = 605;
  BatchPlan plan = PlanBatch(jobs, limits);
  ASSERT_THAT(Sizes(plan), ElementsAre(600, 5));
  EXPECT_EQ(plan.pieces[0].logits, PieceLogits::kSample);
  EXPECT_EQ(plan.pieces[1].logits, PieceLogits::kNone);  // 5 of 10: more to come
}

TEST(BatchPlannerTest, DecodeBatchCapMovesRoundRobin) {
  std::vector<PlanJob> jobs;
  for (uint64_t order : {4, 2, 0, 3, 1}) jobs.push_back(Decoder(order, 4));
  PlanLimits limits = Limits();
  limits.max_decode_batch = 2;
  std::vector<std::vector<uint64_t>> picked;
  for (int step = 0; step < 3; ++step) {
    const BatchPlan plan = PlanBatch(jobs, limits);
    std::vector<uint64_t> orders;
    for (const PlanPiece& p : plan.pieces) orders.push_back(jobs[p.job].order);
    picked.push_back(orders);
    limits.decode_cursor = plan.decode_cursor;
  }
  EXPECT_THAT(picked, ElementsAre(ElementsAre(0, 1), ElementsAre(2, 3), ElementsAre(4, 0)));
}

TEST(BatchPlannerTest, ScorePiecesShareTheLogitRows) {
  const std::vector<PlanJob> jobs = {Prefill(PlanWork::kScore, 0, 0, 100),
                                     Prefill(PlanWork::kScore, 1, 0, 200),
                                     Prefill(PlanWork::kIngest, 2, 0, 300)};
  PlanLimits limits = Limits();
  limits.max_logit_rows = 100;
  const BatchPlan plan = PlanBatch(jobs, limits);
  // The second score finds no rows left and waits; the ingest is not bound by rows.
  EXPECT_THAT(Jobs(plan), ElementsAre(0, 2));
  EXPECT_THAT(Sizes(plan), ElementsAre(100, 300));
  EXPECT_EQ(plan.pieces[0].logits, PieceLogits::kAll);
  EXPECT_THAT(plan.refused, IsEmpty());
}

TEST(BatchPlannerTest, AScorePieceIsCutToTheRowsLeft) {
  const std::vector<PlanJob> jobs = {Prefill(PlanWork::kScore, 0, 0, 100),
                                     Prefill(PlanWork::kScore, 1, 0, 200)};
  EXPECT_THAT(Sizes(PlanBatch(jobs, Limits())), ElementsAre(100, 28));
}

TEST(BatchPlannerTest, KvTakesWhatFitsAndRefusesWhatDoesNot) {
  // Three free blocks of 4 tokens: the first job takes 10 tokens (3 blocks),
  // the second none.
  const std::vector<PlanJob> jobs = {Prefill(PlanWork::kIngest, 0, 0, 10),
                                     Prefill(PlanWork::kIngest, 1, 0, 20)};
  const BatchPlan plan = PlanBatch(jobs, Limits(/*free_blocks=*/3));
  EXPECT_THAT(Sizes(plan), ElementsAre(10));
  ASSERT_EQ(plan.refused.size(), 1u);
  EXPECT_EQ(plan.refused[0].job, 1u);
  EXPECT_EQ(plan.refused[0].why, PlanRefusal::kKvFull);
  EXPECT_EQ(plan.refused[0].want, 20);
}

TEST(BatchPlannerTest, APieceIsCutToTheBlocksLeft) {
  const std::vector<PlanJob> jobs = {Prefill(PlanWork::kIngest, 0, 0, 100)};
  EXPECT_THAT(Sizes(PlanBatch(jobs, Limits(/*free_blocks=*/5))), ElementsAre(20));
}

TEST(BatchPlannerTest, RoomInHeldBlocksNeedsNoFreeBlock) {
  // Length 6 in 2 blocks: 2 tokens of room without a free block.
  std::vector<PlanJob> jobs = {Decoder(0, 6), Decoder(1, 8)};
  jobs[0].held_blocks = 2;
  const BatchPlan plan = PlanBatch(jobs, Limits(/*free_blocks=*/0));
  EXPECT_THAT(Jobs(plan), ElementsAre(0));
  ASSERT_EQ(plan.refused.size(), 1u);
  EXPECT_EQ(plan.refused[0].job, 1u);
  EXPECT_EQ(plan.refused[0].want, 1);
}

TEST(BatchPlannerTest, UnreadyJobIsRefusedWithoutTakingBudget) {
  std::vector<PlanJob> jobs = {Prefill(PlanWork::kIngest, 0, 0, 100),
                               Prefill(PlanWork::kIngest, 1, 0, 512)};
  jobs[0].unready = true;
  const BatchPlan plan = PlanBatch(jobs, Limits());
  EXPECT_THAT(Jobs(plan), ElementsAre(1));
  EXPECT_THAT(Sizes(plan), ElementsAre(512));
  ASSERT_EQ(plan.refused.size(), 1u);
  EXPECT_EQ(plan.refused[0].why, PlanRefusal::kUnready);
}

TEST(BatchPlannerTest, WindowedPiecesStopAtChunkBoundaries) {
  PlanJob job = Prefill(PlanWork::kIngest, 0, 5, 100);
  job.window = PlanWindow{.chunk_len = 16, .sink_tokens = 4, .resume_to = std::nullopt};
  const BatchPlan plan = PlanBatch(std::vector<PlanJob>{job}, Limits());
  EXPECT_THAT(Sizes(plan), ElementsAre(11));
  EXPECT_THAT(plan.resumes, IsEmpty());
}

TEST(BatchPlannerTest, ImportPrefillsItsSinksAloneThenResumes) {
  PlanJob job = Prefill(PlanWork::kIngest, 0, 1, 100);
  job.window = PlanWindow{.chunk_len = 16, .sink_tokens = 4, .resume_to = 48};
  BatchPlan plan = PlanBatch(std::vector<PlanJob>{job}, Limits());
  EXPECT_THAT(Sizes(plan), ElementsAre(3));  // up to the sinks
  EXPECT_THAT(plan.resumes, IsEmpty());
  // With the sinks in, the restore point applies and the piece starts there.
  job.length = 4;
  job.held_blocks = 1;
  plan = PlanBatch(std::vector<PlanJob>{job}, Limits());
  EXPECT_THAT(plan.resumes, ElementsAre(0));
  ASSERT_EQ(plan.pieces.size(), 1u);
  EXPECT_EQ(plan.pieces[0].start, 48);
  EXPECT_EQ(plan.pieces[0].n, 16);
}

TEST(BatchPlannerTest, WindowedPieceOfNoTokensIsRefused) {
  // The restore point covers the whole target: nothing left to run.
  PlanJob job = Prefill(PlanWork::kIngest, 0, 4, 32);
  job.window = PlanWindow{.chunk_len = 16, .sink_tokens = 4, .resume_to = 32};
  const BatchPlan plan = PlanBatch(std::vector<PlanJob>{job}, Limits());
  EXPECT_THAT(plan.pieces, IsEmpty());
  ASSERT_EQ(plan.refused.size(), 1u);
  EXPECT_EQ(plan.refused[0].why, PlanRefusal::kEmpty);
  EXPECT_EQ(plan.refused[0].want, 0);
}

// ---------------------------------------------------------------- tenants

PlanJob OfTenant(PlanJob job, uint64_t tenant) {
  job.tenant = tenant;
  return job;
}

TEST(BatchPlannerTest, ATenantsBacklogDoesNotDelayAnotherTenantsFirstPiece) {
  // Tenant 1: 100 sessions with short ingests (each first in line by the
  // shortest-first rule); tenant 2: one long ingest, the newest job.
  std::vector<PlanJob> jobs;
  for (uint64_t i = 0; i < 100; ++i) {
    jobs.push_back(OfTenant(Prefill(PlanWork::kIngest, i, 0, 50), 1));
  }
  jobs.push_back(OfTenant(Prefill(PlanWork::kIngest, 100, 0, 4000), 2));
  const BatchPlan plan = PlanBatch(jobs, Limits());
  int64_t second = 0, first = 0;
  for (const PlanPiece& p : plan.pieces) (p.job == 100 ? second : first) += p.n;
  // The bound of batch_planner.h: floor(512 / 2) tokens each, in this step.
  EXPECT_EQ(second, 256);
  EXPECT_EQ(first, 256);
}

TEST(BatchPlannerTest, ATenantsUnusedShareGoesToTheOthers) {
  const std::vector<PlanJob> jobs = {OfTenant(Prefill(PlanWork::kIngest, 0, 0, 4000), 1),
                                     OfTenant(Prefill(PlanWork::kIngest, 1, 0, 10), 2)};
  EXPECT_THAT(Sizes(PlanBatch(jobs, Limits())), ElementsAre(10, 502));
}

TEST(BatchPlannerTest, ScoreRowsAreSharedAmongTenants) {
  std::vector<PlanJob> jobs;
  for (uint64_t i = 0; i < 10; ++i) {
    jobs.push_back(OfTenant(Prefill(PlanWork::kScore, i, 0, 20 + i), 1));
  }
  jobs.push_back(OfTenant(Prefill(PlanWork::kScore, 10, 0, 500), 2));
  const BatchPlan plan = PlanBatch(jobs, Limits());  // 128 rows
  int64_t second = 0;
  for (const PlanPiece& p : plan.pieces) second += p.job == 10 ? p.n : 0;
  EXPECT_EQ(second, 64);
  EXPECT_LE(plan.tokens, 128);
}

TEST(BatchPlannerTest, DecodeRowsAreDealtAmongTenants) {
  std::vector<PlanJob> jobs;
  for (uint64_t i = 0; i < 10; ++i) jobs.push_back(OfTenant(Decoder(i, 4), 1));
  jobs.push_back(OfTenant(Decoder(10, 4), 2));
  PlanLimits limits = Limits();
  limits.max_decode_batch = 4;
  for (int step = 0; step < 5; ++step) {
    const BatchPlan plan = PlanBatch(jobs, limits);
    ASSERT_EQ(plan.pieces.size(), 4u);
    EXPECT_THAT(Jobs(plan), ::testing::Contains(10u)) << "step " << step;
    limits.decode_cursor = plan.decode_cursor;
  }
}

TEST(BatchPlannerTest, ManyTenantsEachGetTheirShareEveryStep) {
  std::vector<PlanJob> jobs;
  for (uint64_t t = 0; t < 8; ++t) {
    for (uint64_t k = 0; k < 5; ++k) {
      jobs.push_back(OfTenant(Prefill(PlanWork::kIngest, t * 5 + k, 0, 1000 + t), t));
    }
  }
  const BatchPlan plan = PlanBatch(jobs, Limits());
  std::vector<int64_t> got(8, 0);
  for (const PlanPiece& p : plan.pieces) got[jobs[p.job].tenant] += p.n;
  for (int64_t g : got) EXPECT_EQ(g, 512 / 8);
}

}  // namespace
}  // namespace longctx

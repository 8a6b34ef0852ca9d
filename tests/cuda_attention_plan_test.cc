// Host-side planning of CUDA attention calls (engine/backend/cuda/attention_plan.h)
// for context-parallel partials: held runs become kernel run descriptors with
// their local indices, the fast kernels are chosen only for tile-aligned runs,
// split-KV work covers exactly the held key tiles, and malformed runs are
// INVALID_ARGUMENT. Needs no GPU (runs wherever the CUDA backend is built).
#ifdef LONGCTX_WITH_CUDA

#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/attention_plan.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

AttentionPlanShape Shape(int64_t q_rows) {
  AttentionPlanShape s;
  s.n_heads = 9;
  s.n_kv_heads = 3;
  s.head_dim = 64;
  s.block_size = 64;
  s.n_blocks = 1000;
  s.q_rows = q_rows;
  s.num_sms = 132;
  return s;
}

cpu::DcaParams Dca(int L) {
  cpu::DcaParams d;
  d.chunk_len = L;
  d.chunk_size = L + 64;
  d.softmax_scale = 0.125f;
  return d;
}

struct Runs {
  std::vector<int32_t> first, count;
  int held = 0;
};

// Spans of `span` tokens of [0, ctx) owned by `rank` of `world` (home 0).
Runs RoundRobin(int ctx, int span, int world, int rank) {
  Runs r;
  for (int s = 0; s * span < ctx; ++s) {
    if (s % world != rank) continue;
    r.first.push_back(s * span);
    r.count.push_back(std::min(span, ctx - s * span));
    r.held += r.count.back();
  }
  return r;
}

PartialAttentionSeq Seq(const Runs& r, const std::vector<int32_t>& table, int n_q, int q_start,
                        int L) {
  PartialAttentionSeq s;
  s.n_q = n_q;
  s.q_start = q_start;
  s.block_table = table;
  s.run_first = r.first;
  s.run_count = r.count;
  s.dca = Dca(L);
  return s;
}

std::vector<int32_t> Table(int held) {
  std::vector<int32_t> t(static_cast<size_t>((held + 63) / 64));
  for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<int32_t>(3 * i + 1);
  return t;
}

TEST(CudaAttentionPlanTest, PrefillPartialUsesTheTiledKernelWithLocalRunIndices) {
  const Runs r = RoundRobin(1000, 192, 2, 0);  // [0,192) [384,576) [768,960)
  const std::vector<int32_t> table = Table(r.held);
  const PartialAttentionSeq s = Seq(r, table, 1000, 0, 192);
  auto plan = PlanPartialAttention({&s, 1}, Shape(1000));
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->seqs.size(), 1u);
  EXPECT_EQ(plan->seqs[0].run_offset, 0);
  EXPECT_EQ(plan->seqs[0].n_runs, 3);
  ASSERT_EQ(plan->runs.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(plan->runs[i].first, 384 * i);
    EXPECT_EQ(plan->runs[i].count, 192);
    EXPECT_EQ(plan->runs[i].local, 192 * i);
  }
  EXPECT_EQ(plan->block_tables.size(), table.size());
  EXPECT_EQ(plan->tiled_tiles.size(), 8u);  // ceil(1000 / 128)
  EXPECT_TRUE(plan->simple_tiles.empty());
  EXPECT_TRUE(plan->split_items.empty());
}

TEST(CudaAttentionPlanTest, RunsOffTheKeyTileFallBackToTheSimpleKernel) {
  const Runs r = RoundRobin(1000, 100, 2, 1);  // starts 100, 300, ...: not tile-aligned
  const std::vector<int32_t> table = Table(r.held);
  const PartialAttentionSeq s = Seq(r, table, 1000, 0, 192);
  auto plan = PlanPartialAttention({&s, 1}, Shape(1000));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->tiled_tiles.empty());
  EXPECT_TRUE(plan->split_items.empty());
  EXPECT_EQ(plan->simple_tiles.size(), 250u);  // 1000 / kDcaSimpleRows
}

TEST(CudaAttentionPlanTest, DecodeSplitsCoverExactlyTheHeldTiles) {
  // 4097 keys over 3 ranks by 128-token spans; rank 1's decode query is 4096.
  for (int rank = 0; rank < 3; ++rank) {
    const Runs r = RoundRobin(4097, 128, 3, rank);
    const std::vector<int32_t> table = Table(r.held);
    const PartialAttentionSeq s = Seq(r, table, 1, 4096, 128);
    auto plan = PlanPartialAttention({&s, 1}, Shape(1));
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_FALSE(plan->split_items.empty());
    std::set<int> held_tiles;
    for (size_t i = 0; i < r.first.size(); ++i) {
      for (int j = r.first[i]; j < r.first[i] + r.count[i]; j += 64) held_tiles.insert(j / 64);
    }
    // Every held tile is in exactly one split; the splits are disjoint ranges.
    std::multiset<int> covered;
    int slots = 0;
    for (const cuda::DcaSplitItem& it : plan->split_items) {
      for (int t = it.tile_begin; t < it.tile_end; ++t) {
        if (held_tiles.count(t)) covered.insert(t);
      }
      if (it.out_slot >= 0) ++slots;
    }
    EXPECT_EQ(covered.size(), held_tiles.size()) << "rank " << rank;
    EXPECT_EQ(std::set<int>(covered.begin(), covered.end()), held_tiles) << "rank " << rank;
    EXPECT_EQ(slots, plan->split_slots);
  }
}

TEST(CudaAttentionPlanTest, LongDecodeIsSplitToFillTheDeviceNotFiner) {
  // One session decoding at 131072 tokens, 3 kv heads on 132 SMs: about
  // 2 blocks per SM, so ~88 splits of ~24 key tiles each (not thousands of
  // 2-tile splits, whose combine would dominate the step).
  std::vector<int32_t> table(131072 / 64);
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
  AttentionSeq s;
  s.n_q = 1;
  s.q_start = 131071;
  s.block_table = table;
  s.dca = Dca(5120);
  AttentionPlanShape shape = Shape(1);
  shape.n_blocks = static_cast<int64_t>(table.size());
  auto plan = PlanAttention({&s, 1}, shape);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const int target = 2 * shape.num_sms / shape.n_kv_heads;
  EXPECT_LE(static_cast<int>(plan->split_items.size()), target);
  EXPECT_GE(static_cast<int>(plan->split_items.size()), target / 2);
  int covered = 0;
  for (const auto& item : plan->split_items) covered += item.tile_end - item.tile_begin;
  EXPECT_EQ(covered, 131072 / 64);
  ASSERT_EQ(plan->combine_items.size(), 1u);
  EXPECT_EQ(plan->combine_items[0].n_slots, static_cast<int>(plan->split_items.size()));
}

// 32 sessions decoding at about 8k tokens, 3 kv heads, 132 SMs that each hold
// `resident` split blocks: the blocks fit one wave, each row group's splits
// differ by at most one tile, and every key tile is covered once.
TEST(CudaAttentionPlanTest, ManySessionsAreSplitIntoOneWaveOfEvenSplits) {
  constexpr int kSessions = 32;
  for (int resident : {3, 4}) {
    // 8192 keys (128 tiles), and a few decode steps later 129 tiles: a split
    // length fixed at 32 tiles once cut a one-tile fifth split from each.
    for (int tokens : {8192, 8195}) {
      const int n_tiles = (tokens + 63) / 64;
      std::vector<int32_t> table(kSessions * n_tiles);
      for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
      std::vector<AttentionSeq> seqs(kSessions);
      for (int i = 0; i < kSessions; ++i) {
        seqs[i].q_row = i;
        seqs[i].n_q = 1;
        seqs[i].q_start = tokens - 1;
        seqs[i].block_table = std::span<const int32_t>(table).subspan(i * n_tiles, n_tiles);
        seqs[i].dca = Dca(5120);
      }
      AttentionPlanShape shape = Shape(kSessions);
      shape.n_blocks = static_cast<int64_t>(table.size());
      shape.split_resident_blocks = resident;
      auto plan = PlanAttention(seqs, shape);
      ASSERT_TRUE(plan.ok()) << plan.status();
      const std::string what = absl::StrCat("resident ", resident, " tokens ", tokens);
      const int64_t blocks = static_cast<int64_t>(plan->split_items.size()) * shape.n_kv_heads;
      EXPECT_LE(blocks, int64_t{shape.num_sms} * resident) << what;
      EXPECT_GE(blocks, int64_t{shape.num_sms} * resident - shape.n_kv_heads) << what;
      int covered = 0, shortest = 1 << 30, longest = 0;
      for (const auto& item : plan->split_items) {
        const int n = item.tile_end - item.tile_begin;
        covered += n;
        shortest = std::min(shortest, n);
        longest = std::max(longest, n);
      }
      EXPECT_EQ(covered, kSessions * n_tiles) << what;
      // Splits of one length, give or take one tile, but for the few groups
      // that take one split more to fill the wave.
      EXPECT_LE(longest - shortest, n_tiles / 4 - n_tiles / 5 + 1) << what;
      EXPECT_EQ(plan->combine_items.size(), static_cast<size_t>(kSessions)) << what;
      for (const auto& item : plan->split_items) {
        ASSERT_GE(item.combine, 0) << what;
        EXPECT_EQ(plan->combine_items[item.combine].seq, item.seq) << what;
      }
    }
  }
}

TEST(CudaAttentionPlanTest, ARankWithoutKeysStillWritesItsRows) {
  const Runs none;
  const std::vector<int32_t> table;
  const PartialAttentionSeq s = Seq(none, table, 65, 0, 192);
  auto plan = PlanPartialAttention({&s, 1}, Shape(65));
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->seqs.size(), 1u);
  EXPECT_GE(plan->seqs[0].run_offset, 0);  // runs given, none held: no key is seen
  EXPECT_EQ(plan->seqs[0].n_runs, 0);
  EXPECT_EQ(plan->tiled_tiles.size(), 1u);  // the kernel writes o = 0, lse = -inf
}

TEST(CudaAttentionPlanTest, PlainAttentionHasNoRuns) {
  const std::vector<int32_t> table = Table(300);
  AttentionSeq a;
  a.n_q = 300;
  a.block_table = table;
  a.dca = Dca(192);
  auto plan = PlanAttention({&a, 1}, Shape(300));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->seqs[0].run_offset, -1);
  EXPECT_TRUE(plan->runs.empty());
}

TEST(CudaAttentionPlanTest, MalformedRunsAreInvalidArgument) {
  const std::vector<int32_t> table = Table(256);
  auto check = [&](std::vector<int32_t> first, std::vector<int32_t> count) {
    Runs r;
    r.first = std::move(first);
    r.count = std::move(count);
    const PartialAttentionSeq s = Seq(r, table, 10, 300, 192);
    return PlanPartialAttention({&s, 1}, Shape(10)).status().code();
  };
  EXPECT_EQ(check({0, 192}, {64, 64}), absl::StatusCode::kOk);
  EXPECT_EQ(check({0, 32}, {64, 64}), absl::StatusCode::kInvalidArgument);   // overlap
  EXPECT_EQ(check({192, 0}, {64, 64}), absl::StatusCode::kInvalidArgument);  // descending
  EXPECT_EQ(check({0, 192}, {64, 0}), absl::StatusCode::kInvalidArgument);   // empty run
  EXPECT_EQ(check({-64, 192}, {64, 64}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(check({0, 192}, {64, 193}), absl::StatusCode::kInvalidArgument);  // 257 > 4 blocks
  EXPECT_EQ(check({0, 192}, {64}), absl::StatusCode::kInvalidArgument);       // sizes differ
  std::vector<int32_t> bad_table = table;
  bad_table[1] = 1000;  // outside the arena
  Runs r;
  r.first = {0};
  r.count = {128};
  const PartialAttentionSeq s = Seq(r, bad_table, 10, 300, 192);
  EXPECT_EQ(PlanPartialAttention({&s, 1}, Shape(10)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace longctx

#endif  // LONGCTX_WITH_CUDA

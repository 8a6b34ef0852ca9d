// Placement of context-parallel sessions (engine/dist/placement.h): round-robin
// spans from the home rank, held runs, and least-loaded home selection.
#include <numeric>
#include <vector>

#include "engine/dist/placement.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

TEST(DistPlacementTest, SpansGoRoundRobinFromTheHome) {
  auto p = ChunkPlacement::Create(3, 1, 10);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->OwnerOf(0), 1);
  EXPECT_EQ(p->OwnerOf(9), 1);
  EXPECT_EQ(p->OwnerOf(10), 2);
  EXPECT_EQ(p->OwnerOf(25), 0);
  EXPECT_EQ(p->OwnerOf(30), 1);
}

TEST(DistPlacementTest, HeldRunsPartitionTheSequence) {
  for (int world : {1, 2, 3, 4}) {
    for (int home = 0; home < world; ++home) {
      auto p = ChunkPlacement::Create(world, home, 16);
      ASSERT_TRUE(p.ok());
      const int length = 16 * 7 + 5;
      std::vector<int> owner(length, -1);
      for (int r = 0; r < world; ++r) {
        std::vector<int32_t> first, count;
        p->HeldRuns(r, length, &first, &count);
        ASSERT_EQ(first.size(), count.size());
        int held = 0;
        for (size_t s = 0; s < first.size(); ++s) {
          if (s > 0) {
            EXPECT_GT(first[s], first[s - 1] + count[s - 1] - 1);
          }
          for (int j = first[s]; j < first[s] + count[s]; ++j) {
            ASSERT_EQ(owner[j], -1) << "token " << j << " held twice";
            owner[j] = r;
            EXPECT_EQ(p->OwnerOf(j), r);
          }
          held += count[s];
        }
        EXPECT_EQ(held, p->CountHeld(r, 0, length));
      }
      for (int j = 0; j < length; ++j) ASSERT_NE(owner[j], -1) << "token " << j << " unheld";
    }
  }
}

TEST(DistPlacementTest, CountHeldOfAPartialRange) {
  auto p = ChunkPlacement::Create(2, 0, 10);
  ASSERT_TRUE(p.ok());
  // [7, 23): 7..9 on rank 0, 10..19 on rank 1, 20..22 on rank 0.
  EXPECT_EQ(p->CountHeld(0, 7, 23), 6);
  EXPECT_EQ(p->CountHeld(1, 7, 23), 10);
  EXPECT_EQ(p->CountHeld(1, 7, 7), 0);
}

TEST(DistPlacementTest, RejectsBadPlacements) {
  EXPECT_EQ(ChunkPlacement::Create(0, 0, 8).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ChunkPlacement::Create(2, 2, 8).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ChunkPlacement::Create(2, 0, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DistPlacementTest, SpanIsTheDcaChunkOrTheRopeSpan) {
  cpu::DcaParams dca;
  EXPECT_EQ(PlacementSpan(dca), kDefaultRopeSpan);
  EXPECT_EQ(PlacementSpan(dca, 512), 512);
  dca.chunk_len = 6144;
  dca.chunk_size = 7168;
  EXPECT_EQ(PlacementSpan(dca, 512), 6144);
}

TEST(DistPlacementTest, HomeIsTheLeastLoadedRank) {
  PlacementTable table(3);
  auto a = table.Place(100);
  auto b = table.Place(100);
  auto c = table.Place(100);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->home(), 0);
  EXPECT_EQ(b->home(), 1);
  EXPECT_EQ(c->home(), 2);
  // a grows over all ranks: 0..99 on 0, 100..199 on 1, 200..249 on 2.
  table.Resize(*a, 0, 250);
  EXPECT_EQ(table.load(0).tokens, 100);
  EXPECT_EQ(table.load(1).tokens, 100);
  EXPECT_EQ(table.load(2).tokens, 50);
  // Equal session counts: the fewest tokens wins.
  auto d = table.Place(100);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->home(), 2);
  // b is rolled back and then gone: rank 1 has the fewest sessions.
  table.Resize(*b, 0, 30);
  table.Resize(*b, 30, 10);
  EXPECT_EQ(table.load(1).tokens, 110);
  table.Remove(*b, 10);
  EXPECT_EQ(table.load(1).tokens, 100);
  EXPECT_EQ(table.load(1).sessions, 0);
  auto e = table.Place(100);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->home(), 1);
}

}  // namespace
}  // namespace longctx

// InProcessCommunicator (threads as ranks): the collectives' results, and that a
// dead, hung or aborting rank turns into UNAVAILABLE instead of a hang.
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "engine/dist/inproc_communicator.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

// Runs body(rank) on one thread per rank and joins them.
void RunRanks(int world, const std::function<void(int)>& body) {
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) threads.emplace_back(body, r);
  for (std::thread& t : threads) t.join();
}

TEST(DistCommunicatorTest, BroadcastFromEveryRoot) {
  constexpr int kWorld = 3;
  auto comms = InProcessCommunicator::CreateGroup(kWorld, absl::Seconds(10));
  RunRanks(kWorld, [&](int rank) {
    for (int root = 0; root < kWorld; ++root) {
      std::vector<int32_t> buf(5, rank * 100);
      ASSERT_TRUE(comms[rank]->Broadcast(buf.data(), buf.size() * 4, root).ok());
      for (int32_t x : buf) EXPECT_EQ(x, root * 100) << "rank " << rank << " root " << root;
    }
  });
}

TEST(DistCommunicatorTest, GatherInRankOrderIncludingInPlaceSend) {
  constexpr int kWorld = 4, kRoot = 2;
  auto comms = InProcessCommunicator::CreateGroup(kWorld, absl::Seconds(10));
  RunRanks(kWorld, [&](int rank) {
    std::vector<int32_t> recv(kWorld * 3, -1);
    std::vector<int32_t> send = {rank, rank + 10, rank + 20};
    const void* src = send.data();
    if (rank == kRoot) {  // the root's own block already sits in place
      std::copy(send.begin(), send.end(), recv.begin() + kRoot * 3);
      src = recv.data() + kRoot * 3;
    }
    ASSERT_TRUE(comms[rank]->Gather(src, rank == kRoot ? recv.data() : nullptr, 12, kRoot).ok());
    if (rank != kRoot) return;
    for (int r = 0; r < kWorld; ++r) {
      EXPECT_EQ(recv[r * 3], r);
      EXPECT_EQ(recv[r * 3 + 2], r + 20);
    }
  });
}

TEST(DistCommunicatorTest, AllGatherRepeatedManyTimes) {
  constexpr int kWorld = 3;
  auto comms = InProcessCommunicator::CreateGroup(kWorld, absl::Seconds(10));
  RunRanks(kWorld, [&](int rank) {
    for (int it = 0; it < 300; ++it) {
      const int64_t mine = rank * 1000 + it;
      std::vector<int64_t> all(kWorld, -1);
      ASSERT_TRUE(comms[rank]->AllGather(&mine, all.data(), sizeof(mine)).ok());
      for (int r = 0; r < kWorld; ++r) ASSERT_EQ(all[r], r * 1000 + it);
    }
  });
}

TEST(DistCommunicatorTest, DeadRankTurnsIntoUnavailable) {
  constexpr int kWorld = 3;
  auto comms = InProcessCommunicator::CreateGroup(kWorld, absl::Milliseconds(200));
  const absl::Time start = absl::Now();
  RunRanks(2, [&](int rank) {  // rank 2 never shows up
    int x = rank;
    const absl::Status s = comms[rank]->Broadcast(&x, sizeof(x), 0);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_NE(s.message().find("rank(s) 2"), absl::string_view::npos) << s;
  });
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  for (auto& c : comms) EXPECT_EQ(c->health().code(), absl::StatusCode::kUnavailable);
  // Broken for good: the late rank fails at once rather than waiting.
  int x = 0;
  EXPECT_EQ(comms[2]->Broadcast(&x, sizeof(x), 0).code(), absl::StatusCode::kUnavailable);
}

TEST(DistCommunicatorTest, HungRankMidwayFailsThePeersWithinTheTimeout) {
  // Rank 1 takes part in the first collective, then hangs (never calls again).
  constexpr int kWorld = 2;
  auto comms = InProcessCommunicator::CreateGroup(kWorld, absl::Milliseconds(300));
  RunRanks(kWorld, [&](int rank) {
    int x = 7;
    ASSERT_TRUE(comms[rank]->Broadcast(&x, sizeof(x), 0).ok());
    if (rank == 1) return;
    std::vector<int> all(kWorld);
    const absl::Time start = absl::Now();
    EXPECT_EQ(comms[0]->AllGather(&x, all.data(), sizeof(x)).code(),
              absl::StatusCode::kUnavailable);
    EXPECT_GE(absl::Now() - start, absl::Milliseconds(250));
    EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  });
}

TEST(DistCommunicatorTest, AbortWakesWaitingPeersAtOnce) {
  constexpr int kWorld = 2;
  auto comms = InProcessCommunicator::CreateGroup(kWorld, absl::Seconds(60));
  const absl::Time start = absl::Now();
  RunRanks(kWorld, [&](int rank) {
    if (rank == 1) {
      absl::SleepFor(absl::Milliseconds(50));
      comms[1]->Abort("shutting down");
      return;
    }
    int x = 0;
    const absl::Status s = comms[0]->Broadcast(&x, sizeof(x), 1);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
    EXPECT_NE(s.message().find("rank 1 aborted: shutting down"), absl::string_view::npos) << s;
  });
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

TEST(DistCommunicatorTest, MismatchedCollectivesAreAnError) {
  constexpr int kWorld = 2;
  auto comms = InProcessCommunicator::CreateGroup(kWorld, absl::Seconds(10));
  RunRanks(kWorld, [&](int rank) {
    char buf[16] = {};
    const absl::Status s = comms[rank]->Broadcast(buf, rank == 0 ? 8 : 16, 0);
    EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
    EXPECT_NE(s.message().find("collective mismatch"), absl::string_view::npos) << s;
  });
}

TEST(DistCommunicatorTest, RootOutOfRangeIsRejectedWithoutBreakingTheGroup) {
  auto comms = InProcessCommunicator::CreateGroup(1, absl::Seconds(1));
  int x = 0;
  EXPECT_EQ(comms[0]->Broadcast(&x, sizeof(x), 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comms[0]->Gather(&x, &x, sizeof(x), -1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(comms[0]->health().ok());
  EXPECT_TRUE(comms[0]->Broadcast(&x, sizeof(x), 0).ok());
}

}  // namespace
}  // namespace longctx

// The host-memory budget (engine/stats.h): charges by kind, refusals past the
// limit, and charges that release themselves.
#include <thread>
#include <vector>

#include "engine/stats.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

TEST(HostMemoryBudgetTest, RefusesWhatWouldPassTheLimitAndCountsByKind) {
  HostMemoryBudget budget;
  budget.set_limit(1000);
  EXPECT_TRUE(budget.TryCharge(HostMemoryKind::kQueued, 600, "a request").ok());
  const absl::Status s = budget.TryCharge(HostMemoryKind::kImport, 500, "the import");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), ::testing::HasSubstr("the import needs 500 bytes"));
  EXPECT_EQ(budget.used(HostMemoryKind::kImport), 0);
  // Memory already held is counted past the limit.
  budget.Charge(HostMemoryKind::kTokenLog, 700);
  EXPECT_EQ(budget.used(), 1300);
  EXPECT_EQ(budget.used(HostMemoryKind::kTokenLog), 700);
  budget.Release(HostMemoryKind::kTokenLog, 700);
  budget.Release(HostMemoryKind::kQueued, 600);
  EXPECT_EQ(budget.used(), 0);
  budget.set_limit(0);  // counted, not limited
  EXPECT_TRUE(budget.TryCharge(HostMemoryKind::kExport, int64_t{1} << 40, "x").ok());
}

TEST(HostMemoryBudgetTest, ChargesReleaseThemselves) {
  HostMemoryBudget budget;
  budget.set_limit(100);
  {
    HostMemoryCharge a(&budget, HostMemoryKind::kImport);
    EXPECT_TRUE(a.TryGrow(60, "a").ok());
    EXPECT_FALSE(a.TryGrow(60, "a").ok());
    EXPECT_EQ(a.bytes(), 60);
    HostMemoryCharge b = std::move(a);
    EXPECT_EQ(budget.used(HostMemoryKind::kImport), 60);
    EXPECT_EQ(b.bytes(), 60);
  }
  EXPECT_EQ(budget.used(), 0);
}

TEST(HostMemoryBudgetTest, ConcurrentChargesNeverPassTheLimit) {
  HostMemoryBudget budget;
  budget.set_limit(1000);
  std::atomic<int64_t> granted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 100; ++i) {
        if (budget.TryCharge(HostMemoryKind::kQueued, 7, "r").ok()) granted += 7;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LE(granted.load(), 1000);
  EXPECT_GT(granted.load(), 1000 - 7);
  EXPECT_EQ(budget.used(), granted.load());
}

}  // namespace
}  // namespace longctx

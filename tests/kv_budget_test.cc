// The automatic KV budget (KvCacheConfig::max_bytes = 0, longctxd's
// kv_cache_bytes = 0): most of a device's free memory, 2 GiB of host memory.
#include "engine/backend/cpu_backend.h"
#include "engine/model/llama_model.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

constexpr int64_t kGiB = int64_t{1} << 30;

TEST(KvBudgetTest, HostMemoryGetsTwoGiB) {
  EXPECT_FALSE(CpuBackend().FreeDeviceBytes().ok());
  EXPECT_EQ(AutoKvBytes(CpuBackend().FreeDeviceBytes()), 2 * kGiB);
}

TEST(KvBudgetTest, ADeviceGivesMostOfItsFreeMemoryAndKeepsRoomForActivations) {
  // An H200 after a 135M model: ~139 GiB free.
  EXPECT_EQ(AutoKvBytes(139 * kGiB), 139 * kGiB / 10 * 9 - 4 * kGiB);
  // Little free memory still gets a usable arena.
  EXPECT_EQ(AutoKvBytes(3 * kGiB), kGiB);
}

}  // namespace
}  // namespace longctx

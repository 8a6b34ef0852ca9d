#include "engine/kv/kv_cache.h"

#include <set>

#include "engine/backend/cpu_backend.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

class KvCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    KvCacheConfig config;
    config.block_size = 4;
    // 2 layers * 2 (k, v) * 4 slots * 1 head * 8 dims * 4 bytes = 512 bytes per block.
    config.max_bytes = 512 * 5;
    auto kv = KvCache::Create(&backend_, 2, 1, 8, config);
    ASSERT_TRUE(kv.ok()) << kv.status();
    kv_ = std::move(*kv);
  }
  CpuBackend backend_;
  std::unique_ptr<KvCache> kv_;
};

TEST_F(KvCacheTest, AppendHandsOutSlotsInBlocks) {
  EXPECT_EQ(kv_->total_blocks(), 5);
  KvSequence seq;
  std::vector<int32_t> slots;
  ASSERT_TRUE(kv_->Append(seq, 6, &slots).ok());
  EXPECT_EQ(seq.length(), 6);
  ASSERT_EQ(seq.block_table().size(), 2u);
  ASSERT_EQ(slots.size(), 6u);
  for (int j = 0; j < 6; ++j) EXPECT_EQ(slots[j], seq.block_table()[j / 4] * 4 + j % 4);
  ASSERT_TRUE(kv_->Append(seq, 2, &slots).ok());
  EXPECT_EQ(seq.block_table().size(), 2u);
  EXPECT_EQ(kv_->free_blocks(), 3);
}

TEST_F(KvCacheTest, ExhaustionLeavesSequenceUnchanged) {
  KvSequence a, b;
  std::vector<int32_t> slots;
  ASSERT_TRUE(kv_->Append(a, 16, &slots).ok());
  const auto status = kv_->Append(b, 8, &slots);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(b.length(), 0);
  EXPECT_TRUE(b.block_table().empty());
  EXPECT_EQ(kv_->free_blocks(), 1);
}

TEST_F(KvCacheTest, TruncateReturnsWholeBlocksAndReuseIsDistinct) {
  KvSequence a, b;
  std::vector<int32_t> slots;
  ASSERT_TRUE(kv_->Append(a, 10, &slots).ok());
  kv_->Truncate(a, 5);
  EXPECT_EQ(a.length(), 5);
  EXPECT_EQ(a.block_table().size(), 2u);
  EXPECT_EQ(kv_->free_blocks(), 3);
  ASSERT_TRUE(kv_->Append(b, 12, &slots).ok());
  std::set<int32_t> used(a.block_table().begin(), a.block_table().end());
  for (int32_t blk : b.block_table()) EXPECT_TRUE(used.insert(blk).second) << "block shared";
  kv_->Release(a);
  kv_->Release(b);
  EXPECT_EQ(kv_->free_blocks(), 5);
}

TEST(KvCacheConfigTest, RejectsBudgetBelowOneBlockAndBadBlockSize) {
  CpuBackend backend;
  KvCacheConfig config;
  config.max_bytes = 16;
  EXPECT_EQ(KvCache::Create(&backend, 2, 1, 8, config).status().code(),
            absl::StatusCode::kInvalidArgument);
  config.max_bytes = 1 << 20;
  config.block_size = 0;
  EXPECT_EQ(KvCache::Create(&backend, 2, 1, 8, config).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace longctx

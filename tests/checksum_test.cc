// The 64-bit hashes of persisted formats, pinned to fixed values: exported
// bytes must verify on every later build.
#include "engine/util/checksum.h"

#include "gtest/gtest.h"

namespace longctx {
namespace {

TEST(ChecksumTest, Xxh3MatchesTheReference) {
  EXPECT_EQ(Checksum64(""), 0x2d06800538d394c2ull);
  EXPECT_EQ(Checksum64("longctx"), 0xc0979f892a836b6aull);
}

TEST(ChecksumTest, Fnv1aKeepsItsSeedAndChains) {
  // The default seed is not FNV's offset basis (14695981039346656037, one
  // digit longer); stored hashes depend on it.
  EXPECT_EQ(Fnv1a64(""), 1469598103934665603ull);
  EXPECT_EQ(Fnv1a64("a"), 4953267810257967366ull);
  EXPECT_EQ(Fnv1a64("ctx", Fnv1a64("long")), Fnv1a64("longctx"));
}

}  // namespace
}  // namespace longctx

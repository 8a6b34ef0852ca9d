#include "engine/conversation/stop_matcher.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

TEST(StopMatcherTest, NoStopsPassesTextThrough) {
  StopMatcher m({});
  EXPECT_EQ(m.Push("hello").emit, "hello");
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopMatcherTest, StopSplitAcrossPiecesIsNeverEmitted) {
  StopMatcher m({"\n\nUser:"});
  std::string out;
  for (const char* piece : {"The answer", " is 4.\n", "\nUs", "er:", " more"}) {
    auto r = m.Push(piece);
    out += r.emit;
    if (r.matched) {
      EXPECT_EQ(*r.matched, "\n\nUser:");
      break;
    }
  }
  EXPECT_EQ(out, "The answer is 4.");
}

TEST(StopMatcherTest, HeldTextIsReleasedWhenItDiverges) {
  StopMatcher m({"END"});
  EXPECT_EQ(m.Push("foo E").emit, "foo ");
  EXPECT_EQ(m.Push("N").emit, "");
  auto r = m.Push("X");
  EXPECT_FALSE(r.matched);
  EXPECT_EQ(r.emit, "ENX");
  EXPECT_EQ(m.Push("EN").emit, "");
  EXPECT_EQ(m.Flush(), "EN");
}

TEST(StopMatcherTest, EarliestOfSeveralStopsWins) {
  StopMatcher m({"cd", "b"});
  auto r = m.Push("abcd");
  ASSERT_TRUE(r.matched);
  EXPECT_EQ(*r.matched, "b");
  EXPECT_EQ(r.emit, "a");
}

TEST(StopMatcherTest, MultibyteStop) {
  StopMatcher m({"—end"});
  auto r = m.Push("x \xE2\x80");  // the pushed text is whatever the decoder gives
  EXPECT_EQ(r.emit, "x ");
  r = m.Push(
      "\x94"
      "end!");
  ASSERT_TRUE(r.matched);
  EXPECT_EQ(r.emit, "");
}

}  // namespace
}  // namespace longctx

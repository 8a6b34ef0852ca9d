// How the clients cut documents (clients/client.h): never inside a UTF-8
// character, at whitespace where there is some. No server needed.
#include <string>

#include "absl/strings/str_cat.h"
#include "clients/client.h"
#include "gtest/gtest.h"

namespace longctx::client {
namespace {

// Whether `s` is well-formed UTF-8 (structure only: lead and continuation bytes).
bool IsUtf8(absl::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

// Russian text (two bytes a letter) with spaces, and a line break now and then.
std::string Cyrillic(int words) {
  std::string out;
  for (int i = 0; i < words; ++i) {
    absl::StrAppend(&out, i % 3 ? "Раскольников" : "преступление", i % 17 == 16 ? "\n" : " ");
  }
  return out;
}

TEST(TextCutTest, StretchesOfANonAsciiDocumentAreUtf8AndEndAtWhitespace) {
  const std::string doc = Cyrillic(2000);
  for (size_t begin = 0; begin < 3000; begin += 7) {
    const absl::string_view s = TextStretch(doc, begin, 2000);
    ASSERT_TRUE(IsUtf8(s)) << begin;
    ASSERT_LE(s.size(), 2000u);
    ASSERT_GE(s.size(), 1500u) << begin;  // a break in the last quarter
    const char last = s.back();
    EXPECT_TRUE(last == ' ' || last == '\n') << begin;
    for (const std::string& seg : SplitSegments(s, 500)) EXPECT_TRUE(IsUtf8(seg)) << begin;
  }
}

TEST(TextCutTest, WithoutWhitespaceAStretchEndsAtACharacter) {
  std::string doc;
  for (int i = 0; i < 1000; ++i) doc += "ж€";  // 2 and 3 bytes, no spaces
  for (size_t begin = 0; begin < 50; ++begin) {
    for (size_t bytes : {8u, 9u, 10u, 101u, 2000u}) {
      const absl::string_view s = TextStretch(doc, begin, bytes);
      EXPECT_TRUE(IsUtf8(s)) << begin << " " << bytes;
      EXPECT_GE(s.size(), bytes - 3) << begin << " " << bytes;
    }
  }
  // The tail of a document is taken whole; past its end there is nothing.
  EXPECT_EQ(TextStretch("abc déf", 4, 100), "déf");
  EXPECT_EQ(TextStretch("abc", 10, 100), "");
}

}  // namespace
}  // namespace longctx::client

// The strict JSON reader used for config.json, tokenizer.json and safetensors
// headers.
#include "engine/util/json.h"

#include <cmath>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

using ::testing::HasSubstr;

TEST(JsonTest, ParsesDocument) {
  auto v = ParseJson(
      " {\"a\": [1, -2.5e3, true, false, null], \"b\": {\"c\": \"x\"}, \"big\": 9007199254740993,"
      " \"f\": 1.0, \"e\": {}, \"l\": []} ");
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_TRUE(v->is_object());
  const JsonValue* a = v->Find("a");
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->items().size(), 5u);
  EXPECT_TRUE(a->items()[0].is_int());
  EXPECT_EQ(a->items()[0].int_value(), 1);
  EXPECT_EQ(a->items()[1].number(), -2500.0);
  EXPECT_FALSE(a->items()[1].is_int());
  EXPECT_TRUE(a->items()[2].bool_value());
  EXPECT_TRUE(a->items()[4].is_null());
  EXPECT_EQ(v->Find("b")->Find("c")->str(), "x");
  EXPECT_EQ(v->Find("big")->int_value(), 9007199254740993);  // exact beyond 2^53
  EXPECT_FALSE(v->Find("f")->is_int());
  EXPECT_TRUE(v->Find("e")->members().empty());
  EXPECT_TRUE(v->Find("l")->items().empty());
  EXPECT_EQ(v->Find("missing"), nullptr);
}

TEST(JsonTest, StringEscapesAndUtf8) {
  auto v = ParseJson(R"("q\"b\\s\/\b\f\n\r\t \u00e9 \u4e2d \ud83d\ude00 é")");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->str(), "q\"b\\s/\b\f\n\r\t \xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80 \xc3\xa9");
}

TEST(JsonTest, RejectsMalformedInput) {
  struct Bad {
    const char* text;
    const char* error;
  };
  const Bad cases[] = {
      {"", "unexpected end"},
      {"{\"a\": 1,}", "expected an object key"},
      {"[1 2]", "expected ',' or ']'"},
      {"{\"a\" 1}", "expected ':'"},
      {"01", "trailing characters"},
      {"1.", "invalid number fraction"},
      {"1e", "invalid number exponent"},
      {"-", "truncated number"},
      {"tru", "unexpected character"},
      {"\"abc", "unterminated string"},
      {"\"a\nb\"", "control character"},
      {"\"\\x\"", "invalid escape"},
      {"\"\\u12\"", "truncated \\u escape"},
      {"\"\\u12xy\"", "invalid \\u escape"},
      {"\"\\ud800\"", "lone high surrogate"},
      {"\"\\udc00\"", "lone low surrogate"},
      {"\"\\ud800\\u0041\"", "invalid surrogate pair"},
      {"\"\xff\"", "invalid UTF-8"},
      {"\"\xc0\xaf\"", "invalid UTF-8"},      // overlong
      {"\"\xed\xa0\x80\"", "invalid UTF-8"},  // encoded surrogate
      {"{\"a\": 1, \"a\": 2}", "duplicate key"},
      {"[1] [2]", "trailing characters"},
  };
  for (const Bad& b : cases) {
    auto v = ParseJson(b.text);
    ASSERT_FALSE(v.ok()) << b.text;
    EXPECT_THAT(std::string(v.status().message()), HasSubstr(b.error)) << b.text;
  }
}

TEST(JsonTest, BoundsNesting) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  auto v = ParseJson(deep);
  ASSERT_FALSE(v.ok());
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("nesting deeper than 128"));
  EXPECT_TRUE(ParseJson(std::string(100, '[') + std::string(100, ']')).ok());
}

TEST(JsonTest, BoundsValueCount) {
  std::string many = "[";
  for (int i = 0; i < 1000; ++i) many += "0,";
  many += "0]";
  EXPECT_TRUE(ParseJson(many, 128, 1001 + 1).ok());
  auto v = ParseJson(many, 128, 1000);
  ASSERT_FALSE(v.ok());
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("more than 1000 values"));
}

TEST(JsonTest, HugeNumbersDoNotFail) {
  auto v = ParseJson("[1e999, -1e999, 1e-999, 99999999999999999999]");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_TRUE(std::isinf(v->items()[0].number()));
  EXPECT_LT(v->items()[1].number(), 0);
  EXPECT_EQ(v->items()[2].number(), 0.0);
  EXPECT_FALSE(v->items()[3].is_int());  // beyond int64
}

}  // namespace
}  // namespace longctx

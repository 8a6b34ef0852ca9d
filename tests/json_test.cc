// ParseJson (nlohmann::json with the limits for untrusted model files) and the
// typed lookups shared by the config.json, tokenizer.json and safetensors
// readers.
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/util/json_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(JsonTest, ParsesDocument) {
  auto v = ParseJson(
      " {\"a\": [1, -2.5e3, true, false, null], \"b\": {\"c\": \"x\"}, \"big\": 9007199254740993,"
      " \"f\": 1.0, \"e\": {}, \"l\": []} ");
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_TRUE(v->is_object());
  const nlohmann::json* a = JsonFind(*v, "a");
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->size(), 5u);
  EXPECT_EQ(JsonInt((*a)[0]), 1);
  EXPECT_EQ((*a)[1].get<double>(), -2500.0);
  EXPECT_EQ(JsonInt((*a)[1]), std::nullopt);
  EXPECT_TRUE((*a)[2].get<bool>());
  EXPECT_TRUE((*a)[4].is_null());
  EXPECT_EQ(JsonStringOr(JsonFind(*JsonFind(*v, "b"), "c"), ""), "x");
  EXPECT_EQ(JsonInt(*JsonFind(*v, "big")), 9007199254740993);  // exact beyond 2^53
  EXPECT_EQ(JsonInt(*JsonFind(*v, "f")), std::nullopt);
  EXPECT_TRUE(JsonFind(*v, "e")->empty());
  EXPECT_TRUE(JsonFind(*v, "l")->empty());
  EXPECT_EQ(JsonFind(*v, "missing"), nullptr);
  EXPECT_EQ(JsonFind(*a, "a"), nullptr);  // not an object
}

TEST(JsonTest, StringEscapesAndUtf8) {
  auto v = ParseJson(R"("q\"b\\s\/\b\f\n\r\t \u00e9 \u4e2d \ud83d\ude00 é")");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->get<std::string>(),
            "q\"b\\s/\b\f\n\r\t \xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80 \xc3\xa9");
}

TEST(JsonTest, RejectsMalformedInput) {
  struct Bad {
    const char* text;
    const char* error;
  };
  const Bad cases[] = {
      {"", "unexpected end of input"},
      {"{\"a\": 1,}", "expected string literal at offset 8"},
      {"[1 2]", "expected ']' at offset 3"},
      {"{\"a\" 1}", "expected ':'"},
      {"01", "expected end of input"},
      {"1.", "expected digit after '.'"},
      {"1e", "after exponent"},
      {"-", "expected digit after '-'"},
      {"tru", "invalid literal"},
      {"\"abc", "missing closing quote"},
      {"\"a\nb\"", "control character"},
      {"\"\\x\"", "forbidden character after backslash"},
      {"\"\\u12\"", "must be followed by 4 hex digits"},
      {"\"\\u12xy\"", "must be followed by 4 hex digits"},
      {"\"\\ud800\"", "surrogate"},
      {"\"\\udc00\"", "surrogate"},
      {"\"\\ud800\\u0041\"", "surrogate"},
      {"\"\xff\"", "ill-formed UTF-8"},
      {"\"\xc0\xaf\"", "ill-formed UTF-8"},      // overlong
      {"\"\xed\xa0\x80\"", "ill-formed UTF-8"},  // encoded surrogate
      {"{\"a\": 1, \"a\": 2}", "duplicate key \"a\""},
      {"{\"x\": {\"a\": 1, \"b\": {\"a\": 2}, \"a\": 3}}", "duplicate key \"a\""},
      {"[1] [2]", "expected end of input"},
      {"\xef\xbb\xbf{}", "unexpected character 0xef"},  // byte-order mark
      {"[1] // note", "invalid literal at offset 4"},   // no comments
      {"[1e999]", "number overflow"},
  };
  for (const Bad& b : cases) {
    auto v = ParseJson(b.text);
    ASSERT_FALSE(v.ok()) << b.text;
    EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument) << b.text;
    EXPECT_THAT(std::string(v.status().message()), HasSubstr("JSON: ")) << b.text;
    EXPECT_THAT(std::string(v.status().message()), HasSubstr(b.error)) << b.text;
  }
  // Keys of different objects may repeat.
  EXPECT_TRUE(ParseJson("{\"a\": {\"a\": 1}, \"b\": [{\"a\": 2}, {\"a\": 3}]}").ok());
}

TEST(JsonTest, ErrorsDoNotEchoLongInput) {
  // An unterminated 1 MB string: the message names the problem, not the bytes.
  const std::string text = absl::StrCat("\"", std::string(1 << 20, 'x'));
  auto v = ParseJson(text);
  ASSERT_FALSE(v.ok());
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("missing closing quote"));
  EXPECT_LT(v.status().message().size(), 300u);
  auto n = ParseJson(absl::StrCat("[1", std::string(1 << 20, '0'), "e999]"));
  ASSERT_FALSE(n.ok());
  EXPECT_LT(n.status().message().size(), 300u);
}

TEST(JsonTest, BoundsNesting) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  auto v = ParseJson(deep);
  ASSERT_FALSE(v.ok());
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("nesting deeper than 128"));
  EXPECT_TRUE(ParseJson(std::string(128, '[') + std::string(128, ']')).ok());
  EXPECT_FALSE(ParseJson(std::string(129, '[') + std::string(129, ']')).ok());
  std::string objects;
  for (int i = 0; i < 17; ++i) objects += "{\"k\":";
  absl::StrAppend(&objects, "1", std::string(17, '}'));
  EXPECT_THAT(std::string(ParseJson(objects, {.max_depth = 16}).status().message()),
              HasSubstr("nesting deeper than 16"));
  // A limit error comes first even when the text is also malformed later.
  EXPECT_THAT(std::string(ParseJson(std::string(200, '[')).status().message()),
              HasSubstr("nesting deeper than 128"));
}

TEST(JsonTest, BoundsValueCount) {
  std::string many = "[";
  for (int i = 0; i < 1000; ++i) many += "0,";
  many += "0]";
  EXPECT_TRUE(ParseJson(many, {.max_values = 1001 + 1}).ok());
  auto v = ParseJson(many, {.max_values = 1000});
  ASSERT_FALSE(v.ok());
  EXPECT_THAT(std::string(v.status().message()), HasSubstr("more than 1000 values"));
  // Objects and arrays count as values too.
  EXPECT_TRUE(ParseJson("{\"a\": [1], \"b\": {}}", {.max_values = 4}).ok());
  EXPECT_FALSE(ParseJson("{\"a\": [1], \"b\": {}}", {.max_values = 3}).ok());
}

TEST(JsonTest, NumberRanges) {
  auto v = ParseJson(
      "[-1e-999, 99999999999999999999, 18446744073709551615, -9223372036854775808, -0, 1.5e300]");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ((*v)[0].get<double>(), 0.0);      // underflow reads as zero
  EXPECT_EQ(JsonInt((*v)[1]), std::nullopt);  // beyond uint64
  EXPECT_EQ((*v)[1].get<double>(), 1e20);
  EXPECT_EQ(JsonInt((*v)[2]), std::nullopt);  // beyond int64
  EXPECT_EQ(JsonInt((*v)[3]), INT64_MIN);
  EXPECT_EQ(JsonInt((*v)[4]), 0);
  EXPECT_EQ((*v)[5].get<double>(), 1.5e300);
  EXPECT_EQ(JsonInt(nlohmann::json("7")), std::nullopt);
}

TEST(JsonTest, TopLevelKeysInDocumentOrder) {
  std::vector<std::string> keys;
  auto v = ParseJson("{\"z\": {\"inner\": 1}, \"a\": [{\"x\": 2}], \"m\": null}",
                     {.top_level_keys = &keys});
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_THAT(keys, ElementsAre("z", "a", "m"));
}

TEST(JsonTest, StringOr) {
  const nlohmann::json s = "text", n = 3;
  EXPECT_EQ(JsonStringOr(&s, "f"), "text");
  EXPECT_EQ(JsonStringOr(&n, "f"), "f");
  EXPECT_EQ(JsonStringOr(nullptr, "f"), "f");
}

}  // namespace
}  // namespace longctx

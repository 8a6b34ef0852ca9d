// longctxd's log lines: the JSON format is one object per line with "ts",
// "level", "msg" and the fields in order, whatever bytes the fields carry; the
// text format quotes values that need it.
#include "server/logging.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace longctx::server {
namespace {

using ::testing::ElementsAre;
using ::testing::EndsWith;

class LoggingTest : public ::testing::Test {
 protected:
  void SetUp() override { saved_ = spdlog::default_logger(); }
  void TearDown() override {
    spdlog::drop("longctxd");
    ASSERT_TRUE(InitLogging("text", "info").ok());  // the process default
    spdlog::drop("longctxd");
    spdlog::set_default_logger(saved_);
  }
  // The stderr lines of Log(info, message, fields) under `format`.
  static std::string LogLine(const std::string& format, const std::string& message,
                             const LogFields& fields) {
    spdlog::drop("longctxd");
    EXPECT_TRUE(InitLogging(format, "info").ok());
    ::testing::internal::CaptureStderr();
    Log(spdlog::level::info, message, fields);
    spdlog::default_logger()->flush();
    return ::testing::internal::GetCapturedStderr();
  }

 private:
  std::shared_ptr<spdlog::logger> saved_;
};

TEST_F(LoggingTest, JsonLinesParseWithTheFieldsInOrder) {
  const std::string line = LogLine("json", "said \"hi\"\n\tback\\",
                                   {{"request_id", "r-1"},
                                    {"ctl", std::string("a\x01\x1f"
                                                        "b",
                                                        4)},
                                    {"a", "é"},
                                    {"bad", "\xff\xfe"}});
  ASSERT_THAT(line, EndsWith("\n"));
  ASSERT_EQ(line.find('\n'), line.size() - 1) << line;  // one line
  const nlohmann::ordered_json j = nlohmann::ordered_json::parse(line);
  std::vector<std::string> keys;
  for (const auto& [k, v] : j.items()) keys.push_back(k);
  EXPECT_THAT(keys, ElementsAre("ts", "level", "msg", "request_id", "ctl", "a", "bad"));
  EXPECT_EQ(j["level"], "info");
  EXPECT_EQ(j["msg"], "said \"hi\"\n\tback\\");
  EXPECT_EQ(j["request_id"], "r-1");
  EXPECT_EQ(j["ctl"], std::string("a\x01\x1f"
                                  "b",
                                  4));
  EXPECT_EQ(j["a"], "é");
  EXPECT_EQ(j["bad"], "\xef\xbf\xbd\xef\xbf\xbd");  // U+FFFD for each invalid byte
  EXPECT_NE(line.find(R"("msg":"said \"hi\"\n\tback\\","request_id":"r-1","ctl":"a\u0001\u001fb")"),
            std::string::npos)
      << line;
}

TEST_F(LoggingTest, TextQuotesValuesThatNeedIt) {
  const std::string line = LogLine(
      "text", "started",
      {{"plain", "v1"}, {"spaced", "a b"}, {"empty", ""}, {"quote", "x\"y"}, {"nl", "l1\nl2"}});
  EXPECT_THAT(line, EndsWith(R"(started plain=v1 spaced="a b" empty="" quote="x\"y" nl="l1\nl2")"
                             "\n"));
}

}  // namespace
}  // namespace longctx::server

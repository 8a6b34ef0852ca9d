// The JSON rules of the OpenAI-compatible door (server/openai/openai_api.h),
// without a server: what a body may say, what is refused and why, and the
// shapes of answers and errors.
#include "server/openai/openai_api.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/config.h"

namespace longctx::server::openai {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

absl::StatusOr<CompletionRequest> Chat(const json& body) {
  return ParseCompletionRequest(ApiKind::kChat, body.dump());
}

json Messages() { return json::array({{{"role", "user"}, {"content", "hi"}}}); }

TEST(OpenAiApiTest, ChatRequestFields) {
  auto r = Chat(
      {{"model", "m"},
       {"messages",
        {{{"role", "developer"}, {"content", "be brief"}},
         {{"role", "user"},
          {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}}}},
       {"max_completion_tokens", 7},
       {"temperature", 0.5},
       {"top_p", 0.9},
       {"stop", "END"},
       {"seed", 42},
       {"n", 1},
       {"stream", true},
       {"stream_options", {{"include_usage", true}}},
       {"session_id", "s-1"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->model, "m");
  ASSERT_EQ(r->messages.size(), 2u);
  EXPECT_EQ(r->messages[0].role, "system");  // OpenAI's newer name
  EXPECT_EQ(r->messages[1].content, "ab");
  EXPECT_EQ(r->input.max_tokens, 7);
  EXPECT_FLOAT_EQ(r->input.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r->input.sampling.top_p, 0.9f);
  EXPECT_EQ(r->input.stop, std::vector<std::string>{"END"});
  EXPECT_TRUE(r->input.has_seed);
  EXPECT_EQ(r->input.sampling.seed, 42u);
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  EXPECT_EQ(r->session_id, "s-1");
  EXPECT_EQ(*LastUserMessage(r->messages), "ab");
}

TEST(OpenAiApiTest, OpenAiDefaults) {
  auto r = Chat({{"messages", Messages()}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FLOAT_EQ(r->input.sampling.temperature, 1.f);
  EXPECT_FLOAT_EQ(r->input.sampling.top_p, 1.f);
  EXPECT_EQ(r->input.max_tokens, 0);  // the server's default_max_tokens
  EXPECT_FALSE(r->input.has_seed);
  EXPECT_FALSE(r->stream);
}

TEST(OpenAiApiTest, CompletionPrompt) {
  auto r = ParseCompletionRequest(ApiKind::kCompletion,
                                  json{{"prompt", {"once"}}, {"stop", {"a", "b"}}}.dump());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt, "once");
  EXPECT_EQ(r->input.stop.size(), 2u);
  auto two = ParseCompletionRequest(ApiKind::kCompletion, json{{"prompt", {"a", "b"}}}.dump());
  EXPECT_THAT(two.status().message(), HasSubstr("one prompt per request"));
  auto ids = ParseCompletionRequest(ApiKind::kCompletion, json{{"prompt", {1, 2}}}.dump());
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(OpenAiApiTest, RefusesWhatItDoesNotImplement) {
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, json>>{{"n", 2},
                                                 {"best_of", 3},
                                                 {"tools", json::array({{{"type", "function"}}})},
                                                 {"logit_bias", {{"50256", -100}}},
                                                 {"logprobs", true},
                                                 {"echo", true},
                                                 {"presence_penalty", 0.5},
                                                 {"response_format", {{"type", "json_object"}}}}) {
    json body = {{"messages", Messages()}, {key, value}};
    auto r = Chat(body);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << key;
    EXPECT_THAT(r.status().message(), HasSubstr(key));
  }
  // Their neutral values are fine.
  EXPECT_TRUE(Chat({{"messages", Messages()},
                    {"logprobs", false},
                    {"presence_penalty", 0},
                    {"tools", json::array()},
                    {"response_format", {{"type", "text"}}}})
                  .ok());
}

TEST(OpenAiApiTest, MalformedBodiesNameTheField) {
  EXPECT_THAT(ParseCompletionRequest(ApiKind::kChat, "[1]").status().message(),
              HasSubstr("JSON object"));
  EXPECT_THAT(Chat({{"messages", json::array()}}).status().message(), HasSubstr("messages"));
  EXPECT_THAT(Chat({{"messages", {{{"content", "x"}}}}}).status().message(),
              HasSubstr("messages[0].role"));
  EXPECT_THAT(Chat({{"messages", Messages()}, {"temperature", "hot"}}).status().message(),
              HasSubstr("temperature must be a number"));
  EXPECT_THAT(Chat({{"messages", Messages()}, {"max_tokens", 0}}).status().message(),
              HasSubstr("max_tokens"));
  EXPECT_THAT(Chat({{"messages", Messages()}, {"stop", 3}}).status().message(), HasSubstr("stop"));
  EXPECT_THAT(LastUserMessage({{"system", "x"}}).status().message(), HasSubstr("user message"));
}

TEST(OpenAiApiTest, StatusToHttp) {
  EXPECT_EQ(HttpStatus(absl::StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kUnauthenticated), 401);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kPermissionDenied), 403);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kDeadlineExceeded), 504);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kFailedPrecondition), 500);
  json e = RenderError(absl::ResourceExhaustedError("too many"));
  EXPECT_EQ(e, json({{"error",
                      {{"message", "too many"},
                       {"type", "rate_limit_error"},
                       {"code", "resource_exhausted"}}}}));
}

TEST(OpenAiApiTest, AnswerShapes) {
  ResponseMeta meta{ApiKind::kChat, "chatcmpl-1", 100, "m"};
  json whole = RenderCompletion(meta, "Paris", FinishReason::kStopString, {10, 2});
  EXPECT_EQ(whole["object"], "chat.completion");
  EXPECT_EQ(whole["choices"][0]["message"]["content"], "Paris");
  EXPECT_EQ(whole["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(whole["usage"]["total_tokens"], 12);
  json first = RenderChunk(meta, "Pa", /*first=*/true, std::nullopt);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  json last = RenderChunk(meta, "", /*first=*/false, FinishReason::kContext);
  EXPECT_FALSE(last["choices"][0]["delta"].contains("role"));
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(RenderUsageChunk(meta, {1, 1})["choices"].empty());
  meta.kind = ApiKind::kCompletion;
  EXPECT_EQ(RenderChunk(meta, "x", true, std::nullopt)["choices"][0]["text"], "x");
  EXPECT_EQ(RenderCompletion(meta, "x", FinishReason::kLength, {})["object"], "text_completion");
  EXPECT_EQ(RenderModels("m", 5)["data"][0]["id"], "m");
}

absl::StatusOr<ServerConfig> LoadConfig(std::vector<std::string> args) {
  args.insert(args.begin(), {"longctxd", "--model=/m.gguf"});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return LoadServerConfig(static_cast<int>(argv.size()), argv.data());
}

// The door follows the server's safe defaults: reachable from other hosts
// only with authentication (or the explicit opt-out).
TEST(OpenAiConfigTest, HttpListenOpenToTheNetworkNeedsAuthentication) {
  EXPECT_TRUE(LoadConfig({}).value().http_listen.empty());  // off by default
  auto open = LoadConfig({"--http_listen=0.0.0.0:8080"});
  EXPECT_THAT(open.status().message(), HasSubstr("http_listen: 0.0.0.0:8080"));
  EXPECT_TRUE(LoadConfig({"--http_listen=127.0.0.1:8080"}).ok());
  EXPECT_TRUE(
      LoadConfig({"--http_listen=0.0.0.0:8080", "--allow_unauthenticated_remote=true"}).ok());
  EXPECT_THAT(LoadConfig({"--http_listen=nowhere"}).status().message(), HasSubstr("http_listen"));
  EXPECT_THAT(LoadConfig({"--http_threads=0"}).status().message(), HasSubstr("http_threads"));
}

}  // namespace
}  // namespace longctx::server::openai

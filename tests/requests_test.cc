// The engine's one check of each request (engine/requests.h), without a model.
#include "engine/requests.h"

#include "gtest/gtest.h"

namespace longctx {
namespace {

ModelConfig SmallModel() {
  ModelConfig m;
  m.name = "test";
  m.n_layers = 2;
  m.d_model = 128;
  m.n_heads = 2;
  m.n_kv_heads = 1;
  m.head_dim = 64;
  m.d_ff = 256;
  m.vocab_size = 1000;
  m.context_length = 8192;
  return m;
}

class RequestsTest : public ::testing::Test {
 protected:
  SessionContext Context(bool has_chat = true) {
    SessionContext c;
    c.options = &options_;
    c.model = &model_;
    c.block_size = 64;
    c.has_chat = has_chat;
    return c;
  }

  EngineOptions options_;
  ModelConfig model_ = SmallModel();
};

TEST_F(RequestsTest, DefaultsResolveToTheServersLimits) {
  auto s = ResolveSession(SessionRequest(), Context());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->ttl, options_.default_ttl);
  EXPECT_EQ(s->window_tokens, options_.max_session_tokens);
  EXPECT_EQ(s->max_tokens, options_.max_session_tokens);
  EXPECT_EQ(s->prompt_format, PromptFormat::kChat);
  EXPECT_EQ(ResolveSession(SessionRequest(), Context(false))->prompt_format, PromptFormat::kRaw);
}

TEST_F(RequestsTest, EachBadFieldIsNamed) {
  struct Case {
    const char* field;
    void (*edit)(SessionRequest&);
  };
  const Case cases[] = {
      {"ttl", [](SessionRequest& r) { r.ttl = absl::Seconds(-1); }},
      {"max_ttl", [](SessionRequest& r) { r.ttl = absl::Hours(1000); }},
      {"labels", [](SessionRequest& r) { r.labels.emplace(std::string(), std::string(1, 'x')); }},
      {"memory.window_tokens", [](SessionRequest& r) { r.window_tokens = -5; }},
      {"memory.window_tokens", [](SessionRequest& r) { r.overflow = OverflowPolicy::kSlide; }},
      {"memory.sink_tokens", [](SessionRequest& r) { r.sink_tokens = 64; }},
      {"system_prompt",
       [](SessionRequest& r) { r.system_prompt = std::string(1, static_cast<char>(0xff)); }},
      {"attention", [](SessionRequest& r) { r.attention.chunk_size = 3; }},
  };
  for (const Case& c : cases) {
    SessionRequest r;
    c.edit(r);
    auto s = ResolveSession(r, Context());
    ASSERT_FALSE(s.ok()) << c.field;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();
    EXPECT_NE(s.status().message().find(c.field), absl::string_view::npos) << s.status();
  }
}

TEST_F(RequestsTest, ChatNeedsATemplateAndSystemPromptsNeedChat) {
  SessionRequest chat;
  chat.prompt_format = PromptFormat::kChat;
  EXPECT_EQ(ResolveSession(chat, Context(false)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  SessionRequest raw;
  raw.prompt_format = PromptFormat::kRaw;
  raw.system_prompt = "be brief";
  EXPECT_EQ(ResolveSession(raw, Context()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RequestsTest, SettingsRoundTripThroughARequest) {
  SessionRequest r;
  r.labels["team"] = "search";
  r.ttl = absl::Minutes(10);
  r.overflow = OverflowPolicy::kCompress;
  auto first = ResolveSession(r, Context());
  ASSERT_FALSE(first.ok());  // COMPRESS needs a window
  r.window_tokens = 5120 * 2;
  first = ResolveSession(r, Context());
  ASSERT_TRUE(first.ok()) << first.status();
  auto again = ResolveSession(SessionRequest::FromSettings(*first, options_.max_ttl), Context());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->labels, first->labels);
  EXPECT_EQ(again->ttl, first->ttl);
  EXPECT_EQ(again->window_tokens, first->window_tokens);
  EXPECT_EQ(again->overflow, first->overflow);
  EXPECT_EQ(again->max_tokens, options_.max_windowed_session_tokens);
  // A TTL longer than this server allows is capped, not refused.
  auto capped = SessionRequest::FromSettings(*first, absl::Minutes(1));
  EXPECT_EQ(*capped.ttl, absl::Minutes(1));
}

TEST_F(RequestsTest, GenerateInputChecksEveryField) {
  GenerateInput ok;
  ok.prompt = "Who?";
  EXPECT_TRUE(ok.Validate(options_, 1000, PromptFormat::kChat).ok());
  struct Case {
    const char* field;
    void (*edit)(GenerateInput&);
  };
  const Case cases[] = {
      {"sampling.temperature", [](GenerateInput& g) { g.sampling.temperature = -1; }},
      {"sampling.top_k", [](GenerateInput& g) { g.sampling.top_k = 1001; }},
      {"sampling.top_p", [](GenerateInput& g) { g.sampling.top_p = 0; }},
      {"sampling.repetition_penalty", [](GenerateInput& g) { g.sampling.repetition_penalty = 0; }},
      {"max_tokens", [](GenerateInput& g) { g.max_tokens = -1; }},
      {"max_generate_tokens", [](GenerateInput& g) { g.max_tokens = 1 << 20; }},
      {"stop[1]",
       [](GenerateInput& g) {
         g.stop = {"a", ""};
       }},
      {"prompt is required", [](GenerateInput& g) { g.prompt.clear(); }},
      {"prompt is not valid UTF-8",
       [](GenerateInput& g) {
         g.prompt = std::string{'a', static_cast<char>(0xc3)};
       }},
  };
  for (const Case& c : cases) {
    GenerateInput g = ok;
    c.edit(g);
    const absl::Status s = g.Validate(options_, 1000, PromptFormat::kChat);
    ASSERT_FALSE(s.ok()) << c.field;
    EXPECT_NE(s.message().find(c.field), absl::string_view::npos) << s;
  }
  GenerateInput raw = ok;
  raw.prompt.clear();
  EXPECT_TRUE(raw.Validate(options_, 1000, PromptFormat::kRaw).ok());
}

TEST(ValidateUtf8Test, NamesTheOffset) {
  EXPECT_TRUE(ValidateUtf8("f", "h\xc3\xa9llo").ok());
  const absl::Status s = ValidateUtf8("segment.text", "ab\xff");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("offset 2"), absl::string_view::npos) << s;
}

}  // namespace
}  // namespace longctx

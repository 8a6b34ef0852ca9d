#include "engine/session/session_codec.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace longctx {
namespace {

SessionSnapshot Sample() {
  SessionSnapshot s;
  s.model = {"SmolLM2", 49152, 30, 576, 0x1234abcdull};
  s.settings.labels = {{"doc", "war-and-peace"}, {"owner", "team-a"}};
  s.settings.ttl = absl::Minutes(90);
  s.settings.attention.mode = DcaMode::kDca;
  s.settings.attention.pretrain_len = 8192;
  s.settings.attention.chunk_size = 6144;
  s.settings.attention.local_window = 1024;
  s.settings.attention.length_temperature = true;
  s.settings.prompt_format = PromptFormat::kRaw;
  s.settings.system_prompt = "Be brief.";
  s.settings.window_tokens = 100000;
  s.applied_seq = 42;
  s.segments = 42;
  s.ingested_tokens = 9000;
  s.user_turn_start = 17;
  for (int i = 0; i < 1000; ++i) s.tokens.push_back(i * 37 % 49152);
  return s;
}

TEST(SessionCodecTest, RoundTrips) {
  const SessionSnapshot s = Sample();
  auto back = DecodeSessionSnapshot(EncodeSessionSnapshot(s));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->model, s.model);
  EXPECT_EQ(back->settings.labels, s.settings.labels);
  EXPECT_EQ(back->settings.ttl, s.settings.ttl);
  EXPECT_EQ(back->settings.attention.mode, DcaMode::kDca);
  EXPECT_EQ(back->settings.attention.pretrain_len, 8192);
  EXPECT_EQ(back->settings.attention.chunk_size, 6144);
  EXPECT_TRUE(back->settings.attention.length_temperature);
  EXPECT_EQ(back->settings.prompt_format, PromptFormat::kRaw);
  EXPECT_EQ(back->settings.system_prompt, "Be brief.");
  EXPECT_EQ(back->settings.window_tokens, 100000);
  EXPECT_EQ(back->applied_seq, 42);
  EXPECT_EQ(back->user_turn_start, 17);
  EXPECT_EQ(back->tokens, s.tokens);
}

TEST(SessionCodecTest, RejectsDamage) {
  const std::string good = EncodeSessionSnapshot(Sample());
  EXPECT_THAT(DecodeSessionSnapshot("nonsense").status().message(), ::testing::HasSubstr("header"));
  // Every truncation and every single-byte change is caught.
  for (size_t cut = 0; cut < good.size(); cut += 97) {
    EXPECT_FALSE(DecodeSessionSnapshot(absl::string_view(good).substr(0, cut)).ok()) << cut;
  }
  for (size_t i = 8; i < good.size(); i += 13) {
    std::string bad = good;
    bad[i] ^= 0x20;
    EXPECT_EQ(DecodeSessionSnapshot(bad).status().code(), absl::StatusCode::kInvalidArgument) << i;
  }
}

}  // namespace
}  // namespace longctx

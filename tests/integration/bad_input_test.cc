// The bad-input battery: each case gets its specific status (with the field
// at fault named), leaves the session as it was, and the server keeps serving.
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "clients/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon.h"
#include "tests/integration/helpers.h"

namespace longctx::testing {
namespace {

using ::testing::HasSubstr;

class BadInputTest : public SharedDaemonTest {
 protected:
  void SetUp() override {
    SharedDaemonTest::SetUp();
    if (IsSkipped()) return;
    v1::CreateSessionRequest create;
    create.set_prompt_format(v1::PROMPT_FORMAT_RAW);
    auto s = CreateSession(stub_.get(), create);
    ASSERT_TRUE(s.ok()) << s.status();
    id_ = s->id();
    auto pos = IngestTexts(
        stub_.get(), id_, {"It was a bright cold day in April, ", "and the clocks were striking."});
    ASSERT_TRUE(pos.ok()) << pos.status();
    tokens_ = *pos;
  }
  void TearDown() override {
    if (daemon_ == nullptr) return;
    // The session is exactly as it was, and the server serves others.
    auto s = GetSession(stub_.get(), id_);
    if (s.ok()) {
      EXPECT_EQ(s->tokens(), tokens_) << "the session changed";
    }
    ExpectStillServing(daemon_);
    (void)DeleteSession(stub_.get(), id_);
  }

  v1::GenerateRequest Ask(int max_tokens = 4) {
    v1::GenerateRequest g;
    g.set_session_id(id_);
    g.set_max_tokens(max_tokens);
    return g;
  }

  std::string id_;
  int64_t tokens_ = 0;
};

TEST_F(BadInputTest, UnknownSessionIsNotFound) {
  EXPECT_EQ(GetSession(stub_.get(), "no-such-session").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(DeleteSession(stub_.get(), "no-such-session").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Score(stub_.get(), "no-such-session", "x").status().code(),
            absl::StatusCode::kNotFound);
  v1::GenerateRequest g = Ask();
  g.set_session_id("no-such-session");
  EXPECT_EQ(Generate(stub_.get(), g).status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Ingest(stub_.get(), {Segment(1, "hello", "no-such-session")}).status.error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Export(stub_.get(), "no-such-session").status().code(), absl::StatusCode::kNotFound);
}

// Text fields are proto3 `string`: a request whose text is not UTF-8 does not
// even parse, so it fails before the service sees it, with whatever status the
// gRPC library gives an unparsable message (not asserted), and nothing of it
// is applied. An Ingest stream that carries such a segment ends without
// acknowledging it; GetSession's next_seq still asks for it.
TEST_F(BadInputTest, InvalidUtf8FailsAndChangesNothing) {
  const IngestOutcome out =
      Ingest(stub_.get(), {Segment(3, "valid start \xC3\x28 then junk", id_)});
  EXPECT_TRUE(out.acks.empty());
  v1::GenerateRequest g = Ask();
  g.set_prompt("\xFF\xFE");
  const GenerateOutcome gen = Generate(stub_.get(), g);
  EXPECT_FALSE(gen.status.ok());
  EXPECT_FALSE(Score(stub_.get(), id_, "\xE2\x82").ok());
  EXPECT_EQ(GetSession(stub_.get(), id_)->next_seq(), 3);
}

TEST_F(BadInputTest, EmptySegmentsAreInvalidArgument) {
  IngestOutcome out = Ingest(stub_.get(), {Segment(3, "", id_)});
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(out.status.error_message(), HasSubstr("empty"));
  v1::IngestRequest no_ids = Segment(3, "", id_);
  no_ids.mutable_segment()->mutable_tokens();
  out = Ingest(stub_.get(), {no_ids});
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::IngestRequest no_segment;
  no_segment.set_session_id(id_);
  EXPECT_EQ(Ingest(stub_.get(), {no_segment}).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::IngestRequest no_session = Segment(3, "text");
  EXPECT_THAT(Ingest(stub_.get(), {no_session}).status.error_message(), HasSubstr("session_id"));
}

TEST_F(BadInputTest, OversizedSegmentIsResourceExhausted) {
  // Over max_segment_bytes (64 KiB), under the message limit (1 MiB).
  const IngestOutcome out = Ingest(stub_.get(), {Segment(3, std::string(100 << 10, 'a'), id_)});
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(out.status.error_message(), HasSubstr("max_segment_bytes"));
}

TEST_F(BadInputTest, MessageOverTheSizeLimitIsResourceExhausted) {
  const IngestOutcome out = Ingest(stub_.get(), {Segment(3, std::string(2 << 20, 'a'), id_)});
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  grpc::ClientContext ctx;
  v1::ScoreRequest req;
  req.set_session_id(id_);
  req.set_text(std::string(3 << 20, 'b'));
  v1::ScoreResponse resp;
  EXPECT_EQ(stub_->Score(&ctx, req, &resp).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(BadInputTest, TokenIdsOutsideTheVocabularyAreInvalidArgument) {
  v1::IngestRequest r = Segment(3, "", id_);
  r.mutable_segment()->mutable_tokens()->add_ids(5);
  r.mutable_segment()->mutable_tokens()->add_ids(1 << 30);
  const IngestOutcome out = Ingest(stub_.get(), {r});
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(out.status.error_message(), HasSubstr("segment.tokens.ids[1]"));
}

TEST_F(BadInputTest, DuplicateSequenceNumbersAreAcknowledgedNotApplied) {
  // seq 2 was applied in SetUp: resending it re-acks with its original counts.
  const IngestOutcome again =
      Ingest(stub_.get(), {Segment(2, "and the clocks were striking.", id_)});
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  ASSERT_EQ(again.acks.size(), 1u);
  EXPECT_TRUE(again.acks[0].duplicate());
  EXPECT_EQ(again.acks[0].seq(), 2);
  EXPECT_EQ(again.acks[0].session_tokens(), tokens_);
  EXPECT_GT(again.acks[0].tokens_ingested(), 0);
  // Within one stream too: 3 applies, its resend is a duplicate.
  const IngestOutcome both =
      Ingest(stub_.get(), {Segment(3, " Winston", id_), Segment(3, " Winston")});
  ASSERT_TRUE(both.status.ok()) << both.status.error_message();
  ASSERT_EQ(both.acks.size(), 2u);
  EXPECT_FALSE(both.acks[0].duplicate());
  EXPECT_TRUE(both.acks[1].duplicate());
  tokens_ = both.acks[0].session_tokens();
  EXPECT_EQ(GetSession(stub_.get(), id_)->tokens(), tokens_);
}

TEST_F(BadInputTest, GapsAndReorderingAreFailedPrecondition) {
  IngestOutcome out = Ingest(stub_.get(), {Segment(5, "skips ahead", id_)});
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(out.status.error_message(), HasSubstr("expects seq 3"));
  out = Ingest(stub_.get(), {Segment(3, " one", id_), Segment(5, " three"), Segment(4, " two")});
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  ASSERT_EQ(out.acks.size(), 1u);  // seq 3 was applied before the gap
  EXPECT_EQ(out.acks[0].seq(), 3);
  tokens_ = out.acks[0].session_tokens();
  out = Ingest(stub_.get(), {Segment(0, "zero", id_)});
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(out.status.error_message(), HasSubstr("segment.seq"));
  EXPECT_EQ(GetSession(stub_.get(), id_)->next_seq(), 4);
}

TEST_F(BadInputTest, NegativeOrHugeMaxTokensAreInvalidArgument) {
  GenerateOutcome out = Generate(stub_.get(), Ask(-1));
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(out.status.error_message(), HasSubstr("max_tokens"));
  out = Generate(stub_.get(), Ask(std::numeric_limits<int32_t>::max()));
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(out.status.error_message(), HasSubstr("max_generate_tokens"));
}

TEST_F(BadInputTest, InvalidSamplingParametersAreInvalidArgument) {
  struct Case {
    const char* field;
    std::function<void(v1::SamplingParams*)> set;
  };
  const std::vector<Case> cases = {
      {"sampling.temperature", [](v1::SamplingParams* s) { s->set_temperature(-0.5f); }},
      {"sampling.temperature",
       [](v1::SamplingParams* s) { s->set_temperature(std::numeric_limits<float>::quiet_NaN()); }},
      {"sampling.temperature", [](v1::SamplingParams* s) { s->set_temperature(1e9f); }},
      {"sampling.top_p", [](v1::SamplingParams* s) { s->set_top_p(0.f); }},
      {"sampling.top_p", [](v1::SamplingParams* s) { s->set_top_p(1.5f); }},
      {"sampling.top_k", [](v1::SamplingParams* s) { s->set_top_k(-1); }},
      {"sampling.top_k", [](v1::SamplingParams* s) { s->set_top_k(10'000'000); }},
      {"sampling.repetition_penalty",
       [](v1::SamplingParams* s) { s->set_repetition_penalty(0.f); }},
      {"sampling.repetition_penalty",
       [](v1::SamplingParams* s) { s->set_repetition_penalty(50.f); }},
  };
  for (const Case& c : cases) {
    v1::GenerateRequest g = Ask();
    c.set(g.mutable_sampling());
    const GenerateOutcome out = Generate(stub_.get(), g);
    EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.field;
    EXPECT_THAT(out.status.error_message(), HasSubstr(c.field));
  }
  v1::GenerateRequest g = Ask();
  g.add_stop("");
  EXPECT_EQ(Generate(stub_.get(), g).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(BadInputTest, BadSessionSettingsNameTheField) {
  v1::CreateSessionRequest c;
  c.set_session_id("has spaces");
  EXPECT_THAT(CreateSession(stub_.get(), c).status().message(), HasSubstr("session_id"));
  c = {};
  c.mutable_attention()->set_mode(v1::ATTENTION_MODE_DCA);
  c.mutable_attention()->set_chunk_size(1024);
  c.mutable_attention()->set_local_window(2048);
  auto r = CreateSession(stub_.get(), c);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("local_window"));
  c = {};
  c.mutable_memory()->set_overflow(v1::OVERFLOW_POLICY_COMPRESS);  // without its window
  r = CreateSession(stub_.get(), c);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("window_tokens"));
  c = {};
  c.mutable_ttl()->set_seconds(-5);
  EXPECT_THAT(CreateSession(stub_.get(), c).status().message(), HasSubstr("ttl"));
  c = {};
  c.mutable_memory()->set_window_tokens(1 << 30);
  EXPECT_THAT(CreateSession(stub_.get(), c).status().message(), HasSubstr("max_session_tokens"));
  c = {};
  c.set_session_id(id_);
  EXPECT_EQ(CreateSession(stub_.get(), c).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(BadInputTest, SessionTokenLimitIsResourceExhausted) {
  v1::CreateSessionRequest c;
  c.set_prompt_format(v1::PROMPT_FORMAT_RAW);
  c.mutable_memory()->set_window_tokens(20);
  auto small = CreateSession(stub_.get(), c);
  ASSERT_TRUE(small.ok()) << small.status();
  auto first = IngestTexts(stub_.get(), small->id(), {"One two three four five."});
  ASSERT_TRUE(first.ok());
  const IngestOutcome out = Ingest(
      stub_.get(), {Segment(2,
                            " six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                            "sixteen seventeen eighteen nineteen twenty twenty-one twenty-two",
                            small->id())});
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(out.status.error_message(), HasSubstr("limit of 20"));
  EXPECT_EQ(GetSession(stub_.get(), small->id())->tokens(), *first);
  // Generation stops at the limit instead of failing.
  v1::GenerateRequest g;
  g.set_session_id(small->id());
  g.set_max_tokens(100);
  const GenerateOutcome gen = Generate(stub_.get(), g);
  ASSERT_TRUE(gen.status.ok()) << gen.status.error_message();
  const int64_t used = *first + gen.complete->usage().generated_tokens();
  if (gen.complete->finish_reason() == v1::FINISH_REASON_CONTEXT) {
    EXPECT_EQ(used, 20);
  } else {  // the model may end its text first
    EXPECT_EQ(gen.complete->finish_reason(), v1::FINISH_REASON_STOP);
    EXPECT_LE(used, 20);
  }
  EXPECT_TRUE(DeleteSession(stub_.get(), small->id()).ok());
}

TEST_F(BadInputTest, CancelledGenerateStopsAndRollsBack) {
  const GenerateOutcome out = Generate(stub_.get(), Ask(400), absl::ZeroDuration(),
                                       [](grpc::ClientContext* ctx) { ctx->TryCancel(); });
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_LT(out.ids.size(), 400u);
  // The server stops the work: the session is free for the next request
  // long before 400 tokens could have been generated.
  const absl::Time t0 = absl::Now();
  const GenerateOutcome next = Generate(stub_.get(), Ask(1));
  EXPECT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_LT(absl::Now() - t0, absl::Seconds(60));
}

TEST_F(BadInputTest, DeadlineExceededStopsGeneration) {
  const GenerateOutcome out = Generate(stub_.get(), Ask(400), absl::Milliseconds(500));
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  const GenerateOutcome next = Generate(stub_.get(), Ask(1));
  EXPECT_TRUE(next.status.ok()) << next.status.error_message();
}

TEST_F(BadInputTest, ClientDisconnectingMidIngestLeavesAConsistentSession) {
  std::vector<std::string> parts;
  for (int i = 0; i < 8; ++i) {
    parts.push_back(absl::StrCat(" Paragraph ", i, " of the letter is about the weather."));
  }
  {
    grpc::ClientContext ctx;
    auto stream = stub_->Ingest(&ctx);
    for (size_t i = 0; i < parts.size(); ++i) {
      stream->Write(Segment(static_cast<int64_t>(3 + i), parts[i], i == 0 ? id_ : ""));
    }
    v1::IngestResponse ack;
    stream->Read(&ack);  // at least one applied, then the client vanishes
    ctx.TryCancel();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // Whatever was applied is whole segments, and the session says where to resume.
  absl::StatusOr<v1::Session> s;
  int64_t last_next = -1;
  for (int tries = 0; tries < 600; ++tries) {
    // Settled: every claimed segment is applied or rolled back, and stays so.
    s = GetSession(stub_.get(), id_);
    const bool settled = s.ok() && s->tokens() > tokens_ && s->segments() == s->next_seq() - 1;
    if (settled && s->next_seq() == last_next) break;
    last_next = settled ? s->next_seq() : -1;
    absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_TRUE(s.ok());
  const int64_t next = s->next_seq();
  ASSERT_GE(next, 4);
  ASSERT_LE(next, 3 + static_cast<int64_t>(parts.size()));
  std::vector<std::string> rest(parts.begin() + (next - 3), parts.end());
  if (!rest.empty()) {
    ASSERT_TRUE(IngestTexts(stub_.get(), id_, rest, next).ok());
  }
  // Same tokens as a session that got every segment in one go.
  v1::CreateSessionRequest c;
  c.set_prompt_format(v1::PROMPT_FORMAT_RAW);
  auto control = CreateSession(stub_.get(), c);
  ASSERT_TRUE(control.ok());
  std::vector<std::string> all = {"It was a bright cold day in April, ",
                                  "and the clocks were striking."};
  all.insert(all.end(), parts.begin(), parts.end());
  auto want = IngestTexts(stub_.get(), control->id(), all);
  ASSERT_TRUE(want.ok());
  tokens_ = GetSession(stub_.get(), id_)->tokens();
  EXPECT_EQ(tokens_, *want);
  auto a = Score(stub_.get(), id_, " The end.");
  auto b = Score(stub_.get(), control->id(), " The end.");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NEAR(a->logprob(), b->logprob(), 1e-3);
  EXPECT_TRUE(DeleteSession(stub_.get(), control->id()).ok());
}

}  // namespace
}  // namespace longctx::testing

// longctxd as rank 0 of a context-parallel group (engine/dist/rank_group.h): two ranks as
// threads of one process (--rendezvous=inproc, CPU backend), against a
// single-rank server with the same settings. Small DCA chunks (c = 1024, chunk
// length 640) spread a 1.4k-token chapter over both ranks; the second session
// is homed on rank 1. Scores and greedy answers must match the single rank;
// rollback, delete and windowed sessions behave as documented.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "clients/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon.h"
#include "tests/integration/helpers.h"

namespace longctx::testing {
namespace {

const std::vector<std::string> kSmallChunks = {"--dca_pretrain_length=1024"};

struct Served {
  std::unique_ptr<Daemon> daemon;
  std::unique_ptr<v1::LongContext::Stub> stub;
};

struct SessionRun {
  std::vector<float> logprobs;      // per token of the continuation
  std::vector<int32_t> answer_ids;  // greedy answer
  int64_t tokens = 0;
};

class GroupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (ModelPath().empty()) GTEST_SKIP() << "LONGCTX_MODEL is not set";
    book_ = ReadBook("anna_karenina.txt");
    if (!book_) GTEST_SKIP() << "sample books not found (set LONGCTX_BOOKS)";
  }

  static Served Start(std::vector<std::string> flags) {
    flags.insert(flags.end(), kSmallChunks.begin(), kSmallChunks.end());
    Served s;
    auto d = Daemon::Start(flags);
    EXPECT_TRUE(d.ok()) << d.status();
    if (!d.ok()) return s;
    s.daemon = *std::move(d);
    const absl::Status up = s.daemon->WaitServing(absl::Seconds(120));
    EXPECT_TRUE(up.ok()) << up << s.daemon->LogTail();
    s.stub = s.daemon->Stub();
    return s;
  }

  // Ingests `text` into a new session, scores `next` per token and asks a
  // greedy question (rolled back), then scores again: rollback must restore.
  SessionRun Run(Daemon* daemon, v1::LongContext::Stub* stub, const std::string& id,
                 const std::string& text, const std::string& next) {
    SessionRun out;
    v1::CreateSessionRequest create;
    create.set_session_id(id);
    auto session = CreateSession(stub, create);
    EXPECT_TRUE(session.ok()) << session.status() << daemon->LogTail();
    if (!session.ok()) return out;
    auto ingested = IngestTexts(stub, id, client::SplitSegments(text, 1500));
    EXPECT_TRUE(ingested.ok()) << ingested.status() << daemon->LogTail();
    auto score = Score(stub, id, next, /*per_token=*/true);
    EXPECT_TRUE(score.ok()) << score.status() << daemon->LogTail();
    if (!score.ok()) return out;
    for (const auto& t : score->tokens()) out.logprobs.push_back(t.logprob());
    v1::GenerateRequest ask;
    ask.set_session_id(id);
    ask.set_prompt("Who woke up on the sofa in his study?");
    ask.set_max_tokens(16);
    const GenerateOutcome answer = Generate(stub, ask);
    EXPECT_TRUE(answer.status.ok()) << answer.status.error_message() << daemon->LogTail();
    out.answer_ids = answer.ids;
    auto again = Score(stub, id, next, /*per_token=*/true);
    EXPECT_TRUE(again.ok()) << again.status();
    if (again.ok()) {
      EXPECT_EQ(again->tokens_size(), score->tokens_size());
      for (int i = 0; i < std::min(again->tokens_size(), score->tokens_size()); ++i) {
        EXPECT_NEAR(again->tokens(i).logprob(), score->tokens(i).logprob(), 1e-4) << i;
      }
    }
    out.tokens = GetSession(stub, id)->tokens();
    return out;
  }

  std::optional<std::string> book_;
};

TEST_F(GroupTest, TwoRanksAnswerAndScoreLikeOne) {
  const size_t end = book_->find("\nChapter 2\n");
  ASSERT_NE(end, std::string::npos);
  const std::string chapter = book_->substr(0, end + 1);
  const std::string next = client::SplitSegments(book_->substr(end + 11, 400), 200)[0];
  const std::string part3 = book_->substr(end + 11, 6500);

  // f32 weights on both sides: the group sums attention in another order, which
  // with int8 activations can flip roundings that add up over the layers.
  Served one = Start({"--cpu_weights=f32"});
  ASSERT_NE(one.stub, nullptr);
  const SessionRun ref_a = Run(one.daemon.get(), one.stub.get(), "a", chapter, next);
  const SessionRun ref_b = Run(one.daemon.get(), one.stub.get(), "b", part3, next);
  one.daemon.reset();

  Served group = Start({"--world_size=2", "--rendezvous=inproc", "--cpu_weights=f32"});
  ASSERT_NE(group.stub, nullptr);
  v1::GetServerInfoRequest info_req;
  v1::ServerInfo info;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(group.stub->GetServerInfo(&ctx, info_req, &info).ok());
  }
  EXPECT_THAT(info.backend(), ::testing::HasSubstr("x2 ranks"));
  // Session a is homed on rank 0, b on rank 1 (the least loaded then); both
  // hold more than one chunk (640 tokens), so both ranks hold KV of each.
  const SessionRun got_a = Run(group.daemon.get(), group.stub.get(), "a", chapter, next);
  const SessionRun got_b = Run(group.daemon.get(), group.stub.get(), "b", part3, next);
  for (const auto& [ref, got] : {std::pair{&ref_a, &got_a}, std::pair{&ref_b, &got_b}}) {
    EXPECT_GT(ref->tokens, 1280);
    EXPECT_EQ(got->tokens, ref->tokens);
    ASSERT_EQ(got->logprobs.size(), ref->logprobs.size());
    ASSERT_FALSE(ref->logprobs.empty());
    for (size_t i = 0; i < ref->logprobs.size(); ++i) {
      // f32 summation order differs (partials merged by log-sum-exp).
      EXPECT_NEAR(got->logprobs[i], ref->logprobs[i], 2e-3) << "token " << i;
    }
    EXPECT_EQ(got->answer_ids, ref->answer_ids);
  }

  // The group's load on /metrics: one session homed on each rank, every KV
  // token of both sessions held by one of the ranks.
  auto m = ScrapeMetrics(group.daemon->metrics_port());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)["longctx_group_ranks"], 2);
  EXPECT_EQ((*m)["longctx_group_rank_sessions{rank=\"0\"}"], 1);
  EXPECT_EQ((*m)["longctx_group_rank_sessions{rank=\"1\"}"], 1);
  const double held = (*m)["longctx_group_rank_kv_tokens{rank=\"0\"}"] +
                      (*m)["longctx_group_rank_kv_tokens{rank=\"1\"}"];
  EXPECT_EQ(held, static_cast<double>(got_a.tokens + got_b.tokens));
  EXPECT_GT((*m)["longctx_group_rank_kv_tokens{rank=\"1\"}"], 0);

  // Deleting a leaves b intact on both ranks.
  ASSERT_TRUE(DeleteSession(group.stub.get(), "a").ok());
  auto score_b = Score(group.stub.get(), "b", next, /*per_token=*/true);
  ASSERT_TRUE(score_b.ok()) << score_b.status();
  ASSERT_EQ(static_cast<size_t>(score_b->tokens_size()), ref_b.logprobs.size());
  for (int i = 0; i < score_b->tokens_size(); ++i) {
    EXPECT_NEAR(score_b->tokens(i).logprob(), ref_b.logprobs[static_cast<size_t>(i)], 2e-3);
  }

  // Infini windows are not context-parallel: a clear UNIMPLEMENTED, and the
  // server keeps serving.
  v1::CreateSessionRequest windowed;
  windowed.mutable_memory()->set_overflow(v1::OVERFLOW_POLICY_SLIDE);
  windowed.mutable_memory()->set_window_tokens(1280);
  windowed.mutable_memory()->set_sink_tokens(64);
  windowed.set_prompt_format(v1::PROMPT_FORMAT_RAW);
  auto w = CreateSession(group.stub.get(), windowed);
  absl::Status refused = w.status();
  if (w.ok()) {
    refused = IngestTexts(group.stub.get(), w->id(), {"Some text for the window."}).status();
  }
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnimplemented) << refused;
  EXPECT_THAT(std::string(refused.message()), ::testing::HasSubstr("REJECT"));
  ExpectStillServing(group.daemon.get());

  // SIGTERM drains, ends the group and exits cleanly.
  group.daemon->Signal(SIGTERM);
  auto code = group.daemon->Wait(absl::Seconds(60));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0) << group.daemon->LogTail();
  EXPECT_THAT(group.daemon->LogTail(), ::testing::HasSubstr("rank stopped rank=1 status=OK"));
}

TEST_F(GroupTest, ARankWithoutItsGroupExplainsWhy) {
  // tcp:// needs NCCL; a CPU build says so and exits instead of serving alone.
  auto d = Daemon::Start({"--world_size=2", "--rank=1", "--rendezvous=tcp://127.0.0.1:1",
                          "--rendezvous_timeout=2s"});
  ASSERT_TRUE(d.ok()) << d.status();
  auto code = (*d)->Wait(absl::Seconds(60));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_NE(*code, 0);
  EXPECT_THAT((*d)->LogTail(), ::testing::AnyOf(::testing::HasSubstr("NCCL"),
                                                ::testing::HasSubstr("rendezvous")));
}

}  // namespace
}  // namespace longctx::testing

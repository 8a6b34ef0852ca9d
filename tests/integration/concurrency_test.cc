// 16 sessions ingesting, generating and scoring at once from separate client
// threads: all complete, and no session's numbers are touched by the others.
#include <barrier>
#include <thread>

#include "absl/strings/str_cat.h"
#include "clients/client.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon.h"
#include "tests/integration/helpers.h"

namespace longctx::testing {
namespace {

TEST(ConcurrencyTest, SixteenSessionsAtOnceWithoutCrossTalk) {
  std::string why;
  Daemon* daemon = SharedDaemon(&why);
  if (daemon == nullptr) GTEST_SKIP() << why;
  constexpr int kSessions = 16;
  // Distinct short documents: one per session.
  std::vector<std::string> docs;
  const auto book = ReadBook("crime_and_punishment.txt");
  for (int i = 0; i < kSessions; ++i) {
    if (book && book->size() > 200000) {
      size_t at = 50000 + static_cast<size_t>(i) * 7000;
      while ((static_cast<unsigned char>((*book)[at]) & 0xC0) == 0x80) ++at;  // a whole character
      const std::string piece = book->substr(at, 700);
      docs.push_back(client::SplitSegments(piece, 400)[0]);
    } else {
      docs.push_back(absl::StrCat("Session ", i, " is about the number ", i * 37,
                                  ". It likes the color number ", i % 5, " best of all. "));
    }
  }
  const std::string continuation = " And so the story went on, as it always does.";

  struct Result {
    std::string id;
    absl::Status status;
    double concurrent_logprob = 0;
    int64_t tokens = 0;
    GenerateOutcome answer;
  };
  std::vector<Result> results(kSessions);
  std::barrier sync(kSessions);
  std::vector<std::thread> threads;
  for (int i = 0; i < kSessions; ++i) {
    threads.emplace_back([&, i] {
      auto stub = daemon->Stub();
      Result& r = results[static_cast<size_t>(i)];
      v1::CreateSessionRequest create;
      create.set_prompt_format(v1::PROMPT_FORMAT_RAW);
      auto s = CreateSession(stub.get(), create);
      sync.arrive_and_wait();
      if (!s.ok()) {
        r.status = s.status();
        return;
      }
      r.id = s->id();
      const auto parts = client::SplitSegments(docs[static_cast<size_t>(i)], 200);
      auto pos = IngestTexts(stub.get(), r.id, parts);
      if (!pos.ok()) {
        r.status = pos.status();
        return;
      }
      r.tokens = *pos;
      v1::GenerateRequest g;
      g.set_session_id(r.id);
      g.set_max_tokens(4);
      g.mutable_sampling()->set_temperature(0.8f);
      g.mutable_sampling()->set_seed(static_cast<uint64_t>(i));
      r.answer = Generate(stub.get(), g);
      auto score = Score(stub.get(), r.id, continuation);
      if (!score.ok()) {
        r.status = score.status();
        return;
      }
      r.concurrent_logprob = score->logprob();
    });
  }
  for (auto& t : threads) t.join();

  auto stub = daemon->Stub();
  for (int i = 0; i < kSessions; ++i) {
    const Result& r = results[static_cast<size_t>(i)];
    ASSERT_TRUE(r.status.ok()) << "session " << i << ": " << r.status << daemon->LogTail();
    EXPECT_TRUE(r.answer.status.ok()) << i << ": " << r.answer.status.error_message();
    ASSERT_TRUE(r.answer.complete.has_value()) << i;
    EXPECT_EQ(r.answer.complete->usage().session_tokens(), r.tokens);
    // Alone, after everyone else is done, the session scores the same.
    auto alone = Score(stub.get(), r.id, continuation);
    ASSERT_TRUE(alone.ok());
    EXPECT_NEAR(alone->logprob(), r.concurrent_logprob, 5e-3) << "session " << i;
    EXPECT_EQ(alone->session_tokens(), r.tokens);
  }
  // Sessions with different documents score differently: their contexts
  // really were their own.
  EXPECT_NE(results[0].concurrent_logprob, results[1].concurrent_logprob);
  for (const Result& r : results) EXPECT_TRUE(DeleteSession(stub.get(), r.id).ok());
}

}  // namespace
}  // namespace longctx::testing

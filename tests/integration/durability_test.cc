// Durable sessions (docs/service.md "Durability") against the real server:
// acknowledged segments survive SIGKILL and SIGTERM; a second server on the
// same state_dir is refused; store damage (a truncated log, flipped bytes in a
// table file, a missing file, an unwritable state_dir, a full disk) never
// stops the server, and the sessions it does not touch stay intact.
#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon.h"
#include "tests/integration/helpers.h"

namespace longctx::testing {
namespace {
namespace fs = std::filesystem;

const char* const kTexts[] = {
    "It was a bright cold day in April, and the clocks were striking thirteen. ",
    "Winston Smith, his chin nuzzled into his breast in an effort to escape the wind, ",
    "slipped quickly through the glass doors of Victory Mansions, though not quickly enough ",
    "to prevent a swirl of gritty dust from entering along with him. The hallway smelt of ",
};
const char kContinuation[] = " boiled cabbage and old rag mats.";

class DurabilityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (ModelPath().empty()) GTEST_SKIP() << "LONGCTX_MODEL is not set";
    char tmpl[] = "/tmp/longctx-durable-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    state_ = root_ + "/state";
  }
  void TearDown() override {
    daemon_.reset();
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  // Starts a server on state_ (or `flags`' state_dir) and waits for SERVING.
  void Serve(std::vector<std::string> flags = {}, DaemonLimits limits = {}) {
    daemon_.reset();
    flags.push_back("--kv_cache_bytes=128MiB");
    bool named = false;
    for (const auto& f : flags) named = named || f.rfind("--state_dir=", 0) == 0;
    if (!named) flags.push_back("--state_dir=" + state_);
    auto d = Daemon::Start(flags, nullptr, limits);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
    ASSERT_TRUE(daemon_->WaitServing(absl::Minutes(3)).ok()) << daemon_->LogTail();
    stub_ = daemon_->Stub();
  }

  // Stops the server with `sig` and waits for it to end.
  void Stop(int sig) {
    daemon_->Signal(sig);
    ASSERT_TRUE(daemon_->Wait(absl::Minutes(1)).ok());
  }

  // A RAW session `id` holding kTexts as segments 1..4; its Score of kContinuation.
  double Fill(const std::string& id) {
    v1::CreateSessionRequest req;
    req.set_session_id(id);
    req.set_prompt_format(v1::PROMPT_FORMAT_RAW);
    auto s = CreateSession(stub_.get(), req);
    EXPECT_TRUE(s.ok()) << s.status();
    auto n = IngestTexts(stub_.get(), id, {std::begin(kTexts), std::end(kTexts)});
    EXPECT_TRUE(n.ok()) << n.status();
    return ScoreOf(id);
  }

  double ScoreOf(const std::string& id) {
    auto sc = Score(stub_.get(), id, kContinuation);
    EXPECT_TRUE(sc.ok()) << sc.status() << "\n" << daemon_->LogTail();
    return sc.ok() ? sc->logprob() : 0;
  }

  // Expects `id` recovered whole: 4 segments, next_seq 5, the same Score.
  void ExpectIntact(const std::string& id, double logprob) {
    auto s = GetSession(stub_.get(), id);
    ASSERT_TRUE(s.ok()) << s.status() << "\n" << daemon_->LogTail();
    EXPECT_EQ(s->segments(), 4);
    EXPECT_EQ(s->next_seq(), 5);
    EXPECT_NEAR(ScoreOf(id), logprob, 1e-3 * std::abs(logprob) + 1e-3);
    auto after = GetSession(stub_.get(), id);
    ASSERT_TRUE(after.ok());
    EXPECT_FALSE(after->recovering());
  }

  std::vector<fs::path> Files(const std::string& ext) {
    std::vector<fs::path> out;
    for (const auto& e : fs::directory_iterator(state_)) {
      if (e.path().extension() == ext) out.push_back(e.path());
    }
    return out;
  }

  std::string root_, state_;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<v1::LongContext::Stub> stub_;
};

TEST_F(DurabilityTest, SessionsSurviveSigkillAndSigterm) {
  Serve();
  const double a = Fill("killed");
  Stop(SIGKILL);
  Serve();
  ExpectIntact("killed", a);
  // It goes on from next_seq.
  EXPECT_TRUE(IngestTexts(stub_.get(), "killed", {"More text."}, 5).ok());
  const double b = Fill("termed");
  Stop(SIGTERM);
  Serve();
  ExpectIntact("termed", b);
  auto k = GetSession(stub_.get(), "killed");
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(k->next_seq(), 6);
  // Deleted sessions stay deleted.
  ASSERT_TRUE(DeleteSession(stub_.get(), "killed").ok());
  Stop(SIGKILL);
  Serve();
  EXPECT_EQ(GetSession(stub_.get(), "killed").status().code(), absl::StatusCode::kNotFound);
  ExpectIntact("termed", b);
}

// COMPRESS sessions are rebuilt by replaying their token log: the window
// steps at chunk boundaries whatever the segments were, so the same chunks
// fold into the memory in the same order. f32 weights, so that the scores
// agree to summation order (see FlippedTableBytesLoseOnlyWhatTheyHold).
TEST_F(DurabilityTest, CompressSessionRebuildsItsMemory) {
  const std::vector<std::string> f32 = {"--cpu_weights=f32"};
  Serve(f32);
  v1::CreateSessionRequest req = WindowedSession(v1::OVERFLOW_POLICY_COMPRESS, 128, 64);
  req.set_session_id("folded");
  ASSERT_TRUE(CreateSession(stub_.get(), req).ok());
  ASSERT_TRUE(IngestTexts(stub_.get(), "folded", Paragraphs(8)).ok());
  auto before = GetSession(stub_.get(), "folded");
  ASSERT_TRUE(before.ok());
  ASSERT_GT(before->folded_tokens(), 0);
  const double logprob = ScoreOf("folded");
  Stop(SIGKILL);
  Serve(f32);
  auto after = GetSession(stub_.get(), "folded");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->next_seq(), 9);
  EXPECT_NEAR(ScoreOf("folded"), logprob, 1e-3 * std::abs(logprob) + 1e-3);
  auto rebuilt = GetSession(stub_.get(), "folded");
  ASSERT_TRUE(rebuilt.ok());
  EXPECT_EQ(rebuilt->folded_tokens(), before->folded_tokens());
  EXPECT_EQ(rebuilt->tokens(), before->tokens());
}

TEST_F(DurabilityTest, DurabilityNoneKeepsNothing) {
  Serve({"--durability=none"});
  Fill("gone");
  Stop(SIGKILL);
  Serve({"--durability=none"});
  EXPECT_EQ(GetSession(stub_.get(), "gone").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(DurabilityTest, SecondServerOnTheSameDirIsRefused) {
  Serve();
  auto second = Daemon::Start({"--state_dir=" + state_});
  ASSERT_TRUE(second.ok());
  auto code = (*second)->Wait(absl::Minutes(1));
  ASSERT_TRUE(code.ok());
  EXPECT_NE(*code, 0);
  EXPECT_TRUE(absl::StrContains((*second)->LogTail(), "in use by another longctxd"))
      << (*second)->LogTail();
  ExpectStillServing(daemon_.get());
}

TEST_F(DurabilityTest, TruncatedLogKeepsTheRest) {
  Serve();
  const double a = Fill("flushed");
  Stop(SIGTERM);  // "flushed" goes to a table file
  Serve();
  Fill("logged");
  Stop(SIGKILL);  // "logged" is in the write-ahead log only
  for (const fs::path& log : Files(".log")) {
    fs::resize_file(log, fs::file_size(log) / 2);
  }
  Serve();
  ExpectIntact("flushed", a);
  // The cut one kept a prefix of its segments, or is gone; never half a segment.
  auto s = GetSession(stub_.get(), "logged");
  if (s.ok()) {
    EXPECT_LE(s->segments(), 4);
    EXPECT_EQ(s->next_seq(), s->segments() + 1);
  }
  ExpectStillServing(daemon_.get());
}

TEST_F(DurabilityTest, FlippedTableBytesLoseOnlyWhatTheyHold) {
  // f32 weights: the scores before and after the rebuild (other prefill pieces)
  // then differ by summation order only. With int8 activations a reordered sum
  // can flip an activation's rounding, and such flips add up over the layers.
  const std::vector<std::string> f32 = {"--cpu_weights=f32"};
  Serve(f32);
  // Sessions of about 2.4 KB each, so that they lie in different table blocks.
  std::map<std::string, double> scores;
  for (const char* id : {"s1", "s2", "s3", "s4"}) {
    Fill(id);
    ASSERT_TRUE(IngestTexts(stub_.get(), id, Paragraphs(8), 5).ok());
    scores[id] = ScoreOf(id);
  }
  Stop(SIGTERM);
  const std::vector<fs::path> tables = Files(".sst");
  ASSERT_FALSE(tables.empty());
  {
    std::fstream f(tables[0], std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(tables[0]) / 3));
    const char junk[16] = {'\x55', '\x55', '\x55', '\x55', '\x55', '\x55', '\x55', '\x55',
                           '\x55', '\x55', '\x55', '\x55', '\x55', '\x55', '\x55', '\x55'};
    f.write(junk, sizeof(junk));
  }
  Serve(f32);
  int intact = 0;
  for (const auto& [id, logprob] : scores) {
    auto s = GetSession(stub_.get(), id);
    if (s.ok()) {
      ++intact;
      EXPECT_EQ(s->next_seq(), 13);
      EXPECT_NEAR(ScoreOf(id), logprob, 1e-3 * std::abs(logprob) + 1e-3);
    } else {
      EXPECT_TRUE(s.status().code() == absl::StatusCode::kDataLoss ||
                  s.status().code() == absl::StatusCode::kNotFound)
          << s.status();
    }
  }
  EXPECT_GE(intact, 1) << daemon_->LogTail();
  ExpectStillServing(daemon_.get());
}

TEST_F(DurabilityTest, MissingTableFileIsRepairedAround) {
  Serve();
  Fill("in-table");
  Stop(SIGTERM);
  Serve();
  const double b = Fill("in-log");
  Stop(SIGKILL);
  for (const fs::path& t : Files(".sst")) fs::remove(t);
  Serve();
  ExpectIntact("in-log", b);
  EXPECT_TRUE(absl::StrContains(daemon_->LogTail(100000), "store damaged")) << daemon_->LogTail();
  ExpectStillServing(daemon_.get());
}

TEST_F(DurabilityTest, UnwritableStateDirServesWithoutDurableWrites) {
  // A state_dir below a regular file can never be created (root ignores
  // permission bits, so a read-only directory would not do).
  const std::string blocker = root_ + "/file";
  std::ofstream(blocker) << "x";
  Serve({"--state_dir=" + blocker + "/state"});
  v1::CreateSessionRequest req;
  req.set_prompt_format(v1::PROMPT_FORMAT_RAW);
  auto s = CreateSession(stub_.get(), req);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable) << s.status();
  EXPECT_TRUE(absl::StrContains(daemon_->LogTail(100000), "not writable")) << daemon_->LogTail();
}

TEST_F(DurabilityTest, FullDiskRefusesAcksAndKeepsServing) {
  Serve({}, DaemonLimits{.max_file_bytes = 40 << 10});
  const double a = Fill("before");
  v1::CreateSessionRequest req;
  req.set_session_id("filling");
  req.set_prompt_format(v1::PROMPT_FORMAT_RAW);
  ASSERT_TRUE(CreateSession(stub_.get(), req).ok());
  const std::string big(4000, 'a');
  int64_t acked = 0;
  absl::Status last;
  for (int64_t seq = 1; seq <= 200 && last.ok(); ++seq) {
    auto n = IngestTexts(stub_.get(), "filling", {big + std::to_string(seq)}, seq);
    last = n.status();
    if (n.ok()) acked = seq;
  }
  ASSERT_FALSE(last.ok()) << "the store never filled up";
  EXPECT_TRUE(absl::IsResourceExhausted(last) || absl::IsUnavailable(last)) << last;
  // Not acknowledged, not applied: the session resumes at the failed seq.
  auto s = GetSession(stub_.get(), "filling");
  ASSERT_TRUE(s.ok()) << s.status() << "\n" << daemon_->LogTail();
  EXPECT_EQ(s->next_seq(), acked + 1);
  EXPECT_EQ(s->segments(), acked);
  EXPECT_NEAR(ScoreOf("before"), a, 1e-3 * std::abs(a) + 1e-3);
  // After a restart without the limit every acknowledged segment is there.
  Stop(SIGKILL);
  Serve();
  auto again = GetSession(stub_.get(), "filling");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->segments(), acked);
  ExpectIntact("before", a);
}

}  // namespace
}  // namespace longctx::testing

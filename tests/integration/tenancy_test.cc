// Tenants against the real server: ids scoped per tenant and never disclosed
// across them on any RPC; every RPC checks id syntax first; one tenant's
// misbehaviour (idle streams, floods of Score, many sessions) cannot starve
// another, whose calls keep succeeding within a stated bound.
#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/call_registry.h"
#include "tests/integration/daemon.h"
#include "tests/integration/helpers.h"

namespace longctx::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kAlice[] = "alice-secret-token-0001";
constexpr char kBob[] = "bob-secret-token-000002";
constexpr char kMallory[] = "mallory-secret-token-03";

// A server with three tenants (tokens in plaintext on loopback, allowed).
class TenancyTest : public ::testing::Test {
 protected:
  void StartServer(const std::vector<std::string>& flags) {
    if (ModelPath().empty()) GTEST_SKIP() << "LONGCTX_MODEL is not set";
    char tmpl[] = "/tmp/longctx-tenancy-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    std::ofstream(dir_ + "/tokens") << kAlice << " alice\n"
                                    << kBob << " bob\n"
                                    << kMallory << " mallory\n";
    std::vector<std::string> all = {"--auth_tokens_file=" + dir_ + "/tokens",
                                    "--allow_insecure_tokens=true", "--kv_cache_bytes=64MiB"};
    all.insert(all.end(), flags.begin(), flags.end());
    auto d = Daemon::Start(all);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
    ASSERT_TRUE(daemon_->WaitServing(absl::Minutes(5)).ok()) << daemon_->LogTail();
    stub_ = daemon_->Stub();
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // A session of the current tenant holding a few tokens.
  std::string NewSession(const std::string& id) {
    v1::CreateSessionRequest c;
    c.set_session_id(id);
    c.set_prompt_format(v1::PROMPT_FORMAT_RAW);
    auto s = CreateSession(stub_.get(), c);
    EXPECT_TRUE(s.ok()) << s.status();
    EXPECT_TRUE(IngestTexts(stub_.get(), id, {"The lighthouse keeper counted the ships."}).ok());
    return id;
  }

  std::string dir_;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<v1::LongContext::Stub> stub_;
};

// The status of every RPC that names `id`, as the current tenant sees it,
// with the id replaced by "<id>" (so that two ids' answers compare).
std::vector<std::string> Answers(v1::LongContext::Stub* stub, const std::string& id) {
  std::vector<std::string> out;
  auto say = [&](const char* rpc, grpc::StatusCode code, const std::string& message) {
    out.push_back(absl::StrCat(rpc, " ", code, " ", absl::StrReplaceAll(message, {{id, "<id>"}})));
  };
  auto say_absl = [&](const char* rpc, const absl::Status& s) {
    say(rpc, static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
  };
  say_absl("GetSession", GetSession(stub, id).status());
  say_absl("Score", Score(stub, id, " more").status());
  say_absl("ExportSession", Export(stub, id).status());
  const IngestOutcome ingest = Ingest(stub, {Segment(2, " more", id)});
  say("Ingest", ingest.status.error_code(), ingest.status.error_message());
  v1::GenerateRequest g;
  g.set_session_id(id);
  g.set_max_tokens(2);
  const GenerateOutcome gen = Generate(stub, g);
  say("Generate", gen.status.error_code(), gen.status.error_message());
  say_absl("DeleteSession", DeleteSession(stub, id));
  return out;
}

TEST_F(TenancyTest, CrossTenantAccessIsRefusedAndNonDisclosingOnEveryRpc) {
  StartServer({});
  std::string exported;
  {
    AsTenant alice(kAlice);
    NewSession("alice-doc");
    auto data = Export(stub_.get(), "alice-doc");
    ASSERT_TRUE(data.ok()) << data.status();
    exported = *data;
  }
  AsTenant bob(kBob);
  // Every RPC on alice's id answers bob exactly as on an id nobody holds.
  const std::vector<std::string> held = Answers(stub_.get(), "alice-doc");
  const std::vector<std::string> free = Answers(stub_.get(), "nobody-holds-this");
  EXPECT_EQ(held, free);
  for (const std::string& a : held) EXPECT_THAT(a, HasSubstr(" 5 "));  // NOT_FOUND
  EXPECT_TRUE(ListSessionsOf(stub_.get()).empty());

  // Ids are scoped per tenant: bob may create and import under alice's id,
  // which tells him nothing and leaves her session alone.
  v1::CreateSessionRequest c;
  c.set_session_id("alice-doc");
  c.set_prompt_format(v1::PROMPT_FORMAT_RAW);
  ASSERT_TRUE(CreateSession(stub_.get(), c).ok());
  EXPECT_EQ(CreateSession(stub_.get(), c).status().code(), absl::StatusCode::kAlreadyExists);
  auto imported = ImportAs(stub_.get(), "alice-copy", exported);
  ASSERT_TRUE(imported.ok()) << imported.status();
  {
    AsTenant alice(kAlice);
    auto imported_alice = ImportAs(stub_.get(), "alice-copy", exported);
    ASSERT_TRUE(imported_alice.ok()) << imported_alice.status();
    auto mine = GetSession(stub_.get(), "alice-doc");
    ASSERT_TRUE(mine.ok());
    EXPECT_GT(mine->tokens(), 0);  // bob's empty session is another one
    EXPECT_EQ(ListSessionsOf(stub_.get()).size(), 2u);
  }
  auto his = GetSession(stub_.get(), "alice-doc");
  ASSERT_TRUE(his.ok());
  EXPECT_EQ(his->tokens(), 0);
}

TEST_F(TenancyTest, EveryRpcChecksIdSyntaxBeforeLoggingIt) {
  StartServer({});
  AsTenant alice(kAlice);
  const std::string huge(10 * 1024, 'x');
  const std::vector<std::string> answers = Answers(stub_.get(), huge);
  ASSERT_EQ(answers.size(), 6u);
  for (const std::string& a : answers) {
    EXPECT_THAT(a, HasSubstr(" 3 "));  // INVALID_ARGUMENT
    EXPECT_THAT(a, HasSubstr("1 to 64 characters"));
  }
  v1::CreateSessionRequest c;
  c.set_session_id(huge);
  EXPECT_EQ(CreateSession(stub_.get(), c).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ImportAs(stub_.get(), huge, "x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(daemon_->LogTail(200000), Not(HasSubstr(huge.substr(0, 100))));
}

TEST_F(TenancyTest, AMisbehavingTenantCannotStarveAnother) {
  // Small limits so that mallory reaches them quickly.
  StartServer({"--max_concurrent_streams=8", "--max_streams_per_tenant=2",
               "--max_inflight_per_tenant=3", "--max_sessions_per_tenant=4",
               "--stream_idle_timeout=3s"});
  // Keepalive and connection limits are in force (their defaults).
  EXPECT_THAT(daemon_->LogTail(1 << 20), HasSubstr("keepalive_time=1m"));
  EXPECT_THAT(daemon_->LogTail(1 << 20), HasSubstr("max_connection_age=2h"));
  {
    AsTenant alice(kAlice);
    NewSession("alice-doc");
  }
  AsTenant mallory(kMallory);
  for (int i = 0; i < 4; ++i) NewSession(absl::StrCat("m", i));
  v1::CreateSessionRequest c;
  EXPECT_EQ(CreateSession(stub_.get(), c).status().code(), absl::StatusCode::kResourceExhausted);

  // Two idle Ingest streams fill mallory's stream quota; a third is refused
  // with a retry hint.
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReaderWriter<v1::IngestRequest, v1::IngestResponse>>>
      idle;
  for (int i = 0; i < 3; ++i) {
    // The first two are admitted before the third arrives.
    if (i == 2) absl::SleepFor(absl::Milliseconds(500));
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    PrepareContext(contexts.back().get());
    idle.push_back(stub_->Ingest(contexts.back().get()));
  }
  v1::IngestResponse none;
  EXPECT_FALSE(idle[2]->Read(&none));
  const grpc::Status third = idle[2]->Finish();
  EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(third.error_message(), HasSubstr("max_streams_per_tenant"));
  auto& trailers = contexts[2]->GetServerTrailingMetadata();
  EXPECT_EQ(trailers.count(server::kRetryAfterMetadata), 1u);

  // A flood of Score from mallory: some refused (max_inflight_per_tenant),
  // none of it slows alice past the bound.
  std::atomic<int> refused{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> flood;
  for (int t = 0; t < 8; ++t) {
    flood.emplace_back([&, t] {
      AsTenant m(kMallory);
      while (!stop) {
        auto s = Score(stub_.get(), absl::StrCat("m", t % 4), std::string(400, 'z'));
        if (s.status().code() == absl::StatusCode::kResourceExhausted) {
          ++refused;
          absl::SleepFor(absl::Milliseconds(10));  // as retry-after-ms asks, roughly
        }
      }
    });
  }
  {
    AsTenant alice(kAlice);
    // The bound: each of alice's calls within 20 s on a shared 2-core CPU.
    for (int i = 0; i < 3; ++i) {
      const absl::Time t0 = absl::Now();
      auto score = Score(stub_.get(), "alice-doc", " The ships came home.");
      EXPECT_TRUE(score.ok()) << score.status();
      v1::GenerateRequest g;
      g.set_session_id("alice-doc");
      g.set_max_tokens(4);
      const GenerateOutcome gen = Generate(stub_.get(), g);
      EXPECT_TRUE(gen.status.ok()) << gen.status.error_message();
      EXPECT_LT(absl::Now() - t0, absl::Seconds(20));
    }
  }
  stop = true;
  for (auto& t : flood) t.join();
  EXPECT_GT(refused.load(), 0);

  // The idle streams end on their own (stream_idle_timeout), freeing their slots.
  for (int i = 0; i < 2; ++i) {
    EXPECT_FALSE(idle[i]->Read(&none));
    const grpc::Status st = idle[i]->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    EXPECT_THAT(st.error_message(), HasSubstr("stream_idle_timeout"));
  }
  EXPECT_TRUE(IngestTexts(stub_.get(), "m0", {" Again."}, 2).ok());
  // An Import whose client sends nothing ends the same way.
  grpc::ClientContext import_ctx;
  PrepareContext(&import_ctx);
  v1::Session none_imported;
  auto import = stub_->ImportSession(&import_ctx, &none_imported);
  const grpc::Status silent = import->Finish();
  EXPECT_EQ(silent.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(silent.error_message(), HasSubstr("stream_idle_timeout"));
}

}  // namespace
}  // namespace longctx::testing

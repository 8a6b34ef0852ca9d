// Engine admission against the real server, two tenants, one misbehaving: a
// flood of Score calls is refused (RESOURCE_EXHAUSTED with a retry hint)
// while the other tenant's Generate succeeds; an import declaring more bytes
// than the server holds is refused before it is sent; imports with forged
// counters or without the server's signature are refused; a cancelled import
// leaves no session.
#include <stdlib.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "clients/client.h"
#include "engine/session/session_codec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon.h"
#include "tests/integration/helpers.h"

namespace longctx::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kAlice[] = "alice-admission-token-01";
constexpr char kBob[] = "bob-admission-token-0002";
constexpr char kKey[] = "export-signing-key-for-tests";

class AdmissionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (ModelPath().empty()) return;
    char dir[] = "/tmp/longctx-admission-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    const std::string tokens = std::string(dir) + "/tokens";
    std::ofstream(tokens) << kAlice << " alice\n" << kBob << " bob\n";
    auto d =
        Daemon::Start({"--auth_tokens_file=" + tokens, "--allow_insecure_tokens=true",
                       "--max_queued_requests_per_tenant=4", "--host_memory_budget=32MiB",
                       std::string("--session_export_key=") + kKey, "--kv_cache_bytes=128MiB"});
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = d->release();
    ASSERT_TRUE(daemon_->WaitServing(absl::Minutes(5)).ok()) << daemon_->LogTail();
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }
  void SetUp() override {
    if (ModelPath().empty()) GTEST_SKIP() << "LONGCTX_MODEL is not set";
    ASSERT_NE(daemon_, nullptr);
    stub_ = daemon_->Stub();
  }

  client::ClientOptions As(const char* token) const {
    client::ClientOptions o;
    o.address = daemon_->address();
    o.token = token;
    return o;
  }
  // A RAW session of `token`'s tenant holding `text`.
  std::string SessionWith(const char* token, const std::string& text) {
    grpc::ClientContext ctx;
    client::PrepareContext(&ctx, As(token));
    v1::CreateSessionRequest req;
    req.set_prompt_format(v1::PROMPT_FORMAT_RAW);
    v1::Session s;
    EXPECT_TRUE(stub_->CreateSession(&ctx, req, &s).ok());
    EXPECT_TRUE(client::IngestSegments(stub_.get(), As(token), s.id(), {text}, 1).ok());
    return s.id();
  }
  absl::Status ScoreAs(const char* token, const std::string& id, const std::string& text) {
    grpc::ClientContext ctx;
    client::PrepareContext(&ctx, As(token), id);
    v1::ScoreRequest req;
    req.set_session_id(id);
    req.set_text(text);
    v1::ScoreResponse resp;
    return client::FromGrpc(stub_->Score(&ctx, req, &resp));
  }
  // Streams `data` in 1 MiB pieces (stopping once the server has answered);
  // the status, and how many pieces were accepted in `*written`.
  absl::StatusOr<v1::Session> ImportAs(const char* token, const std::string& id,
                                       absl::string_view data, int* written = nullptr,
                                       bool cancel = false) {
    grpc::ClientContext ctx;
    client::PrepareContext(&ctx, As(token));
    v1::Session out;
    auto writer = stub_->ImportSession(&ctx, &out);
    int n = 0;
    for (size_t off = 0; off < data.size(); off += 1 << 20, ++n) {
      v1::ImportSessionRequest req;
      if (off == 0) req.set_session_id(id);
      req.set_data(std::string(data.substr(off, 1 << 20)));
      if (!writer->Write(req)) break;
    }
    if (written != nullptr) *written = n;
    if (cancel) {
      ctx.TryCancel();
    } else {
      writer->WritesDone();
    }
    if (auto st = client::FromGrpc(writer->Finish()); !st.ok()) return st;
    return out;
  }

  static Daemon* daemon_;
  std::unique_ptr<v1::LongContext::Stub> stub_;
};

Daemon* AdmissionTest::daemon_ = nullptr;

TEST_F(AdmissionTest, ScoreFloodIsRefusedWhileAnotherTenantGenerates) {
  auto book = ReadBook("crime_and_punishment.txt");
  ASSERT_TRUE(book.has_value());
  const std::string alice = SessionWith(kAlice, book->substr(0, 2000));
  const std::string bob = SessionWith(kBob, "The cat sat on the mat.");
  const std::string text(client::TextStretch(*book, 2000, 3000));
  std::atomic<int> exhausted{0}, ok{0}, other{0};
  std::vector<std::thread> flood;
  for (int i = 0; i < 40; ++i) {
    flood.emplace_back([&] {
      const absl::Status s = ScoreAs(kAlice, alice, text);
      if (s.ok()) {
        ++ok;
      } else if (absl::IsResourceExhausted(s)) {
        ++exhausted;
        EXPECT_THAT(s.message(), HasSubstr("retry after"));
      } else {
        ++other;
        ADD_FAILURE() << s;
      }
    });
  }
  // Bob's Generate goes through meanwhile, within a generous bound for a
  // loaded 2-core CPU (alice's accepted Scores are at most 4).
  v1::GenerateRequest g;
  g.set_session_id(bob);
  g.set_max_tokens(4);
  const absl::Time t0 = absl::Now();
  auto done = client::GenerateStream(stub_.get(), As(kBob), g, [](const v1::GenerateChunk&) {});
  const absl::Duration took = absl::Now() - t0;
  EXPECT_TRUE(done.ok()) << done.status();
  EXPECT_LT(took, absl::Seconds(60));
  for (auto& t : flood) t.join();
  EXPECT_GT(exhausted.load(), 0);
  EXPECT_GT(ok.load(), 0);
  EXPECT_EQ(other.load(), 0);
}

TEST_F(AdmissionTest, HugeImportIsRefusedEarly) {
  // A real header whose token count is forged: the server learns the size
  // from the first piece.
  SessionSnapshot snap;
  snap.model.name = "forged";
  std::string blob = EncodeSessionSnapshot(snap);
  blob.resize(blob.size() - 8);  // no checksum: only the header is sent first
  for (uint64_t tokens : {uint64_t{50} << 20, uint64_t{10} << 20}) {
    // 200 MB: past the longest session; 40 MB: past the 32 MiB budget.
    std::memcpy(blob.data() + blob.size() - 8, &tokens, sizeof(tokens));
    std::string data = blob + std::string(64 << 20, '\0');
    int written = 0;
    auto r = ImportAs(kAlice, "", data, &written);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
    EXPECT_LT(written, 64) << "the server read it all";
  }
}

TEST_F(AdmissionTest, ForgedAndUnsignedImportsAreRefused) {
  const std::string id = SessionWith(kAlice, "It was a bright cold day in April.");
  auto exported = Export(stub_.get(), id, kAlice);
  ASSERT_TRUE(exported.ok()) << exported.status();
  auto snap = DecodeSessionSnapshot(*exported, kKey);
  ASSERT_TRUE(snap.ok()) << snap.status();
  // Genuine: imported under a new id.
  EXPECT_TRUE(ImportAs(kAlice, "copy-1", *exported).ok());
  // Forged counters, signed with the right key: the counters are checked.
  SessionSnapshot forged = *snap;
  forged.applied_seq = INT64_MAX;
  auto r = ImportAs(kAlice, "forged-1", EncodeSessionSnapshot(forged, kKey));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  forged = *snap;
  forged.ingested_tokens = 1 << 20;
  r = ImportAs(kAlice, "forged-2", EncodeSessionSnapshot(forged, kKey));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  // Unsigned, or signed with another key: refused whatever it holds.
  r = ImportAs(kAlice, "unsigned-1", EncodeSessionSnapshot(*snap));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
  r = ImportAs(kAlice, "other-key-1", EncodeSessionSnapshot(*snap, "some-other-key-0123"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
}

TEST_F(AdmissionTest, CancelledImportLeavesNoSession) {
  const std::string id = SessionWith(kAlice, "A short document to move.");
  auto exported = Export(stub_.get(), id, kAlice);
  ASSERT_TRUE(exported.ok()) << exported.status();
  auto r = ImportAs(kAlice, "cancelled-1", *exported, nullptr, /*cancel=*/true);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
  absl::SleepFor(absl::Seconds(1));
  grpc::ClientContext ctx;
  client::PrepareContext(&ctx, As(kAlice));
  v1::GetSessionRequest get;
  get.set_session_id("cancelled-1");
  v1::Session s;
  EXPECT_EQ(stub_->GetSession(&ctx, get, &s).error_code(), grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace longctx::testing

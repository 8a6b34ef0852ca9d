// Session homes (server/routing.h, docs/service.md "Routing"): the id rules
// alone, then two real longctxd replicas on loopback with different replica
// ids. A session made on A names A; every call about it that reaches B is
// answered FAILED_PRECONDITION with the home in x-session-home (HTTP: 421),
// never NOT_FOUND, while A goes on serving it; and a replica renamed across a
// restart still serves the sessions its store holds.
#include "server/routing.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <memory>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon.h"
#include "tests/integration/helpers.h"

namespace longctx::testing {
namespace {

using server::CheckNewSessionId;
using server::MisdirectedHome;
using server::ReplicaIdFromHostName;
using server::RouteLookup;
using server::SessionHome;
using server::ValidateReplicaId;
using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(SessionHomeTest, IdsNameTheirHomeOnlyInTheHomeForm) {
  EXPECT_EQ(SessionHome("longctxd-1.s-0123abcd"), "longctxd-1");
  EXPECT_EQ(SessionHome("a.s-x"), "a");
  // No home: no '.', no "s-" after it, nothing after "s-", or a prefix that
  // is not a replica id (upper case, '_', too long, a '-' at either end).
  EXPECT_EQ(SessionHome("s-0123abcd"), "");
  EXPECT_EQ(SessionHome("doc-1.v2_x"), "");
  EXPECT_EQ(SessionHome("longctxd-1.s-"), "");
  EXPECT_EQ(SessionHome("Longctxd-1.s-x"), "");
  EXPECT_EQ(SessionHome("pod_1.s-x"), "");
  EXPECT_EQ(SessionHome("-pod.s-x"), "");
  EXPECT_EQ(SessionHome(std::string(25, 'a') + ".s-x"), "");
  EXPECT_EQ(SessionHome(std::string(24, 'a') + ".s-x"), std::string(24, 'a'));
}

TEST(SessionHomeTest, ReplicaIdsAreDnsLabelsMadeFromHostNames) {
  EXPECT_TRUE(ValidateReplicaId("longctxd-0").ok());
  EXPECT_EQ(ValidateReplicaId("").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateReplicaId("a.b").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateReplicaId("pod-").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReplicaIdFromHostName("longctxd-1"), "longctxd-1");
  EXPECT_EQ(ReplicaIdFromHostName("Build_Box.example.org"), "build-box");
  EXPECT_EQ(ReplicaIdFromHostName("--"), "longctxd");
  EXPECT_EQ(ReplicaIdFromHostName(""), "longctxd");
  const std::string long_name = ReplicaIdFromHostName(std::string(40, 'x') + "-1");
  EXPECT_EQ(long_name, std::string(24, 'x'));
  EXPECT_TRUE(ValidateReplicaId(ReplicaIdFromHostName("__weird__HOST-9__")).ok());
}

TEST(SessionHomeTest, OnlyNotFoundOfAnotherHomeBecomesMisdirected) {
  const absl::Status not_found = absl::NotFoundError("session x not found");
  const absl::Status routed = RouteLookup(not_found, "b-1.s-1", "a-1");
  EXPECT_EQ(routed.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(MisdirectedHome(routed), "b-1");
  EXPECT_THAT(std::string(routed.message()), HasSubstr("b-1"));
  // This replica's own id, an id without a home, or another error: unchanged.
  EXPECT_EQ(RouteLookup(not_found, "a-1.s-1", "a-1"), not_found);
  EXPECT_EQ(RouteLookup(not_found, "doc-1", "a-1"), not_found);
  const absl::Status expired = absl::FailedPreconditionError("expired");
  EXPECT_EQ(RouteLookup(expired, "b-1.s-1", "a-1"), expired);
  EXPECT_EQ(MisdirectedHome(expired), "");
  // New sessions: a chosen id may name only this replica.
  EXPECT_TRUE(CheckNewSessionId("", "a-1").ok());
  EXPECT_TRUE(CheckNewSessionId("doc-1", "a-1").ok());
  EXPECT_TRUE(CheckNewSessionId("a-1.s-mine", "a-1").ok());
  EXPECT_EQ(MisdirectedHome(CheckNewSessionId("b-1.s-mine", "a-1")), "b-1");
  EXPECT_EQ(CheckNewSessionId("bad id", "a-1").code(), absl::StatusCode::kInvalidArgument);
}

// The value of trailing metadata `key` of a finished call, or "".
std::string Trailer(const grpc::ClientContext& ctx, const std::string& key) {
  const auto& md = ctx.GetServerTrailingMetadata();
  auto it = md.find(key);
  return it == md.end() ? "" : std::string(it->second.data(), it->second.size());
}

// What a call about a session answered: its status and x-session-home.
struct Answer {
  grpc::Status status;
  std::string home;
};

void ExpectMisdirected(const Answer& a, const std::string& home, const std::string& what) {
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << what << ": " << a.status.error_message();
  EXPECT_EQ(a.home, home) << what;
  EXPECT_THAT(a.status.error_message(), HasSubstr("lives on replica " + home)) << what;
}

Answer GetOn(v1::LongContext::Stub* stub, const std::string& id) {
  grpc::ClientContext ctx;
  v1::GetSessionRequest req;
  req.set_session_id(id);
  v1::Session out;
  Answer a;
  a.status = stub->GetSession(&ctx, req, &out);
  a.home = Trailer(ctx, server::kSessionHomeHeader);
  return a;
}

Answer ScoreOn(v1::LongContext::Stub* stub, const std::string& id) {
  grpc::ClientContext ctx;
  v1::ScoreRequest req;
  req.set_session_id(id);
  req.set_text(" the end");
  v1::ScoreResponse out;
  Answer a;
  a.status = stub->Score(&ctx, req, &out);
  a.home = Trailer(ctx, server::kSessionHomeHeader);
  return a;
}

Answer GenerateOn(v1::LongContext::Stub* stub, const std::string& id) {
  grpc::ClientContext ctx;
  v1::GenerateRequest req;
  req.set_session_id(id);
  req.set_prompt("Who?");
  req.set_max_tokens(2);
  auto reader = stub->Generate(&ctx, req);
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
  }
  Answer a;
  a.status = reader->Finish();
  a.home = Trailer(ctx, server::kSessionHomeHeader);
  return a;
}

Answer IngestOn(v1::LongContext::Stub* stub, const std::string& id, int64_t seq) {
  grpc::ClientContext ctx;
  auto stream = stub->Ingest(&ctx);
  stream->Write(Segment(seq, "More text.", id));
  stream->WritesDone();
  v1::IngestResponse ack;
  while (stream->Read(&ack)) {
  }
  Answer a;
  a.status = stream->Finish();
  a.home = Trailer(ctx, server::kSessionHomeHeader);
  return a;
}

Answer CreateOn(v1::LongContext::Stub* stub, const std::string& id) {
  grpc::ClientContext ctx;
  v1::CreateSessionRequest req;
  req.set_session_id(id);
  v1::Session out;
  Answer a;
  a.status = stub->CreateSession(&ctx, req, &out);
  a.home = Trailer(ctx, server::kSessionHomeHeader);
  return a;
}

Answer ImportOn(v1::LongContext::Stub* stub, const std::string& id, const std::string& data,
                v1::Session* out) {
  grpc::ClientContext ctx;
  auto writer = stub->ImportSession(&ctx, out);
  v1::ImportSessionRequest req;
  req.set_session_id(id);
  req.set_data(data);
  writer->Write(req);
  writer->WritesDone();
  Answer a;
  a.status = writer->Finish();
  a.home = Trailer(ctx, server::kSessionHomeHeader);
  return a;
}

size_t Collect(char* data, size_t size, size_t n, void* user) {
  static_cast<std::string*>(user)->append(data, size * n);
  return size * n;
}

// POST /v1/chat/completions over `session_id`: the HTTP status and the
// response headers (lower-cased names).
long ChatOverSession(int port, const std::string& session_id, std::string* headers) {
  CURL* curl = curl_easy_init();
  const std::string url = absl::StrCat("http://127.0.0.1:", port, "/v1/chat/completions");
  const std::string body = absl::StrCat(R"({"session_id": ")", session_id,
                                        R"(", "max_tokens": 2, "messages": [{"role": "user",)",
                                        R"( "content": "Who?"}]})");
  curl_slist* list = curl_slist_append(nullptr, "Content-Type: application/json");
  std::string reply;
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, Collect);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &reply);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, Collect);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, headers);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 120L);
  curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(list);
  curl_easy_cleanup(curl);
  *headers = absl::AsciiStrToLower(*headers);
  return status;
}

// GET `path` on the HTTP door: the HTTP status.
long HttpGet(int port, const std::string& path) {
  CURL* curl = curl_easy_init();
  const std::string url = absl::StrCat("http://127.0.0.1:", port, path);
  std::string reply;
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, Collect);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &reply);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 30L);
  curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(curl);
  return status;
}

class TwoReplicasTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (ModelPath().empty()) GTEST_SKIP() << "LONGCTX_MODEL is not set";
    char tmpl[] = "/tmp/longctx-routing-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    state_a_ = std::string(tmpl) + "/a";
    http_b_ = FreePort();
    auto a = Daemon::Start({"--replica_id=replica-a", "--state_dir=" + state_a_});
    auto b = Daemon::Start(
        {"--replica_id=replica-b", absl::StrCat("--http_listen=127.0.0.1:", http_b_)});
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    a_ = *std::move(a);
    b_ = *std::move(b);
    ASSERT_TRUE(a_->WaitServing(absl::Minutes(2)).ok()) << a_->LogTail();
    ASSERT_TRUE(b_->WaitServing(absl::Minutes(2)).ok()) << b_->LogTail();
  }

  std::string state_a_;
  int http_b_ = 0;
  std::unique_ptr<Daemon> a_;
  std::unique_ptr<Daemon> b_;
};

TEST_F(TwoReplicasTest, TheWrongReplicaNamesTheHomeAndTheHomeKeepsServing) {
  auto stub_a = a_->Stub();
  auto stub_b = b_->Stub();
  grpc::ClientContext info_ctx;
  v1::ServerInfo info;
  ASSERT_TRUE(stub_a->GetServerInfo(&info_ctx, {}, &info).ok());
  EXPECT_EQ(info.replica_id(), "replica-a");

  auto session = CreateSession(stub_a.get());
  ASSERT_TRUE(session.ok()) << session.status();
  const std::string id = session->id();
  EXPECT_THAT(id, StartsWith("replica-a.s-"));
  ASSERT_TRUE(IngestTexts(stub_a.get(), id, {"The narrator is a lighthouse keeper."}).ok());

  // Every kind of call about it on B: the home, never NOT_FOUND.
  ExpectMisdirected(GetOn(stub_b.get(), id), "replica-a", "GetSession");
  ExpectMisdirected(ScoreOn(stub_b.get(), id), "replica-a", "Score");
  ExpectMisdirected(GenerateOn(stub_b.get(), id), "replica-a", "Generate");
  ExpectMisdirected(IngestOn(stub_b.get(), id, 2), "replica-a", "Ingest");
  ExpectMisdirected(CreateOn(stub_b.get(), "replica-a.s-chosen"), "replica-a", "CreateSession");
  auto exported = Export(stub_a.get(), id);
  ASSERT_TRUE(exported.ok()) << exported.status();
  v1::Session imported;
  ExpectMisdirected(ImportOn(stub_b.get(), id, *exported, &imported), "replica-a", "Import");
  EXPECT_EQ(HttpGet(http_b_, "/health"), 200);  // what the gateway checks
  std::string headers;
  EXPECT_EQ(ChatOverSession(http_b_, id, &headers), 421);
  EXPECT_THAT(headers, HasSubstr("x-session-home: replica-a"));
  // B did not take the session or any part of it.
  EXPECT_TRUE(ListSessionsOf(stub_b.get()).empty());

  // A still serves it, untouched by the calls B refused.
  auto held = GetSession(stub_a.get(), id);
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(held->next_seq(), 2);
  const Answer asked = GenerateOn(stub_a.get(), id);
  EXPECT_TRUE(asked.status.ok()) << asked.status.error_message();
  EXPECT_EQ(asked.home, "");

  // Moved by export and import without an id, it gets a home on B.
  const Answer moved = ImportOn(stub_b.get(), "", *exported, &imported);
  ASSERT_TRUE(moved.status.ok()) << moved.status.error_message();
  EXPECT_THAT(imported.id(), StartsWith("replica-b.s-"));
  EXPECT_TRUE(GetOn(stub_b.get(), imported.id()).status.ok());
}

TEST_F(TwoReplicasTest, IdsWithoutAHomeOrNamingThisReplicaBehaveAsBefore) {
  auto stub_a = a_->Stub();
  // Without a home: created anywhere, NOT_FOUND where it is not.
  EXPECT_TRUE(CreateOn(stub_a.get(), "doc-1.v2").status.ok());
  const Answer nowhere = GetOn(b_->Stub().get(), "doc-1.v2");
  EXPECT_EQ(nowhere.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(nowhere.home, "");
  // Naming this replica: created; an unknown one is NOT_FOUND here.
  EXPECT_TRUE(CreateOn(stub_a.get(), "replica-a.s-chosen").status.ok());
  EXPECT_EQ(GetOn(stub_a.get(), "replica-a.s-none").status.error_code(),
            grpc::StatusCode::NOT_FOUND);
  // Naming a replica that does not exist: still the home, not NOT_FOUND.
  ExpectMisdirected(GetOn(stub_a.get(), "replica-c.s-1"), "replica-c", "GetSession");
}

TEST_F(TwoReplicasTest, ARenamedReplicaServesTheSessionsItHolds) {
  auto stub_a = a_->Stub();
  auto session = CreateSession(stub_a.get());
  ASSERT_TRUE(session.ok()) << session.status();
  ASSERT_TRUE(IngestTexts(stub_a.get(), session->id(), {"Kept across the restart."}).ok());
  a_->Signal(SIGTERM);
  ASSERT_TRUE(a_->Wait(absl::Minutes(1)).ok());
  auto renamed = Daemon::Start({"--replica_id=replica-z", "--state_dir=" + state_a_});
  ASSERT_TRUE(renamed.ok()) << renamed.status();
  ASSERT_TRUE((*renamed)->WaitServing(absl::Minutes(2)).ok()) << (*renamed)->LogTail();
  auto held = GetSession((*renamed)->Stub().get(), session->id());
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(held->next_seq(), 2);
  // New sessions take the new name.
  auto fresh = CreateSession((*renamed)->Stub().get());
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_THAT(fresh->id(), StartsWith("replica-z.s-"));
}

}  // namespace
}  // namespace longctx::testing

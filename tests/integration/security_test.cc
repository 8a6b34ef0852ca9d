// Security settings against the real server: safe defaults refuse open access
// and plaintext tokens; server-only TLS carries tokens; client certificates
// map to tenants; the tokens file reloads without a restart; requests that
// fail to parse get INVALID_ARGUMENT, counted, and libprotobuf's complaints
// stay in the configured log format.
#include <signal.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "server/auth.h"
#include "tests/integration/daemon.h"
#include "tests/integration/helpers.h"

namespace longctx::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kAlice[] = "alice-secret-token-0001";

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (ModelPath().empty()) GTEST_SKIP() << "LONGCTX_MODEL is not set";
    char tmpl[] = "/tmp/longctx-security-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  // Starts a server with `flags` and waits until it serves.
  void Serve(const std::vector<std::string>& flags,
             std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr) {
    auto d = Daemon::Start(flags, std::move(credentials));
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
    ASSERT_TRUE(daemon_->WaitServing(absl::Minutes(5)).ok()) << daemon_->LogTail();
  }
  // A channel to the server with `credentials`.
  std::unique_ptr<v1::LongContext::Stub> StubWith(std::shared_ptr<grpc::ChannelCredentials> c) {
    return v1::LongContext::NewStub(grpc::CreateChannel(daemon_->address(), c));
  }
  // The code of GetServerInfo (10 s deadline) through `stub`.
  static grpc::StatusCode InfoCode(v1::LongContext::Stub* stub, std::string* message = nullptr) {
    grpc::ClientContext ctx;
    PrepareContext(&ctx);
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    v1::ServerInfo info;
    const grpc::Status st = stub->GetServerInfo(&ctx, {}, &info);
    if (message != nullptr) *message = st.error_message();
    return st.error_code();
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  // Certificates of `names` signed by a throw-away CA; skips without openssl.
  void Certificates(const std::vector<std::string>& names) {
    const absl::Status s = MakeCertificates(dir_, names);
    if (absl::IsFailedPrecondition(s)) GTEST_SKIP() << s;
    ASSERT_TRUE(s.ok()) << s;
  }
  grpc::SslCredentialsOptions ClientTls(const std::string& who) const {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = ReadText(Path("ca.pem"));
    if (!who.empty()) {
      o.pem_private_key = ReadText(Path(who + ".key"));
      o.pem_cert_chain = ReadText(Path(who + ".pem"));
    }
    return o;
  }

  std::string dir_;
  std::unique_ptr<Daemon> daemon_;
};

TEST_F(SecurityTest, UnsafeSettingsAreRefusedAtStart) {
  std::ofstream(Path("tokens")) << kAlice << " alice\n";
  struct Case {
    std::vector<std::string> flags;
    const char* says;
  };
  for (const Case& c : {Case{{"--auth_tokens_file=" + Path("tokens")}, "allow_insecure_tokens"},
                        Case{{"--listen=0.0.0.0:0"}, "allow_unauthenticated_remote"}}) {
    auto d = Daemon::Start(c.flags);
    ASSERT_TRUE(d.ok());
    auto code = (*d)->Wait(absl::Minutes(1));
    ASSERT_TRUE(code.ok()) << code.status();
    EXPECT_EQ(*code, 2);
    EXPECT_THAT((*d)->LogTail(), HasSubstr(c.says));
  }
}

TEST_F(SecurityTest, ServerOnlyTlsCarriesBearerTokens) {
  Certificates({"server"});
  std::ofstream(Path("tokens")) << kAlice << " alice\n";
  auto tls = grpc::SslCredentials(ClientTls(""));
  Serve({"--tls_cert=" + Path("server.pem"), "--tls_key=" + Path("server.key"),
         "--auth_tokens_file=" + Path("tokens")},
        tls);
  EXPECT_THAT(daemon_->LogTail(), HasSubstr("tls=on"));
  auto stub = StubWith(tls);
  EXPECT_EQ(InfoCode(stub.get()), grpc::StatusCode::UNAUTHENTICATED);
  {
    AsTenant alice(kAlice);
    EXPECT_EQ(InfoCode(stub.get()), grpc::StatusCode::OK);
    auto plaintext = StubWith(grpc::InsecureChannelCredentials());
    EXPECT_NE(InfoCode(plaintext.get()), grpc::StatusCode::OK);
  }
}

TEST_F(SecurityTest, ClientCertificatesMapToTenants) {
  Certificates({"server", "alice", "bob", "stranger"});
  std::ofstream(Path("tenants")) << "# certificate CN or SAN, tenant\nalice alice\nbob bob\n";
  auto alice_creds = grpc::SslCredentials(ClientTls("alice"));
  Serve({"--tls_cert=" + Path("server.pem"), "--tls_key=" + Path("server.key"),
         "--tls_client_ca=" + Path("ca.pem"), "--tls_client_tenants_file=" + Path("tenants")},
        alice_creds);
  EXPECT_THAT(daemon_->LogTail(), HasSubstr("auth=certificate"));
  auto alice = StubWith(alice_creds);
  v1::CreateSessionRequest c;
  c.set_session_id("alice-doc");
  ASSERT_TRUE(CreateSession(alice.get(), c).ok());
  EXPECT_EQ(ListSessionsOf(alice.get()), std::vector<std::string>{"alice-doc"});
  // Bob's certificate is another tenant.
  auto bob = StubWith(grpc::SslCredentials(ClientTls("bob")));
  EXPECT_EQ(GetSession(bob.get(), "alice-doc").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(ListSessionsOf(bob.get()).empty());
  // A certificate the CA signed but the tenants file does not name.
  auto stranger = StubWith(grpc::SslCredentials(ClientTls("stranger")));
  std::string message;
  EXPECT_EQ(InfoCode(stranger.get(), &message), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(message, HasSubstr("not mapped to a tenant"));
}

TEST_F(SecurityTest, TokensFileReloadsWithoutRestart) {
  const std::string next = "next-token-of-alice-0002";
  std::ofstream(Path("tokens")) << kAlice << " alice\n";
  Serve({"--auth_tokens_file=" + Path("tokens"), "--allow_insecure_tokens=true",
         "--auth_reload_interval=1s"});
  auto stub = daemon_->Stub();
  auto code_as = [&](const std::string& token) {
    AsTenant t(token);
    return InfoCode(stub.get());
  };
  ASSERT_EQ(code_as(kAlice), grpc::StatusCode::OK);
  // Rotated: the new token as its digest only; polled within a second or so.
  const server::Authenticator::Digest d = server::Authenticator::Sha256(next);
  const std::string hex =
      absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(d.data()), 32));
  std::ofstream(Path("tokens")) << "sha256:" << hex << " alice\n";
  grpc::StatusCode now = grpc::StatusCode::UNAUTHENTICATED;
  for (int i = 0; i < 100 && now != grpc::StatusCode::OK; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    now = code_as(next);
  }
  EXPECT_EQ(now, grpc::StatusCode::OK);
  EXPECT_EQ(code_as(kAlice), grpc::StatusCode::UNAUTHENTICATED);
  // A broken file keeps the tables in force; SIGHUP re-reads a good one.
  std::ofstream(Path("tokens")) << "short alice\n";
  absl::SleepFor(absl::Seconds(2));
  EXPECT_EQ(code_as(next), grpc::StatusCode::OK);
  EXPECT_THAT(daemon_->LogTail(), HasSubstr("auth files not reloaded"));
  std::ofstream(Path("tokens")) << kAlice << " alice\n";
  daemon_->Signal(SIGHUP);
  for (int i = 0; i < 100 && code_as(kAlice) != grpc::StatusCode::OK; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(code_as(kAlice), grpc::StatusCode::OK);
  EXPECT_TRUE(daemon_->running());
}

TEST_F(SecurityTest, UnparsableRequestsAreInvalidArgumentCountedAndLoggedAsJson) {
  Serve({"--log_format=json"});
  const std::string bad_utf8("\x0a\x02\xff\xfe", 4);  // field 1 (a string): not UTF-8
  const std::string truncated(
      "\x0a\x05"
      "ab",
      4);  // field 1 says 5 bytes, has 2
  const std::string service = "/longctx.v1.LongContext/";
  for (const char* method : {"GetSession", "Score", "DeleteSession", "Generate", "ExportSession",
                             "CreateSession", "Ingest", "ImportSession"}) {
    for (const std::string& bytes : {bad_utf8, truncated}) {
      const RawOutcome out = RawCall(daemon_->channel(), service + method, {bytes});
      EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
      EXPECT_THAT(out.status.error_message(), HasSubstr("is not a valid longctx.v1.")) << method;
    }
  }
  // The server still answers well-formed calls.
  EXPECT_EQ(InfoCode(daemon_->Stub().get()), grpc::StatusCode::OK);
  auto m = ScrapeMetrics(daemon_->metrics_port());
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)["longctx_grpc_unparsable_requests_total{method=\"GetSession\"}"], 2);
  EXPECT_EQ((*m)["longctx_grpc_requests_total{code=\"INVALID_ARGUMENT\",method=\"Ingest\"}"], 2);
  // libprotobuf's complaints came through the logger: JSON lines.
  const std::string log = daemon_->LogTail(1 << 20);
  EXPECT_THAT(log, HasSubstr(R"("msg":"libprotobuf")"));
  for (absl::string_view line : absl::StrSplit(log, '\n', absl::SkipEmpty())) {
    if (absl::StrContains(line, "libprotobuf")) {
      EXPECT_EQ(line.front(), '{') << line;
    }
  }
}

}  // namespace
}  // namespace longctx::testing

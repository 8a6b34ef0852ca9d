// Operations: Prometheus metrics move as requests are served; health (Check,
// Watch, NOT_SERVING while starting and draining); reflection; request ids;
// authentication, tenants and limits; TTL expiry; graceful drain on SIGTERM.
#include <signal.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "clients/client.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon.h"
#include "tests/integration/helpers.h"

namespace longctx::testing {
namespace {

using ::testing::HasSubstr;
using HealthResponse = grpc::health::v1::HealthCheckResponse;

#define SKIP_WITHOUT_MODEL()                                     \
  if (ModelPath().empty())                                       \
  GTEST_SKIP() << "LONGCTX_MODEL is not set: integration tests " \
                  "need the default model"

double Metric(const std::map<std::string, double>& m, const std::string& key) {
  auto it = m.find(key);
  return it == m.end() ? 0 : it->second;
}

TEST(MetricsTest, CountersMoveAsRequestsAreServed) {
  std::string why;
  Daemon* d = SharedDaemon(&why);
  if (d == nullptr) GTEST_SKIP() << why;
  ASSERT_GT(d->metrics_port(), 0);
  auto before = ScrapeMetrics(d->metrics_port());
  ASSERT_TRUE(before.ok()) << before.status();
  // vLLM-shaped names are all there.
  for (const char* name :
       {"longctx_num_requests_running", "longctx_num_requests_waiting",
        "longctx_time_to_first_token_seconds_count", "longctx_inter_token_latency_seconds_count",
        "longctx_e2e_request_latency_seconds_count", "longctx_prompt_tokens_total",
        "longctx_generation_tokens_total", "longctx_kv_cache_usage_perc", "longctx_sessions_active",
        "longctx_ingested_tokens_total", "longctx_session_state_bytes{tier=\"device\"}",
        "longctx_session_evictions_total{reason=\"ttl\"}",
        "longctx_session_export_duration_seconds_count", "longctx_server_state"}) {
    EXPECT_TRUE(before->contains(name)) << name;
  }
  EXPECT_EQ(Metric(*before, "longctx_server_state"), 1);

  auto stub = d->Stub();
  v1::CreateSessionRequest c;
  c.set_prompt_format(v1::PROMPT_FORMAT_RAW);
  auto s = CreateSession(stub.get(), c);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(IngestTexts(stub.get(), s->id(), {"Counting sheep: one, two, three."}).ok());
  v1::GenerateRequest g;
  g.set_session_id(s->id());
  g.set_max_tokens(3);
  const GenerateOutcome out = Generate(stub.get(), g);
  ASSERT_TRUE(out.status.ok());
  // A stream is counted when gRPC is done with it, which may be just after the
  // client has its status: scrape until the Generate is in.
  const std::string generate_ok = "longctx_grpc_requests_total{code=\"OK\",method=\"Generate\"}";
  auto mid = ScrapeMetrics(d->metrics_port());
  ASSERT_TRUE(mid.ok());
  for (int i = 0; i < 100 && Metric(*mid, generate_ok) < Metric(*before, generate_ok) + 1; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
    mid = ScrapeMetrics(d->metrics_port());
    ASSERT_TRUE(mid.ok());
  }
  EXPECT_GE(Metric(*mid, "longctx_generation_tokens_total") -
                Metric(*before, "longctx_generation_tokens_total"),
            out.complete->usage().generated_tokens());
  EXPECT_GE(Metric(*mid, "longctx_ingested_tokens_total") -
                Metric(*before, "longctx_ingested_tokens_total"),
            s->tokens() + 5);
  EXPECT_GE(Metric(*mid, "longctx_time_to_first_token_seconds_count"),
            Metric(*before, "longctx_time_to_first_token_seconds_count") + 1);
  EXPECT_GE(Metric(*mid, generate_ok), Metric(*before, generate_ok) + 1);
  EXPECT_GE(Metric(*mid, "longctx_sessions_active"), 1);
  EXPECT_GT(Metric(*mid, "longctx_session_state_bytes{tier=\"device\"}"), 0);
  EXPECT_GT(Metric(*mid, "longctx_kv_cache_usage_perc"), 0);
  EXPECT_GE(Metric(*mid, "longctx_engine_steps_total"),
            Metric(*before, "longctx_engine_steps_total") + 3);
  // Failures are counted by code.
  EXPECT_FALSE(GetSession(stub.get(), "missing").ok());
  auto after = ScrapeMetrics(d->metrics_port());
  ASSERT_TRUE(after.ok());
  EXPECT_GE(Metric(*after, "longctx_grpc_requests_total{code=\"NOT_FOUND\",method=\"GetSession\"}"),
            1);
  // No tenant or session ids in any label.
  for (const auto& [key, v] : *after) {
    EXPECT_THAT(key, ::testing::Not(HasSubstr("tenant"))) << key;
    EXPECT_THAT(key, ::testing::Not(HasSubstr(s->id()))) << key;
  }
  EXPECT_TRUE(DeleteSession(stub.get(), s->id()).ok());
}

TEST(HealthTest, CheckWatchReflectionAndRequestIds) {
  std::string why;
  Daemon* d = SharedDaemon(&why);
  if (d == nullptr) GTEST_SKIP() << why;
  auto health = d->HealthStub();
  for (const char* service : {"", "longctx.v1.LongContext"}) {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    HealthResponse resp;
    ASSERT_TRUE(health->Check(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.status(), HealthResponse::SERVING) << service;
  }
  {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service("no.such.Service");
    HealthResponse resp;
    EXPECT_EQ(health->Check(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    auto watch = health->Watch(&ctx, {});
    HealthResponse resp;
    ASSERT_TRUE(watch->Read(&resp));
    EXPECT_EQ(resp.status(), HealthResponse::SERVING);
    ctx.TryCancel();
  }
  {
    // Server reflection lists the services (request: list_services = "").
    grpc::GenericStub generic(d->channel());
    grpc::ClientContext ctx;
    grpc::CompletionQueue cq;
    auto call = generic.PrepareCall(
        &ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
    void* tag = nullptr;
    bool ok = false;
    auto step = [&](intptr_t want) {
      return cq.Next(&tag, &ok) && ok && reinterpret_cast<intptr_t>(tag) == want;
    };
    call->StartCall(reinterpret_cast<void*>(1));
    ASSERT_TRUE(step(1));
    const std::string request("\x3a\x00", 2);  // field 7 (list_services): ""
    grpc::Slice slice(request);
    grpc::ByteBuffer out(&slice, 1);
    call->Write(out, reinterpret_cast<void*>(2));
    ASSERT_TRUE(step(2));
    grpc::ByteBuffer reply;
    call->Read(&reply, reinterpret_cast<void*>(3));
    ASSERT_TRUE(step(3));
    call->WritesDone(reinterpret_cast<void*>(4));
    ASSERT_TRUE(step(4));
    grpc::Status status;
    call->Finish(&status, reinterpret_cast<void*>(5));
    ASSERT_TRUE(step(5));
    EXPECT_TRUE(status.ok()) << status.error_message();
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(reply.Dump(&slices).ok());
    std::string bytes;
    for (const auto& sl : slices)
      bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
    EXPECT_THAT(bytes, HasSubstr("longctx.v1.LongContext"));
    EXPECT_THAT(bytes, HasSubstr("grpc.health.v1.Health"));
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
  }
  {
    // The request id a client sends comes back; otherwise one is made up.
    auto stub = d->Stub();
    grpc::ClientContext ctx;
    ctx.AddMetadata("x-request-id", "trace-abc-123");
    v1::ServerInfo info;
    ASSERT_TRUE(stub->GetServerInfo(&ctx, {}, &info).ok());
    auto md = ctx.GetServerInitialMetadata();
    auto it = md.find("x-request-id");
    ASSERT_NE(it, md.end());
    EXPECT_EQ(std::string(it->second.data(), it->second.size()), "trace-abc-123");
    EXPECT_EQ(info.model().n_layers(), 30);
    EXPECT_EQ(info.backend(), "cpu");
    EXPECT_EQ(info.limits().max_segment_bytes(), 64 << 10);
    EXPECT_FALSE(info.memory_mixing());
  }
}

TEST(LimitsTest, AuthTenantsQuotasStreamsAndExpiry) {
  SKIP_WITHOUT_MODEL();
  char dir[] = "/tmp/longctx-auth-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string tokens = std::string(dir) + "/tokens";
  {
    std::ofstream out(tokens);
    out << "# token tenant [readonly]\n"
        << "alice-secret-token-0001 alice\n"
        << "bob-secret-token-000002 bob\n"
        << "reader-secret-token-003 alice readonly\n";
  }
  auto d = Daemon::Start({"--auth_tokens_file=" + tokens, "--allow_insecure_tokens=true",
                          "--max_sessions=3", "--max_sessions_per_tenant=2",
                          "--max_concurrent_streams=1", "--kv_cache_bytes=64MiB"});
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_TRUE((*d)->WaitServing(absl::Minutes(5)).ok()) << (*d)->LogTail();
  auto stub = (*d)->Stub();
  auto call = [&](const std::string& token, auto&& fn) {
    grpc::ClientContext ctx;
    if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
    return fn(&ctx);
  };
  auto create = [&](const std::string& token, const std::string& id, absl::Duration ttl) {
    return call(token, [&](grpc::ClientContext* ctx) {
      v1::CreateSessionRequest req;
      req.set_session_id(id);
      req.set_prompt_format(v1::PROMPT_FORMAT_RAW);
      req.mutable_ttl()->set_seconds(absl::ToInt64Seconds(ttl));
      v1::Session s;
      return stub->CreateSession(ctx, req, &s).error_code();
    });
  };
  auto get = [&](const std::string& token, const std::string& id) {
    return call(token, [&](grpc::ClientContext* ctx) {
      v1::GetSessionRequest req;
      req.set_session_id(id);
      v1::Session s;
      grpc::Status st = stub->GetSession(ctx, req, &s);
      return st;
    });
  };
  const std::string alice = "alice-secret-token-0001", bob = "bob-secret-token-000002",
                    reader = "reader-secret-token-003";
  EXPECT_EQ(create("", "a1", absl::Hours(1)), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(create("not-a-known-token-at-all", "a1", absl::Hours(1)),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(create(reader, "a1", absl::Hours(1)), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(create(alice, "a1", absl::Hours(1)), grpc::StatusCode::OK);
  EXPECT_EQ(create(alice, "a2", absl::Seconds(1)), grpc::StatusCode::OK);
  // Per tenant, then in all.
  EXPECT_EQ(create(alice, "a3", absl::Hours(1)), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(create(bob, "b1", absl::Hours(1)), grpc::StatusCode::OK);
  EXPECT_EQ(create(bob, "b2", absl::Hours(1)), grpc::StatusCode::RESOURCE_EXHAUSTED);
  // Sessions are visible to their tenant only (readers of that tenant too).
  EXPECT_EQ(get(bob, "a1").error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(get(reader, "a1").error_code(), grpc::StatusCode::OK);
  EXPECT_EQ(get(alice, "b1").error_code(), grpc::StatusCode::NOT_FOUND);

  // One open stream at most.
  {
    grpc::ClientContext held;
    held.AddMetadata("authorization", "Bearer " + alice);
    auto open = stub->Ingest(&held);
    ASSERT_TRUE(open->Write(Segment(1, "Held open.", "a1")));
    v1::IngestResponse ack;
    ASSERT_TRUE(open->Read(&ack));  // admitted and working
    grpc::ClientContext second;
    second.AddMetadata("authorization", "Bearer " + bob);
    auto other = stub->Ingest(&second);
    other->Write(Segment(1, "Second stream.", "b1"));
    other->WritesDone();
    v1::IngestResponse none;
    EXPECT_FALSE(other->Read(&none));
    const grpc::Status st = other->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(st.error_message(), HasSubstr("max_concurrent_streams"));
    open->WritesDone();
    EXPECT_TRUE(open->Finish().ok());
  }

  // a2's TTL (1 s) passes: it expires, and says so.
  grpc::Status expired;
  for (int i = 0; i < 200; ++i) {
    expired = get(alice, "a2");
    if (expired.error_code() == grpc::StatusCode::FAILED_PRECONDITION) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(expired.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(expired.error_message(), HasSubstr("expired"));
  auto m = ScrapeMetrics((*d)->metrics_port());
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(Metric(*m, "longctx_session_evictions_total{reason=\"ttl\"}"), 1);
  // Its slot is free again.
  EXPECT_EQ(create(alice, "a3", absl::Hours(1)), grpc::StatusCode::OK);
  std::filesystem::remove_all(dir);
}

TEST(TlsTest, MutualTlsServesTrustedClientsOnly) {
  SKIP_WITHOUT_MODEL();
  char tmpl[] = "/tmp/longctx-tls-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  // A throw-away CA signs a server certificate for 127.0.0.1 and a client one.
  const absl::Status certs = MakeCertificates(dir, {"server", "client"});
  if (absl::IsFailedPrecondition(certs)) GTEST_SKIP() << certs;
  ASSERT_TRUE(certs.ok()) << certs;
  grpc::SslCredentialsOptions trusted;
  trusted.pem_root_certs = ReadText(dir + "/ca.pem");
  trusted.pem_private_key = ReadText(dir + "/client.key");
  trusted.pem_cert_chain = ReadText(dir + "/client.pem");
  auto d = Daemon::Start({"--tls_cert=" + dir + "/server.pem", "--tls_key=" + dir + "/server.key",
                          "--tls_client_ca=" + dir + "/ca.pem", "--kv_cache_bytes=64MiB"},
                         grpc::SslCredentials(trusted));
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_TRUE((*d)->WaitServing(absl::Minutes(5)).ok()) << (*d)->LogTail();
  EXPECT_THAT((*d)->LogTail(), HasSubstr("tls=mutual"));
  {
    auto stub = (*d)->Stub();
    grpc::ClientContext ctx;
    v1::ServerInfo info;
    EXPECT_TRUE(stub->GetServerInfo(&ctx, {}, &info).ok());
  }
  auto refused = [&](std::shared_ptr<grpc::ChannelCredentials> creds) {
    auto stub = v1::LongContext::NewStub(grpc::CreateChannel((*d)->address(), creds));
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    v1::ServerInfo info;
    return !stub->GetServerInfo(&ctx, {}, &info).ok();
  };
  grpc::SslCredentialsOptions no_client_cert;
  no_client_cert.pem_root_certs = trusted.pem_root_certs;
  EXPECT_TRUE(refused(grpc::SslCredentials(no_client_cert)));
  EXPECT_TRUE(refused(grpc::InsecureChannelCredentials()));
  std::filesystem::remove_all(dir);
}

TEST(LifecycleTest, NotServingWhileStartingThenDrainsOnSigterm) {
  SKIP_WITHOUT_MODEL();
  auto d = Daemon::Start({"--drain_grace=60s", "--kv_cache_bytes=64MiB"});
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_TRUE((*d)->WaitListening(absl::Minutes(1)).ok()) << (*d)->LogTail();
  auto health = (*d)->HealthStub();
  auto stub = (*d)->Stub();
  {
    // Listening, but the model is still loading.
    grpc::ClientContext ctx;
    HealthResponse resp;
    ASSERT_TRUE(health->Check(&ctx, {}, &resp).ok());
    EXPECT_EQ(resp.status(), HealthResponse::NOT_SERVING);
    grpc::ClientContext ctx2;
    v1::ServerInfo info;
    const grpc::Status st = stub->GetServerInfo(&ctx2, {}, &info);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(st.error_message(), HasSubstr("starting"));
  }
  ASSERT_TRUE((*d)->WaitServing(absl::Minutes(5)).ok()) << (*d)->LogTail();

  // A watcher sees SERVING, later NOT_SERVING.
  grpc::ClientContext watch_ctx;
  auto watch = health->Watch(&watch_ctx, {});
  HealthResponse first;
  ASSERT_TRUE(watch->Read(&first));
  EXPECT_EQ(first.status(), HealthResponse::SERVING);

  v1::CreateSessionRequest c;
  c.set_prompt_format(v1::PROMPT_FORMAT_RAW);
  auto s = CreateSession(stub.get(), c);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(IngestTexts(stub.get(), s->id(), {"Once upon a time, in a quiet village,"}).ok());
  v1::GenerateRequest g;
  g.set_session_id(s->id());
  g.set_max_tokens(16);
  GenerateOutcome in_flight;
  std::thread generating([&] {
    in_flight = Generate(stub.get(), g, absl::ZeroDuration(), [&](grpc::ClientContext*) {
      (*d)->Signal(SIGTERM);  // drain starts while this answer is streaming
    });
  });
  HealthResponse next;
  ASSERT_TRUE(watch->Read(&next));
  EXPECT_EQ(next.status(), HealthResponse::NOT_SERVING);
  {
    grpc::ClientContext ctx;
    v1::ServerInfo info;
    const grpc::Status st = stub->GetServerInfo(&ctx, {}, &info);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(st.error_message(), HasSubstr("draining"));
  }
  generating.join();
  // The stream in flight finished normally.
  EXPECT_TRUE(in_flight.status.ok()) << in_flight.status.error_message();
  ASSERT_TRUE(in_flight.complete.has_value());
  EXPECT_EQ(in_flight.complete->usage().generated_tokens(),
            static_cast<int64_t>(in_flight.ids.size()) +
                (in_flight.complete->finish_reason() == v1::FINISH_REASON_STOP ? 1 : 0));
  auto code = (*d)->Wait(absl::Minutes(2));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0) << (*d)->LogTail();
  EXPECT_THAT((*d)->LogTail(), HasSubstr("clean=true"));
}

TEST(LifecycleTest, DrainCutsOffWhatOutlivesTheGracePeriod) {
  SKIP_WITHOUT_MODEL();
  auto d = Daemon::Start({"--drain_grace=1s", "--kv_cache_bytes=64MiB"});
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_TRUE((*d)->WaitServing(absl::Minutes(5)).ok()) << (*d)->LogTail();
  auto stub = (*d)->Stub();
  v1::CreateSessionRequest c;
  c.set_prompt_format(v1::PROMPT_FORMAT_RAW);
  auto s = CreateSession(stub.get(), c);
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(IngestTexts(stub.get(), s->id(), {"The road went on and on"}).ok());
  v1::GenerateRequest g;
  g.set_session_id(s->id());
  g.set_max_tokens(4000);
  const absl::Time t0 = absl::Now();
  const GenerateOutcome out = Generate(stub.get(), g, absl::ZeroDuration(),
                                       [&](grpc::ClientContext*) { (*d)->Signal(SIGTERM); });
  EXPECT_FALSE(out.status.ok());
  EXPECT_LT(out.ids.size(), 4000u);
  auto code = (*d)->Wait(absl::Minutes(2));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0) << (*d)->LogTail();
  EXPECT_LT(absl::Now() - t0, absl::Seconds(90));
  EXPECT_THAT((*d)->LogTail(), HasSubstr("calls_cut_off=1"));
}

}  // namespace
}  // namespace longctx::testing

#include "tests/integration/helpers.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "clients/client.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"

namespace longctx::testing {

namespace {
thread_local std::string g_bearer_token;
}  // namespace

AsTenant::AsTenant(std::string token) : previous_(std::move(g_bearer_token)) {
  g_bearer_token = std::move(token);
}
AsTenant::~AsTenant() { g_bearer_token = std::move(previous_); }

void PrepareContext(grpc::ClientContext* ctx) {
  if (!g_bearer_token.empty()) ctx->AddMetadata("authorization", "Bearer " + g_bearer_token);
}

using client::FromGrpc;

absl::StatusOr<v1::Session> CreateSession(v1::LongContext::Stub* stub,
                                          v1::CreateSessionRequest req) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  v1::Session s;
  if (auto st = FromGrpc(stub->CreateSession(&ctx, req, &s)); !st.ok()) return st;
  return s;
}

absl::StatusOr<v1::Session> GetSession(v1::LongContext::Stub* stub, const std::string& id) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  v1::GetSessionRequest req;
  req.set_session_id(id);
  v1::Session s;
  if (auto st = FromGrpc(stub->GetSession(&ctx, req, &s)); !st.ok()) return st;
  return s;
}

absl::Status DeleteSession(v1::LongContext::Stub* stub, const std::string& id) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  v1::DeleteSessionRequest req;
  req.set_session_id(id);
  google::protobuf::Empty e;
  return FromGrpc(stub->DeleteSession(&ctx, req, &e));
}

v1::IngestRequest Segment(int64_t seq, std::string text, const std::string& session_id) {
  v1::IngestRequest r;
  r.set_session_id(session_id);
  r.mutable_segment()->set_seq(seq);
  r.mutable_segment()->set_text(std::move(text));
  return r;
}

IngestOutcome Ingest(v1::LongContext::Stub* stub, const std::vector<v1::IngestRequest>& requests) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  auto stream = stub->Ingest(&ctx);
  for (const auto& r : requests) {
    if (!stream->Write(r)) break;
  }
  stream->WritesDone();
  IngestOutcome out;
  v1::IngestResponse ack;
  while (stream->Read(&ack)) out.acks.push_back(ack);
  out.status = stream->Finish();
  return out;
}

absl::StatusOr<int64_t> IngestTexts(v1::LongContext::Stub* stub, const std::string& session_id,
                                    const std::vector<std::string>& texts, int64_t first_seq) {
  std::vector<v1::IngestRequest> reqs;
  for (size_t i = 0; i < texts.size(); ++i) {
    reqs.push_back(
        Segment(first_seq + static_cast<int64_t>(i), texts[i], i == 0 ? session_id : ""));
  }
  IngestOutcome out = Ingest(stub, reqs);
  if (!out.status.ok()) return FromGrpc(out.status);
  if (out.acks.size() != texts.size()) {
    return absl::InternalError(
        absl::StrCat(out.acks.size(), " acks for ", texts.size(), " segments"));
  }
  return out.acks.back().session_tokens();
}

GenerateOutcome Generate(v1::LongContext::Stub* stub, const v1::GenerateRequest& req,
                         absl::Duration timeout,
                         const std::function<void(grpc::ClientContext*)>& after_first_chunk) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  if (timeout > absl::ZeroDuration()) ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  auto reader = stub->Generate(&ctx, req);
  GenerateOutcome out;
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    if (msg.has_chunk()) {
      out.text += msg.chunk().text();
      out.ids.insert(out.ids.end(), msg.chunk().token_ids().begin(), msg.chunk().token_ids().end());
      if (out.chunks++ == 0 && after_first_chunk) after_first_chunk(&ctx);
    } else if (msg.has_complete()) {
      out.complete = msg.complete();
    }
  }
  out.status = reader->Finish();
  return out;
}

absl::StatusOr<v1::ScoreResponse> Score(v1::LongContext::Stub* stub, const std::string& id,
                                        const std::string& text, bool per_token) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  v1::ScoreRequest req;
  req.set_session_id(id);
  req.set_text(text);
  req.set_per_token(per_token);
  v1::ScoreResponse resp;
  if (auto st = FromGrpc(stub->Score(&ctx, req, &resp)); !st.ok()) return st;
  return resp;
}

absl::StatusOr<std::string> Export(v1::LongContext::Stub* stub, const std::string& id,
                                   const std::string& token) {
  grpc::ClientContext ctx;
  if (token.empty()) {
    PrepareContext(&ctx);
  } else {
    ctx.AddMetadata("authorization", "Bearer " + token);
  }
  v1::ExportSessionRequest req;
  req.set_session_id(id);
  auto reader = stub->ExportSession(&ctx, req);
  std::string data;
  v1::SessionData piece;
  while (reader->Read(&piece)) data += piece.data();
  if (auto st = FromGrpc(reader->Finish()); !st.ok()) return st;
  return data;
}

v1::CreateSessionRequest WindowedSession(v1::OverflowPolicy policy, int64_t window, int sinks,
                                         int chunk_len) {
  v1::CreateSessionRequest c;
  c.set_prompt_format(v1::PROMPT_FORMAT_RAW);
  c.mutable_attention()->set_mode(v1::ATTENTION_MODE_DCA);
  c.mutable_attention()->set_chunk_size(2 * chunk_len);
  c.mutable_attention()->set_local_window(chunk_len);
  c.mutable_memory()->set_window_tokens(window);
  c.mutable_memory()->set_sink_tokens(sinks);
  c.mutable_memory()->set_overflow(policy);
  return c;
}

std::vector<std::string> Paragraphs(int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(absl::StrCat("Paragraph ", i,
                               ". The river keeper counted the boats that passed under the old "
                               "stone bridge, wrote the number in a green ledger, and walked "
                               "back along the towpath while the lamps came on one by one. "));
  }
  return out;
}

absl::StatusOr<v1::Session> ImportAs(v1::LongContext::Stub* stub, const std::string& id,
                                     const std::string& data) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  v1::Session imported;
  auto writer = stub->ImportSession(&ctx, &imported);
  v1::ImportSessionRequest first;
  first.set_session_id(id);
  first.set_data(data.substr(0, data.size() / 2));
  v1::ImportSessionRequest rest;
  rest.set_data(data.substr(data.size() / 2));
  if (writer->Write(first)) writer->Write(rest);
  writer->WritesDone();
  if (auto st = FromGrpc(writer->Finish()); !st.ok()) return st;
  return imported;
}

std::vector<std::string> ListSessionsOf(v1::LongContext::Stub* stub) {
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  v1::ListSessionsRequest req;
  req.set_page_size(1000);
  v1::ListSessionsResponse resp;
  std::vector<std::string> ids;
  if (!stub->ListSessions(&ctx, req, &resp).ok()) return {"(ListSessions failed)"};
  for (const auto& s : resp.sessions()) ids.push_back(s.id());
  return ids;
}

bool Sh(const std::string& dir, const std::string& command) {
  return std::system(("cd '" + dir + "' && " + command + " > /dev/null 2>&1").c_str()) == 0;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

absl::Status MakeCertificates(const std::string& dir, const std::vector<std::string>& names) {
  if (!Sh(dir, "command -v openssl")) {
    return absl::FailedPreconditionError("openssl is not installed");
  }
  if (!Sh(dir,
          "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem "
          "-days 1 -subj /CN=longctx-test-ca")) {
    return absl::InternalError("openssl: cannot make the CA");
  }
  for (const std::string& w : names) {
    const bool made =
        Sh(dir, "openssl req -newkey rsa:2048 -nodes -keyout " + w + ".key -out " + w +
                    ".csr -subj /CN=" + w) &&
        Sh(dir, "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > " + w + ".ext && " +
                    "openssl x509 -req -in " + w + ".csr -CA ca.pem -CAkey ca.key " +
                    "-CAcreateserial -days 1 -out " + w + ".pem -extfile " + w + ".ext");
    if (!made) return absl::InternalError("openssl: cannot make the certificate of " + w);
  }
  return absl::OkStatus();
}

RawOutcome RawCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                   const std::vector<std::string>& requests) {
  grpc::GenericStub generic(channel);
  grpc::ClientContext ctx;
  PrepareContext(&ctx);
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  grpc::CompletionQueue cq;
  auto call = generic.PrepareCall(&ctx, method, &cq);
  RawOutcome out;
  void* tag = nullptr;
  bool ok = false;
  auto wait = [&] { return cq.Next(&tag, &ok) && ok; };
  call->StartCall(nullptr);
  bool open = wait();
  for (size_t i = 0; open && i < requests.size(); ++i) {
    grpc::Slice slice(requests[i]);
    grpc::ByteBuffer msg(&slice, 1);
    call->Write(msg, nullptr);
    open = wait();
  }
  if (open) {
    call->WritesDone(nullptr);
    wait();
  }
  for (grpc::ByteBuffer reply;;) {
    call->Read(&reply, nullptr);
    if (!wait()) break;
    std::vector<grpc::Slice> slices;
    std::string bytes;
    if (reply.Dump(&slices).ok()) {
      for (const auto& sl : slices)
        bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
    }
    out.replies.push_back(std::move(bytes));
  }
  call->Finish(&out.status, nullptr);
  wait();
  return out;
}

void ExpectStillServing(Daemon* daemon) {
  auto stub = daemon->Stub();
  v1::CreateSessionRequest req;
  req.set_prompt_format(v1::PROMPT_FORMAT_RAW);
  auto s = CreateSession(stub.get(), req);
  ASSERT_TRUE(s.ok()) << s.status() << "\n" << daemon->LogTail();
  ASSERT_TRUE(IngestTexts(stub.get(), s->id(), {"The cat sat on the mat."}).ok());
  v1::GenerateRequest g;
  g.set_session_id(s->id());
  g.set_max_tokens(2);
  const GenerateOutcome out = Generate(stub.get(), g);
  EXPECT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_TRUE(out.complete.has_value());
  auto score = Score(stub.get(), s->id(), " It purred.");
  EXPECT_TRUE(score.ok()) << score.status();
  EXPECT_TRUE(DeleteSession(stub.get(), s->id()).ok());
}

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t n = sizeof(a);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n);
  close(fd);
  return ntohs(a.sin_port);
}

}  // namespace longctx::testing

// libFuzzer target for request handling: what the service does with a
// request between the wire and the engine, minus gRPC's transport. The input
// is a script of calls; each picks an RPC, takes a length-prefixed run of
// bytes and parses it as that RPC's request message with the server's own
// parser (server/wire.h ParseRequest), then does what server/service.cc and
// server/reactors.cc do with it: the session id's syntax check, the
// conversion (server/convert.h FromProto/TakeSegment), the engine call on the
// tiny model (tests/fuzz/fuzz_engine.h) and the conversion of the answer
// back to its response message. Ingest is a stream: one parsed message after
// another, arbitrary seqs included, some cancelled. Imports take either the
// input's bytes or a session exported earlier in the same script.
//
// A script may point a request at a session it created (the id is replaced),
// and it runs for two tenants. Nothing survives an input: its sessions are
// deleted at the end. Any crash, sanitizer report, leak or callback that never
// comes (a hang) is a bug; error statuses are the expected outcome.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "google/protobuf/stubs/logging.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "longctx/v1/longctx.pb.h"
#include "server/config.h"
#include "server/convert.h"
#include "server/wire.h"
#include "tests/fuzz/fuzz_engine.h"

namespace longctx::fuzz {
namespace {

constexpr const char* kTenants[] = {"tenant-a", "tenant-b"};
constexpr size_t kMaxMessageBytes = 4096;
constexpr int kMaxCalls = 12;
constexpr int kMaxStreamMessages = 8;

enum class Rpc { kCreate, kGet, kList, kDelete, kIngest, kGenerate, kScore, kExport, kImport,
                 kInfo, kCount };

struct Script {
  FuzzedDataProvider& in;
  Engine& engine;
  std::string tenant;
  std::vector<std::string> ids;    // sessions this script created or imported
  std::vector<std::string> blobs;  // sessions it exported
};

// The next message of the script, parsed as the server parses its requests.
// False when the bytes are not a valid `Req` (the server's INVALID_ARGUMENT).
template <class Req>
bool Next(Script& s, Req* req) {
  const std::string bytes = s.in.ConsumeRandomLengthString(kMaxMessageBytes);
  grpc::Slice slice(bytes.data(), bytes.size());
  grpc::ByteBuffer buffer(&slice, 1);
  if (!server::ParseRequest(buffer, req).ok()) return false;
  // Point it at a session of the script's, sometimes.
  if constexpr (requires { req->set_session_id(""); }) {
    if (!s.ids.empty() && s.in.ConsumeBool()) {
      req->set_session_id(s.ids[s.in.ConsumeIntegralInRange<size_t>(0, s.ids.size() - 1)]);
    }
  }
  return true;
}

// The syntax check every id-bearing RPC makes at admission.
bool IdOk(const std::string& id) { return ValidateSessionId(id).ok(); }

void Created(Script& s, const absl::StatusOr<SessionInfo>& info) {
  if (!info.ok()) return;
  v1::Session out;
  server::ToProto(*info, &out);
  s.ids.push_back(info->id);
}

void CreateSession(Script& s) {
  v1::CreateSessionRequest req;
  if (!Next(s, &req)) return;
  auto request = server::FromProto(req);
  if (!request.ok()) return;
  Result<absl::StatusOr<SessionInfo>> r;
  s.engine.CreateSession(s.tenant, *request,
                         [&](absl::StatusOr<SessionInfo> info) { r.Set(std::move(info)); });
  Created(s, r.Take());
}

void Unary(Script& s, Rpc rpc) {
  if (rpc == Rpc::kGet) {
    v1::GetSessionRequest req;
    if (!Next(s, &req) || !IdOk(req.session_id())) return;
    if (auto info = s.engine.GetSession(s.tenant, req.session_id()); info.ok()) {
      v1::Session out;
      server::ToProto(*info, &out);
    }
  } else if (rpc == Rpc::kList) {
    v1::ListSessionsRequest req;
    if (!Next(s, &req)) return;
    auto page = s.engine.ListSessions(s.tenant, req.page_size(), req.page_token(),
                                      server::LabelSelector(req));
    v1::ListSessionsResponse out;
    if (page.ok()) server::ToProto(*page, &out);
  } else if (rpc == Rpc::kDelete) {
    v1::DeleteSessionRequest req;
    if (!Next(s, &req) || !IdOk(req.session_id())) return;
    (void)s.engine.DeleteSession(s.tenant, req.session_id());
  } else {
    v1::GetServerInfoRequest req;
    if (!Next(s, &req)) return;
    static const server::ServerConfig config;
    v1::ServerInfo out;
    server::ToProto(s.engine, config, server::BuildInfo{}, false, absl::Now(), &out);
  }
}

// One Ingest stream: the session is bound by its first message, as
// IngestReactor::BindSession does; every segment is submitted without waiting
// for the previous one's ack, and some are cancelled.
void Ingest(Script& s) {
  const int n = s.in.ConsumeIntegralInRange(1, kMaxStreamMessages);
  std::shared_ptr<Session> session;
  std::vector<std::unique_ptr<Result<absl::StatusOr<IngestAck>>>> acks;
  for (int i = 0; i < n && s.in.remaining_bytes() > 0; ++i) {
    v1::IngestRequest req;
    if (!Next(s, &req)) break;  // the stream ends INVALID_ARGUMENT
    if (!req.session_id().empty() && !IdOk(req.session_id())) break;
    if (session == nullptr) {
      auto found = s.engine.FindSession(s.tenant, req.session_id());
      if (!found.ok()) break;
      session = *found;
    } else if (!req.session_id().empty() && req.session_id() != session->id()) {
      break;
    }
    auto input = server::TakeSegment(&req);
    if (!input.ok()) break;
    auto& ack = acks.emplace_back(std::make_unique<Result<absl::StatusOr<IngestAck>>>());
    auto handle = s.engine.Ingest(session, *std::move(input),
                                  [r = ack.get()](absl::StatusOr<IngestAck> a) {
                                    r->Set(std::move(a));
                                  });
    if (handle != nullptr && s.in.ConsumeBool()) handle->Cancel();
  }
  for (auto& ack : acks) {
    auto a = ack->Take();
    v1::IngestResponse out;
    if (a.ok()) server::ToProto(*a, &out);
  }
}

void Generate(Script& s) {
  v1::GenerateRequest req;
  if (!Next(s, &req) || !IdOk(req.session_id())) return;
  GenerateCallbacks callbacks;
  v1::GenerateChunk chunk;
  Result<absl::StatusOr<GenerateSummary>> r;
  callbacks.on_chunk = [&](std::string text, std::vector<int32_t> ids) {
    server::AppendToProto(text, ids, &chunk);
  };
  callbacks.done = [&](absl::StatusOr<GenerateSummary> summary) { r.Set(std::move(summary)); };
  auto handle = s.engine.Generate(s.tenant, req.session_id(), server::FromProto(req),
                                  std::move(callbacks));
  if (handle != nullptr && s.in.ConsumeBool()) handle->Cancel();
  if (auto summary = r.Take(); summary.ok()) {
    v1::GenerateComplete out;
    server::ToProto(*summary, &out);
  }
}

void Score(Script& s) {
  v1::ScoreRequest req;
  if (!Next(s, &req) || !IdOk(req.session_id())) return;
  auto input = server::FromProto(req);
  if (!input.ok()) return;
  Result<absl::StatusOr<ScoreOutput>> r;
  auto handle = s.engine.Score(s.tenant, req.session_id(), *std::move(input),
                               [&](absl::StatusOr<ScoreOutput> o) { r.Set(std::move(o)); });
  if (handle != nullptr && s.in.ConsumeBool()) handle->Cancel();
  if (auto o = r.Take(); o.ok()) {
    v1::ScoreResponse out;
    server::ToProto(*o, req.per_token(), s.engine.tokenizer(), &out);
  }
}

void Export(Script& s) {
  v1::ExportSessionRequest req;
  if (!Next(s, &req) || !IdOk(req.session_id())) return;
  Result<absl::StatusOr<std::string>> r;
  s.engine.Export(s.tenant, req.session_id(), absl::InfiniteFuture(),
                  [&](absl::StatusOr<std::string> blob) { r.Set(std::move(blob)); });
  if (auto blob = r.Take(); blob.ok()) s.blobs.push_back(*std::move(blob));
}

// An import stream: the first message names the session; the data is that of
// every message, or a blob exported earlier in the script.
void Import(Script& s) {
  v1::ImportSessionRequest req;
  if (!Next(s, &req)) return;
  if (!req.session_id().empty() && !IdOk(req.session_id())) return;
  ImportInput input = server::FromProto(req);
  input.data = req.data();
  if (!s.blobs.empty() && s.in.ConsumeBool()) {
    input.data = s.blobs[s.in.ConsumeIntegralInRange<size_t>(0, s.blobs.size() - 1)];
  }
  Result<absl::StatusOr<SessionInfo>> r;
  s.engine.Import(s.tenant, std::move(input),
                  [&](absl::StatusOr<SessionInfo> info) { r.Set(std::move(info)); });
  Created(s, r.Take());
}

void Call(Script& s) {
  const auto rpc = static_cast<Rpc>(
      s.in.ConsumeIntegralInRange<int>(0, static_cast<int>(Rpc::kCount) - 1));
  switch (rpc) {
    case Rpc::kCreate: return CreateSession(s);
    case Rpc::kIngest: return Ingest(s);
    case Rpc::kGenerate: return Generate(s);
    case Rpc::kScore: return Score(s);
    case Rpc::kExport: return Export(s);
    case Rpc::kImport: return Import(s);
    default: return Unary(s, rpc);
  }
}

void Run(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  Engine& engine = TinyEngine();
  Script s{.in = in, .engine = engine, .tenant = kTenants[in.ConsumeBool() ? 1 : 0]};
  for (int i = 0; i < kMaxCalls && in.remaining_bytes() > 0; ++i) {
    // Now and then the other tenant makes the next call, with the same ids.
    if (in.ConsumeIntegralInRange(0, 7) == 0) s.tenant = kTenants[s.tenant == kTenants[0]];
    Call(s);
  }
  for (const char* tenant : kTenants) DeleteAll(engine, tenant);
}

}  // namespace
}  // namespace longctx::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // libprotobuf's complaints about each bad message (the server routes them
  // to its log) would be most of the fuzzer's output.
  google::protobuf::SetLogHandler(nullptr);
  (void)longctx::fuzz::TinyEngine();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  longctx::fuzz::Run(data, size);
  return 0;
}

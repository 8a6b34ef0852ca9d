#include "server/service.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/convert.h"
#include "server/reactors.h"
#include "server/routing.h"
#include "server/status.h"
#include "server/wire.h"

namespace longctx::server {
namespace {

// A unary call answered on the calling thread; `call` is null when admission
// refused it.
grpc::ServerUnaryReactor* FinishNow(CallRegistry* calls, grpc::CallbackServerContext* ctx,
                                    const CallContext* call, const absl::Status& status) {
  auto* reactor = ctx->DefaultReactor();
  // A refused call's trailing metadata was added at admission.
  const grpc::Status g = ToGrpcStatus(status, call != nullptr ? ctx : nullptr);
  if (call != nullptr) calls->EndCall(*call, g);
  reactor->Finish(g);
  return reactor;
}

// Admits a call whose request parsed with status `parsed`, checking
// `session_id` (if not null) when it did. A request that does not parse is
// admitted (so that it is authenticated, logged and counted), then ended
// INVALID_ARGUMENT: the result is then not ok and the call needs no EndCall.
absl::StatusOr<CallContext> Begin(CallRegistry* calls, grpc::CallbackServerContext* ctx,
                                  const char* method, CallKind kind, const absl::Status& parsed,
                                  const std::string* session_id) {
  auto call = calls->BeginCall(ctx, method, kind, parsed.ok() ? session_id : nullptr);
  if (!call.ok() || parsed.ok()) return call;
  calls->CountUnparsable(method);
  calls->EndCall(*call, ToGrpcStatus(parsed));
  return parsed;
}

// A synchronous unary call: `serve` answers the admitted call's parsed
// request into a response message, which is serialized into `out`.
// `with_id`: the request's session_id is checked at admission.
template <class Req, class Resp, class Serve>
grpc::ServerUnaryReactor* Unary(CallRegistry* calls, grpc::CallbackServerContext* ctx,
                                const char* method, CallKind kind, bool with_id,
                                const raw::Bytes& in, raw::Bytes* out, Serve serve) {
  Req req;
  const absl::Status parsed = ParseRequest(in, &req);
  const std::string* id = nullptr;
  if constexpr (requires { req.session_id(); }) {
    if (with_id) id = &req.session_id();
  }
  auto call = Begin(calls, ctx, method, kind, parsed, id);
  if (!call.ok()) return FinishNow(calls, ctx, nullptr, call.status());
  Resp resp;
  const absl::Status status = serve(*call, req, &resp);
  if (status.ok()) Serialize(resp, out);
  return FinishNow(calls, ctx, &*call, status);
}

}  // namespace

LongContextService::LongContextService(const ServerConfig& config, Authenticator auth,
                                       Metrics* metrics, BuildInfo build)
    : calls_(config, std::move(auth), metrics),
      build_(std::move(build)),
      start_time_(absl::Now()) {}

// ---------------------------------------------------------------- unary calls

grpc::ServerUnaryReactor* LongContextService::CreateSession(grpc::CallbackServerContext* ctx,
                                                            const raw::Bytes* in, raw::Bytes* out) {
  v1::CreateSessionRequest req;
  const absl::Status parsed = ParseRequest(*in, &req);
  auto call =
      Begin(&calls_, ctx, "CreateSession", {.mutates = true, .engine_work = true}, parsed, nullptr);
  if (!call.ok()) return FinishNow(&calls_, ctx, nullptr, call.status());
  auto request = FromProto(req);
  if (!request.ok()) return FinishNow(&calls_, ctx, &*call, request.status());
  if (absl::Status home = CheckNewSessionId(request->id, calls_.config().replica_id); !home.ok()) {
    return FinishNow(&calls_, ctx, &*call, home);
  }
  auto* reactor = new UnaryCall(&calls_, std::move(*call));
  reactor->call().engine->CreateSession(reactor->call().caller.tenant, *request,
                                        [reactor, out](absl::StatusOr<SessionInfo> info) {
                                          if (info.ok()) {
                                            v1::Session resp;
                                            ToProto(*info, &resp);
                                            Serialize(resp, out);
                                            reactor->AddField("session_id", info->id);
                                          }
                                          reactor->Done(info.status());
                                        });
  reactor->Started();
  return reactor;
}

grpc::ServerUnaryReactor* LongContextService::GetSession(grpc::CallbackServerContext* ctx,
                                                         const raw::Bytes* in, raw::Bytes* out) {
  return Unary<v1::GetSessionRequest, v1::Session>(
      &calls_, ctx, "GetSession", {}, /*with_id=*/true, *in, out,
      [](const CallContext& call, const v1::GetSessionRequest& req, v1::Session* resp) {
        auto info = call.engine->GetSession(call.caller.tenant, req.session_id());
        if (info.ok()) ToProto(*info, resp);
        return info.status();
      });
}

grpc::ServerUnaryReactor* LongContextService::ListSessions(grpc::CallbackServerContext* ctx,
                                                           const raw::Bytes* in, raw::Bytes* out) {
  return Unary<v1::ListSessionsRequest, v1::ListSessionsResponse>(
      &calls_, ctx, "ListSessions", {}, /*with_id=*/false, *in, out,
      [](const CallContext& call, const v1::ListSessionsRequest& req,
         v1::ListSessionsResponse* resp) {
        auto page = call.engine->ListSessions(call.caller.tenant, req.page_size(), req.page_token(),
                                              LabelSelector(req));
        if (page.ok()) ToProto(*page, resp);
        return page.status();
      });
}

grpc::ServerUnaryReactor* LongContextService::DeleteSession(grpc::CallbackServerContext* ctx,
                                                            const raw::Bytes* in, raw::Bytes* out) {
  return Unary<v1::DeleteSessionRequest, google::protobuf::Empty>(
      &calls_, ctx, "DeleteSession", {.mutates = true}, /*with_id=*/true, *in, out,
      [](const CallContext& call, const v1::DeleteSessionRequest& req, google::protobuf::Empty*) {
        return call.engine->DeleteSession(call.caller.tenant, req.session_id());
      });
}

grpc::ServerUnaryReactor* LongContextService::Score(grpc::CallbackServerContext* ctx,
                                                    const raw::Bytes* in, raw::Bytes* out) {
  v1::ScoreRequest req;
  const absl::Status parsed = ParseRequest(*in, &req);
  auto call = Begin(&calls_, ctx, "Score", {.engine_work = true}, parsed, &req.session_id());
  if (!call.ok()) return FinishNow(&calls_, ctx, nullptr, call.status());
  auto input = FromProto(req);
  if (!input.ok()) return FinishNow(&calls_, ctx, &*call, input.status());
  input->deadline = call->deadline;
  auto* reactor = new UnaryCall(&calls_, std::move(*call));
  Engine* engine = reactor->call().engine;
  const bool per_token = req.per_token();
  auto handle = engine->Score(reactor->call().caller.tenant, req.session_id(), *std::move(input),
                              [reactor, out, per_token, engine](absl::StatusOr<ScoreOutput> o) {
                                if (o.ok()) {
                                  v1::ScoreResponse resp;
                                  ToProto(*o, per_token, engine->tokenizer(), &resp);
                                  Serialize(resp, out);
                                  reactor->AddField("tokens", absl::StrCat(o->ids.size()));
                                }
                                reactor->Done(o.status());
                              });
  reactor->Started(std::move(handle));
  return reactor;
}

grpc::ServerUnaryReactor* LongContextService::GetServerInfo(grpc::CallbackServerContext* ctx,
                                                            const raw::Bytes* in, raw::Bytes* out) {
  return Unary<v1::GetServerInfoRequest, v1::ServerInfo>(
      &calls_, ctx, "GetServerInfo", {}, /*with_id=*/false, *in, out,
      [this](const CallContext& call, const v1::GetServerInfoRequest&, v1::ServerInfo* resp) {
        ToProto(*call.engine, calls_.config(), build_, calls_.auth_required(), start_time_, resp);
        return absl::OkStatus();
      });
}

// ---------------------------------------------------------------- streams

grpc::ServerBidiReactor<raw::Bytes, raw::Bytes>* LongContextService::Ingest(
    grpc::CallbackServerContext* ctx) {
  auto call = calls_.BeginCall(ctx, "Ingest", {.stream = true, .mutates = true});
  return new IngestReactor(&calls_, std::move(call));
}

grpc::ServerWriteReactor<raw::Bytes>* LongContextService::Generate(grpc::CallbackServerContext* ctx,
                                                                   const raw::Bytes* in) {
  v1::GenerateRequest req;
  const absl::Status parsed = ParseRequest(*in, &req);
  auto call = Begin(&calls_, ctx, "Generate", {.stream = true, .mutates = req.persist()}, parsed,
                    &req.session_id());
  return new GenerateReactor(&calls_, std::move(call), &req);
}

grpc::ServerWriteReactor<raw::Bytes>* LongContextService::ExportSession(
    grpc::CallbackServerContext* ctx, const raw::Bytes* in) {
  v1::ExportSessionRequest req;
  const absl::Status parsed = ParseRequest(*in, &req);
  auto call = Begin(&calls_, ctx, "ExportSession", {.stream = true}, parsed, &req.session_id());
  return new ExportReactor(&calls_, std::move(call), req.session_id());
}

grpc::ServerReadReactor<raw::Bytes>* LongContextService::ImportSession(
    grpc::CallbackServerContext* ctx, raw::Bytes* out) {
  auto call = calls_.BeginCall(ctx, "ImportSession", {.stream = true, .mutates = true});
  return new ImportReactor(&calls_, std::move(call), out);
}

}  // namespace longctx::server

#include "server/service.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/convert.h"
#include "server/reactors.h"
#include "server/status.h"

namespace longctx::server {
namespace {

// A unary call answered on the calling thread; `call` is null when admission
// refused it.
grpc::ServerUnaryReactor* FinishNow(CallRegistry* calls, grpc::CallbackServerContext* ctx,
                                    const CallContext* call, const absl::Status& status) {
  auto* reactor = ctx->DefaultReactor();
  const grpc::Status g = ToGrpcStatus(status);
  if (call != nullptr) calls->EndCall(*call, g);
  reactor->Finish(g);
  return reactor;
}

}  // namespace

LongContextService::LongContextService(const ServerConfig& config, Authenticator auth,
                                       Metrics* metrics, BuildInfo build)
    : calls_(config, std::move(auth), metrics),
      build_(std::move(build)),
      start_time_(absl::Now()) {}

// ---------------------------------------------------------------- unary calls

grpc::ServerUnaryReactor* LongContextService::CreateSession(grpc::CallbackServerContext* ctx,
                                                            const v1::CreateSessionRequest* req,
                                                            v1::Session* resp) {
  auto call = calls_.BeginCall(ctx, "CreateSession", false, true);
  if (!call.ok()) return FinishNow(&calls_, ctx, nullptr, call.status());
  auto request = FromProto(*req);
  if (!request.ok()) return FinishNow(&calls_, ctx, &*call, request.status());
  auto* reactor = new UnaryCall(&calls_, std::move(*call));
  reactor->call().engine->CreateSession(reactor->call().caller.tenant, *request,
                                        [reactor, resp](absl::StatusOr<SessionInfo> info) {
                                          if (info.ok()) {
                                            ToProto(*info, resp);
                                            reactor->AddField("session_id", info->id);
                                          }
                                          reactor->Done(info.status());
                                        });
  reactor->Started();
  return reactor;
}

grpc::ServerUnaryReactor* LongContextService::GetSession(grpc::CallbackServerContext* ctx,
                                                         const v1::GetSessionRequest* req,
                                                         v1::Session* resp) {
  auto call = calls_.BeginCall(ctx, "GetSession", false, false);
  if (!call.ok()) return FinishNow(&calls_, ctx, nullptr, call.status());
  call->fields.emplace_back("session_id", req->session_id());
  auto info = call->engine->GetSession(call->caller.tenant, req->session_id());
  if (info.ok()) ToProto(*info, resp);
  return FinishNow(&calls_, ctx, &*call, info.status());
}

grpc::ServerUnaryReactor* LongContextService::ListSessions(grpc::CallbackServerContext* ctx,
                                                           const v1::ListSessionsRequest* req,
                                                           v1::ListSessionsResponse* resp) {
  auto call = calls_.BeginCall(ctx, "ListSessions", false, false);
  if (!call.ok()) return FinishNow(&calls_, ctx, nullptr, call.status());
  auto page = call->engine->ListSessions(call->caller.tenant, req->page_size(), req->page_token(),
                                         LabelSelector(*req));
  if (page.ok()) ToProto(*page, resp);
  return FinishNow(&calls_, ctx, &*call, page.status());
}

grpc::ServerUnaryReactor* LongContextService::DeleteSession(grpc::CallbackServerContext* ctx,
                                                            const v1::DeleteSessionRequest* req,
                                                            google::protobuf::Empty*) {
  auto call = calls_.BeginCall(ctx, "DeleteSession", false, true);
  if (!call.ok()) return FinishNow(&calls_, ctx, nullptr, call.status());
  call->fields.emplace_back("session_id", req->session_id());
  return FinishNow(&calls_, ctx, &*call,
                   call->engine->DeleteSession(call->caller.tenant, req->session_id()));
}

grpc::ServerUnaryReactor* LongContextService::Score(grpc::CallbackServerContext* ctx,
                                                    const v1::ScoreRequest* req,
                                                    v1::ScoreResponse* resp) {
  auto call = calls_.BeginCall(ctx, "Score", false, false);
  if (!call.ok()) return FinishNow(&calls_, ctx, nullptr, call.status());
  call->fields.emplace_back("session_id", req->session_id());
  auto input = FromProto(*req);
  if (!input.ok()) return FinishNow(&calls_, ctx, &*call, input.status());
  input->deadline = call->deadline;
  auto* reactor = new UnaryCall(&calls_, std::move(*call));
  Engine* engine = reactor->call().engine;
  const bool per_token = req->per_token();
  auto handle = engine->Score(reactor->call().caller.tenant, req->session_id(), *std::move(input),
                              [reactor, resp, per_token, engine](absl::StatusOr<ScoreOutput> out) {
                                if (out.ok()) {
                                  ToProto(*out, per_token, engine->tokenizer(), resp);
                                  reactor->AddField("tokens", absl::StrCat(out->ids.size()));
                                }
                                reactor->Done(out.status());
                              });
  reactor->Started(std::move(handle));
  return reactor;
}

grpc::ServerUnaryReactor* LongContextService::GetServerInfo(grpc::CallbackServerContext* ctx,
                                                            const v1::GetServerInfoRequest*,
                                                            v1::ServerInfo* resp) {
  auto call = calls_.BeginCall(ctx, "GetServerInfo", false, false);
  if (!call.ok()) return FinishNow(&calls_, ctx, nullptr, call.status());
  ToProto(*call->engine, calls_.config(), build_, calls_.auth_required(), start_time_, resp);
  return FinishNow(&calls_, ctx, &*call, absl::OkStatus());
}

// ---------------------------------------------------------------- streams

grpc::ServerBidiReactor<v1::IngestRequest, v1::IngestResponse>* LongContextService::Ingest(
    grpc::CallbackServerContext* ctx) {
  auto call = calls_.BeginCall(ctx, "Ingest", true, true);
  return new IngestReactor(&calls_, std::move(call));
}

grpc::ServerWriteReactor<v1::GenerateResponse>* LongContextService::Generate(
    grpc::CallbackServerContext* ctx, const v1::GenerateRequest* req) {
  auto call = calls_.BeginCall(ctx, "Generate", true, req->persist());
  return new GenerateReactor(&calls_, std::move(call), req);
}

grpc::ServerWriteReactor<v1::SessionData>* LongContextService::ExportSession(
    grpc::CallbackServerContext* ctx, const v1::ExportSessionRequest* req) {
  auto call = calls_.BeginCall(ctx, "ExportSession", true, false);
  return new ExportReactor(&calls_, std::move(call), req->session_id());
}

grpc::ServerReadReactor<v1::ImportSessionRequest>* LongContextService::ImportSession(
    grpc::CallbackServerContext* ctx, v1::Session* resp) {
  auto call = calls_.BeginCall(ctx, "ImportSession", true, true);
  return new ImportReactor(&calls_, std::move(call), resp);
}

}  // namespace longctx::server

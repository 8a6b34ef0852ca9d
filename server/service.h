// The longctx.v1.LongContext service on the gRPC callback API (docs/design.md §6):
// parses and admits calls (state, auth, stream limits, request ids), hands
// work to the engine's Engine and streams results back with one write
// in flight per stream. No math here.
//
// Thread safety: gRPC calls the handlers from its threads; engine callbacks
// arrive on the engine thread. Call state lives in one reactor per call
// (server/reactors.h), guarded by its own mutex; admission and accounting are
// the CallRegistry's.
#pragma once

#include <cstdint>

#include "absl/time/time.h"
#include "engine/engine.h"
#include "longctx/v1/longctx.grpc.pb.h"
#include "server/auth.h"
#include "server/build_info.h"
#include "server/call_registry.h"
#include "server/config.h"
#include "server/metrics.h"

namespace longctx::server {

class LongContextService final : public v1::LongContext::CallbackService {
 public:
  using State = CallRegistry::State;

  LongContextService(const ServerConfig& config, Authenticator auth, Metrics* metrics,
                     BuildInfo build);

  // The engine is up: calls are served. REQUIRES: `engine` outlives the calls.
  void SetEngine(Engine* engine) { calls_.SetEngine(engine); }
  // New calls get UNAVAILABLE from now on; calls already admitted go on.
  void StartDraining() { calls_.StartDraining(); }
  State state() const { return calls_.state(); }
  // Waits until no admitted call is left or `deadline` passes; true if none left.
  bool WaitForCalls(absl::Time deadline) { return calls_.WaitForCalls(deadline); }
  int64_t active_calls() const { return calls_.active_calls(); }

  const ServerConfig& config() const { return calls_.config(); }

  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* ctx,
                                          const v1::CreateSessionRequest* req,
                                          v1::Session* resp) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* ctx,
                                       const v1::GetSessionRequest* req,
                                       v1::Session* resp) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* ctx,
                                         const v1::ListSessionsRequest* req,
                                         v1::ListSessionsResponse* resp) override;
  grpc::ServerUnaryReactor* DeleteSession(grpc::CallbackServerContext* ctx,
                                          const v1::DeleteSessionRequest* req,
                                          google::protobuf::Empty* resp) override;
  grpc::ServerBidiReactor<v1::IngestRequest, v1::IngestResponse>* Ingest(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* ctx,
                                                           const v1::GenerateRequest* req) override;
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* ctx, const v1::ScoreRequest* req,
                                  v1::ScoreResponse* resp) override;
  grpc::ServerWriteReactor<v1::SessionData>* ExportSession(
      grpc::CallbackServerContext* ctx, const v1::ExportSessionRequest* req) override;
  grpc::ServerReadReactor<v1::ImportSessionRequest>* ImportSession(grpc::CallbackServerContext* ctx,
                                                                   v1::Session* resp) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* ctx,
                                          const v1::GetServerInfoRequest* req,
                                          v1::ServerInfo* resp) override;

 private:
  CallRegistry calls_;
  const BuildInfo build_;
  const absl::Time start_time_;
};

}  // namespace longctx::server

// The longctx.v1.LongContext service on the gRPC callback API (DESIGN §6):
// parses and admits calls (state, auth, stream limits, request ids), hands
// work to the engine (engine/engine.h) and streams results back with one write
// in flight per stream. No math here.
//
// Thread safety: gRPC calls the handlers from its threads; engine callbacks
// arrive on the engine thread. Call state lives in one reactor per call,
// guarded by its own mutex.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "longctx/v1/longctx.grpc.pb.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/logging.h"
#include "server/metrics.h"

namespace longctx::server {

struct BuildInfo {
  std::string version;
  std::string git_commit;
  std::string build_type;
};

// What every call carries from admission to its end.
struct CallContext {
  std::string method;
  std::string request_id;
  Caller caller;
  bool stream = false;
  absl::Time start;
  absl::Time deadline = absl::InfiniteFuture();
  Engine* engine = nullptr;
  LogFields fields;  // added to the call's log line (session id, counts)
};

class LongContextService final : public v1::LongContext::CallbackService {
 public:
  enum class State { kStarting, kServing, kDraining };

  LongContextService(const ServerConfig& config, Authenticator auth, Metrics* metrics,
                     BuildInfo build);

  // The engine is up: calls are served. REQUIRES: `engine` outlives the calls.
  void SetEngine(Engine* engine);
  // New calls get UNAVAILABLE from now on; calls already admitted go on.
  void StartDraining();
  State state() const;
  // Waits until no admitted call is left or `deadline` passes; true if none left.
  bool WaitForCalls(absl::Time deadline);
  int64_t active_calls() const;

  // Admission: state, authentication, permissions, stream limits, request id.
  absl::StatusOr<CallContext> BeginCall(grpc::CallbackServerContext* ctx, const char* method,
                                        bool stream, bool mutates);
  // Logs the call, counts it and releases its admission.
  void EndCall(const CallContext& call, const grpc::Status& status);

  const ServerConfig& config() const { return config_; }

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
  const ServerConfig config_;
  const Authenticator auth_;
  Metrics* const metrics_;  // may be null
  const BuildInfo build_;
  const absl::Time start_time_;

  mutable absl::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kStarting;
  Engine* engine_ ABSL_GUARDED_BY(mu_) = nullptr;
  int64_t calls_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t streams_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace longctx::server

// The longctx.v1.LongContext service on the gRPC callback API (docs/design.md §6):
// parses and admits calls (state, auth, limits, request ids), hands work to
// the engine's Engine and streams results back with one write in flight per
// stream. No math here.
//
// Every method is registered raw (ByteBuffer in and out) so that the service
// parses requests itself: bytes that are not a valid request are answered
// INVALID_ARGUMENT, logged and counted (server/wire.h says why).
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

namespace raw {
using v1::LongContext;
// Every method of longctx.v1.LongContext with ByteBuffer requests and responses.
using Service = LongContext::WithRawCallbackMethod_CreateSession<
    LongContext::WithRawCallbackMethod_GetSession<LongContext::WithRawCallbackMethod_ListSessions<
        LongContext::WithRawCallbackMethod_DeleteSession<LongContext::WithRawCallbackMethod_Ingest<
            LongContext::WithRawCallbackMethod_Generate<LongContext::WithRawCallbackMethod_Score<
                LongContext::WithRawCallbackMethod_ExportSession<
                    LongContext::WithRawCallbackMethod_ImportSession<
                        LongContext::WithRawCallbackMethod_GetServerInfo<
                            LongContext::Service>>>>>>>>>>;
using Bytes = grpc::ByteBuffer;
}  // namespace raw

class LongContextService final : public raw::Service {
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

  // Each parses its request (raw::Bytes) as the message the method's name
  // says; responses are serialized into `resp`.
  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* ctx, const raw::Bytes* req,
                                          raw::Bytes* resp) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* ctx, const raw::Bytes* req,
                                       raw::Bytes* resp) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* ctx, const raw::Bytes* req,
                                         raw::Bytes* resp) override;
  grpc::ServerUnaryReactor* DeleteSession(grpc::CallbackServerContext* ctx, const raw::Bytes* req,
                                          raw::Bytes* resp) override;
  grpc::ServerBidiReactor<raw::Bytes, raw::Bytes>* Ingest(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerWriteReactor<raw::Bytes>* Generate(grpc::CallbackServerContext* ctx,
                                                 const raw::Bytes* req) override;
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* ctx, const raw::Bytes* req,
                                  raw::Bytes* resp) override;
  grpc::ServerWriteReactor<raw::Bytes>* ExportSession(grpc::CallbackServerContext* ctx,
                                                      const raw::Bytes* req) override;
  grpc::ServerReadReactor<raw::Bytes>* ImportSession(grpc::CallbackServerContext* ctx,
                                                     raw::Bytes* resp) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* ctx, const raw::Bytes* req,
                                          raw::Bytes* resp) override;

 private:
  CallRegistry calls_;
  const BuildInfo build_;
  const absl::Time start_time_;
};

}  // namespace longctx::server

// Admission and accounting of the service's calls: the serving state
// (starting, serving, draining), authentication and permissions, the syntax
// of the session id, the stream limits (all tenants and per tenant), the
// per-tenant limit of engine calls in flight and request ids on the way in; the log line, the RPC
// metrics and the count that a drain waits on at the end. This is all a reactor sees of the server:
// the engine and the caller arrive in its CallContext.
//
// Thread safety: all methods are safe from any thread; mu_ guards the state
// and the counts.
#pragma once

#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/logging.h"
#include "server/metrics.h"

namespace longctx::server {

// What every call carries from admission to its end.
struct CallContext {
  std::string method;
  std::string request_id;
  Caller caller;
  bool stream = false;
  bool engine_work = false;  // counted in the tenant's calls in flight
  absl::Time start;
  absl::Time deadline = absl::InfiniteFuture();
  Engine* engine = nullptr;
  // gRPC's context of the call, valid until the call is done: the call's
  // status adds its trailing metadata there (server/status.h).
  grpc::CallbackServerContext* ctx = nullptr;
  LogFields fields;  // added to the call's log line (session id, counts)
};

// What admission needs to know of a method.
struct CallKind {
  bool stream = false;       // counts against the stream limits
  bool mutates = false;      // refused to read-only callers
  bool engine_work = false;  // counts against max_inflight_per_tenant (streams always do)
};

// Trailing metadata of a RESOURCE_EXHAUSTED refusal: milliseconds after which
// a retry may succeed.
inline constexpr char kRetryAfterMetadata[] = "retry-after-ms";

class CallRegistry {
 public:
  enum class State { kStarting, kServing, kDraining };

  // `metrics` may be null; otherwise it must outlive this object.
  CallRegistry(const ServerConfig& config, Authenticator auth, Metrics* metrics);

  // The engine is up: calls are admitted. REQUIRES: `engine` outlives the calls.
  void SetEngine(Engine* engine);
  // New calls are refused (UNAVAILABLE) from now on; admitted calls go on.
  void StartDraining();
  State state() const;
  // Waits until no admitted call is left or `deadline` passes; true if none left.
  bool WaitForCalls(absl::Time deadline);
  int64_t active_calls() const;

  // Admission: state, authentication, permissions, the syntax and the home of
  // `session_id` (if not null; it then joins the call's log fields; an id
  // whose home is another replica is refused, server/routing.h), limits,
  // request id (also sent back as initial metadata). A refused call is logged
  // and counted here; an admitted one must be ended with EndCall exactly once.
  // A call over a limit gets RESOURCE_EXHAUSTED and kRetryAfterMetadata.
  absl::StatusOr<CallContext> BeginCall(grpc::CallbackServerContext* ctx, const char* method,
                                        CallKind kind, const std::string* session_id = nullptr);
  // Logs the call, counts it and releases its admission.
  void EndCall(const CallContext& call, const grpc::Status& status);
  // Counts a request of `method` that failed to parse (server/wire.h).
  void CountUnparsable(const std::string& method);

  const ServerConfig& config() const { return config_; }
  bool auth_required() const { return auth_.enabled(); }

 private:
  // The caller, or why it may not make this call.
  absl::StatusOr<Caller> Authorize(const grpc::CallbackServerContext& ctx, const char* method,
                                   bool mutates) const;
  // MisdirectedError when `id` names another replica and this one does not
  // hold it for `tenant`; else OK.
  absl::Status CheckHome(const std::string& tenant, const std::string& id) const;
  // Counts the call in, or says why the server takes no more.
  absl::Status Admit(CallContext* call);
  // Why the call would pass a limit, or OK.
  absl::Status OverLimitLocked(const CallContext& call) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Logs and counts a refused call, adding the trailing metadata its status
  // carries to `ctx`.
  void Refused(const CallContext& call, const absl::Status& status,
               grpc::CallbackServerContext* ctx);

  const ServerConfig config_;
  const Authenticator auth_;
  Metrics* const metrics_;  // may be null

  mutable absl::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kStarting;
  Engine* engine_ ABSL_GUARDED_BY(mu_) = nullptr;
  int64_t calls_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t streams_ ABSL_GUARDED_BY(mu_) = 0;
  struct TenantCalls {
    int64_t streams = 0;
    int64_t in_flight = 0;  // engine_work calls
  };
  absl::flat_hash_map<std::string, TenantCalls> tenants_ ABSL_GUARDED_BY(mu_);
};

}  // namespace longctx::server

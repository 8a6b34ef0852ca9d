// The bookkeeping every reactor of the service shares, so that a reactor holds
// only its own protocol: the call's admission and its accounting at the end,
// the mutex that guards the reactor's state, and the once-only Finish.
//
// Lifetime rule: a reactor calls Finish exactly once, outside its mutex and as
// the last thing it does, and only once nothing else (an engine callback, the
// submitting handler) can still reach it; OnDone then ends the call in the
// registry and deletes the reactor. Update() keeps the rule: a reactor changes
// its state inside Update and says in FinishableLocked when the call may end
// and with which status; Update finishes it the first time it may.
//
// Thread safety: engine callbacks and gRPC reactions may arrive on any thread;
// mu_ guards the finished flag, the call's log fields and the derived
// reactor's own state.
#pragma once

#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/support/status.h"
#include "server/call_registry.h"
#include "server/status.h"

namespace longctx::server {

// `Reactor`: one of gRPC's server reactors (ServerUnaryReactor,
// ServerBidiReactor<Req, Resp>, ServerReadReactor<Req>, ServerWriteReactor<Resp>).
template <class Reactor>
class CallReactor : public Reactor {
 public:
  void OnDone() final {
    if (admitted_) calls_->EndCall(call_, final_);
    delete this;
  }

 protected:
  // A call that admission refused finishes at once with its status (the
  // registry has already logged and counted it); the derived constructor then
  // does nothing more (admitted() is false).
  CallReactor(CallRegistry* calls, absl::StatusOr<CallContext> call) : calls_(calls) {
    if (!call.ok()) {
      finished_ = true;
      final_ = ToGrpcStatus(call.status());
      this->Finish(final_);
      return;
    }
    call_ = *std::move(call);
    admitted_ = true;
  }
  ~CallReactor() override = default;

  // The status to end the call with if it may end now, else nullopt. Called
  // with mu_ held and only while the call has not finished; once it returns a
  // status the call finishes with it, so it may add the call's last log fields.
  virtual std::optional<absl::Status> FinishableLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) = 0;

  // Runs `change` with mu_ held, then finishes the call if it may end now.
  // Once the call may have finished, `this` may be gone: Update is the last
  // thing the caller does unless the call cannot end yet.
  template <class Change>
  void Update(Change&& change) ABSL_LOCKS_EXCLUDED(mu_) {
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      change();
      if (!finished_) {
        if (std::optional<absl::Status> status = FinishableLocked()) {
          finished_ = true;
          final_ = ToGrpcStatus(*status);
          finish = final_;
        }
      }
    }
    if (finish) this->Finish(*finish);
  }

  bool admitted() const { return admitted_; }
  bool FinishedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return finished_; }
  // The admitted call. Its engine, caller and deadline do not change; its log
  // fields are written only through AddField.
  const CallContext& call() const { return call_; }
  const ServerConfig& config() const { return calls_->config(); }

  // Adds a field to the call's log line. REQUIRES: before the call finishes.
  void AddFieldLocked(std::string key, std::string value) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    call_.fields.emplace_back(std::move(key), std::move(value));
  }
  void AddField(std::string key, std::string value) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    AddFieldLocked(std::move(key), std::move(value));
  }

  absl::Mutex mu_;

 private:
  CallRegistry* const calls_;
  CallContext call_;
  bool admitted_ = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_;  // set once, when finished_ turns true; read by OnDone
};

}  // namespace longctx::server

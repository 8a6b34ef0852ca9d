// The bookkeeping every reactor of the service shares, so that a reactor holds
// only its own protocol: the call's admission and its accounting at the end,
// the mutex that guards the reactor's state, and the once-only Finish.
//
// Lifetime rule: a reactor calls Finish exactly once, outside its mutex and as
// the last thing it does, and only once nothing else (an engine callback, the
// submitting handler) can still reach it; OnDone then ends the call in the
// registry and drops gRPC's reference to the reactor. The idle watch (a
// grpc::Alarm, see WatchIdle) holds a reference of its own while armed, so an
// alarm that fires as the call ends still finds the reactor; the last
// reference deletes it. Update() keeps the rule: a reactor changes
// its state inside Update and says in FinishableLocked when the call may end
// and with which status; Update finishes it the first time it may.
//
// Thread safety: engine callbacks and gRPC reactions may arrive on any thread;
// mu_ guards the finished flag, the call's log fields and the derived
// reactor's own state.
#pragma once

#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/alarm.h"
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
    grpc::Alarm* alarm = nullptr;
    {
      absl::MutexLock lock(&mu_);
      done_ = true;  // no alarm is armed after this
      alarm = idle_alarm_.get();
    }
    // Outside mu_: the cancelled alarm's callback may run on this thread.
    if (alarm != nullptr) alarm->Cancel();
    Unref();
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
          final_ = ToGrpcStatus(*status, call_.ctx);
          finish = final_;
        }
      }
    }
    if (finish) this->Finish(*finish);
  }

  // Ends the call through OnIdleLocked when the client has sent nothing for
  // `timeout` while WaitingForClientLocked() held (stream_idle_timeout): a
  // silent client does not hold its stream slot for ever. REQUIRES: called
  // once, from the derived constructor of an admitted call.
  void WatchIdle(absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    idle_timeout_ = timeout;
    last_active_ = absl::Now();
    ArmIdleAlarmLocked(last_active_ + timeout);
  }
  // The client sent something, or the reactor started waiting for it.
  void ClientActiveLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { last_active_ = absl::Now(); }
  // Whether the call is waiting for the client (a read is outstanding).
  virtual bool WaitingForClientLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return false; }
  // The client was idle too long: the reactor fails the call with `status`.
  virtual void OnIdleLocked(absl::Status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {}

  bool admitted() const { return admitted_; }
  bool FinishedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return finished_; }
  // The admitted call. Its engine, caller and deadline do not change; its log
  // fields are written only through AddField.
  const CallContext& call() const { return call_; }
  const ServerConfig& config() const { return calls_->config(); }
  // A message of this call failed to parse (server/wire.h).
  void CountUnparsable() { calls_->CountUnparsable(call_.method); }

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
  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  void ArmIdleAlarmLocked(absl::Time when) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // The previous alarm may be the one whose callback is running: it is
    // destroyed one arming later.
    retired_alarm_ = std::move(idle_alarm_);
    idle_alarm_ = std::make_unique<grpc::Alarm>();
    Ref();
    // A deadline in the future, so that the callback never runs inside Set
    // (it takes mu_, held here).
    when = std::max(when, absl::Now() + absl::Milliseconds(10));
    idle_alarm_->Set(absl::ToChronoTime(when), [this](bool fired) { OnIdleAlarm(fired); });
  }

  void OnIdleAlarm(bool fired) ABSL_LOCKS_EXCLUDED(mu_) {
    Update([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      if (!fired || done_ || finished_) return;
      const absl::Time now = absl::Now();
      if (!WaitingForClientLocked()) {
        ArmIdleAlarmLocked(now + idle_timeout_);
      } else if (now - last_active_ < idle_timeout_) {
        ArmIdleAlarmLocked(last_active_ + idle_timeout_);
      } else {
        OnIdleLocked(absl::DeadlineExceededError(
            absl::StrCat("the client sent nothing for ", absl::FormatDuration(idle_timeout_),
                         " (stream_idle_timeout): the stream is closed to free its slot")));
      }
    });
    Unref();  // the alarm's reference
  }

  CallRegistry* const calls_;
  std::atomic<int> refs_{1};  // gRPC's (dropped by OnDone) and one per armed alarm
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Duration idle_timeout_ ABSL_GUARDED_BY(mu_);
  absl::Time last_active_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<grpc::Alarm> idle_alarm_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<grpc::Alarm> retired_alarm_ ABSL_GUARDED_BY(mu_);
  CallContext call_;
  bool admitted_ = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_;  // set once, when finished_ turns true; read by OnDone
};

}  // namespace longctx::server

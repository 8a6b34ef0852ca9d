#include "server/health.h"

#include <optional>

namespace longctx::server {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Watch stream: sends the current status, then every change (only the
// latest one if several happen during a write).
class HealthService::Watcher final : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  Watcher(HealthService* service, bool known) : service_(service), known_(known) {}

  // Called with the service's mutex held.
  void Update(HealthService::Status status) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    next_ = known_ ? status : HealthCheckResponse::SERVICE_UNKNOWN;
    MaybeWriteLocked();
  }
  void End() {
    bool finish;
    {
      absl::MutexLock lock(&mu_);
      ending_ = true;
      finish = TakeFinishLocked();
    }
    if (finish) Finish(grpc::Status::OK);
  }

  // Finish is called outside mu_: OnDone may delete this right after it.
  void OnWriteDone(bool ok) override {
    bool finish;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) ending_ = true;
      MaybeWriteLocked();
      finish = TakeFinishLocked();
    }
    if (finish) Finish(grpc::Status::OK);
  }
  void OnCancel() override {
    bool finish;
    {
      absl::MutexLock lock(&mu_);
      ending_ = true;
      finish = TakeFinishLocked();
    }
    if (finish) Finish(grpc::Status::OK);
  }
  void OnDone() override {
    service_->Remove(this);
    delete this;
  }

 private:
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || ending_ || finished_ || !next_ || (sent_ && *next_ == *sent_)) return;
    msg_.set_status(*next_);
    sent_ = next_;
    writing_ = true;
    StartWrite(&msg_);
  }
  bool TakeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!ending_ || writing_ || finished_) return false;
    finished_ = true;
    return true;
  }

  HealthService* const service_;
  const bool known_;
  absl::Mutex mu_;
  std::optional<HealthService::Status> next_ ABSL_GUARDED_BY(mu_);
  std::optional<HealthService::Status> sent_ ABSL_GUARDED_BY(mu_);
  HealthCheckResponse msg_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool ending_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

bool HealthService::Known(const std::string& service) {
  return service.empty() || service == "longctx.v1.LongContext";
}

void HealthService::SetServing(bool serving) {
  absl::MutexLock lock(&mu_);
  if (shutdown_) return;
  status_ = serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
  for (Watcher* w : watchers_) w->Update(status_);
}

void HealthService::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
  status_ = HealthCheckResponse::NOT_SERVING;
  for (Watcher* w : watchers_) {
    w->Update(status_);
    w->End();
  }
}

void HealthService::Remove(Watcher* w) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(w);
}

grpc::ServerUnaryReactor* HealthService::Check(grpc::CallbackServerContext* ctx,
                                               const HealthCheckRequest* req,
                                               HealthCheckResponse* resp) {
  auto* reactor = ctx->DefaultReactor();
  if (!Known(req->service())) {
    reactor->Finish(
        grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service '" + req->service() + "'"));
    return reactor;
  }
  {
    absl::MutexLock lock(&mu_);
    resp->set_status(status_);
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(grpc::CallbackServerContext*,
                                                                    const HealthCheckRequest* req) {
  auto* w = new Watcher(this, Known(req->service()));
  absl::MutexLock lock(&mu_);
  watchers_.insert(w);
  w->Update(status_);
  if (shutdown_) w->End();
  return w;
}

}  // namespace longctx::server

// grpc.health.v1.Health (Check and Watch) with the server's own notion of
// health: NOT_SERVING while starting and draining, SERVING in between. The
// overall status ("") and "longctx.v1.LongContext" are the same; other service
// names are unknown.
//
// Thread safety: SetServing and the RPCs are safe from any thread.
#pragma once

#include <set>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace longctx::server {

class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  using Status = grpc::health::v1::HealthCheckResponse::ServingStatus;

  void SetServing(bool serving);
  // Ends every Watch stream (at shutdown).
  void Shutdown();

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* ctx,
                                  const grpc::health::v1::HealthCheckRequest* req,
                                  grpc::health::v1::HealthCheckResponse* resp) override;
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req) override;

  class Watcher;

 private:
  friend class Watcher;
  static bool Known(const std::string& service);
  void Remove(Watcher* w);

  absl::Mutex mu_;
  Status status_ ABSL_GUARDED_BY(mu_) = grpc::health::v1::HealthCheckResponse::NOT_SERVING;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  std::set<Watcher*> watchers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace longctx::server

// The longctxd process around the service: gRPC server (health, reflection,
// TLS, message limits), metrics exposer, model loading and graceful drain.
//
// Life cycle: Start() listens at once with health NOT_SERVING and calls
// refused as "starting"; LoadEngine() loads the model and turns SERVING;
// Drain() turns NOT_SERVING, refuses new calls, gives open calls the grace
// period, then cancels what is left and stops the engine.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/session/session_service.h"
#include "grpcpp/server.h"
#include "server/config.h"
#include "server/health.h"
#include "server/metrics.h"
#include "server/service.h"

namespace longctx::server {

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerConfig& config, BuildInfo build);
  ~Server();

  absl::Status LoadEngine();
  // Returns once the server has stopped; the number of calls cut off at the
  // end of the grace period is logged.
  void Drain();

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_ ? metrics_->port() : 0; }

 private:
  explicit Server(ServerConfig config) : config_(std::move(config)) {}

  const ServerConfig config_;
  BuildInfo build_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<HealthService> health_;
  std::unique_ptr<LongContextService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<SessionService> engine_;
  int grpc_port_ = 0;
};

// EngineOptions from the server configuration.
EngineOptions EngineOptionsFrom(const ServerConfig& config);

}  // namespace longctx::server

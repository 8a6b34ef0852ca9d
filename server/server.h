// The longctxd process around the service: gRPC server (health, reflection,
// TLS, message limits), the optional OpenAI-compatible HTTP door, metrics
// exposer, model loading and graceful drain.
//
// Life cycle: Start() listens at once with health NOT_SERVING and calls
// refused as "starting"; LoadEngine() loads the model and turns SERVING;
// Drain() turns NOT_SERVING, refuses new calls, gives open calls the grace
// period, then cancels what is left and stops the engine. With world_size > 1
// this process is rank 0 of a context-parallel group (engine/dist/rank_group.h): health
// turns NOT_SERVING for good when a rank is lost.
#pragma once

#include <memory>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "engine/engine.h"
#include "grpcpp/server.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/health.h"
#include "server/metrics.h"
#include "server/openai/http_door.h"
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

  // Re-reads the tokens and certificate-tenants files (SIGHUP; also polled
  // every auth_reload_interval, then only if they changed). A file that fails
  // to parse is logged and the previous tables stay in force.
  void ReloadAuth(bool force);

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_ ? metrics_->port() : 0; }
  int http_port() const { return http_ ? http_->port() : 0; }

 private:
  explicit Server(ServerConfig config) : config_(std::move(config)) {}

  const ServerConfig config_;
  BuildInfo build_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<HealthService> health_;
  std::unique_ptr<LongContextService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<openai::HttpDoor> http_;  // null unless http_listen is set
  // Watches the engine's health (a group's ranks) and turns NOT_SERVING when
  // it breaks.
  void Monitor();

  std::unique_ptr<Engine> engine_;
  Authenticator auth_;               // shares its tables with the service's
  absl::Notification stop_monitor_;  // also stops auth_reloader_
  std::thread monitor_;
  std::thread auth_reloader_;
  int grpc_port_ = 0;
};

// The engine's configuration from the server's: model, backend, limits and,
// with world_size > 1, the group this process leads.
EngineConfig EngineConfigFrom(const ServerConfig& config);

}  // namespace longctx::server

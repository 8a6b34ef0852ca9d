// Prometheus metrics of longctxd (docs/design.md §8), served by prometheus-cpp's pull
// exposer on their own port. Names follow vLLM's (longctx_ instead of vllm:)
// so existing dashboards and autoscalers read them; the engine's plain stats
// are turned into metric families at scrape time. No tenant ids or tokens in
// labels.
//
// Thread safety: all methods are safe from any thread.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/support/status.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

namespace longctx {
class Engine;
}

namespace longctx::server {

class EngineCollector;

class Metrics {
 public:
  // Listens on `address` (host:port; port 0 picks one).
  static absl::StatusOr<std::unique_ptr<Metrics>> Start(const std::string& address,
                                                        const std::string& version);
  ~Metrics();

  int port() const { return port_; }

  // From now on the engine's stats are exported. REQUIRES: `service` outlives
  // this object or Detach() is called first.
  void AttachEngine(const Engine* service, const std::string& model, const std::string& backend);
  void DetachEngine();

  // One finished RPC (unary or stream) and its status.
  void RecordRpc(const std::string& method, grpc::StatusCode code);
  // A request (or stream message) of `method` that failed to parse.
  void RequestUnparsable(const std::string& method);
  // One finished request of the HTTP door by route and HTTP status.
  void RecordHttp(const std::string& route, int status);
  void StreamOpened() { streams_open_->Increment(); }
  void StreamClosed() { streams_open_->Decrement(); }
  // 0 starting, 1 serving, 2 draining.
  void SetServerState(int state) { server_state_->Set(state); }

 private:
  Metrics() = default;

  int port_ = 0;
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<EngineCollector> engine_;
  prometheus::Family<prometheus::Counter>* rpcs_ = nullptr;
  prometheus::Family<prometheus::Counter>* unparsable_ = nullptr;
  prometheus::Family<prometheus::Counter>* http_ = nullptr;
  prometheus::Gauge* streams_open_ = nullptr;
  prometheus::Gauge* server_state_ = nullptr;
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace longctx::server

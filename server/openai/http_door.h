// longctxd's OpenAI-compatible HTTP door (docs/service.md, "OpenAI-compatible
// HTTP"): GET /v1/models, POST /v1/chat/completions and POST /v1/completions,
// whole or streamed as server-sent events, on its own address (http_listen),
// and GET /health for load balancers.
//
// Built on cpp-httplib (Debian's libcpp-httplib-dev) rather than civetweb,
// which prometheus-cpp already links: cpp-httplib gives a chunked content
// provider whose failed writes tell us the client has gone (to cancel its
// generation), a bounded thread pool, and TLS with the same PEM files as the
// gRPC port, in a few calls; civetweb would need all of that written against
// its C callbacks.
//
// The door admits calls as the gRPC service does: the same bearer tokens and
// tenants (server/auth.h), refusals while starting or draining, the
// max_concurrent_streams limit (counted separately from gRPC's streams), and
// the engine's own limits on every request. Each call is logged and counted
// in longctx_http_requests_total by route and HTTP code.
//
// Thread safety: all public methods are safe from any thread. Handlers run
// on the door's pool threads; engine callbacks only touch a CompletionRun's
// buffer (server/openai/completion_run.h).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/metrics.h"
#include "server/openai/completion_run.h"
#include "server/openai/openai_api.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace longctx::server::openai {

class HttpDoor {
 public:
  // Listens on config.http_listen (TLS with config.tls_cert/tls_key, client
  // certificates with tls_client_ca) and serves "starting" refusals until
  // SetEngine. `metrics` may be null; otherwise it must outlive the door.
  static absl::StatusOr<std::unique_ptr<HttpDoor>> Start(const ServerConfig& config,
                                                         Authenticator auth, Metrics* metrics,
                                                         int64_t start_unix_seconds);
  ~HttpDoor();  // Stop()
  HttpDoor(const HttpDoor&) = delete;
  HttpDoor& operator=(const HttpDoor&) = delete;

  int port() const { return port_; }
  // The engine is up: calls are served. REQUIRES: `engine` outlives the door
  // or Stop() is called first.
  void SetEngine(Engine* engine);
  // New calls get 503 from now on; admitted ones go on.
  void StartDraining();
  // Waits until no admitted call is left or `deadline` passes; true if none.
  bool WaitForCalls(absl::Time deadline);
  int64_t active_calls() const;
  // Cancels the generations still open, stops listening and joins the pool.
  void Stop();

 private:
  // One admitted call, from Begin to End.
  struct Call {
    const char* route = "";
    std::string request_id;
    Caller caller;
    bool stream = false;
    absl::Time start;
    Engine* engine = nullptr;
  };
  class Stream;  // a streamed answer's state (http_door.cc)

  HttpDoor(const ServerConfig& config, Authenticator auth, Metrics* metrics, int64_t start);
  void Route();

  // State and authentication; the call must be ended with End.
  absl::StatusOr<Call> Begin(const httplib::Request& req, const char* route);
  // Takes a stream slot for `call` (max_concurrent_streams).
  absl::Status BeginStream(Call& call);
  void End(const Call& call, int http_status, const absl::Status& status);
  // Answers `status` as an OpenAI error and ends `call`.
  void Fail(const Call& call, httplib::Response& res, const absl::Status& status);
  // The same for a call refused at admission (nothing to end).
  void Refuse(const char* route, httplib::Response& res, const absl::Status& status);

  // GET /health: 200 {"status": "SERVING"} while serving, else 503
  // NOT_SERVING (starting, draining). No token needed, nothing disclosed: for
  // load balancers' health checks (deploy/envoy).
  void Health(httplib::Response& res);
  void Models(const httplib::Request& req, httplib::Response& res);
  void Completions(ApiKind kind, const httplib::Request& req, httplib::Response& res);
  absl::StatusOr<CompletionRequest> Parse(ApiKind kind, const httplib::Request& req,
                                          const Call& call) const;
  // Waits for the whole answer and writes it.
  void Answer(Call call, std::unique_ptr<CompletionRun> run, const ResponseMeta& meta,
              httplib::Response& res);
  // Streams the answer as server-sent events.
  void StreamAnswer(Call call, std::unique_ptr<CompletionRun> run, ResponseMeta meta,
                    bool include_usage, httplib::Response& res);

  const ServerConfig config_;
  const Authenticator auth_;
  Metrics* const metrics_;  // may be null
  const int64_t start_unix_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
  std::atomic<bool> stopping_{false};  // Stop(): open runs cancel themselves

  enum class State { kStarting, kServing, kDraining };
  mutable absl::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kStarting;
  Engine* engine_ ABSL_GUARDED_BY(mu_) = nullptr;
  int64_t calls_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t streams_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace longctx::server::openai

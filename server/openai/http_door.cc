#include "server/openai/http_door.h"

#include <httplib.h>
#include <signal.h>

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/logging.h"
#include "server/routing.h"

namespace longctx::server::openai {
namespace {

using nlohmann::json;

// How often a waiting handler looks at its client and at Stop().
constexpr absl::Duration kPoll = absl::Milliseconds(200);
// The HTTP code logged and counted for a client that went away mid-answer
// (nginx's convention; never sent).
constexpr int kClientClosed = 499;

constexpr const char* kModelsRoute = "/v1/models";
constexpr const char* kHealthRoute = "/health";
constexpr const char* kChatRoute = "/v1/chat/completions";
constexpr const char* kCompletionsRoute = "/v1/completions";

std::string RequestId(const httplib::Request& req) {
  std::string id = req.get_header_value("x-request-id");
  const bool usable =
      !id.empty() && id.size() <= 128 &&
      std::all_of(id.begin(), id.end(), [](char c) { return c > 0x20 && c < 0x7f; });
  if (usable) return id;
  thread_local absl::BitGen gen;
  return absl::StrFormat("%016x", absl::Uniform<uint64_t>(gen));
}

// Text for the wire; the engine's text is UTF-8, and the rest is replaced
// rather than thrown over.
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void WriteJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(Dump(body), "application/json");
}

std::string Event(const json& j) { return absl::StrCat("data: ", Dump(j), "\n\n"); }

absl::StatusOr<std::pair<std::string, int>> HostPort(const std::string& address) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port)) {
    return absl::InvalidArgumentError(
        absl::StrCat("http_listen ", address, ": expected host:port"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return std::make_pair(host, port);
}

std::unique_ptr<httplib::Server> NewServer(const ServerConfig& c) {
  if (c.tls_cert.empty()) return std::make_unique<httplib::Server>();
  return std::make_unique<httplib::SSLServer>(
      c.tls_cert.c_str(), c.tls_key.c_str(),
      c.tls_client_ca.empty() ? nullptr : c.tls_client_ca.c_str());
}

}  // namespace

// A streamed answer: the run, what every chunk repeats, and how it ended.
// Touched only by the pool thread that writes the response.
class HttpDoor::Stream {
 public:
  Stream(Call call, std::unique_ptr<CompletionRun> run, ResponseMeta meta, bool include_usage,
         CompletionRun::Update first)
      : call_(std::move(call)),
        run_(std::move(run)),
        meta_(std::move(meta)),
        include_usage_(include_usage),
        next_(std::move(first)) {}

  const Call& call() const { return call_; }

  // Writes what the engine has produced since the last call. False when the
  // client has gone (the generation is then cancelled).
  bool Pump(httplib::DataSink& sink, bool stopping) {
    CompletionRun::Update u = next_ ? *std::exchange(next_, std::nullopt) : run_->Wait(kPoll);
    if (stopping) run_->Cancel();
    if (!u.text.empty()) {
      if (!Write(sink, Event(RenderChunk(meta_, u.text, first_, std::nullopt)))) return false;
      first_ = false;
    }
    if (!u.finished) return true;
    bool ok = true;
    if (u.result.ok()) {
      ok = Write(sink, Event(RenderChunk(meta_, "", first_, u.result->result.finish_reason)));
      if (ok && include_usage_) ok = Write(sink, Event(RenderUsageChunk(meta_, run_->usage())));
    } else {
      // Headers are out: the error travels as an event, as OpenAI's does.
      status_ = u.result.status();
      ok = Write(sink, Event(RenderError(status_)));
    }
    if (!ok || !Write(sink, "data: [DONE]\n\n")) return false;
    finished_ = true;
    sink.done();
    return true;
  }

  // Ends the run (cancelling it if the client left: its transient session is
  // deleted) and says how the call went.
  std::pair<int, absl::Status> Finish() {
    run_.reset();
    if (!finished_) return {kClientClosed, absl::CancelledError("the client closed the stream")};
    return {status_.ok() ? 200 : HttpStatus(status_), status_};
  }

 private:
  bool Write(httplib::DataSink& sink, const std::string& data) {
    if (sink.write(data.data(), data.size())) return true;
    run_->Cancel();
    return false;
  }

  const Call call_;
  std::unique_ptr<CompletionRun> run_;
  const ResponseMeta meta_;
  const bool include_usage_;
  std::optional<CompletionRun::Update> next_;  // the first, read before the headers
  bool first_ = true;
  bool finished_ = false;
  absl::Status status_;
};

absl::StatusOr<std::unique_ptr<HttpDoor>> HttpDoor::Start(const ServerConfig& config,
                                                          Authenticator auth, Metrics* metrics,
                                                          int64_t start_unix_seconds) {
  auto address = HostPort(config.http_listen);
  if (!address.ok()) return address.status();
  // A client that leaves mid-write must fail the write, not kill the process.
  signal(SIGPIPE, SIG_IGN);
  std::unique_ptr<HttpDoor> door(
      new HttpDoor(config, std::move(auth), metrics, start_unix_seconds));
  door->http_ = NewServer(config);
  if (!door->http_->is_valid()) {
    return absl::InvalidArgumentError("http_listen: cannot set up TLS with tls_cert and tls_key");
  }
  const int threads = config.http_threads;
  door->http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  door->http_->set_payload_max_length(static_cast<size_t>(config.max_message_bytes));
  door->http_->set_keep_alive_timeout(2);
  door->Route();
  const auto& [host, port] = *address;
  door->port_ = port == 0 ? door->http_->bind_to_any_port(host)
                          : (door->http_->bind_to_port(host, port) ? port : -1);
  if (door->port_ <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", config.http_listen));
  }
  door->thread_ = std::thread([d = door.get()] { d->http_->listen_after_bind(); });
  return door;
}

void HttpDoor::Route() {
  http_->Get(kHealthRoute,
             [this](const httplib::Request&, httplib::Response& res) { Health(res); });
  http_->Get(kModelsRoute,
             [this](const httplib::Request& req, httplib::Response& res) { Models(req, res); });
  http_->Post(kChatRoute, [this](const httplib::Request& req, httplib::Response& res) {
    Completions(ApiKind::kChat, req, res);
  });
  http_->Post(kCompletionsRoute, [this](const httplib::Request& req, httplib::Response& res) {
    Completions(ApiKind::kCompletion, req, res);
  });
  // Unknown routes and methods answer in the same error shape.
  http_->set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const absl::Status s =
        res.status == 404
            ? absl::NotFoundError(absl::StrCat("no route ", req.method, " ", req.path))
            : absl::InvalidArgumentError(absl::StrCat("HTTP ", res.status));
    const int status = res.status;
    WriteJson(res, status, RenderError(s));
  });
}

HttpDoor::HttpDoor(const ServerConfig& config, Authenticator auth, Metrics* metrics, int64_t start)
    : config_(config), auth_(std::move(auth)), metrics_(metrics), start_unix_(start) {}

HttpDoor::~HttpDoor() { Stop(); }

void HttpDoor::Stop() {
  stopping_.store(true);
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
}

void HttpDoor::SetEngine(Engine* engine) {
  absl::MutexLock lock(&mu_);
  engine_ = engine;
  if (state_ == State::kStarting) state_ = State::kServing;
}

void HttpDoor::StartDraining() {
  absl::MutexLock lock(&mu_);
  state_ = State::kDraining;
}

bool HttpDoor::WaitForCalls(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return calls_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

int64_t HttpDoor::active_calls() const {
  absl::MutexLock lock(&mu_);
  return calls_;
}

absl::StatusOr<HttpDoor::Call> HttpDoor::Begin(const httplib::Request& req, const char* route) {
  Call call;
  call.route = route;
  call.start = absl::Now();
  call.request_id = RequestId(req);
  std::optional<std::string> authorization;
  if (req.has_header("Authorization")) authorization = req.get_header_value("Authorization");
  auto caller = auth_.AuthenticateHttp(
      authorization ? std::optional<absl::string_view>(*authorization) : std::nullopt);
  if (!caller.ok()) return caller.status();
  call.caller = *std::move(caller);
  absl::MutexLock lock(&mu_);
  if (state_ == State::kStarting) {
    return absl::UnavailableError("the server is starting (loading the model); retry shortly");
  }
  if (state_ == State::kDraining) {
    return absl::UnavailableError("the server is draining; retry on another replica");
  }
  ++calls_;
  call.engine = engine_;
  return call;
}

absl::Status HttpDoor::BeginStream(Call& call) {
  absl::MutexLock lock(&mu_);
  if (streams_ >= config_.max_concurrent_streams) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the HTTP door has ", streams_, " open streams, its max_concurrent_streams"));
  }
  ++streams_;
  call.stream = true;
  return absl::OkStatus();
}

void HttpDoor::End(const Call& call, int http_status, const absl::Status& status) {
  LogFields fields = {
      {"http", call.route},
      {"request_id", call.request_id},
      {"tenant", call.caller.tenant},
      {"status", absl::StrCat(http_status)},
      {"ms", absl::StrFormat("%.1f", absl::ToDoubleMilliseconds(absl::Now() - call.start))}};
  if (!status.ok()) fields.emplace_back("error", std::string(status.message()));
  Log(http_status >= 500 && http_status != 503 ? spdlog::level::err : spdlog::level::info,
      "http call", fields);
  if (metrics_) metrics_->RecordHttp(call.route, http_status);
  absl::MutexLock lock(&mu_);
  --calls_;
  if (call.stream) --streams_;
}

void HttpDoor::Fail(const Call& call, httplib::Response& res, const absl::Status& status) {
  const int http_status = HttpStatus(status);
  if (const std::string home = MisdirectedHome(status); !home.empty()) {
    res.set_header(kSessionHomeHeader, home);
  }
  WriteJson(res, http_status, RenderError(status));
  End(call, http_status, status);
}

void HttpDoor::Refuse(const char* route, httplib::Response& res, const absl::Status& status) {
  const int http_status = HttpStatus(status);
  WriteJson(res, http_status, RenderError(status));
  Log(spdlog::level::info, "http call refused",
      {{"http", route},
       {"status", absl::StrCat(http_status)},
       {"error", std::string(status.message())}});
  if (metrics_) metrics_->RecordHttp(route, http_status);
}

void HttpDoor::Health(httplib::Response& res) {
  bool serving = false;
  {
    absl::MutexLock lock(&mu_);
    serving = state_ == State::kServing;
  }
  WriteJson(res, serving ? 200 : 503, {{"status", serving ? "SERVING" : "NOT_SERVING"}});
}

void HttpDoor::Models(const httplib::Request& req, httplib::Response& res) {
  const char* route = kModelsRoute;
  auto call = Begin(req, route);
  if (!call.ok()) return Refuse(route, res, call.status());
  WriteJson(res, 200, RenderModels(call->engine->info().model.name, start_unix_));
  End(*call, 200, absl::OkStatus());
}

absl::StatusOr<CompletionRequest> HttpDoor::Parse(ApiKind kind, const httplib::Request& req,
                                                  const Call& call) const {
  auto request = ParseCompletionRequest(kind, req.body);
  if (!request.ok()) return request.status();
  const std::string& served = call.engine->info().model.name;
  if (!request->model.empty() && request->model != served) {
    return absl::NotFoundError(absl::StrCat("model '", request->model,
                                            "' is not served here; this server serves '", served,
                                            "' (GET /v1/models)"));
  }
  if (request->session_id.empty()) request->session_id = req.get_header_value("x-session-id");
  if (!request->session_id.empty()) {
    absl::Status home =
        CheckSessionHome(*call.engine, call.caller.tenant, request->session_id, config_.replica_id);
    if (!home.ok()) return home;
  }
  if (request->session_id.empty() && call.caller.read_only) {
    return absl::PermissionDeniedError(
        "a completion without session_id creates a transient session; the caller's token is "
        "read-only");
  }
  return request;
}

void HttpDoor::Completions(ApiKind kind, const httplib::Request& req, httplib::Response& res) {
  const char* route = kind == ApiKind::kChat ? kChatRoute : kCompletionsRoute;
  auto call = Begin(req, route);
  if (!call.ok()) return Refuse(route, res, call.status());
  res.set_header("x-request-id", call->request_id);
  auto request = Parse(kind, req, *call);
  if (!request.ok()) return Fail(*call, res, request.status());
  if (request->stream) {
    if (absl::Status s = BeginStream(*call); !s.ok()) return Fail(*call, res, s);
  }
  ResponseMeta meta;
  meta.kind = kind;
  meta.id = absl::StrCat(kind == ApiKind::kChat ? "chatcmpl-" : "cmpl-", call->request_id);
  meta.created = absl::ToUnixSeconds(call->start);
  meta.model = call->engine->info().model.name;
  const bool stream = request->stream;
  const bool include_usage = request->include_usage;
  auto run = CompletionRun::Start(call->engine, call->caller.tenant, *std::move(request));
  if (!run.ok()) return Fail(*call, res, run.status());
  if (stream) return StreamAnswer(*std::move(call), *std::move(run), meta, include_usage, res);
  Answer(*std::move(call), *std::move(run), meta, res);
}

void HttpDoor::Answer(Call call, std::unique_ptr<CompletionRun> run, const ResponseMeta& meta,
                      httplib::Response& res) {
  std::string text;
  CompletionRun::Update u;
  do {
    u = run->Wait(kPoll);
    text += u.text;
    if (stopping_.load()) run->Cancel();
  } while (!u.finished);
  if (!u.result.ok()) return Fail(call, res, u.result.status());
  WriteJson(res, 200, RenderCompletion(meta, text, u.result->result.finish_reason, run->usage()));
  End(call, 200, absl::OkStatus());
}

void HttpDoor::StreamAnswer(Call call, std::unique_ptr<CompletionRun> run, ResponseMeta meta,
                            bool include_usage, httplib::Response& res) {
  // The first text (or the end) before the headers, so that a request the
  // engine refuses gets its HTTP status rather than an error event.
  CompletionRun::Update first;
  do {
    first = run->Wait(kPoll);
    if (stopping_.load()) run->Cancel();
  } while (first.text.empty() && !first.finished);
  if (first.finished && !first.result.ok()) return Fail(call, res, first.result.status());
  auto stream = std::make_shared<Stream>(std::move(call), std::move(run), std::move(meta),
                                         include_usage, std::move(first));
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, stream](size_t, httplib::DataSink& sink) {
        return stream->Pump(sink, stopping_.load());
      },
      [this, stream](bool) {
        auto [http_status, status] = stream->Finish();
        End(stream->call(), http_status, status);
      });
}

}  // namespace longctx::server::openai

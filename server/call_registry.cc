#include "server/call_registry.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/status.h"

namespace longctx::server {
namespace {

std::string NewRequestId() {
  static absl::Mutex mu(absl::kConstInit);
  static std::mt19937_64* rng = nullptr;
  absl::MutexLock lock(&mu);
  if (rng == nullptr) rng = new std::mt19937_64(std::random_device{}());
  return absl::StrFormat("%016x", (*rng)());
}

bool UsableRequestId(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

std::string CodeName(const grpc::Status& status) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
}

// The call's name, start, deadline and request id (the client's, if usable,
// else a fresh one; sent back either way).
CallContext NewCall(grpc::CallbackServerContext* ctx, const char* method, bool stream) {
  CallContext call;
  call.method = method;
  call.stream = stream;
  call.start = absl::Now();
  const auto& md = ctx->client_metadata();
  auto rid = md.find("x-request-id");
  if (rid != md.end()) call.request_id.assign(rid->second.data(), rid->second.size());
  if (!UsableRequestId(call.request_id)) call.request_id = NewRequestId();
  ctx->AddInitialMetadata("x-request-id", call.request_id);
  const auto deadline = ctx->deadline();
  if (deadline < std::chrono::system_clock::time_point::max()) {
    call.deadline = absl::FromChrono(deadline);
  }
  return call;
}

}  // namespace

CallRegistry::CallRegistry(const ServerConfig& config, Authenticator auth, Metrics* metrics)
    : config_(config), auth_(std::move(auth)), metrics_(metrics) {}

void CallRegistry::SetEngine(Engine* engine) {
  absl::MutexLock lock(&mu_);
  engine_ = engine;
  if (state_ == State::kStarting) state_ = State::kServing;
}

void CallRegistry::StartDraining() {
  absl::MutexLock lock(&mu_);
  state_ = State::kDraining;
}

CallRegistry::State CallRegistry::state() const {
  absl::MutexLock lock(&mu_);
  return state_;
}

bool CallRegistry::WaitForCalls(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return calls_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

int64_t CallRegistry::active_calls() const {
  absl::MutexLock lock(&mu_);
  return calls_;
}

absl::StatusOr<CallContext> CallRegistry::BeginCall(grpc::CallbackServerContext* ctx,
                                                    const char* method, bool stream, bool mutates) {
  CallContext call = NewCall(ctx, method, stream);
  absl::StatusOr<Caller> caller = Authorize(*ctx, method, mutates);
  absl::Status refused = caller.status();
  if (caller.ok()) {
    call.caller = *std::move(caller);
    refused = Admit(&call);
  }
  if (!refused.ok()) {
    Refused(call, refused);
    return refused;
  }
  if (stream && metrics_) metrics_->StreamOpened();
  return call;
}

absl::StatusOr<Caller> CallRegistry::Authorize(const grpc::CallbackServerContext& ctx,
                                               const char* method, bool mutates) const {
  absl::StatusOr<Caller> who = auth_.Authenticate(ctx);
  if (who.ok() && mutates && who->read_only) {
    return absl::PermissionDeniedError(
        absl::StrCat(method, " changes sessions; the caller's token is read-only"));
  }
  return who;
}

absl::Status CallRegistry::Admit(CallContext* call) {
  absl::MutexLock lock(&mu_);
  if (state_ == State::kStarting) {
    return absl::UnavailableError("the server is starting (loading the model); retry shortly");
  }
  if (state_ == State::kDraining) {
    return absl::UnavailableError("the server is draining; retry on another replica");
  }
  if (call->stream && streams_ >= config_.max_concurrent_streams) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the server has ", streams_, " open streams, its max_concurrent_streams"));
  }
  ++calls_;
  if (call->stream) ++streams_;
  call->engine = engine_;
  return absl::OkStatus();
}

void CallRegistry::Refused(const CallContext& call, const absl::Status& status) {
  const grpc::Status g = ToGrpcStatus(status);
  if (metrics_) metrics_->RecordRpc(call.method, g.error_code());
  Log(spdlog::level::info, "call refused",
      {{"rpc", call.method},
       {"request_id", call.request_id},
       {"code", CodeName(g)},
       {"error", g.error_message()}});
}

void CallRegistry::EndCall(const CallContext& call, const grpc::Status& status) {
  LogFields fields = {
      {"rpc", call.method}, {"request_id", call.request_id}, {"tenant", call.caller.tenant}};
  fields.insert(fields.end(), call.fields.begin(), call.fields.end());
  fields.emplace_back("code", CodeName(status));
  fields.emplace_back(
      "ms", absl::StrFormat("%.1f", absl::ToDoubleMilliseconds(absl::Now() - call.start)));
  if (!status.ok()) fields.emplace_back("error", status.error_message());
  const bool server_fault = status.error_code() == grpc::StatusCode::INTERNAL ||
                            status.error_code() == grpc::StatusCode::UNKNOWN ||
                            status.error_code() == grpc::StatusCode::DATA_LOSS;
  Log(server_fault ? spdlog::level::err : spdlog::level::info, "call", fields);
  if (metrics_) {
    metrics_->RecordRpc(call.method, status.error_code());
    if (call.stream) metrics_->StreamClosed();
  }
  absl::MutexLock lock(&mu_);
  --calls_;
  if (call.stream) --streams_;
}

}  // namespace longctx::server

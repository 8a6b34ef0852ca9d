#include "server/call_registry.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/session/session_manager.h"
#include "server/routing.h"
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
CallContext NewCall(grpc::CallbackServerContext* ctx, const char* method, CallKind kind) {
  CallContext call;
  call.method = method;
  call.stream = kind.stream;
  call.engine_work = kind.stream || kind.engine_work;
  call.start = absl::Now();
  call.ctx = ctx;
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
                                                    const char* method, CallKind kind,
                                                    const std::string* session_id) {
  CallContext call = NewCall(ctx, method, kind);
  absl::StatusOr<Caller> caller = Authorize(*ctx, method, kind.mutates);
  absl::Status refused = caller.status();
  if (caller.ok()) {
    call.caller = *std::move(caller);
    // The id is checked before it reaches a log line or an error message.
    if (session_id != nullptr) refused = ValidateSessionId(*session_id);
    if (refused.ok() && session_id != nullptr) refused = CheckHome(call.caller.tenant, *session_id);
    if (refused.ok()) refused = Admit(&call);
  }
  if (!refused.ok()) {
    if (refused.code() == absl::StatusCode::kResourceExhausted) {
      ctx->AddTrailingMetadata(kRetryAfterMetadata, "1000");
    }
    Refused(call, refused, ctx);
    return refused;
  }
  if (session_id != nullptr) call.fields.emplace_back("session_id", *session_id);
  if (kind.stream && metrics_) metrics_->StreamOpened();
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

absl::Status CallRegistry::CheckHome(const std::string& tenant, const std::string& id) const {
  Engine* engine = nullptr;
  {
    absl::MutexLock lock(&mu_);
    engine = engine_;
  }
  // Without an engine (starting), Admit refuses the call anyway.
  if (engine == nullptr) return absl::OkStatus();
  return CheckSessionHome(*engine, tenant, id, config_.replica_id);
}

absl::Status CallRegistry::Admit(CallContext* call) {
  absl::MutexLock lock(&mu_);
  if (state_ == State::kStarting) {
    return absl::UnavailableError("the server is starting (loading the model); retry shortly");
  }
  if (state_ == State::kDraining) {
    return absl::UnavailableError("the server is draining; retry on another replica");
  }
  if (absl::Status over = OverLimitLocked(*call); !over.ok()) return over;
  ++calls_;
  TenantCalls& mine = tenants_[call->caller.tenant];
  if (call->stream) {
    ++streams_;
    ++mine.streams;
  }
  if (call->engine_work) ++mine.in_flight;
  call->engine = engine_;
  return absl::OkStatus();
}

absl::Status CallRegistry::OverLimitLocked(const CallContext& call) const {
  auto it = tenants_.find(call.caller.tenant);
  const TenantCalls mine = it == tenants_.end() ? TenantCalls{} : it->second;
  if (call.stream && streams_ >= config_.max_concurrent_streams) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the server has ", streams_, " open streams, its max_concurrent_streams; retry later"));
  }
  if (call.stream && mine.streams >= config_.max_streams_per_tenant) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the tenant has ", mine.streams,
                     " open streams, its max_streams_per_tenant; close some or retry later"));
  }
  if (call.engine_work && mine.in_flight >= config_.max_inflight_per_tenant) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the tenant has ", mine.in_flight,
        " engine calls in flight, its max_inflight_per_tenant; wait for some or retry later"));
  }
  return absl::OkStatus();
}

void CallRegistry::Refused(const CallContext& call, const absl::Status& status,
                           grpc::CallbackServerContext* ctx) {
  const grpc::Status g = ToGrpcStatus(status, ctx);
  if (metrics_) metrics_->RecordRpc(call.method, g.error_code());
  Log(spdlog::level::info, "call refused",
      {{"rpc", call.method},
       {"request_id", call.request_id},
       {"code", CodeName(g)},
       {"error", g.error_message()}});
}

void CallRegistry::CountUnparsable(const std::string& method) {
  if (metrics_) metrics_->RequestUnparsable(method);
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
  if (!call.stream && !call.engine_work) return;
  auto it = tenants_.find(call.caller.tenant);
  if (call.stream) --it->second.streams;
  if (call.engine_work) --it->second.in_flight;
  if (it->second.streams == 0 && it->second.in_flight == 0) tenants_.erase(it);
}

}  // namespace longctx::server

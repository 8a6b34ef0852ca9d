#include "server/service.h"

#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/convert.h"
#include "server/reactors.h"
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

// A unary call answered on the calling thread.
grpc::ServerUnaryReactor* FinishNow(LongContextService* svc, grpc::CallbackServerContext* ctx,
                                    const CallContext* call, const absl::Status& status) {
  auto* reactor = ctx->DefaultReactor();
  const grpc::Status g = ToGrpcStatus(status);
  if (call != nullptr) svc->EndCall(*call, g);
  reactor->Finish(g);
  return reactor;
}

}  // namespace

LongContextService::LongContextService(const ServerConfig& config, Authenticator auth,
                                       Metrics* metrics, BuildInfo build)
    : config_(config),
      auth_(std::move(auth)),
      metrics_(metrics),
      build_(std::move(build)),
      start_time_(absl::Now()) {}

void LongContextService::SetEngine(Engine* engine) {
  absl::MutexLock lock(&mu_);
  engine_ = engine;
  if (state_ == State::kStarting) state_ = State::kServing;
}

void LongContextService::StartDraining() {
  absl::MutexLock lock(&mu_);
  state_ = State::kDraining;
}

LongContextService::State LongContextService::state() const {
  absl::MutexLock lock(&mu_);
  return state_;
}

bool LongContextService::WaitForCalls(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return calls_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

int64_t LongContextService::active_calls() const {
  absl::MutexLock lock(&mu_);
  return calls_;
}

absl::StatusOr<CallContext> LongContextService::BeginCall(grpc::CallbackServerContext* ctx,
                                                          const char* method, bool stream,
                                                          bool mutates) {
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

  absl::Status refused;
  if (auto who = auth_.Authenticate(*ctx); !who.ok()) {
    refused = who.status();
  } else {
    call.caller = *who;
    if (mutates && call.caller.read_only) {
      refused = absl::PermissionDeniedError(
          absl::StrCat(method, " changes sessions; the caller's token is read-only"));
    }
  }
  if (refused.ok()) {
    absl::MutexLock lock(&mu_);
    if (state_ == State::kStarting) {
      refused = absl::UnavailableError("the server is starting (loading the model); retry shortly");
    } else if (state_ == State::kDraining) {
      refused = absl::UnavailableError("the server is draining; retry on another replica");
    } else if (stream && streams_ >= config_.max_concurrent_streams) {
      refused = absl::ResourceExhaustedError(
          absl::StrCat("the server has ", streams_, " open streams, its max_concurrent_streams"));
    } else {
      ++calls_;
      if (stream) ++streams_;
      call.engine = engine_;
    }
  }
  if (!refused.ok()) {
    const grpc::Status g = ToGrpcStatus(refused);
    if (metrics_) metrics_->RecordRpc(method, g.error_code());
    Log(spdlog::level::info, "call refused",
        {{"rpc", method},
         {"request_id", call.request_id},
         {"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(g.error_code()))},
         {"error", g.error_message()}});
    return refused;
  }
  if (stream && metrics_) metrics_->StreamOpened();
  return call;
}

void LongContextService::EndCall(const CallContext& call, const grpc::Status& status) {
  LogFields fields = {
      {"rpc", call.method}, {"request_id", call.request_id}, {"tenant", call.caller.tenant}};
  fields.insert(fields.end(), call.fields.begin(), call.fields.end());
  fields.emplace_back("code",
                      absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())));
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

// ---------------------------------------------------------------- unary calls

grpc::ServerUnaryReactor* LongContextService::CreateSession(grpc::CallbackServerContext* ctx,
                                                            const v1::CreateSessionRequest* req,
                                                            v1::Session* resp) {
  auto call = BeginCall(ctx, "CreateSession", false, true);
  if (!call.ok()) return FinishNow(this, ctx, nullptr, call.status());
  auto request = FromProto(*req);
  if (!request.ok()) return FinishNow(this, ctx, &*call, request.status());
  auto* reactor = new UnaryCall(this, std::move(*call));
  Engine* engine = reactor->call().engine;
  engine->CreateSession(reactor->call().caller.tenant, *request,
                        [reactor, resp](absl::StatusOr<SessionInfo> info) {
                          if (info.ok()) {
                            ToProto(*info, resp);
                            reactor->AddField("session_id", info->id);
                          }
                          reactor->Done(info.status());
                        });
  reactor->Started();
  return reactor;
}

grpc::ServerUnaryReactor* LongContextService::GetSession(grpc::CallbackServerContext* ctx,
                                                         const v1::GetSessionRequest* req,
                                                         v1::Session* resp) {
  auto call = BeginCall(ctx, "GetSession", false, false);
  if (!call.ok()) return FinishNow(this, ctx, nullptr, call.status());
  call->fields.emplace_back("session_id", req->session_id());
  auto info = call->engine->GetSession(call->caller.tenant, req->session_id());
  if (info.ok()) ToProto(*info, resp);
  return FinishNow(this, ctx, &*call, info.status());
}

grpc::ServerUnaryReactor* LongContextService::ListSessions(grpc::CallbackServerContext* ctx,
                                                           const v1::ListSessionsRequest* req,
                                                           v1::ListSessionsResponse* resp) {
  auto call = BeginCall(ctx, "ListSessions", false, false);
  if (!call.ok()) return FinishNow(this, ctx, nullptr, call.status());
  std::map<std::string, std::string> selector(req->label_selector().begin(),
                                              req->label_selector().end());
  auto page = call->engine->ListSessions(call->caller.tenant, req->page_size(), req->page_token(),
                                         selector);
  if (page.ok()) {
    for (const SessionInfo& info : page->sessions) ToProto(info, resp->add_sessions());
    resp->set_next_page_token(page->next_page_token);
  }
  return FinishNow(this, ctx, &*call, page.status());
}

grpc::ServerUnaryReactor* LongContextService::DeleteSession(grpc::CallbackServerContext* ctx,
                                                            const v1::DeleteSessionRequest* req,
                                                            google::protobuf::Empty*) {
  auto call = BeginCall(ctx, "DeleteSession", false, true);
  if (!call.ok()) return FinishNow(this, ctx, nullptr, call.status());
  call->fields.emplace_back("session_id", req->session_id());
  return FinishNow(this, ctx, &*call,
                   call->engine->DeleteSession(call->caller.tenant, req->session_id()));
}

grpc::ServerUnaryReactor* LongContextService::Score(grpc::CallbackServerContext* ctx,
                                                    const v1::ScoreRequest* req,
                                                    v1::ScoreResponse* resp) {
  auto call = BeginCall(ctx, "Score", false, false);
  if (!call.ok()) return FinishNow(this, ctx, nullptr, call.status());
  call->fields.emplace_back("session_id", req->session_id());
  ScoreInput input;
  switch (req->continuation_case()) {
    case v1::ScoreRequest::kText:
      input.text = req->text();
      break;
    case v1::ScoreRequest::kTokens:
      input.has_tokens = true;
      input.tokens.assign(req->tokens().ids().begin(), req->tokens().ids().end());
      break;
    default:
      return FinishNow(this, ctx, &*call, absl::InvalidArgumentError("text or tokens is required"));
  }
  input.parse_special = req->parse_special();
  input.deadline = call->deadline;
  auto* reactor = new UnaryCall(this, std::move(*call));
  const Tokenizer& tok = reactor->call().engine->tokenizer();
  const bool per_token = req->per_token();
  auto handle = reactor->call().engine->Score(
      reactor->call().caller.tenant, req->session_id(), std::move(input),
      [reactor, resp, per_token, &tok](absl::StatusOr<ScoreOutput> out) {
        if (out.ok()) {
          resp->set_logprob(out->logprob);
          resp->set_perplexity(out->perplexity);
          resp->set_scored_tokens(out->scored_tokens);
          resp->set_session_tokens(out->session_tokens);
          if (per_token) {
            for (size_t i = 0; i < out->ids.size(); ++i) {
              v1::TokenLogprob* t = resp->add_tokens();
              t->set_id(out->ids[i]);
              t->set_text(tok.Decode({out->ids[i]}));
              t->set_logprob(out->logprobs[i]);
            }
          }
          reactor->AddField("tokens", absl::StrCat(out->ids.size()));
        }
        reactor->Done(out.status());
      });
  reactor->Started(std::move(handle));
  return reactor;
}

grpc::ServerUnaryReactor* LongContextService::GetServerInfo(grpc::CallbackServerContext* ctx,
                                                            const v1::GetServerInfoRequest*,
                                                            v1::ServerInfo* resp) {
  auto call = BeginCall(ctx, "GetServerInfo", false, false);
  if (!call.ok()) return FinishNow(this, ctx, nullptr, call.status());
  const EngineInfo& e = call->engine->info();
  resp->set_version(build_.version);
  resp->set_git_commit(build_.git_commit);
  resp->set_build_type(build_.build_type);
  resp->set_backend(e.backend);
  v1::ModelInfo* m = resp->mutable_model();
  m->set_name(e.model.name);
  m->set_architecture(e.model.architecture);
  const size_t slash = config_.model.find_last_of('/');
  m->set_path(slash == std::string::npos ? config_.model : config_.model.substr(slash + 1));
  m->set_n_layers(e.model.n_layers);
  m->set_d_model(e.model.d_model);
  m->set_n_heads(e.model.n_heads);
  m->set_n_kv_heads(e.model.n_kv_heads);
  m->set_head_dim(e.model.head_dim);
  m->set_vocab_size(e.model.vocab_size);
  m->set_context_length(e.model.context_length);
  m->set_rope_theta(e.model.rope_theta);
  m->set_chat_template(e.chat_template);
  ToProto(e.default_attention, resp->mutable_default_attention());
  v1::Limits* l = resp->mutable_limits();
  l->set_max_message_bytes(config_.max_message_bytes);
  l->set_max_segment_bytes(config_.max_segment_bytes);
  l->set_max_segment_tokens(config_.max_segment_tokens);
  l->set_max_session_tokens(config_.max_session_tokens);
  l->set_max_sessions(config_.max_sessions);
  l->set_max_sessions_per_tenant(config_.max_sessions_per_tenant);
  l->set_max_concurrent_streams(config_.max_concurrent_streams);
  l->set_max_generate_tokens(config_.max_generate_tokens);
  ToProto(config_.session_ttl, l->mutable_default_ttl());
  ToProto(config_.max_session_ttl, l->mutable_max_ttl());
  v1::KvCacheInfo* kv = resp->mutable_kv_cache();
  kv->set_block_size(e.block_size);
  kv->set_total_blocks(e.total_blocks);
  const EngineStats& st = call->engine->stats();
  kv->set_free_blocks(st.kv_blocks_total.load() - st.kv_blocks_used.load());
  kv->set_bytes_per_token(e.bytes_per_token);
  resp->set_prefill_budget_tokens(call->engine->options().scheduler.prefill_budget);
  resp->set_memory_mixing(e.memory_mixing);
  resp->set_auth_required(auth_.enabled());
  ToProto(start_time_, resp->mutable_start_time());
  return FinishNow(this, ctx, &*call, absl::OkStatus());
}

// ---------------------------------------------------------------- streams

grpc::ServerBidiReactor<v1::IngestRequest, v1::IngestResponse>* LongContextService::Ingest(
    grpc::CallbackServerContext* ctx) {
  auto call = BeginCall(ctx, "Ingest", true, true);
  return new IngestReactor(this, std::move(call));
}

grpc::ServerWriteReactor<v1::GenerateResponse>* LongContextService::Generate(
    grpc::CallbackServerContext* ctx, const v1::GenerateRequest* req) {
  auto call = BeginCall(ctx, "Generate", true, req->persist());
  return new GenerateReactor(this, std::move(call), req);
}

grpc::ServerWriteReactor<v1::SessionData>* LongContextService::ExportSession(
    grpc::CallbackServerContext* ctx, const v1::ExportSessionRequest* req) {
  auto call = BeginCall(ctx, "ExportSession", true, false);
  return new ExportReactor(this, std::move(call), req->session_id());
}

grpc::ServerReadReactor<v1::ImportSessionRequest>* LongContextService::ImportSession(
    grpc::CallbackServerContext* ctx, v1::Session* resp) {
  auto call = BeginCall(ctx, "ImportSession", true, true);
  return new ImportReactor(this, std::move(call), resp);
}

}  // namespace longctx::server

#include "server/server.h"

#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model/host_weights.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "server/logging.h"
#include "server/routing.h"

namespace longctx::server {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(what, " ", path, ": cannot read"));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServerConfig& c) {
  if (c.tls_cert.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions opts;
  auto cert = ReadFile(c.tls_cert, "tls_cert");
  if (!cert.ok()) return cert.status();
  auto key = ReadFile(c.tls_key, "tls_key");
  if (!key.ok()) return key.status();
  opts.pem_key_cert_pairs.push_back({*key, *cert});
  if (!c.tls_client_ca.empty()) {
    auto ca = ReadFile(c.tls_client_ca, "tls_client_ca");
    if (!ca.ok()) return ca.status();
    opts.pem_root_certs = *ca;
    opts.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(opts);
}

// Keepalive and connection limits: dead peers are found, abusive pings
// refused (GOAWAY after too many), and no connection lives for ever.
void SetConnectionLimits(const ServerConfig& c, grpc::ServerBuilder* builder) {
  auto ms = [](absl::Duration d) {
    return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(d), INT32_MAX));
  };
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, ms(c.keepalive_time));
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ms(c.keepalive_timeout));
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                              ms(c.keepalive_min_ping_interval));
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  // Clients may ping an idle connection (no calls), no more often than above.
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  if (c.max_connection_idle > absl::ZeroDuration()) {
    builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, ms(c.max_connection_idle));
  }
  if (c.max_connection_age > absl::ZeroDuration()) {
    builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, ms(c.max_connection_age));
    builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                                ms(c.max_connection_age_grace));
  }
}

// Who may call, said once at start (the security defaults depend on it).
void LogAccess(const ServerConfig& c, int grpc_port, int metrics_port, int http_port) {
  const bool loopback = c.loopback_only();
  std::string access = loopback ? "loopback only" : "open to the network";
  if (!c.authenticates()) absl::StrAppend(&access, ", unauthenticated (tenant default)");
  Log(spdlog::level::info, "listening",
      {{"grpc_port", absl::StrCat(grpc_port)},
       {"metrics_port", absl::StrCat(metrics_port)},
       {"http_port", absl::StrCat(http_port)},
       {"tls", c.tls_cert.empty()        ? "off"
               : c.tls_client_ca.empty() ? "on"
                                         : "mutual"},
       {"auth",
        c.auth_tokens_file.empty() ? (c.tls_client_ca.empty() ? "off" : "certificate") : "bearer"},
       {"access", access},
       {"reflection", c.reflection ? "on" : "off"}});
  if (!loopback && !c.authenticates()) {
    Log(spdlog::level::warn,
        "anyone who reaches this port may list, export and delete every session "
        "(allow_unauthenticated_remote=true)");
  }
}

absl::Status WritePortFile(const std::string& path, int grpc_port, int metrics_port,
                           int http_port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << "grpc=" << grpc_port << "\nmetrics=" << metrics_port << "\n";
    if (http_port > 0) out << "http=" << http_port << "\n";
    if (!out) return absl::InternalError(absl::StrCat("port_file ", path, ": cannot write"));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("port_file ", path, ": cannot rename"));
  }
  return absl::OkStatus();
}

}  // namespace

EngineConfig EngineConfigFrom(const ServerConfig& c) {
  EngineConfig e;
  e.model = c.model;
  e.backend = c.backend;
  e.infini_gates = c.infini_gates;
  e.cpu.quantized_weights = c.cpu_weights == "quantized";
  e.cpu.kv_type = c.cpu_kv == "f32" ? DType::kF32 : DType::kF16;
  EngineOptions& o = e.options;
  // 0: the engine picks by backend (a GPU's budgets are larger).
  o.scheduler.prefill_budget = c.prefill_budget;
  o.scheduler.prefill_budget_decoding = c.prefill_budget_decoding;
  o.scheduler.max_decode_batch = c.max_decode_batch;
  o.scheduler.max_queued_requests = static_cast<int>(c.max_queued_requests);
  o.scheduler.max_queued_requests_per_tenant = static_cast<int>(c.max_queued_requests_per_tenant);
  o.scheduler.host_memory_budget = c.host_memory_budget;
  o.session_export_key = c.session_export_key;
  o.sessions.max_sessions = c.max_sessions;
  o.sessions.max_sessions_per_tenant = c.max_sessions_per_tenant;
  o.sessions.id_prefix = SessionIdPrefix(c.replica_id);
  o.kv.block_size = c.kv_block_size;
  o.kv.max_bytes = c.kv_cache_bytes;
  o.max_session_tokens = c.max_session_tokens;
  o.max_segment_bytes = c.max_segment_bytes;
  o.max_segment_tokens = c.max_segment_tokens;
  o.max_generate_tokens = c.max_generate_tokens;
  o.default_max_tokens = c.default_max_tokens;
  o.default_ttl = c.session_ttl;
  o.max_ttl = c.max_session_ttl;
  o.dca_defaults.mode = c.attention == "dca" ? DcaMode::kDca : DcaMode::kRope;
  if (c.dca_pretrain_length > 0) o.dca_defaults.pretrain_len = c.dca_pretrain_length;
  if (c.dca_chunk_size > 0) o.dca_defaults.chunk_size = c.dca_chunk_size;
  if (c.dca_local_window > 0) o.dca_defaults.local_window = c.dca_local_window;
  e.store.durability = *ParseDurability(c.durability);  // validated
  e.store.dir = c.state_dir.empty() ? DefaultStateDir() : c.state_dir;
  e.on_store_event = [](const std::string& event, const std::string& id,
                        const std::string& detail) {
    Log(event == "sessions rebuilt" ? spdlog::level::info : spdlog::level::err, event,
        {{"session", id}, {"detail", detail}});
  };
  e.group.dist = DistOptionsFrom(c, 0);
  e.group.on_rank_stopped = [](int rank, const absl::Status& s) {
    Log(s.ok() ? spdlog::level::info : spdlog::level::err, "rank stopped",
        {{"rank", absl::StrCat(rank)}, {"status", s.ToString()}});
  };
  return e;
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerConfig& config, BuildInfo build) {
  std::unique_ptr<Server> s(new Server(config));
  s->build_ = build;
  if (!config.auth_tokens_file.empty() || !config.tls_client_tenants_file.empty()) {
    auto a = Authenticator::Load(config.auth_tokens_file, config.tls_client_tenants_file);
    if (!a.ok()) return a.status();
    s->auth_ = std::move(*a);
  }
  if (!config.metrics_listen.empty()) {
    auto m = Metrics::Start(config.metrics_listen, build.version);
    if (!m.ok()) return m.status();
    s->metrics_ = std::move(*m);
    s->metrics_->SetServerState(0);
  }
  auto creds = Credentials(config);
  if (!creds.ok()) return creds.status();

  if (!config.http_listen.empty()) {
    auto door = openai::HttpDoor::Start(config, s->auth_, s->metrics_.get(),
                                        absl::ToUnixSeconds(absl::Now()));
    if (!door.ok()) return door.status();
    s->http_ = std::move(*door);
  }
  s->health_ = std::make_unique<HealthService>();
  s->service_ = std::make_unique<LongContextService>(config, s->auth_, s->metrics_.get(), build);
  if (config.reflection) grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  SetConnectionLimits(config, &builder);
  builder.AddListeningPort(config.listen, *creds, &s->grpc_port_);
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<int64_t>(config.max_message_bytes, INT32_MAX)));
  builder.SetMaxSendMessageSize(
      static_cast<int>(std::min<int64_t>(config.max_message_bytes, INT32_MAX)));
  builder.RegisterService(s->health_.get());
  builder.RegisterService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->grpc_port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", config.listen));
  }
  if (!config.port_file.empty()) {
    if (absl::Status st =
            WritePortFile(config.port_file, s->grpc_port_, s->metrics_port(), s->http_port());
        !st.ok()) {
      return st;
    }
  }
  LogAccess(config, s->grpc_port_, s->metrics_port(), s->http_port());
  if (config.auth_reload_interval > absl::ZeroDuration() && s->auth_.enabled()) {
    Server* self = s.get();
    s->auth_reloader_ = std::thread([self] {
      while (
          !self->stop_monitor_.WaitForNotificationWithTimeout(self->config_.auth_reload_interval)) {
        self->ReloadAuth(false);
      }
    });
  }
  return s;
}

void Server::ReloadAuth(bool force) {
  if (config_.auth_tokens_file.empty() && config_.tls_client_tenants_file.empty()) return;
  absl::StatusOr<bool> reloaded = auth_.Reload(force);
  if (!reloaded.ok()) {
    Log(spdlog::level::err, "auth files not reloaded: the previous ones stay in force",
        {{"error", reloaded.status().ToString()}});
  } else if (*reloaded) {
    Log(spdlog::level::info, "auth files reloaded");
  }
}

absl::Status Server::LoadEngine() {
  const absl::Time t0 = absl::Now();
  const EngineConfig engine_config = EngineConfigFrom(config_);
  if (config_.world_size > 1) {
    Log(spdlog::level::info, "forming the group",
        {{"world_size", absl::StrCat(config_.world_size)}, {"rendezvous", config_.rendezvous}});
  }
  auto engine = Engine::Create(engine_config);
  if (!engine.ok()) return engine.status();
  engine_ = std::move(*engine);
  if (config_.world_size > 1) monitor_ = std::thread([this] { Monitor(); });
  const EngineInfo& info = engine_->info();
  if (metrics_) metrics_->AttachEngine(engine_.get(), info.model.name, info.backend);
  service_->SetEngine(engine_.get());
  if (http_) http_->SetEngine(engine_.get());
  health_->SetServing(true);
  if (const SessionStore* store = engine_->store()) {
    const RecoveryStats& r = engine_->recovery();
    Log(spdlog::level::info, "session store open",
        {{"durability", DurabilityName(store->durability())},
         {"state_dir", store->dir()},
         {"sessions", absl::StrCat(r.sessions.load())},
         {"tokens", absl::StrCat(r.tokens.load())},
         {"lost", absl::StrCat(r.lost_sessions.load())},
         {"store_open_s", absl::StrCat(r.store_open_seconds.load())},
         {"time_to_serving_s", absl::StrCat(absl::ToDoubleSeconds(absl::Now() - t0))}});
  }
  if (metrics_) metrics_->SetServerState(1);
  Log(spdlog::level::info, "serving",
      {{"model", info.model.name},
       {"architecture", info.model.architecture},
       {"backend", info.backend},
       {"kv_blocks", absl::StrCat(info.total_blocks)},
       {"kv_tokens", absl::StrCat(info.total_blocks * info.block_size)},
       {"attention", info.default_attention.DebugString()},
       {"chat_template", info.chat_template},
       {"load_s", absl::StrCat(absl::ToDoubleSeconds(absl::Now() - t0))}});
  return absl::OkStatus();
}

void Server::Monitor() {
  while (!stop_monitor_.WaitForNotificationWithTimeout(absl::Seconds(1))) {
    const absl::Status s = engine_->EngineHealth();
    if (s.ok()) continue;
    health_->SetServing(false);
    if (metrics_) metrics_->SetServerState(3);
    Log(spdlog::level::err, "the group is broken: not serving", {{"error", s.ToString()}});
    return;
  }
}

void Server::Drain() {
  const absl::Time t0 = absl::Now();
  if (!stop_monitor_.HasBeenNotified()) stop_monitor_.Notify();
  if (monitor_.joinable()) monitor_.join();
  if (auth_reloader_.joinable()) auth_reloader_.join();
  // Refuse new calls before health says NOT_SERVING, so a client that reacts
  // to the health change never gets a call in.
  service_->StartDraining();
  if (http_) http_->StartDraining();
  health_->SetServing(false);
  if (metrics_) metrics_->SetServerState(2);
  Log(spdlog::level::info, "draining",
      {{"open_calls", absl::StrCat(service_->active_calls())},
       {"grace", absl::FormatDuration(config_.drain_grace)}});
  bool clean = service_->WaitForCalls(t0 + config_.drain_grace);
  if (http_) clean = http_->WaitForCalls(t0 + config_.drain_grace) && clean;
  const int64_t cut = service_->active_calls() + (http_ ? http_->active_calls() : 0);
  health_->Shutdown();
  // Cancels the HTTP door's open answers while the engine still runs them.
  if (http_) http_->Stop();
  // Cancels whatever is still open; returns once every call has ended.
  server_->Shutdown(std::chrono::system_clock::now());
  if (engine_) {
    if (metrics_) metrics_->DetachEngine();
    engine_->Shutdown();
  }
  Log(spdlog::level::info, "stopped",
      {{"clean", clean ? "true" : "false"},
       {"calls_cut_off", absl::StrCat(cut)},
       {"drain_s", absl::StrCat(absl::ToDoubleSeconds(absl::Now() - t0))}});
}

Server::~Server() {
  if (!stop_monitor_.HasBeenNotified()) stop_monitor_.Notify();
  if (monitor_.joinable()) monitor_.join();
  if (auth_reloader_.joinable()) auth_reloader_.join();
  if (http_) http_->Stop();
  if (server_) server_->Shutdown(std::chrono::system_clock::now());
  if (engine_) engine_->Shutdown();
}

}  // namespace longctx::server

#include "server/config.h"

#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "engine/dist/rendezvous.h"
#include "server/routing.h"
#include "yaml-cpp/yaml.h"

namespace longctx::server {
namespace {

struct Field {
  const char* name;
  const char* help;
  std::function<absl::Status(ServerConfig&, const std::string&)> set;
  std::function<std::string(const ServerConfig&)> get;
  bool secret = false;  // value kept out of logs
};

absl::Status BadValue(const char* name, const std::string& value, const std::string& want) {
  return absl::InvalidArgumentError(absl::StrCat("config ", name, ": '", value, "' is not ", want));
}

template <typename T>
Field IntField(const char* name, const char* help, T ServerConfig::*member) {
  return {name, help,
          [name, member](ServerConfig& c, const std::string& v) -> absl::Status {
            int64_t x = 0;
            if (!absl::SimpleAtoi(v, &x)) return BadValue(name, v, "an integer");
            if (x < std::numeric_limits<T>::min() || x > std::numeric_limits<T>::max()) {
              return BadValue(name, v, "in range");
            }
            c.*member = static_cast<T>(x);
            return absl::OkStatus();
          },
          [member](const ServerConfig& c) { return absl::StrCat(c.*member); }};
}

Field BytesField(const char* name, const char* help, int64_t ServerConfig::*member) {
  return {name, help,
          [name, member](ServerConfig& c, const std::string& v) -> absl::Status {
            auto x = ParseByteSize(v);
            if (!x.ok()) return BadValue(name, v, "a size (e.g. 512, 64KiB, 8MiB, 2GiB)");
            c.*member = *x;
            return absl::OkStatus();
          },
          [member](const ServerConfig& c) { return absl::StrCat(c.*member); }};
}

Field StringField(const char* name, const char* help, std::string ServerConfig::*member,
                  bool secret = false) {
  return {name, help,
          [member](ServerConfig& c, const std::string& v) {
            c.*member = v;
            return absl::OkStatus();
          },
          [member](const ServerConfig& c) { return c.*member; }, secret};
}

Field BoolField(const char* name, const char* help, bool ServerConfig::*member) {
  return {name, help,
          [name, member](ServerConfig& c, const std::string& v) -> absl::Status {
            if (!absl::SimpleAtob(v, &(c.*member))) return BadValue(name, v, "true or false");
            return absl::OkStatus();
          },
          [member](const ServerConfig& c) { return std::string(c.*member ? "true" : "false"); }};
}

Field DurationField(const char* name, const char* help, absl::Duration ServerConfig::*member) {
  return {name, help,
          [name, member](ServerConfig& c, const std::string& v) -> absl::Status {
            absl::Duration d;
            if (!absl::ParseDuration(v, &d))
              return BadValue(name, v, "a duration (e.g. 30s, 5m, 1h)");
            c.*member = d;
            return absl::OkStatus();
          },
          [member](const ServerConfig& c) { return absl::FormatDuration(c.*member); }};
}

// Appends the security and fairness settings (docs/service.md "Security")
// to `fields`, which it returns.
std::vector<Field>* WithSecurityFields(std::vector<Field>* fields) {
  fields->insert(
      fields->end(),
      {
          BoolField("allow_unauthenticated_remote",
                    "allow listening beyond loopback without tokens or client certificates",
                    &ServerConfig::allow_unauthenticated_remote),
          BoolField("allow_insecure_tokens", "allow bearer tokens without TLS",
                    &ServerConfig::allow_insecure_tokens),
          StringField("tls_client_tenants_file",
                      "client certificate identities (CN or SAN): '<identity> <tenant> [readonly]'",
                      &ServerConfig::tls_client_tenants_file),
          DurationField(
              "auth_reload_interval",
              "how often the tokens and tenants files are re-read if changed (0: SIGHUP only)",
              &ServerConfig::auth_reload_interval),
          BoolField("reflection", "serve gRPC reflection (the API schema)",
                    &ServerConfig::reflection),
          IntField("max_streams_per_tenant", "most open streaming calls of one tenant",
                   &ServerConfig::max_streams_per_tenant),
          IntField("max_inflight_per_tenant",
                   "most engine calls (Score, CreateSession, streams) of one tenant at once",
                   &ServerConfig::max_inflight_per_tenant),
          DurationField("stream_idle_timeout", "a stream whose client sends nothing this long ends",
                        &ServerConfig::stream_idle_timeout),
          DurationField("keepalive_time", "ping a connection idle this long",
                        &ServerConfig::keepalive_time),
          DurationField("keepalive_timeout", "drop a connection whose ping is unanswered this long",
                        &ServerConfig::keepalive_timeout),
          DurationField("keepalive_min_ping_interval",
                        "clients pinging more often than this are disconnected",
                        &ServerConfig::keepalive_min_ping_interval),
          DurationField("max_connection_idle",
                        "close a connection without calls this long (0: never)",
                        &ServerConfig::max_connection_idle),
          DurationField("max_connection_age", "send GOAWAY to a connection this old (0: never)",
                        &ServerConfig::max_connection_age),
          DurationField("max_connection_age_grace", "time the calls of an aged connection get",
                        &ServerConfig::max_connection_age_grace),
      });
  return fields;
}

// The limits, the session store and transfers; appended to `fields`, which it
// returns.
std::vector<Field>* WithLimitFields(std::vector<Field>* fields) {
  fields->insert(
      fields->end(),
      {
          BytesField("max_message_bytes", "largest gRPC message", &ServerConfig::max_message_bytes),
          BytesField("max_segment_bytes", "largest segment text, prompt or Score text",
                     &ServerConfig::max_segment_bytes),
          IntField("max_segment_tokens", "most tokens of one segment",
                   &ServerConfig::max_segment_tokens),
          IntField("max_session_tokens", "most tokens one session may hold",
                   &ServerConfig::max_session_tokens),
          IntField("max_sessions", "most sessions, all tenants", &ServerConfig::max_sessions),
          IntField("max_sessions_per_tenant", "most sessions of one tenant",
                   &ServerConfig::max_sessions_per_tenant),
          IntField("max_concurrent_streams", "most open streaming calls",
                   &ServerConfig::max_concurrent_streams),
          IntField("max_generate_tokens", "largest max_tokens a request may ask for",
                   &ServerConfig::max_generate_tokens),
          IntField("default_max_tokens", "max_tokens of requests that leave it 0",
                   &ServerConfig::default_max_tokens),
          DurationField("session_ttl", "default idle time before a session expires",
                        &ServerConfig::session_ttl),
          DurationField("max_session_ttl", "longest TTL a session may ask for",
                        &ServerConfig::max_session_ttl),
          IntField("max_queued_requests",
                   "most engine requests queued or running, all tenants (0: no limit)",
                   &ServerConfig::max_queued_requests),
          IntField("max_queued_requests_per_tenant",
                   "most engine requests queued or running of one tenant (0: no limit)",
                   &ServerConfig::max_queued_requests_per_tenant),
          BytesField("host_memory_budget",
                     "host memory of token logs, queued work and session transfers (0: no limit)",
                     &ServerConfig::host_memory_budget),
          StringField("session_export_key", "HMAC key that signs exports; imports must be signed",
                      &ServerConfig::session_export_key, /*secret=*/true),
          StringField("session_export_key_file", "file holding session_export_key",
                      &ServerConfig::session_export_key_file),
          StringField("durability",
                      "what an ack promises: none, ack (survives a process crash), sync (a machine "
                      "crash)",
                      &ServerConfig::durability),
          StringField("state_dir", "session store directory (\"\": $XDG_STATE_HOME/longctx)",
                      &ServerConfig::state_dir),
      });
  return fields;
}

// Shutdown and logging; appended to `fields`, which it returns.
std::vector<Field>* WithTailFields(std::vector<Field>* fields) {
  fields->insert(
      fields->end(),
      {
          DurationField("drain_grace", "on SIGTERM, time given to open calls to finish",
                        &ServerConfig::drain_grace),
          StringField("log_format", "log lines: text or json", &ServerConfig::log_format),
          StringField("log_level", "trace, debug, info, warn or error", &ServerConfig::log_level),
      });
  return fields;
}

const std::vector<Field>& Fields() {
  static const std::vector<Field>* fields =
      WithSecurityFields(WithTailFields(WithLimitFields(new std::vector<Field>{
          StringField("model", "model file (GGUF) or Hugging Face directory (required)",
                      &ServerConfig::model),
          StringField("backend", "compute backend: auto, cpu or cuda", &ServerConfig::backend),
          StringField("infini_gates",
                      "Infini gates turning memory mixing on: auto (a sidecar "
                      "<model>.infini_gates.safetensors beside the model, else the model's own), "
                      "none, or a sidecar's path",
                      &ServerConfig::infini_gates),
          StringField("cpu_weights",
                      "CPU backend: quantized (weights in their GGUF blocks, int8 activations) "
                      "or f32 (dequantized at load; scores of a session agree to float rounding "
                      "however its prefill was split)",
                      &ServerConfig::cpu_weights),
          StringField("cpu_kv",
                      "CPU backend: KV cache elements, f32 or f16 (half the bytes: twice the tokens in kv_cache_bytes)",
                      &ServerConfig::cpu_kv),
          BytesField("kv_cache_bytes",
                     "KV cache budget (0: on a GPU 90% of its free memory less 4GiB, else 2GiB)",
                     &ServerConfig::kv_cache_bytes),
          IntField("kv_block_size", "tokens per KV cache block", &ServerConfig::kv_block_size),
          IntField("prefill_budget", "prefill tokens per engine step (0: 512 on CPU, 8192 on GPU)",
                   &ServerConfig::prefill_budget),
          IntField("prefill_budget_decoding",
                   "prefill tokens per engine step while a Generate is under way "
                   "(0: 128 on CPU, 1024 on GPU)",
                   &ServerConfig::prefill_budget_decoding),
          IntField("max_decode_batch", "generating requests per engine step",
                   &ServerConfig::max_decode_batch),
          StringField("attention", "default attention of sessions: dca or rope",
                      &ServerConfig::attention),
          IntField("dca_pretrain_length",
                   "DCA pretraining length c (0: the model's context length)",
                   &ServerConfig::dca_pretrain_length),
          IntField("dca_chunk_size", "DCA chunk size C (0: 3c/4)", &ServerConfig::dca_chunk_size),
          IntField("dca_local_window", "DCA local window w (0: c/8)",
                   &ServerConfig::dca_local_window),
          IntField("world_size", "ranks (one process per GPU) of a context-parallel group",
                   &ServerConfig::world_size),
          IntField("rank", "this process's rank; -1: the ordinal ending the host name",
                   &ServerConfig::rank),
          StringField("rendezvous",
                      "where the ranks meet: tcp://HOST:PORT, file://PATH or inproc (CPU, threads)",
                      &ServerConfig::rendezvous),
          DurationField("collective_timeout", "a rank silent for this long counts as lost",
                        &ServerConfig::collective_timeout),
          DurationField("rendezvous_timeout", "time for the group to form at start-up",
                        &ServerConfig::rendezvous_timeout),
          StringField("listen",
                      "gRPC listen address host:port (port 0 picks a free one); auto: "
                      "0.0.0.0:50051 when callers authenticate, else 127.0.0.1:50051",
                      &ServerConfig::listen),
          StringField("metrics_listen",
                      "Prometheus metrics address host:port (empty: off; auto: the gRPC host, "
                      "port 9090)",
                      &ServerConfig::metrics_listen),
          StringField("port_file", "file to write the bound ports to", &ServerConfig::port_file),
          StringField("tls_cert", "PEM certificate chain (enables TLS)", &ServerConfig::tls_cert),
          StringField("tls_key", "PEM private key", &ServerConfig::tls_key),
          StringField("tls_client_ca", "PEM CA bundle; clients must present a certificate (mTLS)",
                      &ServerConfig::tls_client_ca),
          StringField("auth_tokens_file", "bearer tokens: '<token> <tenant> [readonly]' per line",
                      &ServerConfig::auth_tokens_file),
          StringField("replica_id",
                      "this replica's name in the session ids it makes (auto: from the host name)",
                      &ServerConfig::replica_id),
          StringField("http_listen",
                      "OpenAI-compatible HTTP address host:port (port 0 picks one; empty: off)",
                      &ServerConfig::http_listen),
          IntField("http_threads", "HTTP requests served at once", &ServerConfig::http_threads),
      })));
  return *fields;
}

const Field* FindField(const std::string& name) {
  for (const Field& f : Fields()) {
    if (name == f.name) return &f;
  }
  return nullptr;
}

std::string Usage() {
  ServerConfig defaults;
  std::string out =
      "usage: longctxd [--config=FILE] [--name=value ...]\n\n"
      "Every setting may also come from the YAML file (name: value) or the\n"
      "environment (LONGCTX_<NAME>); flags win over the environment, which wins\n"
      "over the file.\n\n";
  for (const Field& f : Fields()) {
    absl::StrAppendFormat(&out, "  --%-24s %s (default: %s)\n", f.name, f.help,
                          f.get(defaults).empty() ? "\"\"" : f.get(defaults));
  }
  return out;
}

std::string EnvName(const char* name) {
  return absl::StrCat("LONGCTX_", absl::AsciiStrToUpper(name));
}

absl::Status ApplyYaml(const std::string& path, ServerConfig& config) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config file ", path, ": ", e.what()));
  }
  if (root.IsNull()) return absl::OkStatus();
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat("config file ", path, ": expected a mapping"));
  }
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>("");
    const Field* f = FindField(key);
    if (f == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("config file ", path, ": unknown setting '", key, "'"));
    }
    if (!kv.second.IsScalar()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config file ", path, ": '", key, "' must be a single value"));
    }
    if (absl::Status s = f->set(config, kv.second.Scalar()); !s.ok()) return s;
  }
  return absl::OkStatus();
}

bool ValidHostPort(const std::string& addr) {
  const size_t colon = addr.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  int port = 0;
  return absl::SimpleAtoi(addr.substr(colon + 1), &port) && port >= 0 && port <= 65535;
}

// Whether `addr` (host:port) is reachable only from this host.
bool IsLoopback(const std::string& addr) {
  const std::string host = addr.substr(0, addr.rfind(':'));
  return host == "localhost" || host == "[::1]" || absl::StartsWith(host, "127.") ||
         absl::StartsWith(addr, "unix:");
}

// A setting that fails validation: INVALID_ARGUMENT naming it.
absl::Status BadConfig(const std::string& msg) {
  return absl::InvalidArgumentError("config " + msg);
}

}  // namespace

absl::StatusOr<int64_t> ParseByteSize(const std::string& text) {
  absl::string_view v = absl::StripAsciiWhitespace(text);
  int64_t scale = 1;
  for (const auto& [suffix, s] : {std::pair<const char*, int64_t>{"KiB", int64_t{1} << 10},
                                  {"MiB", int64_t{1} << 20},
                                  {"GiB", int64_t{1} << 30},
                                  {"TiB", int64_t{1} << 40}}) {
    if (absl::ConsumeSuffix(&v, suffix)) {
      scale = s;
      break;
    }
  }
  int64_t x = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(v), &x) || x < 0 ||
      x > std::numeric_limits<int64_t>::max() / scale) {
    return absl::InvalidArgumentError(absl::StrCat("bad size '", text, "'"));
  }
  return x * scale;
}

absl::Status ServerConfig::Validate() const {
  if (absl::Status s = ValidateEngine(); !s.ok()) return s;
  if (absl::Status s = ValidateEndpoints(); !s.ok()) return s;
  if (absl::Status s = ValidateLimits(); !s.ok()) return s;
  return ValidateSecurity();
}

absl::Status ServerConfig::ValidateEngine() const {
  if (model.empty()) return BadConfig("model: required (--model=PATH or LONGCTX_MODEL)");
  if (backend != "auto" && backend != "cpu" && backend != "cuda") {
    return BadConfig("backend: must be auto, cpu or cuda");
  }
  if (cpu_weights != "quantized" && cpu_weights != "f32") {
    return BadConfig("cpu_weights: must be quantized or f32");
  }
  if (cpu_kv != "f16" && cpu_kv != "f32") return BadConfig("cpu_kv: must be f32 or f16");
  if (kv_cache_bytes < 0) return BadConfig("kv_cache_bytes: must be positive (or 0: automatic)");
  if (kv_block_size < 1 || kv_block_size > 4096)
    return BadConfig("kv_block_size: must be in [1, 4096]");
  if (prefill_budget < 0) return BadConfig("prefill_budget: must be at least 1 (or 0: automatic)");
  if (prefill_budget_decoding < 0) {
    return BadConfig("prefill_budget_decoding: must be at least 1 (or 0: automatic)");
  }
  if (max_decode_batch < 1) return BadConfig("max_decode_batch: must be at least 1");
  if (attention != "dca" && attention != "rope") return BadConfig("attention: must be dca or rope");
  if (dca_pretrain_length < 0 || dca_chunk_size < 0 || dca_local_window < 0) {
    return BadConfig("dca_*: must not be negative");
  }
  if (world_size < 1 || world_size > 64) return BadConfig("world_size: must be in [1, 64]");
  if (rank < -1 || rank >= world_size) return BadConfig("rank: must be in [0, world_size) or -1");
  if (world_size > 1) {
    if (rendezvous == "inproc") {
      if (rank > 0) return BadConfig("rendezvous: inproc runs every rank in rank 0's process");
      if (backend != "cpu") return BadConfig("rendezvous: inproc needs backend cpu");
    } else if (auto a = ParseRendezvousAddress(rendezvous); !a.ok()) {
      return BadConfig(absl::StrCat("rendezvous: ", a.status().message()));
    }
  }
  if (collective_timeout < absl::Seconds(1) || rendezvous_timeout < absl::Seconds(1)) {
    return BadConfig("collective_timeout and rendezvous_timeout: must be at least 1s");
  }
  return absl::OkStatus();
}

absl::Status ServerConfig::ValidateEndpoints() const {
  if (!ValidHostPort(ResolvedListen())) return BadConfig("listen: expected host:port or auto");
  if (!metrics_listen.empty() && !ValidHostPort(ResolvedMetricsListen())) {
    return BadConfig("metrics_listen: expected host:port (or empty to disable)");
  }
  if (!http_listen.empty() && !ValidHostPort(http_listen)) {
    return BadConfig("http_listen: expected host:port (or empty to disable)");
  }
  if (http_threads < 1 || http_threads > 4096)
    return BadConfig("http_threads: must be in [1, 4096]");
  if (replica_id != "auto") {
    if (absl::Status s = ValidateReplicaId(replica_id); !s.ok()) return s;
  }
  if (tls_cert.empty() != tls_key.empty()) return BadConfig("tls_cert and tls_key go together");
  if (!tls_client_ca.empty() && tls_cert.empty()) return BadConfig("tls_client_ca needs tls_cert");
  return absl::OkStatus();
}

absl::Status ServerConfig::ValidateLimits() const {
  if (max_message_bytes < 1024) return BadConfig("max_message_bytes: must be at least 1KiB");
  if (max_segment_bytes < 1 || max_segment_bytes > max_message_bytes) {
    return BadConfig("max_segment_bytes: must be in [1, max_message_bytes]");
  }
  if (max_segment_tokens < 1) return BadConfig("max_segment_tokens: must be at least 1");
  if (max_session_tokens < 16) return BadConfig("max_session_tokens: must be at least 16");
  if (max_sessions < 1 || max_sessions_per_tenant < 1) {
    return BadConfig("max_sessions and max_sessions_per_tenant: must be at least 1");
  }
  if (max_concurrent_streams < 1) return BadConfig("max_concurrent_streams: must be at least 1");
  if (max_generate_tokens < 1) return BadConfig("max_generate_tokens: must be at least 1");
  if (default_max_tokens < 1 || default_max_tokens > max_generate_tokens) {
    return BadConfig("default_max_tokens: must be in [1, max_generate_tokens]");
  }
  if (session_ttl <= absl::ZeroDuration() || session_ttl > max_session_ttl) {
    return BadConfig("session_ttl: must be positive and at most max_session_ttl");
  }
  if (max_queued_requests < 0 || max_queued_requests_per_tenant < 0 ||
      max_queued_requests > (1 << 30) || max_queued_requests_per_tenant > (1 << 30)) {
    return BadConfig("max_queued_requests, max_queued_requests_per_tenant: must be in [0, 2^30]");
  }
  if (host_memory_budget < 0) return BadConfig("host_memory_budget: must not be negative");
  if (!session_export_key.empty() && !session_export_key_file.empty()) {
    return BadConfig("session_export_key and session_export_key_file: set one, not both");
  }
  if (!session_export_key.empty() && session_export_key.size() < 16) {
    return BadConfig("session_export_key: must be at least 16 bytes");
  }
  if (durability != "none" && durability != "ack" && durability != "sync") {
    return BadConfig("durability: must be none, ack or sync");
  }
  if (drain_grace < absl::ZeroDuration()) return BadConfig("drain_grace: must not be negative");
  if (log_format != "text" && log_format != "json")
    return BadConfig("log_format: must be text or json");
  static const char* kLevels[] = {"trace", "debug", "info", "warn", "error"};
  if (std::find(std::begin(kLevels), std::end(kLevels), log_level) == std::end(kLevels)) {
    return BadConfig("log_level: must be trace, debug, info, warn or error");
  }
  return absl::OkStatus();
}

bool ServerConfig::loopback_only() const { return IsLoopback(ResolvedListen()); }

std::string ServerConfig::ResolvedListen() const {
  if (listen != "auto") return listen;
  return authenticates() || allow_unauthenticated_remote ? "0.0.0.0:50051" : "127.0.0.1:50051";
}

std::string ServerConfig::ResolvedMetricsListen() const {
  if (metrics_listen != "auto") return metrics_listen;
  const std::string grpc = ResolvedListen();
  return absl::StrCat(grpc.substr(0, grpc.rfind(':')), ":9090");
}

absl::Status ServerConfig::ValidateSecurity() const {
  if (!authenticates() && !allow_unauthenticated_remote && !loopback_only()) {
    return BadConfig(absl::StrCat("listen: ", ResolvedListen(),
                                  " is reachable from other hosts but callers do not authenticate "
                                  "(no auth_tokens_file, no tls_client_ca); set one, listen on "
                                  "127.0.0.1, or set allow_unauthenticated_remote=true"));
  }
  if (!http_listen.empty() && !authenticates() && !allow_unauthenticated_remote &&
      !IsLoopback(http_listen)) {
    return BadConfig(
        absl::StrCat("http_listen: ", http_listen,
                     " is reachable from other hosts but callers do not authenticate; set "
                     "auth_tokens_file, listen on 127.0.0.1, or set "
                     "allow_unauthenticated_remote=true"));
  }
  if (!auth_tokens_file.empty() && tls_cert.empty() && !allow_insecure_tokens) {
    return BadConfig(
        "auth_tokens_file: bearer tokens would travel in plaintext; set tls_cert and tls_key, "
        "or allow_insecure_tokens=true when TLS ends at a proxy beside the server");
  }
  if (!tls_client_tenants_file.empty() && tls_client_ca.empty()) {
    return BadConfig("tls_client_tenants_file needs tls_client_ca (client certificates)");
  }
  if (auth_reload_interval < absl::ZeroDuration()) {
    return BadConfig("auth_reload_interval: must not be negative");
  }
  if (max_streams_per_tenant < 1 || max_inflight_per_tenant < 1) {
    return BadConfig("max_streams_per_tenant and max_inflight_per_tenant: must be at least 1");
  }
  if (stream_idle_timeout < absl::Milliseconds(100)) {
    return BadConfig("stream_idle_timeout: must be at least 100ms");
  }
  if (keepalive_time < absl::Seconds(1) || keepalive_timeout < absl::Seconds(1) ||
      keepalive_min_ping_interval < absl::Seconds(1)) {
    return BadConfig("keepalive_time, keepalive_timeout, keepalive_min_ping_interval: at least 1s");
  }
  if (max_connection_idle < absl::ZeroDuration() || max_connection_age < absl::ZeroDuration() ||
      max_connection_age_grace < absl::ZeroDuration()) {
    return BadConfig("max_connection_idle, max_connection_age and its grace: must not be negative");
  }
  return absl::OkStatus();
}

std::vector<std::string> ServerConfig::Describe() const {
  std::vector<std::string> out;
  for (const Field& f : Fields()) {
    std::string v = f.get(*this);
    if (f.secret && !v.empty()) v = "(set)";
    out.push_back(absl::StrCat(f.name, "=", v));
  }
  return out;
}

absl::StatusOr<ServerConfig> LoadServerConfig(int argc, char** argv) {
  // Flags are parsed first (to find --config and --help) and applied last.
  std::vector<std::pair<const Field*, std::string>> flags;
  std::optional<std::string> config_file;
  if (const char* env = std::getenv("LONGCTX_CONFIG")) config_file = env;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") return absl::CancelledError(Usage());
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'\n", Usage()));
    }
    arg = arg.substr(2);
    std::string name = arg, value;
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
    }
    for (char& c : name) c = c == '-' ? '_' : c;
    if (name == "config") {
      config_file = value;
      continue;
    }
    const Field* f = FindField(name);
    if (f == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, "\n", Usage()));
    }
    flags.emplace_back(f, value);
  }

  ServerConfig config;
  if (config_file) {
    if (absl::Status s = ApplyYaml(*config_file, config); !s.ok()) return s;
  }
  for (const Field& f : Fields()) {
    if (const char* env = std::getenv(EnvName(f.name).c_str())) {
      if (absl::Status s = f.set(config, env); !s.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(s.message(), " (from ", EnvName(f.name), ")"));
      }
    }
  }
  for (const auto& [f, value] : flags) {
    if (absl::Status s = f->set(config, value); !s.ok()) return s;
  }
  if (!config.session_export_key_file.empty()) {
    std::ifstream in(config.session_export_key_file, std::ios::binary);
    std::string key((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    key = std::string(absl::StripTrailingAsciiWhitespace(key));
    if (!in.is_open() || key.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "session_export_key_file: cannot read a key from ", config.session_export_key_file));
    }
    config.session_export_key = std::move(key);
    config.session_export_key_file.clear();  // the key stands in for it from here
  }
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  config.listen = config.ResolvedListen();
  config.metrics_listen = config.ResolvedMetricsListen();
  config.replica_id = config.ResolvedReplicaId();
  return config;
}

std::string ServerConfig::ResolvedReplicaId() const {
  if (replica_id != "auto") return replica_id;
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) return ReplicaIdFromHostName("");
  return ReplicaIdFromHostName(host);
}

absl::StatusOr<int> ResolveRank(const ServerConfig& config) {
  if (config.rank >= 0) return config.rank;
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) {
    return absl::FailedPreconditionError("rank -1: cannot read the host name");
  }
  const std::string name(host);
  size_t digits = name.size();
  while (digits > 0 && std::isdigit(static_cast<unsigned char>(name[digits - 1]))) --digits;
  int rank = -1;
  if (digits == 0 || digits == name.size() || name[digits - 1] != '-' ||
      !absl::SimpleAtoi(name.substr(digits), &rank) || rank >= config.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("rank -1: the host name '", name,
                                                   "' does not end in -N with N below world_size ",
                                                   config.world_size));
  }
  return rank;
}

DistOptions DistOptionsFrom(const ServerConfig& c, int rank) {
  DistOptions o;
  o.world_size = c.world_size;
  o.rank = rank;
  o.rendezvous = c.rendezvous;
  o.rendezvous_timeout = c.rendezvous_timeout;
  o.collective_timeout = c.collective_timeout;
  return o;
}

}  // namespace longctx::server

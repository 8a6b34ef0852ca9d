// longctxd's configuration: one struct, a documented default per field, read
// from (lowest precedence first) the defaults, an optional YAML file, the
// environment (LONGCTX_<NAME>) and command-line flags (--name=value), then
// validated in one place.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/dist/rendezvous.h"

namespace longctx::server {

struct ServerConfig {
  // --- model and engine ---
  std::string model;             // GGUF file or Hugging Face directory (required)
  std::string backend = "auto";  // auto | cpu | cuda
  // Infini gates: auto (a sidecar "<model>.infini_gates.safetensors" beside
  // the model when present, else the model's own), none, or a sidecar's path.
  std::string infini_gates = "auto";
  std::string cpu_weights = "quantized";  // CPU: quantized (GGUF blocks, int8
                                          // activations) | f32 (dequantized at load)
  std::string cpu_kv = "f32";             // CPU: KV cache elements, f32 | f16 (half the bytes)
  int64_t kv_cache_bytes = 0;             // KV arena budget; 0: on a GPU 90 % of its free
                                          // memory less 4 GiB, else 2 GiB
  int kv_block_size = 64;                 // tokens per KV block
  int prefill_budget = 0;           // prefill tokens per engine step; 0: 512 on CPU, 8192 on GPU
  int prefill_budget_decoding = 0;  // ... while a Generate is under way (its latency);
                                    // 0: 128 on CPU, 1024 on GPU
  int max_decode_batch = 256;       // generating requests per engine step
  std::string attention = "dca";    // default for sessions: dca | rope
  int dca_pretrain_length = 0;      // c; 0 = the model's context length
  int dca_chunk_size = 0;           // C; 0 = 3c/4
  int dca_local_window = 0;         // w; 0 = c/8

  // --- several GPUs (docs/design.md §7): one process per GPU, rank 0 serves gRPC ---
  int world_size = 1;      // ranks of the group; 1: no communication
  int rank = 0;            // this process; -1: the ordinal ending the host name
                           // (a StatefulSet pod "longctx-2" is rank 2)
  std::string rendezvous;  // tcp://HOST:PORT | file://PATH | inproc (CPU: all
                           // ranks as threads of this process)
  absl::Duration collective_timeout = absl::Seconds(60);  // a silent rank is lost after this
  absl::Duration rendezvous_timeout = absl::Minutes(5);   // the group must form within this

  // --- network ---
  std::string listen = "auto";          // gRPC address host:port (port 0 picks one);
                                        // auto: see ResolvedListen()
  std::string metrics_listen = "auto";  // Prometheus /metrics; empty disables;
                                        // auto: the gRPC host, port 9090
  std::string port_file;                // if set, "grpc=<port>\nmetrics=<port>\n" is written here
                                        // (and "http=<port>\n" with http_listen)
  std::string tls_cert;                 // PEM certificate chain: enables TLS
  std::string tls_key;                  // PEM private key (with tls_cert)
  std::string tls_client_ca;            // PEM CA bundle: require client certificates (mTLS)
  std::string auth_tokens_file;         // "<token> <tenant> [readonly]" per line; empty: no auth
  // This replica's name in the session ids it makes ("<replica_id>.s-<hex>"),
  // by which a gateway routes calls (server/routing.h): 1 to 24 of [a-z0-9-].
  // auto: from the host name (a StatefulSet pod's name, e.g. "longctxd-1").
  // Replicas behind one gateway need distinct ids.
  std::string replica_id = "auto";

  // --- OpenAI-compatible HTTP door (server/openai/http_door.h) ---
  // host:port of /v1/models, /v1/chat/completions and /v1/completions; empty:
  // off. Same TLS files, tokens and limits as the gRPC port.
  std::string http_listen;
  int http_threads = 64;  // requests served at once (each open stream holds one)

  // --- limits ---
  int64_t max_message_bytes = 8 << 20;  // any one gRPC message
  int64_t max_segment_bytes = 1 << 20;  // segment text, prompt, Score text
  int64_t max_segment_tokens = 65536;   // tokens of one segment
  int64_t max_session_tokens = 131072;  // tokens one session may hold
  int64_t max_sessions = 1024;          // sessions, all tenants
  int64_t max_sessions_per_tenant = 256;
  int64_t max_concurrent_streams = 256;         // open Ingest/Generate/Export/Import streams
  int max_generate_tokens = 4096;               // the largest max_tokens a request may ask
  int default_max_tokens = 256;                 // max_tokens when a request leaves it 0
  absl::Duration session_ttl = absl::Hours(1);  // default idle time to expiry
  absl::Duration max_session_ttl = absl::Hours(24);

  // --- security and fairness (docs/service.md "Security") ---
  // Open access: listening beyond loopback without authentication (no tokens
  // file, no client certificates) is refused at start unless this is set.
  bool allow_unauthenticated_remote = false;
  // Bearer tokens without TLS are refused at start unless this is set (TLS
  // terminated by a proxy beside the server, or a trusted network).
  bool allow_insecure_tokens = false;
  std::string tls_client_tenants_file;  // "<identity> <tenant> [readonly]": a client
                                        // certificate's CN or SAN to a tenant (mTLS)
  absl::Duration auth_reload_interval = absl::Seconds(10);  // poll the tokens and tenants
                                                            // files; 0: only on SIGHUP
  bool reflection = true;  // gRPC server reflection (the API schema)
  // A tenant may hold at most half the streams, so others always find some;
  // without authentication the one tenant "default" is every caller.
  int64_t max_streams_per_tenant = 128;   // open streams of one tenant
  int64_t max_inflight_per_tenant = 256;  // engine calls of one tenant at once (Score,
                                          // CreateSession and every stream)
  absl::Duration stream_idle_timeout = absl::Minutes(5);  // a stream whose client sends
                                                          // nothing this long is ended
  absl::Duration keepalive_time = absl::Minutes(1);       // server pings an idle connection
  absl::Duration keepalive_timeout = absl::Seconds(20);   // ... and drops it without an answer
  absl::Duration keepalive_min_ping_interval = absl::Seconds(10);  // clients pinging more
                                                                   // often are disconnected
  absl::Duration max_connection_idle = absl::Hours(1);  // no calls this long: closed; 0: never
  absl::Duration max_connection_age = absl::Hours(2);   // then GOAWAY; 0: never
  absl::Duration max_connection_age_grace = absl::Minutes(10);  // calls' time to finish

  // --- engine admission, host memory, session exports (docs/service.md) ---
  int64_t max_queued_requests = 4096;             // engine requests queued or running; 0: no limit
  int64_t max_queued_requests_per_tenant = 1024;  // ... of one tenant; 0: no limit
  int64_t host_memory_budget = 0;  // token logs, queued work, transfers; 0: counted, not limited
  std::string session_export_key;  // HMAC key signing exports (secret); empty: unsigned
  std::string session_export_key_file;  // file holding that key (read at start-up)

  // --- durability (docs/service.md "Durability") ---
  std::string durability = "ack";  // none | ack | sync: what an Ingest ack promises
  std::string state_dir;           // the session store; empty: $XDG_STATE_HOME/longctx,
                                   // else ~/.local/state/longctx (unused under none)

  // --- operations ---
  absl::Duration drain_grace = absl::Seconds(30);  // SIGTERM: time for streams to finish
  std::string log_format = "text";                 // text | json
  std::string log_level = "info";                  // trace | debug | info | warn | error

  // Checks every field and the relations between them.
  absl::Status Validate() const;
  // The blocks of Validate: the engine and its group, the endpoints, the
  // per-request and per-session limits, security and fairness.
  absl::Status ValidateEngine() const;
  absl::Status ValidateEndpoints() const;
  absl::Status ValidateLimits() const;
  absl::Status ValidateSecurity() const;
  // "name=value" lines for the start-up log (no secrets in it).
  std::vector<std::string> Describe() const;
  // Whether callers must authenticate (a tokens file or client certificates).
  bool authenticates() const { return !auth_tokens_file.empty() || !tls_client_ca.empty(); }
  // Whether the resolved `listen` is reachable only from this host.
  bool loopback_only() const;
  // `listen` with "auto" resolved: 0.0.0.0:50051 when callers authenticate or
  // allow_unauthenticated_remote is set, else 127.0.0.1:50051.
  std::string ResolvedListen() const;
  // `metrics_listen` with "auto" resolved: the gRPC host, port 9090.
  std::string ResolvedMetricsListen() const;
  // `replica_id` with "auto" resolved: ReplicaIdFromHostName of this host.
  std::string ResolvedReplicaId() const;
};

// Builds the configuration from `argv` (flags; --config=FILE names the YAML
// file, as does LONGCTX_CONFIG) and the environment, and validates it.
// `--help` yields a CANCELLED status whose message is the usage text.
absl::StatusOr<ServerConfig> LoadServerConfig(int argc, char** argv);

// Parses sizes such as "512", "64KiB", "8MiB", "2GiB".
absl::StatusOr<int64_t> ParseByteSize(const std::string& text);

// config.rank, or for -1 the ordinal that ends the host name ("longctx-2": 2).
absl::StatusOr<int> ResolveRank(const ServerConfig& config);

// The group settings of `config` for this process's `rank`.
DistOptions DistOptionsFrom(const ServerConfig& config, int rank);

}  // namespace longctx::server

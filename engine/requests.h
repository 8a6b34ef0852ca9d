// What callers hand the engine (engine/engine.h), in native C++ types, and
// the one place each is checked. Errors name the request field at fault with
// the server API's field names ("segment.text", "sampling.top_p", ...).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "engine/kv/kv_cache.h"
#include "engine/model/dca_config.h"
#include "engine/model/model_config.h"
#include "engine/sampling/sampler.h"
#include "engine/scheduler/scheduler.h"
#include "engine/session/session_manager.h"
#include "engine/session/session_settings.h"
#include "engine/tokenizer/tokenizer.h"

namespace longctx {

// The engine's limits and defaults; every field has a default.
struct EngineOptions {
  SchedulerOptions scheduler;
  SessionLimits sessions;
  KvCacheConfig kv;
  int64_t max_session_tokens = 131072;  // window cap of every session
  // Token log cap of a SLIDE or COMPRESS session, whose KV stays bounded by
  // its window: 4 bytes of host memory per token.
  int64_t max_windowed_session_tokens = int64_t{1} << 24;
  int64_t max_segment_bytes = 1 << 20;  // segment text, prompt and Score text
  int64_t max_segment_tokens = 65536;   // tokens of one segment (or Score text)
  int max_generate_tokens = 4096;       // max_tokens may not exceed this
  int default_max_tokens = 256;         // max_tokens when the request says 0
  absl::Duration default_ttl = absl::Hours(1);
  absl::Duration max_ttl = absl::Hours(24);
  absl::Duration expiry_interval = absl::Seconds(5);  // how often idle sessions are reaped
  // Attention settings of sessions that do not choose, over the model's
  // defaults (DCA, c = its context length, C = 3c/4, w = c/8).
  DcaOverrides dca_defaults;
  // The HMAC-SHA256 key of session exports (session_codec.h). Set: exports
  // are signed and imports must carry a valid signature; empty: exported
  // blobs are trusted input.
  std::string session_export_key;
};

// CreateSession's options; zero values take the server's defaults.
struct SessionRequest {
  std::string id;
  std::map<std::string, std::string> labels;
  std::optional<absl::Duration> ttl;
  DcaOverrides attention;  // over the server's defaults
  int64_t window_tokens = 0;
  int32_t sink_tokens = 0;
  OverflowPolicy overflow = OverflowPolicy::kReject;
  // Unset: CHAT when the model has a chat template, RAW otherwise.
  std::optional<PromptFormat> prompt_format;
  std::string system_prompt;

  // The request that recreates `settings` (an imported session's), its TTL
  // capped at `max_ttl`.
  static SessionRequest FromSettings(const SessionSettings& settings, absl::Duration max_ttl);
};

// What resolving a SessionRequest needs to know of the engine.
struct SessionContext {
  const EngineOptions* options;
  const ModelConfig* model;
  int block_size = 0;     // of the KV cache
  bool has_chat = false;  // the model has a usable chat template
};

// The settings of a new session: the model's defaults, then the server's,
// then the request's, each checked against the server's limits.
absl::StatusOr<SessionSettings> ResolveSession(const SessionRequest& request,
                                               const SessionContext& context);

struct SegmentInput {
  int64_t seq = 0;
  bool has_tokens = false;  // tokens rather than text
  std::string text;
  std::vector<int32_t> tokens;
  bool parse_special = false;
  absl::Time deadline = absl::InfiniteFuture();
};

struct GenerateInput {
  std::string prompt;
  bool parse_special = false;
  SamplingParams sampling;
  bool has_seed = false;  // otherwise a random seed
  int max_tokens = 0;     // 0 = default
  std::vector<std::string> stop;
  bool persist = false;
  absl::Time deadline = absl::InfiniteFuture();

  // Checks every field against `options`, `vocab_size` and the session's
  // prompt format.
  absl::Status Validate(const EngineOptions& options, int32_t vocab_size,
                        PromptFormat format) const;
};

struct GenerateSummary {
  GenerateResult result;
  std::string stop_string;  // the stop string that ended the answer, if any
};

struct GenerateCallbacks {
  // Text (valid UTF-8, possibly empty) and the ids sampled since the last call.
  std::function<void(std::string text, std::vector<int32_t> ids)> on_chunk;
  std::function<void(absl::StatusOr<GenerateSummary>)> done;
};

struct ScoreInput {
  bool has_tokens = false;
  std::string text;
  std::vector<int32_t> tokens;
  bool parse_special = false;
  absl::Time deadline = absl::InfiniteFuture();
};

struct ScoreOutput {
  std::vector<int32_t> ids;
  std::vector<float> logprobs;  // NaN for an unscored first token
  double logprob = 0;           // sum over scored tokens
  int64_t scored_tokens = 0;
  double perplexity = 0;  // exp(-logprob / scored_tokens)
  int64_t session_tokens = 0;
};

struct ImportInput {
  std::string id;
  std::map<std::string, std::string> labels;  // empty: keep the exported ones
  std::string data;
};

// The ids of a segment or a Score continuation (`field` names it in errors):
// `tokens` checked against the vocabulary, or `text` checked (size, UTF-8)
// and tokenized; either way within the server's max_segment_tokens.
absl::StatusOr<std::vector<int32_t>> TokenizeInput(const std::string& field, bool has_tokens,
                                                   const std::string& text,
                                                   const std::vector<int32_t>& tokens,
                                                   bool parse_special, const Tokenizer& tokenizer,
                                                   const EngineOptions& options);

// Checks that `text` is UTF-8; the error names `field` and the byte offset.
absl::Status ValidateUtf8(const std::string& field, absl::string_view text);

}  // namespace longctx

// The engine's API for the server (DESIGN §1, §5): sessions, ingest, generate,
// score, export/import, in native C++ types. It validates and tokenizes on the
// caller's thread, keeps session bookkeeping (SessionManager) and hands model
// work to the engine thread (Scheduler). Below this class nothing knows about
// requests, only tokens.
//
// Errors name the request field at fault with the server API's field names
// ("segment.text", "sampling.top_p", ...).
//
// Thread safety: every method is safe from any thread. Callbacks run on the
// engine thread (or on the caller's thread when a request fails validation or
// needs no engine work); they must not block.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "engine/backend/backend.h"
#include "engine/model/host_weights.h"
#include "engine/sampling/sampler.h"
#include "engine/scheduler/scheduler.h"
#include "engine/session/session_manager.h"
#include "engine/tokenizer/chat_template.h"
#include "engine/tokenizer/tokenizer.h"

namespace longctx {

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
};

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

// Static facts about the served model and engine, for server info.
struct EngineInfo {
  ModelConfig model;
  std::string backend;
  std::string chat_template;  // "chatml" or "none"
  DcaConfig default_attention;
  int block_size = 0;
  int64_t total_blocks = 0;
  int64_t bytes_per_token = 0;
  // Whether COMPRESS sessions mix their memory into attention: the model
  // carries trained Infini gates. Off: the memory is kept and exported only.
  bool memory_mixing = false;
};

class SessionService {
 public:
  // Builds the model on `backend` (which must outlive the service), the
  // tokenizer and chat template from `host`, and starts the engine thread.
  static absl::StatusOr<std::unique_ptr<SessionService>> Create(const HostModel& host,
                                                                Backend* backend,
                                                                EngineOptions options);
  // As Create, over a model built already (e.g. a group's DistStepModel);
  // `backend_name` is what EngineInfo reports.
  static absl::StatusOr<std::unique_ptr<SessionService>> CreateWithModel(
      const HostModel& host, std::unique_ptr<StepModel> model, std::string backend_name,
      EngineOptions options);
  // For tests: any StepModel with the tokenizer of its vocabulary.
  SessionService(std::unique_ptr<StepModel> model, Tokenizer tokenizer,
                 std::optional<ChatTemplate> chat, ModelConfig config, std::string backend_name,
                 EngineOptions options);
  ~SessionService();  // Shutdown()s
  SessionService(const SessionService&) = delete;
  SessionService& operator=(const SessionService&) = delete;

  // Stops the engine (queued work fails with UNAVAILABLE) and the reaper.
  void Shutdown();

  // Creates a session; CHAT sessions get their template prefix (system message
  // and the opening of the user turn) before `done` is called.
  void CreateSession(const std::string& tenant, const SessionRequest& request,
                     std::function<void(absl::StatusOr<SessionInfo>)> done);
  absl::StatusOr<SessionInfo> GetSession(const std::string& tenant, const std::string& id);
  struct ListResult {
    std::vector<SessionInfo> sessions;
    std::string next_page_token;
  };
  absl::StatusOr<ListResult> ListSessions(const std::string& tenant, int page_size,
                                          const std::string& page_token,
                                          const std::map<std::string, std::string>& selector);
  absl::Status DeleteSession(const std::string& tenant, const std::string& id);

  // Looks up a session for a stream of work (Ingest). Errors as GetSession.
  absl::StatusOr<std::shared_ptr<Session>> FindSession(const std::string& tenant,
                                                       const std::string& id);

  // Applies one segment: validated and tokenized here, its seq claimed, then
  // queued. `done` gets the ack (a duplicate's at once). The handle cancels it
  // (null when `done` was already called).
  std::shared_ptr<WorkHandle> Ingest(const std::shared_ptr<Session>& session, SegmentInput input,
                                     std::function<void(absl::StatusOr<IngestAck>)> done);

  std::shared_ptr<WorkHandle> Generate(const std::string& tenant, const std::string& id,
                                       GenerateInput input, GenerateCallbacks callbacks);

  std::shared_ptr<WorkHandle> Score(const std::string& tenant, const std::string& id,
                                    ScoreInput input,
                                    std::function<void(absl::StatusOr<ScoreOutput>)> done);

  // A self-describing byte string of the session (settings and token log).
  void Export(const std::string& tenant, const std::string& id,
              std::function<void(absl::StatusOr<std::string>)> done);
  // Recreates an exported session and prefills its token log.
  void Import(const std::string& tenant, ImportInput input,
              std::function<void(absl::StatusOr<SessionInfo>)> done);

  const EngineInfo& info() const { return info_; }
  // OK while the engine can run steps; otherwise why not (e.g. a lost rank).
  // Safe from any thread.
  absl::Status EngineHealth() const { return model_->health(); }
  const EngineOptions& options() const { return options_; }
  EngineStats& stats() { return stats_; }
  const EngineStats& stats() const { return stats_; }
  const SessionManager& sessions() const { return manager_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }

 private:
  absl::StatusOr<SessionSettings> Resolve(const SessionRequest& request) const;
  absl::StatusOr<std::vector<int32_t>> Tokenize(const std::string& field, bool has_tokens,
                                                const std::string& text,
                                                const std::vector<int32_t>& tokens,
                                                bool parse_special) const;
  // Registers a new session and queues `initial` (the template prefix or an
  // imported log) before anything else can reach it.
  // `prepare` runs on the new session before any work is queued on it.
  void StartSession(const std::string& tenant, const std::string& id, SessionSettings settings,
                    std::vector<int32_t> initial, const std::function<void(Session&)>& prepare,
                    std::function<void(absl::StatusOr<SessionInfo>)> done);
  std::vector<int32_t> ChatPrefix(const SessionSettings& settings) const;
  void ReapLoop();

  EngineOptions options_;
  EngineStats stats_;
  std::unique_ptr<StepModel> model_;
  Tokenizer tokenizer_;
  std::optional<ChatTemplate> chat_;
  // Chat template pieces (ids), cut from the template around placeholders:
  // [system_open] system [system_close + user_open] document [question...]
  // question [user_close + assistant_open] answer [turn_close + user_open].
  std::vector<int32_t> chat_system_open_, chat_user_open_, chat_assistant_open_, chat_next_user_;
  EngineInfo info_;
  SessionManager manager_;
  std::unique_ptr<Scheduler> scheduler_;
  absl::Notification stop_reaper_;
  std::thread reaper_;
};

// Checks that `text` is UTF-8; the error names `field` and the byte offset.
absl::Status ValidateUtf8(const std::string& field, absl::string_view text);

}  // namespace longctx

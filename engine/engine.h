// The engine's front door (docs/architecture.md): the one place that builds
// the backend, the weights, the model, the scheduler, the sessions and,
// optionally, the rank group; and the API the server calls: sessions, ingest,
// generate, score, export/import, in native C++ types. It validates and
// tokenizes on the caller's thread (engine/requests.h), keeps session
// bookkeeping (SessionManager) and hands model work to the engine thread
// (Scheduler). Below this class nothing knows about requests, only tokens.
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
#include "engine/backend/backend.h"
#include "engine/conversation/chat_prompt.h"
#include "engine/dist/rank_group.h"
#include "engine/model/host_weights.h"
#include "engine/model/llama_model.h"
#include "engine/model/load_model.h"
#include "engine/requests.h"
#include "engine/stats.h"
#include "engine/scheduler/scheduler.h"
#include "engine/session/session_manager.h"
#include "engine/tokenizer/tokenizer.h"

namespace longctx {

// Everything Engine::Create needs; every field has a default but `model`.
struct EngineConfig {
  std::string model;             // a GGUF file or a Hugging Face directory
  std::string backend = "auto";  // auto, cpu or cuda (ParseBackendKind)
  EngineOptions options;         // limits and defaults
  // world_size > 1: this process is rank 0 of a context-parallel group and
  // spreads each session's KV over the ranks (engine/dist/rank_group.h).
  GroupConfig group;
};

// Static facts about the served model and engine, for server info.
struct EngineInfo {
  ModelConfig model;
  std::string backend;
  std::string chat_template;  // ChatStyleName of the model's template, or "none"
  DcaConfig default_attention;
  int block_size = 0;
  int64_t total_blocks = 0;
  int64_t bytes_per_token = 0;
  // Whether COMPRESS sessions mix their memory into attention: the model
  // carries trained Infini gates. Off: the memory is kept and exported only.
  bool memory_mixing = false;
};

class Engine {
 public:
  // Builds everything of `config` and starts the engine thread. A CPU
  // backend's prefill budgets default lower than a GPU's (0 = by backend).
  static absl::StatusOr<std::unique_ptr<Engine>> Create(EngineConfig config);
  // Over a model built already (any StepModel, e.g. in tests) with the
  // tokenizer and chat template of `host`; `backend_name` is what EngineInfo
  // reports.
  static absl::StatusOr<std::unique_ptr<Engine>> CreateWithModel(const HostModel& host,
                                                                 std::unique_ptr<StepModel> model,
                                                                 std::string backend_name,
                                                                 EngineOptions options);
  ~Engine();  // Shutdown()s
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

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
  Engine(std::unique_ptr<StepModel> model, Tokenizer tokenizer, std::optional<ChatTemplate> chat,
         ModelConfig config, std::string backend_name, EngineOptions options);

  SessionContext session_context() const;
  // Registers a new session and queues `initial` (the template prefix or an
  // imported log) before anything else can reach it.
  // `prepare` runs on the new session before any work is queued on it.
  void StartSession(const std::string& tenant, const std::string& id, SessionSettings settings,
                    std::vector<int32_t> initial, const std::function<void(Session&)>& prepare,
                    std::function<void(absl::StatusOr<SessionInfo>)> done);
  // A segment whose seq is already queued: acknowledged once that copy is.
  void AckResend(const std::shared_ptr<Session>& session, int64_t seq,
                 std::function<void(absl::StatusOr<IngestAck>)> done);
  // The prompt of a Generate in its session's format.
  std::vector<int32_t> PromptIds(const Session& session, const GenerateInput& input) const;
  void ReapLoop();

  // Declared first, destroyed last: what a built model runs on (Create only).
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<LlamaModel> leader_model_;  // a group's rank 0 model
  std::unique_ptr<LeaderGroup> group_;        // outlives model_

  EngineOptions options_;
  EngineStats stats_;
  std::unique_ptr<StepModel> model_;
  Tokenizer tokenizer_;
  std::optional<ChatPrompt> chat_;
  EngineInfo info_;
  SessionManager manager_;
  std::unique_ptr<Scheduler> scheduler_;
  absl::Notification stop_reaper_;
  std::thread reaper_;
};

}  // namespace longctx

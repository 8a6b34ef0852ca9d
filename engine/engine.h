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

#include <atomic>
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
#include "engine/backend/cpu_options.h"
#include "engine/conversation/chat_prompt.h"
#include "engine/dist/rank_group.h"
#include "engine/model/host_weights.h"
#include "engine/model/llama_model.h"
#include "engine/model/load_model.h"
#include "engine/requests.h"
#include "engine/scheduler/scheduler.h"
#include "engine/session/session_codec.h"
#include "engine/session/session_manager.h"
#include "engine/stats.h"
#include "engine/store/session_store.h"
#include "engine/tokenizer/tokenizer.h"

namespace longctx {

// Everything Engine::Create needs; every field has a default but `model`.
struct EngineConfig {
  std::string model;             // a GGUF file or a Hugging Face directory
  std::string backend = "auto";  // auto, cpu or cuda (ParseBackendKind)
  // Infini gates: auto (a sidecar beside the model, else the model's own),
  // none, or a sidecar's path (engine/model/infini_gates.h).
  std::string infini_gates = "auto";
  CpuBackendOptions cpu;  // when the backend is the CPU's
  EngineOptions options;  // limits and defaults
  // world_size > 1: this process is rank 0 of a context-parallel group and
  // spreads each session's KV over the ranks (engine/dist/rank_group.h).
  GroupConfig group;
  // Durable sessions (engine/store/session_store.h); kNone: memory only.
  StoreOptions store{Durability::kNone, ""};
  // Told what recovery finds and does: ("store damaged", "", what),
  // ("session lost", id, why), ("sessions rebuilt", "", ""). Any thread.
  std::function<void(const std::string& event, const std::string& id, const std::string& detail)>
      on_store_event;
};

// What recovery from the session store found and did, for the start-up log
// and metrics. Counters grow as sessions are rebuilt in the background.
struct RecoveryStats {
  std::atomic<int64_t> sessions{0};  // listed from the store
  std::atomic<int64_t> tokens{0};    // in their token logs
  std::atomic<int64_t> rebuilt_sessions{0};
  std::atomic<int64_t> rebuilt_tokens{0};
  std::atomic<int64_t> lost_sessions{0};  // damaged or not rebuildable
  std::atomic<int64_t> pending_sessions{0};
  std::atomic<double> store_open_seconds{0};
  std::atomic<double> rebuild_seconds{0};  // start to the last rebuild's end
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
  std::string infini_gates;  // where the gates come from: "model", a sidecar's path, "" none
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

  // A self-describing byte string of the session (settings and token log),
  // signed under options().session_export_key if set. The engine thread only
  // copies the session's state; encoding runs on the scheduler's background
  // thread. The handle cancels it (CANCELLED); past `deadline` it ends with
  // DEADLINE_EXCEEDED. The copy and the bytes count against the host-memory
  // budget (RESOURCE_EXHAUSTED past it). Null handle: `done` was called.
  std::shared_ptr<WorkHandle> Export(const std::string& tenant, const std::string& id,
                                     absl::Time deadline,
                                     std::function<void(absl::StatusOr<std::string>)> done);
  // Recreates an exported session and prefills its token log. The blob is
  // checked as strictly as a live session's state (session_codec.h) and, with
  // a session_export_key, must be signed with it. Cancelled (the handle) before
  // `done`, it leaves no session behind and ends with CANCELLED.
  std::shared_ptr<WorkHandle> Import(const std::string& tenant, ImportInput input,
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
  // The model's chat template, for formatting a whole conversation at once
  // (FormatChat/EncodeChat); null when sessions can only be RAW.
  const ChatTemplate* chat_template() const { return chat_ ? &chat_->chat_template() : nullptr; }
  // The durable store; null under durability none.
  const SessionStore* store() const { return store_.get(); }
  const RecoveryStats& recovery() const { return recovery_; }

 private:
  Engine(std::unique_ptr<StepModel> model, Tokenizer tokenizer, std::optional<ChatTemplate> chat,
         ModelConfig config, std::string backend_name, EngineOptions options);

  SessionContext session_context() const;
  // An imported blob checked against this server (engine_transfer.cc): its
  // model, its settings under this server's limits (with `labels`, if any),
  // its token ids. The settings to create it with.
  absl::StatusOr<SessionSettings> CheckImport(
      const SessionSnapshot& snap, const std::map<std::string, std::string>& labels) const;
  // Registers a new session and queues `initial` (the template prefix or an
  // imported log) before anything else can reach it.
  // `prepare` runs on the new session before any work is queued on it.
  // With a store, `base` (an encoded SessionSnapshot) is written as the
  // session's durable base first; a failed write fails the creation.
  // `recovered`: the session comes from the store; a failed prefill leaves
  // its stored data alone and reports it lost.
  struct StartOptions {
    std::string base;
    bool recovered = false;
    std::shared_ptr<WorkHandle> handle;  // may be null; cancels the queued `initial` append
  };
  void StartSession(const std::string& tenant, const std::string& id, SessionSettings settings,
                    std::vector<int32_t> initial, const std::function<void(Session&)>& prepare,
                    StartOptions start, std::function<void(absl::StatusOr<SessionInfo>)> done);
  // StartSession once the session is registered (and its base durable).
  void PrefillSession(const std::shared_ptr<Session>& session, std::vector<int32_t> initial,
                      bool recovered, std::function<void(absl::StatusOr<SessionInfo>)> done,
                      std::shared_ptr<WorkHandle> handle = nullptr);
  // Import after the bytes are decoded: checks and recreates the session.
  // `handle` (may be null) cancels the prefill of the restored log.
  void RestoreSnapshot(const std::string& tenant, const std::string& id, SessionSnapshot snap,
                       const std::map<std::string, std::string>& labels, bool recovered,
                       std::shared_ptr<WorkHandle> handle,
                       std::function<void(absl::StatusOr<SessionInfo>)> done);
  // This engine's model fingerprint (engine_transfer.cc).
  ModelFingerprint Fingerprint() const;

  // --- durability (engine_durable.cc) ---
  // Opens the store of `options` and rebuilds its sessions in the background.
  absl::Status AttachStore(std::unique_ptr<SessionStore> store, StoreLoad load,
                           absl::Duration open_time);
  void RecoverSession(StoredSession stored);
  void RecoveryDone();
  // A segment's record was written (or not, `written`): submits its job.
  // `epoch`: the session's StoreCursor epoch when the segment was claimed.
  void WrittenAhead(const std::shared_ptr<Session>& session, int64_t seq, int64_t n, int64_t rec,
                    int64_t epoch, std::vector<int32_t> tokens, absl::Time deadline,
                    const std::shared_ptr<WorkHandle>& handle, absl::Status written,
                    std::function<void(absl::StatusOr<IngestAck>)> done);
  // manager_.Get, but a session lost to store damage answers DATA_LOSS.
  absl::StatusOr<std::shared_ptr<Session>> Lookup(const std::string& tenant,
                                                  const std::string& id) const;
  void MarkLost(const std::string& id, const std::string& tenant, const std::string& reason);
  // Removes a deleted or expired session's durable data (async unless `wait`).
  absl::Status ForgetStored(const std::string& id, bool wait);
  // Ingest with a store: the segment's record is written ahead of applying it.
  std::shared_ptr<WorkHandle> IngestDurable(const std::shared_ptr<Session>& session, int64_t seq,
                                            std::vector<int32_t> tokens, absl::Time deadline,
                                            std::function<void(absl::StatusOr<IngestAck>)> done);
  // Generate with persist and a store: submitted in log order; the turn is
  // written once it ends, before `done`.
  std::shared_ptr<WorkHandle> GenerateDurable(GenerateJob job);
  // Calls `fn` once every write queued before is durable (at once without a store).
  void AfterDurable(std::function<void()> fn);
  // True when `claim` (Session::ClaimSegment of `seq`) is to be applied;
  // otherwise answers `done` (an error, a duplicate's ack, a resend of one in
  // flight) and returns false.
  bool AnswerClaim(const std::shared_ptr<Session>& session, int64_t seq,
                   const absl::StatusOr<Session::SegmentClaim>& claim, const IngestAck& ack,
                   std::function<void(absl::StatusOr<IngestAck>)>& done);
  // The job applying a claimed segment; `rec` >= 0: its record in the store,
  // deleted again if the segment fails.
  // `stale` (durable segments): set when the segment was cancelled because an
  // earlier one failed after its claim.
  IngestJob SegmentJob(const std::shared_ptr<Session>& session, int64_t seq,
                       std::vector<int32_t> tokens, absl::Time deadline, int64_t rec,
                       std::function<void(absl::StatusOr<IngestAck>)> done,
                       std::shared_ptr<std::atomic<bool>> stale = nullptr);
  // A durable segment that failed in the engine: its record is rolled back and
  // the segments claimed after it are refused. `stale`: it failed because an
  // earlier one did, which already rewound the session's next_seq.
  void DurableSegmentFailed(const std::shared_ptr<Session>& session, int64_t seq, int64_t n,
                            int64_t rec, bool stale);
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
  std::unique_ptr<SessionStore> store_;
  RecoveryStats recovery_;
  std::function<void(const std::string&, const std::string&, const std::string&)> on_store_event_;
  absl::Time recovery_start_;
  mutable absl::Mutex lost_mu_;
  struct LostSession {
    std::string tenant;
    std::string reason;
  };
  std::map<std::string, LostSession> lost_ ABSL_GUARDED_BY(lost_mu_);
  absl::Notification stop_reaper_;
  std::thread reaper_;
};

}  // namespace longctx

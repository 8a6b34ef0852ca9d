// The engine thread (DESIGN §5): one thread owns the model, the backend and
// every session's KV state; RPC threads submit jobs and get their results
// through callbacks.
//
// Continuous batching. Each step is one Forward over:
//   - one decode token of every generating request (up to max_decode_batch,
//     round-robin beyond that), and
//   - up to prefill_budget tokens of prefill: Generate prompts first, then
//     Score and Ingest work, shortest remaining first.
// So a long ingest is cut into budget-sized pieces and delays a short Generate
// on another session by at most one step.
//
// Work on one session runs in submission order, one job at a time (a Generate
// appends its prompt and answer to the session and removes them afterwards, so
// nothing else may touch the session meanwhile). Jobs on different sessions
// share steps.
//
// Rollback: KV is append-only, so a Generate (unless persist) or Score ends by
// truncating the session's token log and KV back to where it began; a failed
// or cancelled Ingest segment is rolled back the same way, so segments apply
// whole or not at all.
//
// Callbacks (`on_token`, `done`) run on the engine thread: they must be quick
// and must not block or call back into the scheduler synchronously.
//
// Thread safety: Submit*, Release and Stop are safe from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/sampling/sampler.h"
#include "engine/scheduler/engine_stats.h"
#include "engine/scheduler/step_model.h"
#include "engine/session/session.h"

namespace longctx {

struct SchedulerOptions {
  int prefill_budget = 512;  // prefill tokens per step, all sessions together
  // The prefill budget of steps while a Generate is under way (prompt or
  // answer): smaller keeps its time to first token and inter-token latency
  // low while long ingests go on (a prefill token costs far more than a
  // decode token on a CPU).
  int prefill_budget_decoding = 512;
  int max_decode_batch = 256;  // generating requests per step
  int max_logit_rows = 128;    // Score rows per step (bounds the logits buffer)
};

// Lets the submitter stop a job. The job ends at the engine's next step with
// CANCELLED and is rolled back.
class WorkHandle {
 public:
  void Cancel() { cancelled_.store(true, std::memory_order_release); }
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

 private:
  std::atomic<bool> cancelled_{false};
};

struct IngestJob {
  std::shared_ptr<Session> session;
  // The client sequence number, for ordering failures: when a segment fails,
  // later queued segments of the session fail with ABORTED. 0 for internal
  // appends (the chat template's prefix, an import).
  int64_t seq = 0;
  std::vector<int32_t> tokens;  // REQUIRES: non-empty
  absl::Time deadline = absl::InfiniteFuture();
  // The session position after the segment, or why it failed.
  std::function<void(absl::StatusOr<int64_t>)> done;
};

struct GenerateResult {
  FinishReason finish_reason = FinishReason::kStop;
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  int64_t session_tokens = 0;  // after rollback or persist
  absl::Duration time_to_first_token;
  absl::Duration total_time;
};

struct GenerateJob {
  std::shared_ptr<Session> session;
  std::vector<int32_t> prompt;  // appended after the session's context
  SamplingParams sampling;      // REQUIRES: valid
  int max_tokens = 1;           // REQUIRES: >= 1
  // Sampling one of these ends generation with kStop. The token counts as
  // generated and (with persist) stays in the session, but is not passed to
  // on_token.
  std::vector<int32_t> stop_tokens;
  bool persist = false;
  absl::Time deadline = absl::InfiniteFuture();
  // Each sampled token except stop tokens. Returning false ends generation
  // with kStopString (the token is part of the answer).
  std::function<bool(int32_t)> on_token;
  // With persist: tokens appended after the answer (e.g. to close the chat
  // turn), given how generation ended. May be null.
  std::function<std::vector<int32_t>(FinishReason)> persist_suffix;
  std::function<void(absl::StatusOr<GenerateResult>)> done;
};

struct ScoreResult {
  // Natural-log probability of each continuation token given everything
  // before it; NaN for a first token with no context (empty session).
  std::vector<float> logprobs;
  int64_t session_tokens = 0;
};

struct ScoreJob {
  std::shared_ptr<Session> session;
  std::vector<int32_t> tokens;  // REQUIRES: non-empty
  absl::Time deadline = absl::InfiniteFuture();
  std::function<void(absl::StatusOr<ScoreResult>)> done;
};

// Runs on the engine thread when the job reaches the head of its session's
// queue, with the session's committed state (no request in progress).
struct ReadJob {
  std::shared_ptr<Session> session;
  std::function<void(absl::Status, const SessionEngineState*)> fn;
};

class Scheduler {
 public:
  // `model` must outlive the scheduler. Starts the engine thread.
  Scheduler(StepModel* model, SchedulerOptions options, EngineStats* stats);
  ~Scheduler();  // Stop()s
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queue a job. Its callback is always called exactly once, possibly before
  // Submit returns (e.g. when the scheduler is stopped).
  std::shared_ptr<WorkHandle> SubmitIngest(IngestJob job);
  std::shared_ptr<WorkHandle> SubmitGenerate(GenerateJob job);
  std::shared_ptr<WorkHandle> SubmitScore(ScoreJob job);
  void SubmitRead(ReadJob job);

  // Frees a closed session's engine state; its queued and running jobs fail
  // with the session's closing reason (FAILED_PRECONDITION).
  // REQUIRES: session->closed().
  void Release(std::shared_ptr<Session> session);

  // Fails everything queued with UNAVAILABLE and joins the engine thread.
  // Idempotent.
  void Stop();

  const SchedulerOptions& options() const { return options_; }
  StepModel& model() { return *model_; }

 private:
  struct Job;
  struct SessionQueue;

  void Enqueue(std::unique_ptr<Job> job);
  void Loop();
  // One iteration of the engine thread; false once stopped and drained.
  bool RunOnce();
  void Admit(std::deque<std::unique_ptr<Job>>* incoming,
             std::vector<std::shared_ptr<Session>>* releases);
  void StartHeads();
  bool StartJob(SessionQueue& q, Job& job);
  void Step();
  // Pops the head job of `q` and completes it.
  void Finish(SessionQueue& q, absl::Status status);
  // Rolls back (unless kept), updates stats and calls the job's callback.
  void Complete(SessionQueue& q, std::unique_ptr<Job> job, absl::Status status);
  void Rollback(SessionQueue& q, Job& job);
  void FailQueue(SessionQueue& q, const absl::Status& status);
  void PublishSession(Session& session);
  // Windowed sessions: creates the session's InfiniWindow, frees it, and
  // applies a pending import restore point once the sinks are in.
  absl::Status MakeWindow(Session& session);
  void DropWindow(SessionEngineState& st);
  absl::Status PrepareWindow(Session& session);

  StepModel* const model_;
  const SchedulerOptions options_;
  EngineStats* const stats_;

  absl::Mutex mu_;
  std::deque<std::unique_ptr<Job>> incoming_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<Session>> releases_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;

  // Engine thread only.
  absl::flat_hash_map<Session*, std::unique_ptr<SessionQueue>> queues_;
  uint64_t next_job_id_ = 0;
  size_t decode_cursor_ = 0;
  std::vector<float> logits_;

  std::thread thread_;
};

}  // namespace longctx

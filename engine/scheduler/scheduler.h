// The engine thread (docs/design.md §5): one thread owns the model, the backend and
// every session's KV state; RPC threads submit jobs and get their results
// through callbacks.
//
// Continuous batching. Each step is one Forward over:
//   - one decode token of every generating request (up to max_decode_batch,
//     round-robin beyond that), and
//   - up to prefill_budget tokens of prefill, first shared fairly among
//     tenants, then within each: Generate prompts first, then Score and
//     Ingest work, shortest remaining first.
// Admission bounds the requests accepted and not finished (in all and per
// tenant) and charges their token vectors to the host-memory budget
// (EngineStats::host_memory), which also counts every session's token log.
// So a long ingest is cut into budget-sized pieces and delays a short Generate
// on another session by at most one step. batch_planner.h holds the policy;
// jobs.h what each kind of job does.
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
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/scheduler/job_requests.h"
#include "engine/scheduler/step_model.h"
#include "engine/scheduler/task_thread.h"
#include "engine/session/session.h"
#include "engine/stats.h"

namespace longctx {

// Internals of the engine thread (batch_planner.h, jobs.h).
struct BatchPlan;
struct JobContext;
class JobHandler;
struct PlanJob;
struct PlanLimits;
struct PlanRefused;
enum class PieceLogits;

struct SchedulerOptions {
  int prefill_budget = 512;  // prefill tokens per step, all sessions together
  // The prefill budget of steps while a Generate is under way (prompt or
  // answer): smaller keeps its time to first token and inter-token latency
  // low while long ingests go on (a prefill token costs far more than a
  // decode token on a CPU).
  int prefill_budget_decoding = 512;
  int max_decode_batch = 256;  // generating requests per step
  int max_logit_rows = 128;    // Score rows per step (bounds the logits buffer)
  // Admission bounds (0: none). Requests (Ingest segments, Generate, Score,
  // the appends of Create and Import) accepted and not yet finished, in all
  // and per tenant: past either, a submit fails at once with
  // RESOURCE_EXHAUSTED and a retry hint (RetryAfter). The default total is
  // what the server's stream limits admit anyway (256 Ingest streams, 16
  // segments in flight each), so only unary floods (Score, Create) meet it.
  int max_queued_requests = 4096;
  int max_queued_requests_per_tenant = 1024;
  // Host memory (bytes) that token logs, queued work and session transfers
  // may hold together (HostMemoryBudget); 0: counted, not limited.
  int64_t host_memory_budget = 0;
};

// The payload a RESOURCE_EXHAUSTED of admission carries: how long to wait
// before retrying, in whole milliseconds (decimal text). The message says it
// too.
inline constexpr absl::string_view kRetryAfterPayload = "type.longctx.dev/retry-after-ms";
// The retry hint of `status`, if it carries one.
std::optional<absl::Duration> RetryAfter(const absl::Status& status);

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
  // The handle cancels the read while it is queued.
  std::shared_ptr<WorkHandle> SubmitRead(ReadJob job);
  // Runs `task` on the scheduler's background thread, in order with other
  // posted tasks: for work on copies of session state that must not hold up
  // the engine's steps. Stop runs the tasks posted before it.
  void PostBackground(std::function<void()> task) { background_.Post(std::move(task)); }
  // As above with a handle made beforehand, for work submitted once a durable
  // write is done (the caller could cancel it meanwhile).
  std::shared_ptr<WorkHandle> SubmitIngest(IngestJob job, std::shared_ptr<WorkHandle> handle);
  std::shared_ptr<WorkHandle> SubmitGenerate(GenerateJob job, std::shared_ptr<WorkHandle> handle);

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
  struct StepBatch;

  // The body of every Submit*.
  template <typename Request>
  std::shared_ptr<WorkHandle> Submit(Request request, std::shared_ptr<WorkHandle> handle = nullptr);
  void Enqueue(std::unique_ptr<Job> job);
  // Counts `job` against the queue bounds and the host-memory budget, or
  // says why not (RESOURCE_EXHAUSTED with a retry hint).
  absl::Status AdmitLocked(Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Undoes AdmitLocked when the job ends.
  void EndAdmission(Job& job);
  absl::Status QueueFull(absl::string_view why) const;
  void Loop();
  // One iteration of the engine thread; false once stopped and drained.
  bool RunOnce();
  void Admit(std::deque<std::unique_ptr<Job>>* incoming,
             std::vector<std::shared_ptr<Session>>* releases);
  void ReleaseSession(Session& session);
  void StartHeads();
  // Ends the queued (not head) jobs of `q` that were cancelled or timed out.
  void DropAbandoned(SessionQueue& q, absl::Time now);
  // Starts `job` (window, mark, tokens, KV room): true while it has steps to
  // run, false for a job done once started (a read), or the error it ends
  // with. The caller ends it in the last two cases.
  absl::StatusOr<bool> BeginJob(Session& session, Job& job);
  // Starts the head job of `q`; false when it ended instead.
  bool StartJob(SessionQueue& q, Job& job);
  // Behind a started client segment, starts the segments queued after it (and
  // the checks between them) while what is started but not prefilled is under
  // one step's prefill budget, so that a stream of small segments is
  // prefilled in budget-sized pieces (windowed sessions' pieces still stop at
  // their chunk boundaries).
  void StartFollowers(SessionQueue& q);
  absl::Status CheckKvRoom(Session& session, const Job& job);
  absl::Status RewindForLogits(SessionEngineState& st, const Job& job);

  // One step over the head jobs of all queues (scheduler_step.cc): plan,
  // prepare, forward, dispatch, stats.
  void Step();
  StepBatch Plan();
  // Applies the restore points that `plan` meets, in order; the index of the
  // first that fails (its status in `unready`), if any.
  std::optional<size_t> ApplyResumes(const BatchPlan& plan, const std::vector<SessionQueue*>& heads,
                                     std::vector<bool>* resumed,
                                     std::vector<absl::Status>* unready);
  // The planner's view of the step's budgets and of `q`'s head job.
  PlanLimits Limits() const;
  PlanJob Describe(const SessionQueue& q) const;
  absl::Status RefusalStatus(const SessionQueue& q, const PlanRefused& refused,
                             const absl::Status& unready);
  LogitsMode Mode(const Job& job, PieceLogits logits) const;
  void Prepare(StepBatch& batch);
  absl::Status AdvanceWindow(SessionEngineState& st, int n, StepItem* item);
  // False when the forward failed (its jobs then failed).
  bool Forward(StepBatch& batch);
  void Dispatch(const StepBatch& batch);
  void RecordStep(const StepBatch& batch, absl::Time step_start);

  JobContext Context(const Job& job);
  // Pops the head job of `q` and completes it.
  void Finish(SessionQueue& q, absl::Status status);
  // Rolls back (unless kept), updates stats and calls the job's callback.
  void Complete(SessionQueue& q, std::unique_ptr<Job> job, absl::Status status);
  // A failed segment `seq`: later queued segments of `q` fail with ABORTED.
  void AbortLaterSegments(SessionQueue& q, int64_t seq);
  void Rollback(SessionQueue& q, Job& job);
  void FailQueue(SessionQueue& q, const absl::Status& status);
  void PublishSession(Session& session);
  // Windowed sessions: creates the session's InfiniWindow, frees it, and
  // applies a pending import restore point once the sinks are in.
  absl::Status OpenWindow(Session& session, Job& job);
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
  // Admitted requests not yet finished, in all and per tenant.
  int64_t admitted_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, int64_t> admitted_by_tenant_ ABSL_GUARDED_BY(mu_);
  // A moving average of admitted requests' time from submit to end, for the
  // retry hint.
  std::atomic<int64_t> recent_request_us_{100000};

  // Engine thread only.
  absl::flat_hash_map<Session*, std::unique_ptr<SessionQueue>> queues_;
  uint64_t next_job_id_ = 0;
  size_t decode_cursor_ = 0;
  // Token log bytes charged to the host-memory budget, per session.
  absl::flat_hash_map<Session*, int64_t> log_bytes_;
  std::vector<float> logits_;

  std::thread thread_;
  TaskThread background_;
};

}  // namespace longctx

// Per-kind job handlers: what an ingest, a generate, a score or a read does at
// the points where the scheduler hands it control. The scheduler owns the
// order of things (queues, KV, windows, rollback, gauges); a handler owns its
// kind's work: the tokens it appends when it starts, what it makes of a step's
// logits, and the result it delivers at the end.
//
// Thread safety: engine thread only, except Deliver with an error status,
// which may run on a submitting thread (a job refused at shutdown).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/model/llama_model.h"
#include "engine/scheduler/batch_planner.h"
#include "engine/scheduler/job_requests.h"
#include "engine/session/session.h"
#include "engine/stats.h"

namespace longctx {

// What a handler sees of its job and of the engine.
struct JobContext {
  Session& session;  // its engine state belongs to the engine thread
  EngineStats& stats;
  absl::Time submitted;
  int64_t mark = 0;    // the log size when the job started: where a rollback returns to
  int64_t target = 0;  // the log size the job prefills up to (known after Start)
};

// What one step did for a job: it ran log[start, start + n).
struct JobStepOutput {
  int64_t start = 0;
  int64_t n = 0;
  LogitsMode mode = LogitsMode::kNone;
  std::span<const float> logits;  // [rows, vocab]: n rows under kAll, 1 under kLast, else none
  int vocab = 0;
  int32_t greedy_token = -1;  // under kGreedy: the token the device picked
  absl::Time now;
};

class JobHandler {
 public:
  virtual ~JobHandler() = default;

  // How the planner schedules the job's steps; nullopt for a job that runs
  // none (it ends at Start).
  virtual std::optional<PlanWork> work() const = 0;
  // Whether the job is a request in the waiting/running gauges and the
  // failure count.
  virtual bool counted() const { return true; }
  // The message of the job's DEADLINE_EXCEEDED once it is at the head.
  virtual std::string DeadlineMessage() const { return "deadline exceeded"; }
  // A client ingest segment's sequence number (0 otherwise): when it fails,
  // later queued segments of its session (larger numbers) cannot apply.
  virtual int64_t segment() const { return 0; }
  // Whether the job may start while the job ahead of it still runs: client
  // segments (each appends after the one before, and fails with it) and the
  // checks between them, so that one step prefills several queued segments
  // (Scheduler::StartFollowers).
  virtual bool starts_early() const { return false; }

  // At the head of the session's queue, with its committed state (the log
  // holds ctx.mark tokens): appends the job's tokens to the log. An error ends
  // the job, nothing appended.
  virtual absl::Status Start(const JobContext& ctx) = 0;
  // KV tokens the job needs past its target (the first answer token).
  virtual int64_t reserve() const { return 0; }
  // The first position whose logits the job needs (its target known); a KV
  // already past it is cut back and re-run. nullopt: no logits.
  virtual std::optional<int64_t> first_logits(int64_t target) const {
    (void)target;
    return std::nullopt;
  }
  // Past its prompt: one token per step.
  virtual bool decoding() const { return false; }
  // Whether its sampling needs only the argmax (which the device may find).
  virtual bool greedy() const { return false; }
  // After a step ran tokens of the job. True when the job is done and ends OK.
  virtual bool OnStep(const JobContext& ctx, const JobStepOutput& out) = 0;
  // Whether an OK end keeps the tokens the job appended (else rolled back).
  virtual bool keeps_tokens() const { return false; }

  // Ends the job: calls its callback once, with `status` or, when that is OK,
  // with the result (reading the session's state: engine thread only).
  virtual void Deliver(const JobContext& ctx, const absl::Status& status) = 0;
};

std::unique_ptr<JobHandler> MakeJobHandler(IngestJob job);
std::unique_ptr<JobHandler> MakeJobHandler(GenerateJob job);
std::unique_ptr<JobHandler> MakeJobHandler(ScoreJob job);
std::unique_ptr<JobHandler> MakeJobHandler(ReadJob job);

}  // namespace longctx

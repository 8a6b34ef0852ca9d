// The engine thread's internal records, shared by scheduler.cc (queues, job
// lifecycle) and scheduler_step.cc (one batched step). Not for other users.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/scheduler/jobs.h"
#include "engine/scheduler/scheduler.h"

namespace longctx {

struct Scheduler::Job {
  uint64_t id = 0;  // admission order
  std::shared_ptr<Session> session;
  std::shared_ptr<WorkHandle> handle;
  std::unique_ptr<JobHandler> handler;  // the kind's work
  absl::Time submitted;
  absl::Time deadline = absl::InfiniteFuture();
  // Host memory its token vectors hold while queued (charged at admission).
  int64_t queued_bytes = 0;
  bool admitted = false;  // counted against the queue bounds (AdmitLocked)

  bool started = false;
  int64_t mark = 0;  // log size when the job started: where rollback returns to
  // Windowed sessions: where the window stood when the job started, to rebuild
  // from should the job move it past `mark` and then roll back.
  int window_mark = 0;
  std::optional<InfiniMemory> memory_mark;
  int64_t target = 0;  // log size to prefill up to
};

struct Scheduler::SessionQueue {
  std::shared_ptr<Session> session;
  std::deque<std::unique_ptr<Job>> jobs;
};

// One step's work, from the plan to the dispatch of its logits.
struct Scheduler::StepBatch {
  struct Piece {
    SessionQueue* q;
    Job* job;       // q's head
    int64_t start;  // sequence length before the step
    int64_t n;      // tokens
    LogitsMode mode;
    bool decode;  // a decode row
  };
  std::vector<Piece> pieces;  // what runs, in item order
  std::vector<StepItem> items;
  std::vector<int32_t> greedy;  // kGreedy tokens, by index in `pieces`
  std::vector<std::pair<SessionQueue*, absl::Status>> failures;  // jobs that end before the step
  int64_t tokens = 0;
};

}  // namespace longctx

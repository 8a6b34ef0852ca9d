// What callers submit to the scheduler: one struct per kind of job, each with
// the callback that receives its result, and the handle that cancels one.
//
// Callbacks run on the engine thread (see scheduler.h).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/sampling/sampler.h"
#include "engine/session/session.h"
#include "engine/stats.h"

namespace longctx {

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
  // The handle Submit returns; null: a new one.
  std::shared_ptr<WorkHandle> handle;
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
  // A check between two segments of a stream that reads nothing the segments
  // ahead of it change: it may run while they are still prefilling.
  bool segment_check = false;
  absl::Time deadline = absl::InfiniteFuture();  // while queued
  std::shared_ptr<WorkHandle> handle;            // SubmitRead's; null: a new one
};

}  // namespace longctx

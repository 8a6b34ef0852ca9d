// A session (docs/design.md §5): a document streamed in segment by segment, its token
// log and KV pages, settings, counters and ownership.
//
// Thread safety: a Session is shared (std::shared_ptr) between RPC threads and
// the engine thread. Its parts are guarded three ways:
//   - identity and settings are immutable after construction;
//   - bookkeeping (ingest sequence numbers, reservations, expiry, use count)
//     is guarded by mu_ and safe from any thread;
//   - engine state (token log, KV sequence) is touched only by the engine
//     thread, through engine_state(); counters derived from it are atomics
//     that any thread may read.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/kv/kv_cache.h"
#include "engine/model/infini_window.h"
#include "engine/session/session_settings.h"

namespace longctx {

// What the engine thread owns of a session.
struct SessionEngineState {
  // Every token of the context, in order. Tokens past kv.length() are pending:
  // in the log but not yet in the KV cache (the next step on this session
  // prefills them first).
  std::vector<int32_t> log;
  // KV of a REJECT session. Compress and slide sessions keep theirs in
  // `window` instead (created at their first job); use sequence().
  KvSequence kv;
  std::unique_ptr<InfiniWindow> window;
  // An imported windowed session's restore point, applied once its sinks are
  // prefilled: tokens [sink_tokens, evicted_end) of the log are not re-run,
  // `memory` (compress) replaces the empty one.
  struct Resume {
    int evicted_end = 0;
    std::optional<InfiniMemory> memory;
  };
  std::optional<Resume> resume;
  // With a durable store: the log size its records cover (the tokens after
  // it belong to a job in progress).
  int64_t stored_end = 0;

  const KvSequence& sequence() const { return window ? window->sequence() : kv; }
};

// A point-in-time copy of a session's metadata and counters, for Get/List.
struct SessionInfo {
  std::string id;
  std::string tenant;
  SessionSettings settings;
  absl::Time create_time;
  absl::Time expire_time;
  bool expired = false;
  int64_t tokens = 0;
  int64_t ingested_tokens = 0;
  int64_t segments = 0;
  int64_t next_seq = 1;
  int64_t device_bytes = 0;  // KV blocks held
  int64_t host_bytes = 0;    // token log
  // Infini window (compress, slide): memory state, tokens folded into it and
  // tokens dropped by slide.
  int64_t memory_bytes = 0;
  int64_t folded_tokens = 0;
  int64_t dropped_tokens = 0;
  // Recovered from the durable store, its KV not yet rebuilt: requests on it
  // wait for the rebuild.
  bool recovering = false;
};

// The acknowledgement of one applied ingest segment.
struct IngestAck {
  int64_t seq = 0;
  int64_t tokens_ingested = 0;
  int64_t session_tokens = 0;
  bool duplicate = false;
};

class Session {
 public:
  Session(std::string id, std::string tenant, SessionSettings settings, absl::Time now);
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const std::string& id() const { return id_; }
  const std::string& tenant() const { return tenant_; }
  const SessionSettings& settings() const { return settings_; }
  absl::Time create_time() const { return create_time_; }

  SessionInfo Info() const;

  // --- ingest sequence numbers (any thread) ---
  //
  // A segment's seq is claimed before it is queued. Claims advance next_seq, so
  // several segments of one stream may be in flight; acks are recorded as they
  // apply. ClaimSegment returns:
  //   - kApply: seq == next_seq, and `tokens` more tokens fit under the session
  //     token limit (they are reserved until CompleteSegment/FailSegment);
  //   - kDuplicate with `ack` filled: seq was applied before, re-acknowledge;
  //   - kInFlight: seq was claimed and is still being applied; its ack can
  //     be looked up (LookupAck) once the work queued before it is done;
  // and errors: FAILED_PRECONDITION for a gap or reordering (naming the seq
  // expected), RESOURCE_EXHAUSTED when the tokens would exceed the session's
  // limit, FAILED_PRECONDITION when the session is closed.
  enum class SegmentClaim { kApply, kDuplicate, kInFlight };
  absl::StatusOr<SegmentClaim> ClaimSegment(int64_t seq, int64_t tokens, IngestAck* ack);
  // The segment was applied; records its ack and releases its reservation.
  void CompleteSegment(const IngestAck& ack);
  // The segment failed: its seq and every later claimed one become free again
  // (the client resends from seq), and its reservation is released.
  void FailSegment(int64_t seq, int64_t tokens);
  // The ack of an applied segment, as a duplicate; false when `seq` is not
  // applied (it failed, or was never sent).
  bool LookupAck(int64_t seq, IngestAck* ack) const;

  // Reserves room for `tokens` tokens of non-segment work (the template prefix,
  // a persisted turn) against the session token limit.
  absl::Status Reserve(int64_t tokens);
  void Unreserve(int64_t tokens);
  // Reserve()d tokens were appended; the session now holds `session_tokens`.
  void CompleteAppend(int64_t tokens, int64_t session_tokens);
  // An imported session continues its origin's sequence numbers.
  void RestoreIngestState(int64_t applied_seq, int64_t segments, int64_t ingested_tokens);

  // Where the current user turn of a CHAT session began (tokens); a question
  // gets a blank line before it when the turn holds a document.
  int64_t user_turn_start() const { return user_turn_start_.load(std::memory_order_relaxed); }
  void set_user_turn_start(int64_t t) { user_turn_start_.store(t, std::memory_order_relaxed); }

  // --- use and expiry (any thread) ---
  // A session in use never expires; each end of use restarts its TTL.
  void BeginUse();
  void EndUse(absl::Time now);
  // True when unused and past its expiry at `now`.
  bool IdleExpired(absl::Time now) const;

  // Marks the session closed (deleted or expired): new work is refused with
  // FAILED_PRECONDITION naming `reason`. Idempotent; the first reason wins.
  void Close(std::string reason);
  bool closed() const { return closed_.load(std::memory_order_acquire); }
  // OK while open; FAILED_PRECONDITION with the closing reason afterwards.
  absl::Status CheckOpen() const;

  // --- durable store (any thread) ---
  // Records of the session's log are numbered in the order their work is
  // submitted; `mu` makes numbering and submitting one step.
  struct StoreCursor {
    absl::Mutex mu;
    int64_t next_rec ABSL_GUARDED_BY(mu) = 0;
    // Bumped when a segment fails after its claim (its record not written,
    // or not applied): segments claimed before that are refused when their
    // records are written, so none applies after a gap.
    int64_t epoch ABSL_GUARDED_BY(mu) = 0;
  };
  StoreCursor& store_cursor() { return store_cursor_; }
  void set_recovering(bool r) { recovering_.store(r, std::memory_order_release); }
  bool recovering() const { return recovering_.load(std::memory_order_acquire); }

  // --- engine thread ---
  // REQUIRES: called on the engine thread only.
  SessionEngineState& engine_state() { return engine_; }
  // Publishes the engine state's size for other threads (REQUIRES: engine thread).
  void PublishCounters(int64_t tokens, int64_t device_bytes);
  // Publishes the Infini window's counters (REQUIRES: engine thread).
  void PublishInfini(int64_t memory_bytes, int64_t folded_tokens, int64_t dropped_tokens);
  // Counts tokens added by Ingest (REQUIRES: engine thread).
  void AddIngested(int64_t tokens) { ingested_.fetch_add(tokens, std::memory_order_relaxed); }

  int64_t tokens() const { return tokens_.load(std::memory_order_acquire); }
  int64_t device_bytes() const { return device_bytes_.load(std::memory_order_relaxed); }
  int64_t host_bytes() const { return tokens() * static_cast<int64_t>(sizeof(int32_t)); }

  // Acks kept for re-acknowledging resent segments.
  static constexpr size_t kAckHistory = 4096;

 private:
  void LookupAckLocked(int64_t seq, IngestAck* ack) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string id_;
  const std::string tenant_;
  const SessionSettings settings_;
  const absl::Time create_time_;

  mutable absl::Mutex mu_;
  int64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t applied_seq_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t segments_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t reserved_ ABSL_GUARDED_BY(mu_) = 0;        // tokens claimed, not yet applied
  std::deque<IngestAck> acks_ ABSL_GUARDED_BY(mu_);  // last kAckHistory, by seq
  int in_use_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time expire_time_ ABSL_GUARDED_BY(mu_);
  std::string close_reason_ ABSL_GUARDED_BY(mu_);

  std::atomic<bool> closed_{false};
  std::atomic<int64_t> tokens_{0};
  std::atomic<int64_t> ingested_{0};
  std::atomic<int64_t> device_bytes_{0};
  std::atomic<int64_t> user_turn_start_{0};
  std::atomic<int64_t> memory_bytes_{0};
  std::atomic<int64_t> folded_tokens_{0};
  std::atomic<int64_t> dropped_tokens_{0};

  std::atomic<bool> recovering_{false};
  StoreCursor store_cursor_;

  SessionEngineState engine_;
};

}  // namespace longctx

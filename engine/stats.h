// Plain counters and histograms the engine keeps about its work (docs/design.md §8).
// The engine only counts; server/metrics turns these into Prometheus metrics
// at scrape time, so nothing here knows about any metrics library.
//
// Thread safety: every member may be updated and read from any thread.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace longctx {

// A fixed-bucket histogram (upper bounds, +Inf implied).
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);

  void Observe(double value);

  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> counts;  // per bucket, not cumulative; bounds.size() + 1
    uint64_t count = 0;
    double sum = 0;
    // The value below which a fraction q of observations fall (bucket
    // interpolation). 0 when empty.
    double Quantile(double q) const;
  };
  Snapshot Read() const;

 private:
  const std::vector<double> bounds_;
  mutable absl::Mutex mu_;
  std::vector<uint64_t> counts_ ABSL_GUARDED_BY(mu_);
  uint64_t count_ ABSL_GUARDED_BY(mu_) = 0;
  double sum_ ABSL_GUARDED_BY(mu_) = 0;
};

// Why a generation ended.
enum class FinishReason { kStop, kLength, kStopString, kContext };
inline constexpr int kNumFinishReasons = 4;
const char* FinishReasonName(FinishReason r);

// What host memory the budget counts (docs/service.md, host_memory_budget).
enum class HostMemoryKind {
  kTokenLog,  // sessions' token logs, 4 bytes a token (windowed sessions too)
  kQueued,    // token vectors of accepted work not yet finished
  kImport,    // ImportSession bytes received and not yet decoded
  kExport,    // ExportSession snapshots and encoded bytes not yet sent
};
inline constexpr int kNumHostMemoryKinds = 4;
const char* HostMemoryKindName(HostMemoryKind kind);

// One host-memory budget over the kinds above. Admission charges what new work
// would hold with TryCharge, which refuses (RESOURCE_EXHAUSTED) what would
// take the total over the limit; memory already held is Charge()d whatever
// the limit (a log growing by an accepted segment). Every charge is released
// exactly once by its owner.
//
// Thread safety: every method may be called from any thread.
class HostMemoryBudget {
 public:
  // 0: no limit (still counted).
  void set_limit(int64_t bytes) { limit_.store(bytes, std::memory_order_relaxed); }
  int64_t limit() const { return limit_.load(std::memory_order_relaxed); }

  // Charges `bytes` if the total stays within the limit; otherwise charges
  // nothing and returns RESOURCE_EXHAUSTED naming `what`.
  absl::Status TryCharge(HostMemoryKind kind, int64_t bytes, absl::string_view what);
  void Charge(HostMemoryKind kind, int64_t bytes);
  void Release(HostMemoryKind kind, int64_t bytes) { Charge(kind, -bytes); }

  int64_t used() const { return total_.load(std::memory_order_relaxed); }
  int64_t used(HostMemoryKind kind) const {
    return by_kind_[static_cast<int>(kind)].load(std::memory_order_relaxed);
  }

 private:
  std::atomic<int64_t> limit_{0};
  std::atomic<int64_t> total_{0};
  std::array<std::atomic<int64_t>, kNumHostMemoryKinds> by_kind_{};
};

// A charge held by one owner (an import's buffer, an export's bytes): grows
// with TryGrow, released when destroyed. Movable, not copyable.
class HostMemoryCharge {
 public:
  HostMemoryCharge() = default;
  HostMemoryCharge(HostMemoryBudget* budget, HostMemoryKind kind)
      : budget_(budget), kind_(kind) {}
  HostMemoryCharge(HostMemoryCharge&& o) noexcept { *this = std::move(o); }
  HostMemoryCharge& operator=(HostMemoryCharge&& o) noexcept;
  ~HostMemoryCharge() { Reset(); }

  // Charges `bytes` more (TryCharge: refused past the limit).
  absl::Status TryGrow(int64_t bytes, absl::string_view what);
  // Releases the whole charge.
  void Reset();
  int64_t bytes() const { return bytes_; }

 private:
  HostMemoryBudget* budget_ = nullptr;
  HostMemoryKind kind_ = HostMemoryKind::kImport;
  int64_t bytes_ = 0;
};

struct EngineStats {
  EngineStats();

  // Host memory held by sessions and work, against host_memory_budget.
  HostMemoryBudget host_memory;
  // Work refused at admission: the scheduler's queue bounds or the budget.
  std::atomic<int64_t> admission_rejections_total{0};

  // Requests (Ingest segments, Generate, Score) by phase: waiting = queued
  // behind other work on their session or not yet given a step; running =
  // being stepped.
  std::atomic<int64_t> requests_waiting{0};
  std::atomic<int64_t> requests_running{0};

  // Generate requests.
  Histogram time_to_first_token;  // seconds, submit to first token
  Histogram inter_token_latency;  // seconds between consecutive tokens
  Histogram e2e_request_latency;  // seconds, submit to completion
  std::atomic<int64_t> prompt_tokens_total{0};
  std::atomic<int64_t> generation_tokens_total{0};
  std::array<std::atomic<int64_t>, kNumFinishReasons> request_success_total{};
  std::atomic<int64_t> request_failure_total{0};  // errors, cancellations, deadlines

  // Ingest and Score.
  std::atomic<int64_t> ingested_tokens_total{0};
  std::atomic<int64_t> ingested_segments_total{0};
  std::atomic<int64_t> scored_tokens_total{0};

  // Engine steps.
  std::atomic<int64_t> steps_total{0};
  Histogram step_seconds;            // one batched Forward plus scheduling
  Histogram forward_seconds;         // the Forward call alone
  Histogram decode_forward_seconds;  // Forward of steps that only decode
  Histogram step_batch_tokens;       // tokens per step

  // KV cache occupancy, published after each step.
  std::atomic<int64_t> kv_blocks_used{0};
  std::atomic<int64_t> kv_blocks_total{0};

  // Infini window (docs/design.md §4). Memory bytes held by all sessions' compressive
  // memories; tokens folded into them; chunk evictions by overflow policy.
  std::atomic<int64_t> infini_memory_bytes{0};
  std::atomic<int64_t> infini_folded_tokens_total{0};
  std::atomic<int64_t> infini_evictions_compress_total{0};
  std::atomic<int64_t> infini_evictions_slide_total{0};
  // Ingests and generations refused because a REJECT session's window was full.
  std::atomic<int64_t> infini_rejections_total{0};

  // A context-parallel group (engine/dist): its ranks, and per rank the
  // sessions homed there and the KV tokens it holds. group_ranks 0: no group.
  static constexpr int kMaxRanks = 64;
  std::atomic<int> group_ranks{0};
  std::array<std::atomic<int64_t>, kMaxRanks> rank_sessions{};
  std::array<std::atomic<int64_t>, kMaxRanks> rank_kv_tokens{};

  // Session moves.
  Histogram export_seconds;
  Histogram import_seconds;
};

// Bucket bounds in seconds shaped like vLLM's for the same metrics.
std::vector<double> TimeToFirstTokenBuckets();
std::vector<double> InterTokenLatencyBuckets();
std::vector<double> RequestLatencyBuckets();
// Engine step durations: finer, GPU steps take milliseconds.
std::vector<double> StepBuckets();

}  // namespace longctx

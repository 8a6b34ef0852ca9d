// Plain counters and histograms the engine keeps about its work (docs/design.md §8).
// The engine only counts; server/metrics turns these into Prometheus metrics
// at scrape time, so nothing here knows about any metrics library.
//
// Thread safety: every member may be updated and read from any thread.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
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

struct EngineStats {
  EngineStats();

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

// One session's token sequence under the Infini window policy (docs/design.md §4): it
// owns the sequence's KV (a KvSequence in the model's cache), the compressive
// memory and the counters. With a window, KV is kept for the sinks and the
// W/L most recent chunks (see infini_config.h); a chunk leaving the window is
// folded into the memory (compress) or dropped (slide), and its KV blocks go
// back to the pool, so a session's footprint stays bounded however long it
// grows. Without a window it is a plain DCA sequence.
//
// Steps: a caller batching several sessions asks StepCapacity() how many of its
// tokens the next step may take (steps never cross a chunk boundary while a
// window is on), then PrepareStep() evicts what leaves the window and fills the
// StepItem. Ingest() does both in a loop for one session alone.
//
// Thread safety: owned by the engine thread; not thread-safe. The model (and its
// KV cache) must outlive the window.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/kv/kv_cache.h"
#include "engine/model/infini_config.h"
#include "engine/model/infini_memory.h"
#include "engine/model/llama_model.h"

namespace longctx {

// Per-session counters for metrics (docs/design.md §8: folded tokens, evictions by policy).
struct InfiniCounters {
  int64_t folded_tokens = 0;   // tokens folded into the memory (compress)
  int64_t dropped_tokens = 0;  // tokens dropped without a trace (slide)
  int64_t chunks_folded = 0;   // chunk evictions under compress
  int64_t chunks_dropped = 0;  // chunk evictions under slide
  int64_t rejected_steps = 0;  // RESOURCE_EXHAUSTED answers under reject
};

class InfiniWindow {
 public:
  // Validates `config` against `dca` and the model's KV block size; mixing
  // needs the model's gates (FAILED_PRECONDITION without them).
  static absl::StatusOr<std::unique_ptr<InfiniWindow>> Create(LlamaModel* model,
                                                              const InfiniConfig& config,
                                                              const cpu::DcaParams& dca);
  ~InfiniWindow();  // returns the sequence's KV blocks
  InfiniWindow(const InfiniWindow&) = delete;
  InfiniWindow& operator=(const InfiniWindow&) = delete;

  const InfiniConfig& config() const { return config_; }
  const cpu::DcaParams& dca() const { return dca_; }
  const KvSequence& sequence() const { return seq_; }
  int length() const { return seq_.length(); }
  // The memory under compress; nullptr otherwise.
  const InfiniMemory* memory() const { return memory_ ? &*memory_ : nullptr; }
  // Whether the memory is mixed into attention (config.mix, model has gates).
  bool mixing() const { return config_.mix; }
  const InfiniCounters& counters() const { return counters_; }
  // First token whose KV is kept after the sinks; tokens in [sink_tokens,
  // evicted_end()) are folded or dropped.
  int evicted_end() const { return evicted_end_; }
  // window_start(i) of infini_config.h for a query at token index i.
  int WindowStart(int i) const;

  // How many of the next `wanted` (≥ 1) tokens one step may take: all of them
  // without a window, else up to the next chunk boundary. RESOURCE_EXHAUSTED
  // under reject when the next token would push a key out of the window (and
  // counted in rejected_steps).
  absl::StatusOr<int> StepCapacity(int wanted);
  // Before a step of `n` tokens: folds or drops the chunks that leave the
  // window, frees their blocks, and completes `item`: the sequence, the window
  // fields of item->dca and the memory when mixing. item->dca must already hold
  // this step's DCA parameters (the scale may vary with the length; chunk_len
  // and chunk_size must be the session's, else INVALID_ARGUMENT). The caller
  // sets item->tokens and item->logits. REQUIRES: n ≤ StepCapacity(n).
  absl::Status PrepareStep(int n, StepItem* item);
  // Runs `tokens` through the model in as many steps as needed. Logits as in
  // LlamaModel::Forward: kAll one row per token, kLast the last token's row.
  // Under reject, an ingest that would not fit fails before any token runs.
  absl::Status Ingest(std::span<const int32_t> tokens, LogitsMode mode, std::vector<float>* logits);
  // Rolls the sequence back to `length` tokens (e.g. after a generation).
  // FAILED_PRECONDITION when the steps being rolled back moved the window
  // (a chunk the shorter sequence still needs was folded or dropped): evictions
  // cannot be undone.
  absl::Status Truncate(int length);
  // Rolls the sequence back to `length` tokens but keeps the evictions the
  // rolled-back steps made (a generation that is not kept, a failed ingest):
  // the window stays where they moved it, tokens [sink_tokens, evicted_end())
  // stay folded or dropped and absent from the KV, and later steps attend from
  // evicted_end(). A token is still never both in the window and the memory.
  // FAILED_PRECONDITION when length < evicted_end() past the sinks (the memory
  // would hold tokens the sequence no longer has).
  absl::Status Rollback(int length);

  // Replaces the memory (session import). INVALID_ARGUMENT unless its shape and
  // rule match this session and the window is compress.
  absl::Status RestoreMemory(InfiniMemory memory);
  // Restores an exported or snapshotted windowed session: REQUIRES the sinks
  // alone were ingested (length() == sink_tokens). Tokens [sink_tokens,
  // evicted_end) become absent, `memory` (under compress; ignored otherwise)
  // replaces the memory, and the caller then ingests tokens evicted_end.. from
  // the token log. The window is recomputed, not copied: the first re-ingested
  // tokens see only the restored window, so outputs are close to, not bit-equal
  // with, the uninterrupted session's.
  absl::Status Resume(int evicted_end, std::optional<InfiniMemory> memory);

 private:
  InfiniWindow(LlamaModel* model, const InfiniConfig& config, const cpu::DcaParams& dca);
  // Folds tokens [begin, end) (whole blocks of one chunk) into the memory.
  absl::Status Fold(int begin, int end);

  LlamaModel* model_;
  InfiniConfig config_;
  cpu::DcaParams dca_;
  KvSequence seq_;
  std::optional<InfiniMemory> memory_;
  InfiniCounters counters_;
  int evicted_end_;  // starts at sink_tokens
};

}  // namespace longctx

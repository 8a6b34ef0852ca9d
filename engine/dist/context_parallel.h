// Context-parallel attention (docs/design.md §7): one session's KV spread over the ranks
// by ChunkPlacement; for each layer the session's home rank broadcasts the new
// tokens' queries (and keys and values, which the rank holding their span
// stores; the three packed into one message), every rank computes the partial attention (o, lse)
// over the keys it holds with DCA positions by absolute chunk index, and the home merges the
// partials by log-sum-exp. The result equals single-rank attention up to f32
// rounding.
//
// Every method marked "collective" is called by every rank of the communicator,
// in the same order, with the same session state and step sizes; how the ranks
// agree on the step (which session, how many tokens) is the scheduler's business.
// A failure inside a collective aborts the communicator (peers fail with
// UNAVAILABLE rather than wait), except where noted.
//
// Thread safety: one instance per rank, used by that rank's engine thread.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/backend/backend.h"
#include "engine/dist/communicator.h"
#include "engine/dist/placement.h"
#include "engine/kv/kv_cache.h"
#include "engine/model/llama_model.h"

namespace longctx {

// One rank's share of a context-parallel session. Every rank keeps one per
// session with the same placement; length() agrees across ranks.
class ShardedSequence {
 public:
  explicit ShardedSequence(const ChunkPlacement& placement) : placement_(placement) {}

  const ChunkPlacement& placement() const { return placement_; }
  // Tokens of the session, all ranks together.
  int length() const { return length_; }
  // The tokens this rank holds, back to back in HeldRuns order.
  const KvSequence& local() const { return local_; }

 private:
  friend class ContextParallelAttention;
  // What BeginStep prepared for the step in flight (n_new == 0: none).
  struct Step {
    int n_new = 0;
    int local_before = 0;            // local_.length() before the step
    std::vector<int32_t> rows;       // new-token rows this rank stores
    std::vector<int32_t> slots;      // their KV slots, same order
    std::vector<int32_t> run_first;  // held runs of [0, length + n_new)
    std::vector<int32_t> run_count;
  };
  ChunkPlacement placement_;
  int length_ = 0;
  KvSequence local_;
  Step step_;
};

// Wall time one rank spent in the phases of Attend (seconds, summed over calls).
struct ContextParallelStats {
  int64_t layers = 0;      // Attend calls
  double broadcast_s = 0;  // the q, k, v broadcasts (on a worker: also waiting for the home)
  double partial_s = 0;    // KV write and partial attention, synchronized
  double gather_s = 0;     // the gather of the partials (on the home: also waiting for the
                           // slowest rank's partial)
};

class ContextParallelAttention {
 public:
  // comm, backend and kv (the backend's KV cache) outlive this object.
  // inv_freq: the model's inverse RoPE frequencies [head_dim / 2].
  ContextParallelAttention(Communicator* comm, Backend* backend, KvCache* kv, int n_heads,
                           std::vector<float> inv_freq);

  Communicator& comm() const { return *comm_; }

  // Collective. Reserves, on every rank, KV for the tokens of the session's next
  // n_new tokens that the rank holds. The ranks agree on the outcome: if any rank
  // is short of KV, every rank returns RESOURCE_EXHAUSTED (naming that rank), no
  // sequence has grown, and the communicator stays usable.
  absl::Status BeginStep(ShardedSequence& seq, int n_new);

  // Collective, once per layer between BeginStep and EndStep. On the session's
  // home rank q [n_new, n_heads·head_dim] holds the new tokens' un-rotated
  // queries, k and v [n_new, n_kv_heads·head_dim] their keys (rotated at
  // position j mod chunk_len, as cached) and values, and out [n_new,
  // n_heads·head_dim] receives the attention; on other ranks all four are ignored.
  // dca.softmax_scale 0 means 1/sqrt(head_dim). The same dca on every rank.
  absl::Status Attend(ShardedSequence& seq, int layer, const cpu::DcaParams& dca, Tensor out,
                      Tensor q, Tensor k, Tensor v);

  // Local. Ends the step: commit grows the session by n_new tokens; otherwise
  // this rank's KV of the step is given back.
  void EndStep(ShardedSequence& seq, bool commit);

  // Local. Shrinks the session to its first `length` tokens (a rollback); every
  // rank calls it with the same length. REQUIRES: no step in flight, length ≤
  // seq.length().
  void Truncate(ShardedSequence& seq, int length);

  // Local. Frees this rank's KV of the session.
  void Release(ShardedSequence& seq);

  // Local. Phase times of this rank's Attend calls since construction or the
  // last ResetStats.
  const ContextParallelStats& stats() const { return stats_; }
  void ResetStats() { stats_ = ContextParallelStats(); }

  // Collective, on every rank but the session's home while the home runs the
  // model over the step (ContextParallelStep): BeginStep, Attend for each of
  // n_layers layers, EndStep.
  absl::Status ServeStep(ShardedSequence& seq, int n_new, int n_layers, const cpu::DcaParams& dca);

 private:
  // Scratch for a step of `tokens` new tokens, grown on demand.
  absl::Status EnsureScratch(int tokens);
  // Aborts the communicator (peers would wait for this rank) and returns `why`.
  absl::Status Fail(absl::Status why);
  // The home rank's part of Attend before the broadcast: checks the shapes
  // and packs q, k and v into `qp`, `kp`, `vp` (back to back in q_).
  absl::Status PackForBroadcast(int layer, int n, const Tensor& out, const Tensor& q,
                                const Tensor& k, const Tensor& v, const Tensor& qp,
                                const Tensor& kp, const Tensor& vp);
  // Stores the new keys and values of the spans this rank holds.
  absl::Status WriteHeldKv(const ShardedSequence& seq, int layer, const Tensor& k, const Tensor& v);

  Communicator* comm_;
  Backend* backend_;
  KvCache* kv_;
  const int n_heads_;
  const int n_kv_heads_;
  const int head_dim_;
  const std::vector<float> inv_freq_;

  int scratch_tokens_ = 0;
  DeviceBuffer scratch_;
  Tensor q_, k_, v_;               // regions of the scratch the step's q, k, v are packed into
  std::vector<int32_t> identity_;  // 0, 1, 2, ...: rows of a whole-tensor copy
  Tensor k_mine_, v_mine_;         // rows of k/v this rank stores
  Tensor gathered_;                // f32 partials of all ranks; this rank's part is its own
  DeviceBuffer status_buf_;        // f32 [world_size]: BeginStep's agreement
  ContextParallelStats stats_;
};

// The home rank's side of one step, handed to LlamaModel::Forward as the item's
// external attention:
//   RETURN_IF_ERROR(cp.BeginStep(seq, n));
//   ContextParallelStep step(&cp, &seq, dca, model.config().n_layers);
//   item.external = &step;
//   status = step.Finish(model.Forward({&item, 1}, &logits));
class ContextParallelStep final : public ExternalAttention {
 public:
  ContextParallelStep(ContextParallelAttention* cp, ShardedSequence* seq, const cpu::DcaParams& dca,
                      int n_layers)
      : cp_(cp), seq_(seq), dca_(dca), n_layers_(n_layers) {}

  int length() const override { return seq_->length(); }
  absl::Status Attend(int layer, Tensor out, Tensor q, Tensor k, Tensor v) override;

  // Ends the step with the outcome of the model's forward. Once every layer has
  // attended, the ranks hold the step's KV and the session grows even if the
  // forward failed afterwards (computing logits); a forward that stopped earlier
  // aborts the communicator, since the other ranks wait for the next layer.
  // Returns forward_status.
  absl::Status Finish(absl::Status forward_status);

 private:
  ContextParallelAttention* cp_;
  ShardedSequence* seq_;
  cpu::DcaParams dca_;
  int n_layers_;
  int layers_done_ = 0;
};

}  // namespace longctx

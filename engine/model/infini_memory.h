// Per-session Infini-attention compressive memory (docs/design.md §4): for every layer
// and kv head M (head_dim × head_dim) and z (head_dim), fp32, on the host. It
// sees un-rotated keys and queries only. InfiniWindow folds chunks into it; the
// forward reads it when mixing is on; sessions export it through Serialize.
//
// Thread safety: a plain value; owned by its session on the engine thread.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "kernels/ops.h"

namespace longctx {

class InfiniMemory {
 public:
  // An empty memory (M = 0, z = 0). REQUIRES: positive sizes.
  InfiniMemory(int n_layers, int n_kv_heads, int head_dim, cpu::InfiniUpdateRule rule, float eps);

  int n_layers() const { return n_layers_; }
  int n_kv_heads() const { return n_kv_heads_; }
  int head_dim() const { return head_dim_; }
  cpu::InfiniUpdateRule rule() const { return rule_; }
  float eps() const { return eps_; }
  // M [n_kv_heads, D, D] and z [n_kv_heads, D] of one layer.
  const float* mem(int layer) const { return state_.data() + layer * LayerFloats(); }
  const float* z(int layer) const { return mem(layer) + MemFloats(); }
  // Tokens folded so far (counted once per token, not per layer).
  int64_t folded_tokens() const { return folded_tokens_; }
  bool empty() const { return folded_tokens_ == 0; }
  // Bytes of state: n_layers × n_kv_heads × (D² + D) × 4. Constant for the session.
  int64_t bytes() const { return static_cast<int64_t>(state_.size() * sizeof(float)); }

  // Folds one segment into `layer`: k un-rotated, both [T, n_kv_heads, D].
  // Call it for every layer with the same tokens, then CountFolded(T) once.
  void Fold(int layer, const float* k, const float* v, int T);
  void CountFolded(int64_t tokens) { folded_tokens_ += tokens; }
  // As Fold, through the backend's kernels, from cached KV: the tokens of
  // whole `blocks` of `layer`, keys rotated by back_pos [T] to un-rotated.
  // REQUIRES: backend.HasInfiniKernels().
  absl::Status FoldKv(Backend& backend, int layer, std::span<const int32_t> blocks,
                      std::span<const int32_t> back_pos, std::span<const float> inv_freq);
  // A_mem of T query rows of `layer`: out and q [T, n_heads, D], q un-rotated.
  void Retrieve(float* out, int layer, const float* q, int T, int n_heads) const;
  // attn = sigmoid(β)·A_mem(q) + (1 − sigmoid(β))·attn on backend tensors
  // [T, n_heads·D]; beta [n_heads]. On the backend's kernels when it has them,
  // else staged through the host.
  absl::Status MixInto(Backend& backend, int layer, Tensor attn, Tensor q, int n_heads,
                       std::span<const float> beta) const;
  // Back to empty.
  void Clear();

  // Self-describing little-endian bytes (header, state, checksum). A restored
  // memory is bit-identical, its rule, eps and folded count included.
  std::string Serialize() const;
  // INVALID_ARGUMENT for a malformed header, DATA_LOSS for a short or corrupt
  // payload. Never crashes on hostile input.
  static absl::StatusOr<InfiniMemory> Deserialize(std::string_view bytes);

  bool operator==(const InfiniMemory& o) const;

 private:
  int64_t MemFloats() const { return int64_t{n_kv_heads_} * head_dim_ * head_dim_; }
  int64_t LayerFloats() const { return MemFloats() + int64_t{n_kv_heads_} * head_dim_; }

  int n_layers_, n_kv_heads_, head_dim_;
  cpu::InfiniUpdateRule rule_;
  float eps_;
  int64_t folded_tokens_ = 0;
  std::vector<float> state_;  // per layer: M then z
};

}  // namespace longctx

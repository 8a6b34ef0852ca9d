// The Llama-family forward pass (llama, qwen2; docs/design.md §2), written once against
// the Backend interface. One call runs one batched step over several sequences:
// their new tokens go through the linear layers as one matrix; attention runs
// per sequence over its paged KV with its own DCA settings.
//
// Thread safety: owned by the engine thread; not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/kv/kv_cache.h"
#include "engine/model/host_weights.h"

namespace longctx {

// What Forward returns for an item: nothing, the logits of its last new token,
// of every new token, or (kGreedy) only the greedy token of its last new
// position, written to StepItem::greedy_token: the logits stay on the device
// and the argmax runs there (Backend::ArgMaxRows).
enum class LogitsMode { kNone, kLast, kAll, kGreedy };

// Attention of a sequence whose KV lives outside the model's cache: a
// context-parallel session spread over ranks (docs/design.md §7, engine/dist). The model
// calls Attend once per layer, in order; the implementation stores k and v where
// they belong and writes the attention to out.
class ExternalAttention {
 public:
  virtual ~ExternalAttention() = default;
  // Tokens of the sequence before this step: the first new token's position.
  virtual int length() const = 0;
  // out, q: [n, n_heads·head_dim], q un-rotated; k, v: [n, n_kv_heads·head_dim],
  // k rotated at position j mod chunk_len.
  virtual absl::Status Attend(int layer, Tensor out, Tensor q, Tensor k, Tensor v) = 0;
};
class InfiniMemory;

struct StepItem {
  KvSequence* seq = nullptr;           // appended to by Forward; null with `external`
  std::span<const int32_t> tokens;     // new tokens (≥ 1)
  LogitsMode logits = LogitsMode::kLast;
  cpu::DcaParams dca;                  // chunk_len/chunk_size; softmax_scale 0 = 1/sqrt(D)
  // Set: the item's KV lives elsewhere and `external` attends for it. Such an
  // item is the only one of its step.
  ExternalAttention* external = nullptr;
  // Infini-attention memory mixed into this item's attention through the
  // model's gates (docs/design.md §4); nullptr = no mixing. REQUIRES has_infini_gates().
  const InfiniMemory* infini = nullptr;
  // With LogitsMode::kGreedy: where Forward writes the token (REQUIRED then).
  int32_t* greedy_token = nullptr;
};

// The KV budget of KvCacheConfig::max_bytes = 0, given the backend's
// FreeDeviceBytes() after the weights: on a device, 90 % of its free memory
// less 4 GiB for activations and scratch (at least one GiB); 2 GiB of host
// memory otherwise.
int64_t AutoKvBytes(const absl::StatusOr<int64_t>& free_device_bytes);

// KV arena bytes for `tokens` tokens of one sequence on `backend`, plus one
// block of slack per sequence boundary.
int64_t KvBytesForTokens(const ModelConfig& config, const Backend& backend, int64_t tokens,
                         int block_size = KvCacheConfig{}.block_size);

class LlamaModel {
 public:
  // Uploads the weights to `backend` and initialises its KV arena.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Create(const HostModel& host,
                                                            Backend* backend,
                                                            const KvCacheConfig& kv_config);
  ~LlamaModel();

  const ModelConfig& config() const { return config_; }
  Backend* backend() const { return backend_; }
  KvCache& kv_cache() { return *kv_; }
  // Inverse RoPE frequencies [head_dim/2] including the model's rope scaling.
  std::span<const float> inv_freq() const { return inv_freq_; }
  // Infini-attention gates β, one per q head and layer, from the model's
  // `blk.N.infini_beta` tensors. Without them the memory is never mixed.
  bool has_infini_gates() const { return !infini_beta_.empty(); }
  std::span<const float> infini_beta(int layer) const;

  // Appends each item's tokens to its sequence and writes logits, f32 [rows,
  // vocab], rows in item order: kLast gives one row, kAll one per new token,
  // kGreedy none (its token goes to the item's greedy_token).
  // On error no sequence has grown. RESOURCE_EXHAUSTED when KV blocks run out.
  absl::Status Forward(std::span<const StepItem> items, std::vector<float>* logits);

 private:
  LlamaModel() = default;
  struct Layer;
  absl::Status EnsureScratch(int64_t tokens);
  // Reads the optional `blk.N.infini_beta` gates (all layers or none).
  absl::Status LoadInfiniGates(const HostModel& host);
  // Reserves KV for every item and runs the layers; x_ holds the final hidden states.
  absl::Status RunLayers(std::span<const StepItem> items, int64_t total);
  // A step of one new token per item, no Infini mixing or external attention,
  // at most one pass of logit rows: the kind a backend may record as a graph.
  static bool IsDecodeStep(std::span<const StepItem> items);
  // Such a step inside Backend::BeginStep/EndStep; ABORTED means nothing ran
  // (the caller rolls the KV back and redoes the step op by op).
  absl::Status RunBracketedStep(std::span<const StepItem> items, int64_t total,
                                std::vector<float>* logits);
  struct LogitRows;
  absl::Status ComputeLogits(std::span<const StepItem> items, std::span<const int> old_length,
                             std::vector<float>* logits);
  // Logits of hidden-state rows plan.rows[first, first + out.rows) in `out`:
  // the downloaded ones go to *logits, the greedy ones to their items.
  absl::Status EmitLogitRows(const LogitRows& plan, int64_t first, Tensor out,
                             std::span<const StepItem> items, std::vector<float>* logits);

  ModelConfig config_;
  Backend* backend_ = nullptr;
  std::unique_ptr<KvCache> kv_;
  std::vector<float> inv_freq_;
  std::vector<float> infini_beta_;  // [n_layers, n_heads] or empty
  std::vector<DeviceBuffer> weight_buffers_;
  std::vector<Layer> layers_;
  Tensor token_embd_, output_norm_, output_;
  // Scratch activations, grown on demand.
  int64_t scratch_tokens_ = 0;
  DeviceBuffer scratch_;
  Tensor x_, xn_, q_, k_, v_, attn_, gate_, up_, logits_rows_, logits_;
};

}  // namespace longctx

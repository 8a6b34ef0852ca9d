// What the scheduler needs of a model: one batched step over several
// sequences, and the KV cache those sequences live in. LlamaModel is the real
// one; tests drive the scheduler with a small fake.
//
// Thread safety: used by the engine thread only.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/kv/kv_cache.h"
#include "engine/stats.h"
#include "engine/model/infini_window.h"
#include "engine/model/llama_model.h"

namespace longctx {

class StepModel {
 public:
  virtual ~StepModel() = default;
  virtual int vocab_size() const = 0;
  virtual int head_dim() const = 0;
  virtual KvCache& kv_cache() = 0;
  // As LlamaModel::Forward: appends each item's tokens to its sequence and
  // writes f32 logits [rows, vocab] in item order. On error no sequence grew.
  virtual absl::Status Forward(std::span<const StepItem> items, std::vector<float>* logits) = 0;
  // Whether Forward takes LogitsMode::kGreedy items (the argmax on the device,
  // no logits downloaded); the scheduler asks for kLast otherwise.
  virtual bool greedy_tokens() const { return false; }
  // An Infini window (compress and slide sessions) over this model's KV cache.
  // UNIMPLEMENTED for models without one.
  virtual absl::StatusOr<std::unique_ptr<InfiniWindow>> CreateWindow(const InfiniConfig& config,
                                                                     const cpu::DcaParams& dca) {
    (void)config;
    (void)dca;
    return absl::UnimplementedError("this model has no Infini window");
  }
  // Whether the model carries trained Infini gates (memory mixing possible).
  virtual bool has_infini_gates() const { return false; }

  // A sequence's lifecycle beyond Forward: rollback to `length` tokens, and
  // release. A model whose sequences live on several ranks tells them too.
  virtual void TruncateSequence(KvSequence& seq, int length) { kv_cache().Truncate(seq, length); }
  virtual void ReleaseSequence(KvSequence& seq) { kv_cache().Release(seq); }

  // While there is no work, the engine thread calls Idle() at least every
  // idle_interval() (infinite: never), e.g. to keep peers' waits alive.
  virtual absl::Duration idle_interval() const { return absl::InfiniteDuration(); }
  virtual void Idle() {}
  // OK while the model can run steps; the error that broke it otherwise (a
  // lost rank). The server reports NOT_SERVING then.
  virtual absl::Status health() const { return absl::OkStatus(); }
  // Writes what a model over several ranks knows of their load into `stats`
  // (EngineStats::group_ranks and the per-rank gauges); nothing otherwise.
  virtual void PublishLoad(EngineStats& stats) const { (void)stats; }
};

class LlamaStepModel final : public StepModel {
 public:
  explicit LlamaStepModel(std::unique_ptr<LlamaModel> model) : model_(std::move(model)) {}

  int vocab_size() const override { return model_->config().vocab_size; }
  int head_dim() const override { return model_->config().head_dim; }
  KvCache& kv_cache() override { return model_->kv_cache(); }
  absl::Status Forward(std::span<const StepItem> items, std::vector<float>* logits) override {
    return model_->Forward(items, logits);
  }
  bool greedy_tokens() const override { return true; }
  absl::StatusOr<std::unique_ptr<InfiniWindow>> CreateWindow(const InfiniConfig& config,
                                                             const cpu::DcaParams& dca) override {
    return InfiniWindow::Create(model_.get(), config, dca);
  }
  bool has_infini_gates() const override { return model_->has_infini_gates(); }
  LlamaModel& model() { return *model_; }

 private:
  std::unique_ptr<LlamaModel> model_;
};

}  // namespace longctx

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
#include "engine/kv/kv_cache.h"
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

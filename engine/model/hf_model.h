// Hugging Face model directories: config.json -> ModelConfig, tokenizer.json
// (+ tokenizer_config.json) -> VocabData, and safetensors weights (one
// model.safetensors or the shards named by model.safetensors.index.json) ->
// f32 tensors under canonical GGUF names.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "engine/model/host_weights.h"
#include "engine/model/model_config.h"
#include "engine/tokenizer/vocab.h"
#include "nlohmann/json_fwd.hpp"

namespace longctx {

// ModelConfig from a parsed config.json (model_type llama, mistral or qwen2).
absl::StatusOr<ModelConfig> ConfigFromHfJson(const nlohmann::json& config);

// VocabData from a parsed tokenizer.json (BPE model) and optional
// tokenizer_config.json (null when absent); `config` supplies model_type and
// the special token ids.
absl::StatusOr<VocabData> VocabFromTokenizerJson(const nlohmann::json& tokenizer,
                                                 const nlohmann::json& tokenizer_config,
                                                 const nlohmann::json& config);

// Loads a Hugging Face model directory: config.json, tokenizer.json
// (+ tokenizer_config.json), and model.safetensors or the shards named by
// model.safetensors.index.json. Tensors get canonical names; nothing is
// un-permuted (Hugging Face rows are already in rotate-half order).
absl::StatusOr<HostModel> LoadSafetensorsModel(const std::string& dir);

}  // namespace longctx

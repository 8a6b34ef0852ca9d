// Architecture hyper-parameters of a Llama-family model, filled from GGUF
// metadata or a Hugging Face config.json.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace longctx {

enum class RopeScalingType { kNone, kLinear, kNtk };

struct ModelConfig {
  std::string architecture;   // "llama" or "qwen2"
  std::string name;           // human-readable model name
  int n_layers = 0;
  int d_model = 0;            // embedding width
  int n_heads = 0;            // query heads
  int n_kv_heads = 0;         // key/value heads (GQA groups = n_heads / n_kv_heads)
  int head_dim = 0;           // d_model / n_heads unless stated otherwise
  int d_ff = 0;               // SwiGLU hidden width
  int vocab_size = 0;
  int context_length = 0;     // nominal training context
  float rope_theta = 10000.f;
  float rms_eps = 1e-5f;
  bool tied_embeddings = false;  // lm head shares token_embd
  bool qkv_bias = false;         // Qwen2
  RopeScalingType rope_scaling = RopeScalingType::kNone;
  float rope_scaling_factor = 1.f;

  // REQUIRES: all counts filled. Checks the shape relations the forward relies on.
  absl::Status Validate() const;
};

}  // namespace longctx

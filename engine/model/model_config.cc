#include "engine/model/model_config.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace longctx {
namespace {

// Upper bounds far above any published Llama-family model; they keep a hostile
// config from sizing buffers the forward pass would later allocate.
constexpr int kMaxLayers = 1024;
constexpr int kMaxWidth = 1 << 17;
constexpr int kMaxHeads = 1024;
constexpr int kMaxHeadDim = 1024;
constexpr int kMaxVocab = 1 << 22;

absl::Status CheckRange(const char* name, int v, int lo, int hi) {
  if (v < lo || v > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: ", name, " = ", v, " not in [", lo, ", ", hi, "]"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ModelConfig::Validate() const {
  if (architecture != "llama" && architecture != "qwen2") {
    return absl::InvalidArgumentError(absl::StrCat("model config: unsupported architecture '",
                                                   architecture,
                                                   "' (llama and qwen2 are supported)"));
  }
  for (absl::Status s :
       {CheckRange("n_layers", n_layers, 1, kMaxLayers),
        CheckRange("d_model", d_model, 1, kMaxWidth), CheckRange("n_heads", n_heads, 1, kMaxHeads),
        CheckRange("n_kv_heads", n_kv_heads, 1, kMaxHeads),
        CheckRange("head_dim", head_dim, 2, kMaxHeadDim),
        CheckRange("d_ff", d_ff, 1, kMaxWidth * 8),
        CheckRange("vocab_size", vocab_size, 1, kMaxVocab),
        CheckRange("context_length", context_length, 1, 1 << 30)}) {
    if (!s.ok()) return s;
  }
  if (n_heads % n_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model config: n_heads ", n_heads, " is not a multiple of n_kv_heads ", n_kv_heads));
  }
  if (head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: head_dim ", head_dim, " is odd (RoPE rotates pairs)"));
  }
  if (static_cast<int64_t>(n_heads) * head_dim > kMaxWidth) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model config: n_heads * head_dim = ", static_cast<int64_t>(n_heads) * head_dim,
        " is too large"));
  }
  if (!std::isfinite(rope_theta) || rope_theta <= 0.f) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: rope_theta ", rope_theta, " must be positive"));
  }
  if (!std::isfinite(rms_eps) || rms_eps <= 0.f || rms_eps > 1.f) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: rms_eps ", rms_eps, " not in (0, 1]"));
  }
  if (!std::isfinite(rope_scaling_factor) || rope_scaling_factor <= 0.f) {
    return absl::InvalidArgumentError(absl::StrCat("model config: rope_scaling_factor ",
                                                   rope_scaling_factor, " must be positive"));
  }
  if (rope_scaling == RopeScalingType::kNone && rope_scaling_factor != 1.f) {
    return absl::InvalidArgumentError(
        "model config: rope_scaling_factor set without a rope scaling type");
  }
  return absl::OkStatus();
}

}  // namespace longctx

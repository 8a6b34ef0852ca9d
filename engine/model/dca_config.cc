#include "engine/model/dca_config.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace longctx {

absl::StatusOr<DcaMode> ParseDcaMode(absl::string_view s) {
  if (s == "rope") return DcaMode::kRope;
  if (s == "dca") return DcaMode::kDca;
  return absl::InvalidArgumentError(
      absl::StrCat("dca mode: want \"rope\" or \"dca\", got \"", std::string(s), "\""));
}

const char* DcaModeName(DcaMode mode) { return mode == DcaMode::kRope ? "rope" : "dca"; }

DcaOverrides DcaOverrides::Then(const DcaOverrides& later) const {
  DcaOverrides o = *this;
  if (later.mode) o.mode = later.mode;
  if (later.pretrain_len) o.pretrain_len = later.pretrain_len;
  if (later.chunk_size) o.chunk_size = later.chunk_size;
  if (later.local_window) o.local_window = later.local_window;
  if (later.length_temperature) o.length_temperature = later.length_temperature;
  if (later.compose_rope_scaling) o.compose_rope_scaling = later.compose_rope_scaling;
  return o;
}

absl::StatusOr<DcaConfig> DcaConfig::Resolve(const ModelConfig& model,
                                             const DcaOverrides& overrides) {
  DcaConfig c;
  c.mode = overrides.mode.value_or(c.mode);
  c.pretrain_len = overrides.pretrain_len.value_or(model.context_length);
  if (c.pretrain_len <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("dca: pretrain_len unknown (model '", model.name,
                     "' declares no context length); set pretrain_len explicitly"));
  }
  if (c.pretrain_len > kMaxPretrainLen) {
    return absl::InvalidArgumentError(absl::StrCat("dca: pretrain_len (c=", c.pretrain_len,
                                                   ") is over the maximum of ", kMaxPretrainLen));
  }
  const int64_t align = kDcaDefaultAlignment;
  const int64_t c64 = c.pretrain_len;  // 3c in int64: c may be near kMaxPretrainLen
  c.chunk_size = overrides.chunk_size.value_or(static_cast<int>(c64 * 3 / 4 / align * align));
  c.local_window = overrides.local_window.value_or(static_cast<int>(c64 / 8 / align * align));
  c.length_temperature = overrides.length_temperature.value_or(c.length_temperature);
  c.compose_rope_scaling = overrides.compose_rope_scaling.value_or(c.compose_rope_scaling);
  return c;
}

absl::Status DcaConfig::Validate(int block_size) const {
  if (block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("dca: KV block_size (", block_size, ") must be positive"));
  }
  if (pretrain_len <= 0 || pretrain_len > kMaxPretrainLen) {
    return absl::InvalidArgumentError(absl::StrCat("dca: pretrain_len (c=", pretrain_len,
                                                   ") must be in [1, ", kMaxPretrainLen, "]"));
  }
  if (mode == DcaMode::kRope) return absl::OkStatus();
  if (local_window <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("dca: local_window (w=", local_window, ") must be positive"));
  }
  if (local_window >= chunk_size) {
    return absl::InvalidArgumentError(absl::StrCat("dca: local_window (w=", local_window,
                                                   ") must be less than chunk_size (C=", chunk_size,
                                                   ")"));
  }
  if (chunk_size > pretrain_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("dca: chunk_size (C=", chunk_size,
                     ") must not exceed pretrain_len (c=", pretrain_len, ")"));
  }
  if (chunk_len() % block_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("dca: chunk length chunk_size - local_window (L=", chunk_len(),
                     ") must be a multiple of the KV block_size (", block_size, ")"));
  }
  return absl::OkStatus();
}

float DcaConfig::TemperatureFactor(int total_len) const {
  if (!length_temperature || total_len <= pretrain_len) return 1.f;
  const double sf =
      std::max(1.0, 0.1 * std::log(static_cast<double>(total_len) / pretrain_len) + 1.0);
  return static_cast<float>(sf * sf);
}

cpu::DcaParams DcaConfig::ToParams(int head_dim, int total_len) const {
  cpu::DcaParams p;
  if (mode == DcaMode::kDca) {
    p.chunk_len = chunk_len();
    p.chunk_size = chunk_size;
  }
  p.softmax_scale = TemperatureFactor(total_len) / std::sqrt(static_cast<float>(head_dim));
  return p;
}

std::string DcaConfig::DebugString() const {
  return absl::StrCat("mode=", DcaModeName(mode), " c=", pretrain_len, " C=", chunk_size,
                      " w=", local_window, " L=", chunk_len(),
                      " length_temperature=", length_temperature ? "on" : "off",
                      " compose_rope_scaling=", compose_rope_scaling ? "on" : "off");
}

std::vector<float> RopeInverseFrequencies(const ModelConfig& model, bool with_scaling) {
  const int d = model.head_dim;
  double theta = model.rope_theta;
  const bool ntk = with_scaling && model.rope_scaling == RopeScalingType::kNtk &&
                   model.rope_scaling_factor > 1.f;
  const bool linear = with_scaling && model.rope_scaling == RopeScalingType::kLinear &&
                      model.rope_scaling_factor > 0.f;
  // NTK-aware scaling stretches the base so the lowest frequency slows by the factor.
  if (ntk) theta *= std::pow(static_cast<double>(model.rope_scaling_factor), double(d) / (d - 2));
  std::vector<float> inv(static_cast<size_t>(d / 2));
  for (int i = 0; i < d / 2; ++i) {
    double f = std::pow(theta, -2.0 * i / d);
    if (linear) f /= model.rope_scaling_factor;
    inv[static_cast<size_t>(i)] = static_cast<float>(f);
  }
  return inv;
}

}  // namespace longctx

// Dual Chunk Attention settings (docs/design.md §3): per-model defaults, per-session and
// per-request overrides, validation, and the kernel parameters they give.
//
// With pretraining length c, chunk_size C and local_window w, chunks are
// L = C − w tokens long; keys are cached rotated at j mod L and queries take
// position t(i), min(t(i) + L, C) or C by chunk distance. Sequences of at most L
// tokens are computed exactly as with plain RoPE.
//
// Thread safety: plain values.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/model/model_config.h"
#include "kernels/ops.h"

namespace longctx {

enum class DcaMode {
  kRope,  // plain RoPE attention at true positions (degrades past the trained length)
  kDca,   // Dual Chunk Attention
};

// "rope" or "dca"; INVALID_ARGUMENT otherwise.
absl::StatusOr<DcaMode> ParseDcaMode(absl::string_view s);
const char* DcaModeName(DcaMode mode);

// Settings given by a session or a request; unset fields keep the value of the
// layer below (model defaults < session < request).
struct DcaOverrides {
  std::optional<DcaMode> mode;
  std::optional<int> pretrain_len;
  std::optional<int> chunk_size;
  std::optional<int> local_window;
  std::optional<bool> length_temperature;
  std::optional<bool> compose_rope_scaling;

  // These overrides with the fields set in `later` replacing theirs.
  DcaOverrides Then(const DcaOverrides& later) const;
};

// Complete settings. Build with Resolve, check with Validate.
struct DcaConfig {
  // Default: kDca. It equals plain RoPE up to L tokens and extends past c.
  DcaMode mode = DcaMode::kDca;
  // c: the length the model was trained on. Default: the model's context_length.
  int pretrain_len = 0;
  // C. Default: 3c/4, rounded down to a multiple of kDcaDefaultAlignment.
  int chunk_size = 0;
  // w. Default: c/8, rounded down to a multiple of kDcaDefaultAlignment.
  int local_window = 0;
  // Length temperature, off by default: at total length T the softmax scale is
  // multiplied by sf², sf = max(1, 0.1·ln(T/c) + 1). Applied when attention is
  // computed, never baked into cached keys.
  bool length_temperature = false;
  // Default true: DCA positions go through the model's own rope scaling
  // (linear or NTK), as the model was trained. False drops that scaling and
  // rotates at the base frequencies (for comparisons only).
  bool compose_rope_scaling = true;

  // Defaults are rounded so that L = C − w is a multiple of the usual KV block
  // sizes (16, 32, 64) for any c.
  static constexpr int kDcaDefaultAlignment = 64;
  // The largest c accepted (2^30 tokens): far past any model, and small
  // enough that 3c/4 and every position derived from it fit an int.
  static constexpr int kMaxPretrainLen = 1 << 30;

  // The model's defaults with `overrides` applied; C and w derive from the
  // resolved c unless set. INVALID_ARGUMENT naming pretrain_len when neither the
  // model nor the overrides give c, or c is over kMaxPretrainLen.
  static absl::StatusOr<DcaConfig> Resolve(const ModelConfig& model, const DcaOverrides& overrides);

  // Chunk length L = C − w.
  int chunk_len() const { return chunk_size - local_window; }

  // INVALID_ARGUMENT naming the offending field unless block_size > 0,
  // c > 0 and, in DCA mode, 0 < w < C ≤ c with L a multiple of block_size.
  absl::Status Validate(int block_size) const;

  // Kernel parameters for attention over a sequence of total_len tokens
  // (context plus the new ones). Plain RoPE mode gives unbounded chunks.
  // REQUIRES: Validate() is OK; head_dim > 0.
  cpu::DcaParams ToParams(int head_dim, int total_len) const;

  // The factor sf² applied to the softmax scale at total_len (1 when off).
  float TemperatureFactor(int total_len) const;

  std::string DebugString() const;
};

// Inverse RoPE frequencies [head_dim / 2] of `model`: base theta^(−2i/D), with
// the model's linear or NTK scaling when `with_scaling`. DcaConfig's
// compose_rope_scaling chooses `with_scaling`.
std::vector<float> RopeInverseFrequencies(const ModelConfig& model, bool with_scaling);

}  // namespace longctx

// Token sampling on the host from f32 logits: greedy, temperature, top-k,
// top-p, seeded (reproducible per request).
#pragma once

#include <cstdint>
#include <random>
#include <span>

#include "absl/status/status.h"

namespace longctx {

struct SamplingParams {
  float temperature = 0.f;  // 0 = greedy (argmax)
  int top_k = 0;            // 0 = off
  float top_p = 1.f;        // 1 = off; in (0, 1]
  uint64_t seed = 0;        // same seed, same logits -> same tokens
  // Rejects negative temperature, negative top_k, top_p outside (0, 1].
  absl::Status Validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // REQUIRES: logits non-empty and finite.
  int32_t Sample(std::span<const float> logits);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace longctx

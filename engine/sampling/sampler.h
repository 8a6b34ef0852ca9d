// Token sampling on the host from f32 logits: greedy, temperature, top-k,
// top-p, seeded (reproducible per request).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "absl/status/status.h"

namespace longctx {

inline constexpr float kMaxRepetitionPenalty = 10.f;
inline constexpr float kMaxTemperature = 100.f;

struct SamplingParams {
  float temperature = 0.f;  // 0 = greedy (argmax)
  int top_k = 0;            // 0 = off
  float top_p = 1.f;        // 1 = off; in (0, 1]
  uint64_t seed = 0;        // same seed, same logits -> same tokens
  // 1 = off. The logit of a token already seen (Sampler::Observe: the question
  // and the answer so far) is divided by it when positive and multiplied by it
  // when negative, before everything else (the rule of CTRL, Keskar et al.
  // 2019, as Hugging Face and vLLM apply it).
  float repetition_penalty = 1.f;
  // The one check of a request's sampling: temperature in [0,
  // kMaxTemperature], top_k in [0, vocab_size] (no upper bound for a
  // vocab_size of 0), top_p in (0, 1], repetition penalty in (0,
  // kMaxRepetitionPenalty]. Errors name the API field ("sampling.top_p").
  absl::Status Validate(int32_t vocab_size = 0) const;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // Marks `token` as seen, for the repetition penalty. Negative ids are ignored.
  void Observe(int32_t token);
  // REQUIRES: logits non-empty and finite.
  int32_t Sample(std::span<const float> logits);
  // Whether Sample is the argmax of the raw logits (temperature 0, no
  // repetition penalty): then the logits' device may pick the token itself.
  bool greedy() const { return params_.temperature <= 0.f && params_.repetition_penalty == 1.f; }

 private:
  // The logits after the repetition penalty (`raw` itself without one).
  std::span<const float> Penalized(std::span<const float> raw);
  // A draw at a temperature, from top_k then top_p of `logits`.
  int32_t Draw(std::span<const float> logits);

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<bool> seen_;  // by token id, grown on demand
  std::vector<int32_t> seen_ids_;
  std::vector<float> penalized_;  // scratch: the logits after the penalty
  // Scratch of a temperature draw: sort keys of the tokens (logit, id), a
  // prefix of them sorted, and the unnormalised probabilities of that prefix.
  std::vector<uint64_t> order_;
  std::vector<double> prob_;
};

}  // namespace longctx

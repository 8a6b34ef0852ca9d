#include "engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"

namespace longctx {

absl::Status SamplingParams::Validate() const {
  if (!(temperature >= 0.f) || !std::isfinite(temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be a finite number >= 0, got ", temperature));
  }
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", top_k));
  if (!(top_p > 0.f && top_p <= 1.f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", top_p));
  }
  if (!(repetition_penalty > 0.f && repetition_penalty <= kMaxRepetitionPenalty)) {
    return absl::InvalidArgumentError(absl::StrCat("repetition_penalty must be in (0, ",
                                                   kMaxRepetitionPenalty, "], got ",
                                                   repetition_penalty));
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

void Sampler::Observe(int32_t token) {
  if (token < 0 || params_.repetition_penalty == 1.f) return;
  const size_t t = static_cast<size_t>(token);
  if (t >= seen_.size()) seen_.resize(t + 1, false);
  if (!seen_[t]) {
    seen_[t] = true;
    seen_ids_.push_back(token);
  }
}

int32_t Sampler::Sample(std::span<const float> raw_logits) {
  std::span<const float> logits = raw_logits;
  if (params_.repetition_penalty != 1.f && !seen_ids_.empty()) {
    penalized_.assign(raw_logits.begin(), raw_logits.end());
    const float r = params_.repetition_penalty;
    for (int32_t t : seen_ids_) {
      if (static_cast<size_t>(t) >= penalized_.size()) continue;
      float& x = penalized_[static_cast<size_t>(t)];
      x = x > 0.f ? x / r : x * r;
    }
    logits = penalized_;
  }
  const int n = static_cast<int>(logits.size());
  if (params_.temperature <= 0.f) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  // Candidates sorted by logit; top-k then top-p (nucleus) truncation.
  const int k = params_.top_k > 0 ? std::min(params_.top_k, n) : n;
  std::vector<int32_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  if (k < n) {
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), by_logit);
    idx.resize(static_cast<size_t>(k));
  } else {
    std::sort(idx.begin(), idx.end(), by_logit);
  }
  const float inv_t = 1.f / params_.temperature;
  const float max_logit = logits[idx[0]];
  std::vector<double> p(idx.size());
  double sum = 0;
  for (size_t i = 0; i < idx.size(); ++i) {
    p[i] = std::exp(double{(logits[idx[i]] - max_logit) * inv_t});
    sum += p[i];
  }
  size_t keep = idx.size();
  if (params_.top_p < 1.f) {
    double cum = 0;
    for (size_t i = 0; i < idx.size(); ++i) {
      cum += p[i] / sum;
      if (cum >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept_sum = 0;
  for (size_t i = 0; i < keep; ++i) kept_sum += p[i];
  const double u = std::uniform_real_distribution<double>(0.0, kept_sum)(rng_);
  double cum = 0;
  for (size_t i = 0; i < keep; ++i) {
    cum += p[i];
    if (u < cum) return idx[i];
  }
  return idx[keep - 1];
}

}  // namespace longctx

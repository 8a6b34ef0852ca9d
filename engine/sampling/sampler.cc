#include "engine/sampling/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/ops.h"

namespace longctx {

absl::Status SamplingParams::Validate(int32_t vocab_size) const {
  if (!std::isfinite(temperature) || temperature < 0 || temperature > kMaxTemperature) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.temperature must be in [0, ",
                                                   kMaxTemperature, "] (got ", temperature, ")"));
  }
  if (top_k < 0 || (vocab_size > 0 && top_k > vocab_size)) {
    return absl::InvalidArgumentError(
        vocab_size > 0
            ? absl::StrCat("sampling.top_k must be in [0, ", vocab_size, "] (got ", top_k, ")")
            : absl::StrCat("sampling.top_k must be >= 0 (got ", top_k, ")"));
  }
  if (!(top_p > 0.f && top_p <= 1.f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.top_p must be in (0, 1] (got ", top_p, ")"));
  }
  if (!(repetition_penalty > 0.f && repetition_penalty <= kMaxRepetitionPenalty)) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.repetition_penalty must be in (0, ",
                                                   kMaxRepetitionPenalty, "] (got ",
                                                   repetition_penalty, ")"));
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

namespace {

// The candidates of a draw: the tokens by descending logit (the lower id first
// among equals), cut to top_k, then to the shortest prefix holding top_p of
// the probability; the draw walks that order. Only as much of the order is
// sorted as the cut and the draw reach: a peaked distribution needs a few
// dozen tokens of a vocabulary of tens of thousands.
class Candidates {
 public:
  // `order` and `prob` are the sampler's scratch.
  Candidates(std::span<const float> logits, int k, float temperature, std::vector<uint64_t>& order,
             std::vector<double>& prob)
      : logits_(logits),
        k_(static_cast<size_t>(k)),
        inv_t_(1.f / temperature),
        order_(order),
        prob_(prob) {
    // Keys that sort as the order does: the logit's bits made monotone and
    // inverted (descending), the id below them (ascending among equals).
    const size_t n = logits.size();
    order_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const uint32_t bits = std::bit_cast<uint32_t>(logits[i]);
      const uint32_t ascending = (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
      order_[i] = (uint64_t{~ascending} << 32) | static_cast<uint32_t>(i);
    }
    prob_.clear();
  }

  int32_t IdAt(size_t i) const { return static_cast<int32_t>(order_[i] & 0xffffffffu); }

  // Unnormalised probability: a float exp (the vocabulary-wide sum is most of
  // a draw's time), summed in double.
  double Weight(int32_t id) const {
    return double{std::exp((logits_[static_cast<size_t>(id)] - max_logit_) * inv_t_)};
  }

  // Sorts the order up to `want` (at most k) entries, extending prob_ with them.
  void SortTo(size_t want) {
    want = std::min(want, k_);
    const size_t have = prob_.size();
    if (want <= have) return;
    auto first = order_.begin() + static_cast<std::ptrdiff_t>(have);
    auto mid = order_.begin() + static_cast<std::ptrdiff_t>(want);
    // Everything past `have` ranks below the sorted prefix already.
    // A short prefix through a heap; a long one by selection, then a sort.
    if ((want - have) * 16 < order_.size() - have) {
      std::partial_sort(first, mid, order_.end());
    } else {
      if (mid != order_.end()) std::nth_element(first, mid, order_.end());
      std::sort(first, mid);
    }
    if (have == 0) max_logit_ = logits_[static_cast<size_t>(IdAt(0))];
    for (size_t i = have; i < want; ++i) prob_.push_back(Weight(IdAt(i)));
  }

  // The mass of all k candidates (in id order when that is the whole
  // vocabulary). REQUIRES: SortTo called.
  double Mass() {
    double sum = 0;
    if (k_ == logits_.size()) {
      for (size_t i = 0; i < k_; ++i) sum += Weight(static_cast<int32_t>(i));
    } else {
      SortTo(k_);
      for (double x : prob_) sum += x;
    }
    return sum;
  }

  // Walks the order from the start, sorting further as needed, to the first
  // position where the running mass reaches `target` (k if it never does).
  size_t Walk(double target, double* mass) {
    double cum = 0;
    for (size_t i = 0; i < k_; ++i) {
      if (i == prob_.size()) SortTo(2 * prob_.size());
      cum += prob_[i];
      if (cum >= target) {
        *mass = cum;
        return i;
      }
    }
    *mass = cum;
    return k_;
  }

 private:
  std::span<const float> logits_;
  size_t k_;
  float inv_t_;
  float max_logit_ = 0.f;
  std::vector<uint64_t>& order_;
  std::vector<double>& prob_;
};

}  // namespace

std::span<const float> Sampler::Penalized(std::span<const float> raw) {
  if (params_.repetition_penalty == 1.f || seen_ids_.empty()) return raw;
  penalized_.assign(raw.begin(), raw.end());
  const float r = params_.repetition_penalty;
  for (int32_t t : seen_ids_) {
    if (static_cast<size_t>(t) >= penalized_.size()) continue;
    float& x = penalized_[static_cast<size_t>(t)];
    x = x > 0.f ? x / r : x * r;
  }
  return penalized_;
}

int32_t Sampler::Sample(std::span<const float> raw_logits) {
  std::span<const float> logits = Penalized(raw_logits);
  // Greedy: the rule Backend::ArgMaxRows follows on the device, so the two
  // pick the same token.
  if (params_.temperature <= 0.f)
    return cpu::ArgMax(logits.data(), static_cast<int>(logits.size()));
  return Draw(logits);
}

int32_t Sampler::Draw(std::span<const float> logits) {
  const int n = static_cast<int>(logits.size());
  const int k = params_.top_k > 0 ? std::min(params_.top_k, n) : n;
  Candidates c(logits, k, params_.temperature, order_, prob_);
  c.SortTo(64);
  const double sum = c.Mass();
  size_t keep = static_cast<size_t>(k);
  double kept_sum = sum;
  if (params_.top_p < 1.f) {
    const size_t last = c.Walk(params_.top_p * sum, &kept_sum);
    keep = std::min(last + 1, static_cast<size_t>(k));
  }
  const double u = std::uniform_real_distribution<double>(0.0, kept_sum)(rng_);
  double mass = 0;
  const size_t at = c.Walk(std::nextafter(u, kept_sum), &mass);
  if (at < keep) return c.IdAt(at);
  c.SortTo(keep);
  return c.IdAt(keep - 1);
}

}  // namespace longctx

// Host time of one token draw (engine/sampling/sampler.h) against a reference
// that sorts the whole vocabulary before every draw, on the same logits in
// one run; prints a markdown table. Both draw the same token for the same seed
// (up to rounding on the edge of a nucleus): the table counts the draws where
// they differ.
//
//   longctx-sampler-bench [--vocab=49152] [--draws=200]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <span>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "engine/sampling/sampler.h"

ABSL_FLAG(int, vocab, 49152, "vocabulary size (logits per draw)");
ABSL_FLAG(int, draws, 200, "draws timed per setting");

namespace longctx {
namespace {

// The draw with a full sort first: every candidate ordered by logit, top-k,
// then top-p over that order, the uniform variate walked down it.
class FullSortSampler {
 public:
  explicit FullSortSampler(const SamplingParams& p) : p_(p), rng_(p.seed) {}
  int32_t Sample(std::span<const float> logits) {
    const int n = static_cast<int>(logits.size());
    if (p_.temperature <= 0.f) {
      return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) -
                                  logits.begin());
    }
    const int k = p_.top_k > 0 ? std::min(p_.top_k, n) : n;
    std::vector<int32_t> idx(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), 0);
    auto by_logit = [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    };
    std::sort(idx.begin(), idx.end(), by_logit);
    idx.resize(static_cast<size_t>(k));
    const float inv_t = 1.f / p_.temperature;
    std::vector<double> p(idx.size());
    double sum = 0;
    for (size_t i = 0; i < idx.size(); ++i) {
      p[i] = std::exp(double{(logits[idx[i]] - logits[idx[0]]) * inv_t});
      sum += p[i];
    }
    size_t keep = idx.size();
    double cum = 0;
    for (size_t i = 0; p_.top_p < 1.f && i < idx.size(); ++i) {
      cum += p[i];
      if (cum >= p_.top_p * sum) {
        keep = i + 1;
        break;
      }
    }
    const double kept = std::accumulate(p.begin(), p.begin() + static_cast<long>(keep), 0.0);
    const double u = std::uniform_real_distribution<double>(0.0, kept)(rng_);
    cum = 0;
    for (size_t i = 0; i < keep; ++i) {
      cum += p[i];
      if (u < cum) return idx[i];
    }
    return idx[keep - 1];
  }

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
};

template <typename S>
double MicrosPerDraw(S& s, std::span<const float> logits, int draws, std::vector<int32_t>* out) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < draws; ++i) out->push_back(s.Sample(logits));
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
         draws;
}

int Run() {
  const int vocab = std::max(2, absl::GetFlag(FLAGS_vocab));
  const int draws = std::max(1, absl::GetFlag(FLAGS_draws));
  // Logits spread like a language model's: most far below a few leaders.
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.f, 3.f);
  std::vector<float> logits(static_cast<size_t>(vocab));
  for (float& x : logits) x = normal(rng);
  struct Setting {
    float temperature;
    int top_k;
    float top_p;
  };
  const Setting settings[] = {{0.f, 0, 1.f},   {0.7f, 0, 1.f},  {0.7f, 0, 0.9f},
                              {1.0f, 0, 0.95f}, {0.7f, 50, 1.f}, {0.7f, 50, 0.9f}};
  std::printf("vocabulary %d, %d draws per setting\n\n", vocab, draws);
  std::printf(
      "| temperature | top_k | top_p | µs per draw | full sort µs | speed-up | draws differing |\n"
      "|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const Setting& st : settings) {
    SamplingParams p;
    p.temperature = st.temperature;
    p.top_k = st.top_k;
    p.top_p = st.top_p;
    p.seed = 3;
    Sampler fast(p);
    FullSortSampler full(p);
    std::vector<int32_t> a, b;
    const double us = MicrosPerDraw(fast, logits, draws, &a);
    const double us_full = MicrosPerDraw(full, logits, draws, &b);
    int differ = 0;
    for (size_t i = 0; i < a.size(); ++i) differ += a[i] != b[i];
    std::printf("| %.2f | %d | %.2f | %.1f | %.1f | %.1f× | %d |\n", st.temperature, st.top_k,
                st.top_p, us, us_full, us_full / us, differ);
  }
  return 0;
}

}  // namespace
}  // namespace longctx

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return longctx::Run();
}

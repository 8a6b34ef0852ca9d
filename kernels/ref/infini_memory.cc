// Reference Infini-attention memory (Munkhdalai et al. 2024, "Leave No Context
// Behind"): σ = ELU + 1, retrieval, linear and delta folds, the gated mix. Each
// kv head's memory is updated from the segment's keys in one step, reading the
// memory as it was before the segment.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/ref/ops_ref.h"

namespace longctx::ref {
namespace {

double Sigma(double x) { return x > 0 ? x + 1 : std::exp(x); }

// σ of one row of D values.
std::vector<double> SigmaRow(const float* x, int D) {
  std::vector<double> s(D);
  for (int i = 0; i < D; ++i) s[i] = Sigma(x[i]);
  return s;
}

// σ(x) M[g] and σ(x) · z[g] for one row's σ(x).
template <typename Mem>
void ReadMemory(std::vector<double>& num, double& den, const std::vector<double>& s,
                const Mem* mem_g, const Mem* z_g, int D) {
  den = 0;
  for (int i = 0; i < D; ++i) den += s[i] * z_g[i];
  for (int j = 0; j < D; ++j) {
    num[j] = 0;
    for (int i = 0; i < D; ++i) num[j] += s[i] * mem_g[int64_t{i} * D + j];
  }
}

}  // namespace

void EluPlusOne(float* out, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(Sigma(x[i]));
}

template <typename Mem>
void InfiniRetrieve(float* out, const float* q, const Mem* mem, const Mem* z, int T, int H,
                    int n_kv_heads, int D, float eps) {
  const int G = H / n_kv_heads;
  std::vector<double> num(D);
  double den = 0;
  for (int t = 0; t < T; ++t) {
    for (int h = 0; h < H; ++h) {
      const int64_t row = (int64_t{t} * H + h) * D;
      const int g = h / G;
      ReadMemory(num, den, SigmaRow(q + row, D), mem + int64_t{g} * D * D, z + int64_t{g} * D, D);
      for (int j = 0; j < D; ++j) {
        out[row + j] = den == 0 ? 0.f : static_cast<float>(num[j] / std::max(den, double{eps}));
      }
    }
  }
}

template <typename Mem>
void InfiniFold(Mem* mem, Mem* z, const float* k, const float* v, int T, int n_kv_heads, int D,
                InfiniUpdateRule rule, float eps) {
  for (int g = 0; g < n_kv_heads; ++g) {
    Mem* mem_g = mem + int64_t{g} * D * D;
    Mem* z_g = z + int64_t{g} * D;
    // The segment's updates, summed before touching M and z (the delta rule
    // reads them as they were before the segment).
    std::vector<double> d_mem(int64_t{D} * D, 0.0), d_z(D, 0.0);
    std::vector<double> retrieved(D);
    double den = 0;
    for (int t = 0; t < T; ++t) {
      const int64_t row = (int64_t{t} * n_kv_heads + g) * D;
      const std::vector<double> s = SigmaRow(k + row, D);
      std::vector<double> u(v + row, v + row + D);
      if (rule == InfiniUpdateRule::kDelta) {
        ReadMemory(retrieved, den, s, mem_g, z_g, D);
        for (int j = 0; j < D; ++j) u[j] -= retrieved[j] / std::max(den, double{eps});
      }
      for (int i = 0; i < D; ++i) {
        d_z[i] += s[i];
        for (int j = 0; j < D; ++j) d_mem[int64_t{i} * D + j] += s[i] * u[j];
      }
    }
    for (int i = 0; i < D; ++i) {
      z_g[i] = static_cast<Mem>(z_g[i] + d_z[i]);
      for (int j = 0; j < D; ++j) {
        mem_g[int64_t{i} * D + j] =
            static_cast<Mem>(mem_g[int64_t{i} * D + j] + d_mem[int64_t{i} * D + j]);
      }
    }
  }
}

void InfiniMix(float* out, const float* a_mem, const float* a_dca, const float* beta, int T, int H,
               int D) {
  for (int t = 0; t < T; ++t) {
    for (int h = 0; h < H; ++h) {
      const double s = 1.0 / (1.0 + std::exp(-double{beta[h]}));
      for (int d = 0; d < D; ++d) {
        const int64_t at = (int64_t{t} * H + h) * D + d;
        out[at] = static_cast<float>(s * a_mem[at] + (1.0 - s) * a_dca[at]);
      }
    }
  }
}

template void InfiniRetrieve<float>(float*, const float*, const float*, const float*, int, int, int,
                                    int, float);
template void InfiniRetrieve<double>(float*, const float*, const double*, const double*, int, int,
                                     int, int, float);
template void InfiniFold<float>(float*, float*, const float*, const float*, int, int, int,
                                InfiniUpdateRule, float);
template void InfiniFold<double>(double*, double*, const float*, const float*, int, int, int,
                                 InfiniUpdateRule, float);

}  // namespace longctx::ref

// CPU Infini-attention compressive memory (docs/design.md §4): σ = ELU + 1, retrieval,
// linear and delta folds, and the gated mix with the local attention.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/ops.h"

namespace longctx::cpu {
namespace {

inline float Sigma(float x) { return x > 0.f ? x + 1.f : std::exp(x); }

inline float Sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

}  // namespace

void EluPlusOne(float* out, const float* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = Sigma(x[i]);
}

void InfiniRetrieve(float* out, const float* q, const float* mem, const float* z, int T, int H,
                    int n_kv_heads, int D, float eps) {
  SingleThreadedBlas();
  const int group = H / n_kv_heads;
  const int64_t row = int64_t{H} * D;
  std::vector<float> sq(static_cast<size_t>(T * row));
  EluPlusOne(sq.data(), q, T * row);
  // Numerators: for each q head, the [T, D] slice (row stride H·D) times M[g].
  for (int h = 0; h < H; ++h) {
    const int g = h / group;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, D, 1.f, sq.data() + h * D,
                static_cast<int>(row), mem + int64_t{g} * D * D, D, 0.f, out + h * D,
                static_cast<int>(row));
  }
#pragma omp parallel for collapse(2) schedule(static) if (T * H > 64)
  for (int t = 0; t < T; ++t) {
    for (int h = 0; h < H; ++h) {
      const float* s = sq.data() + t * row + h * D;
      const float* zg = z + int64_t{h / group} * D;
      float den = 0.f;
      for (int d = 0; d < D; ++d) den += s[d] * zg[d];
      float* o = out + t * row + h * D;
      if (den == 0.f) {
        // σ > 0 and z ≥ 0, so σ(q)·z = 0 only while nothing has been folded.
        std::fill(o, o + D, 0.f);
        continue;
      }
      const float inv = 1.f / std::max(den, eps);
      for (int d = 0; d < D; ++d) o[d] *= inv;
    }
  }
}

void InfiniFold(float* mem, float* z, const float* k, const float* v, int T, int n_kv_heads, int D,
                InfiniUpdateRule rule, float eps) {
  SingleThreadedBlas();
  if (T <= 0) return;
  const int64_t row = int64_t{n_kv_heads} * D;
  const int ld = static_cast<int>(row);
  std::vector<float> sk(static_cast<size_t>(T * row));
  EluPlusOne(sk.data(), k, T * row);
  // The delta rule subtracts what the memory already retrieves for each key.
  std::vector<float> dv;
  if (rule == InfiniUpdateRule::kDelta) dv.assign(v, v + T * row);
  for (int g = 0; g < n_kv_heads; ++g) {
    float* mg = mem + int64_t{g} * D * D;
    float* zg = z + int64_t{g} * D;
    const float* skg = sk.data() + g * D;
    const float* update = v + g * D;
    if (rule == InfiniUpdateRule::kDelta) {
      std::vector<float> r(static_cast<size_t>(T) * D);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, D, 1.f, skg, ld, mg, D, 0.f,
                  r.data(), D);
      for (int t = 0; t < T; ++t) {
        const float* s = skg + t * row;
        float den = 0.f;
        for (int d = 0; d < D; ++d) den += s[d] * zg[d];
        // An empty memory retrieves 0 (M = 0), so the guard only matters for den ≈ 0.
        const float inv = 1.f / std::max(den, eps);
        float* target = dv.data() + t * row + g * D;
        const float* rt = r.data() + int64_t{t} * D;
        for (int d = 0; d < D; ++d) target[d] -= rt[d] * inv;
      }
      update = dv.data() + g * D;
    }
    // M[g] += σ(K_g)ᵀ U_g: [D, T] · [T, D], both operands with row stride n_kv·D.
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, D, D, T, 1.f, skg, ld, update, ld, 1.f, mg,
                D);
    for (int t = 0; t < T; ++t) {
      const float* s = skg + t * row;
      for (int d = 0; d < D; ++d) zg[d] += s[d];
    }
  }
}

void InfiniMix(float* out, const float* a_mem, const float* a_dca, const float* beta, int T, int H,
               int D) {
#pragma omp parallel for collapse(2) schedule(static) if (T * H > 64)
  for (int t = 0; t < T; ++t) {
    for (int h = 0; h < H; ++h) {
      const float s = Sigmoid(beta[h]);
      const float c = 1.f - s;
      const int64_t base = (int64_t{t} * H + h) * D;
      for (int d = 0; d < D; ++d) out[base + d] = s * a_mem[base + d] + c * a_dca[base + d];
    }
  }
}

}  // namespace longctx::cpu

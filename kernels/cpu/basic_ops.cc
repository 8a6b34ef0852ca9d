// CPU reference ops: elementwise, normalisation, BLAS-backed linear, RoPE.
#include <cblas.h>
#include <omp.h>

#include <cmath>
#include <cstring>

#include "kernels/ops.h"
#include "kernels/uniform_fill.h"

namespace longctx::cpu {

void Embedding(float* out, const float* table, const int32_t* ids, int T, int D) {
#pragma omp parallel for schedule(static) if (T > 64)
  for (int t = 0; t < T; ++t) {
    std::memcpy(out + int64_t{t} * D, table + int64_t{ids[t]} * D, sizeof(float) * D);
  }
}

void RmsNorm(float* out, const float* x, const float* w, int T, int D, float eps) {
#pragma omp parallel for schedule(static) if (T > 16)
  for (int t = 0; t < T; ++t) {
    const float* xr = x + int64_t{t} * D;
    float* orow = out + int64_t{t} * D;
    double ss = 0;  // double: D is small, and it keeps long rows exact enough
    for (int i = 0; i < D; ++i) ss += double{xr[i]} * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / D + eps));
    for (int i = 0; i < D; ++i) orow[i] = xr[i] * inv * w[i];
  }
}

void SingleThreadedBlas() {
  static const bool kOnce = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)kOnce;
}

void Linear(float* out, const float* x, const float* w, const float* bias, int T, int N, int K) {
  // Each thread computes a slice of the output columns with single-threaded BLAS.
  SingleThreadedBlas();
  const double flops = 2.0 * T * N * K;
#pragma omp parallel if (flops > 4e6)
  {
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    // Slices start on 16-column boundaries so no two threads share a cache line of out.
    const int n0 = tid == 0 ? 0 : static_cast<int>(int64_t{N} * tid / nt) & ~15;
    const int n1 = tid == nt - 1 ? N : static_cast<int>(int64_t{N} * (tid + 1) / nt) & ~15;
    if (n1 > n0) {
      const float* ws = w + int64_t{n0} * K;
      if (T == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, n1 - n0, K, 1.f, ws, K, x, 1, 0.f, out + n0, 1);
      } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n1 - n0, K, 1.f, x, K, ws, K, 0.f,
                    out + n0, N);
      }
    }
  }
  if (bias != nullptr) {
    for (int t = 0; t < T; ++t) {
      float* row = out + int64_t{t} * N;
      for (int n = 0; n < N; ++n) row[n] += bias[n];
    }
  }
}

void SwiGlu(float* out, const float* gate, const float* up, int T, int F) {
  const int64_t n = int64_t{T} * F;
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.f + std::exp(-g)) * up[i];
  }
}

void FillUniform(float* out, int64_t n, uint64_t seed, float lo, float hi) {
  const float span = hi - lo;
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = lo + span * UniformAt(seed, i);
}

void AddInPlace(float* x, const float* y, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

int32_t ArgMax(const float* x, int64_t n) {
  int64_t arg = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (arg < 0 ? !std::isnan(x[i]) : x[i] > x[arg]) arg = i;
  }
  return static_cast<int32_t>(arg < 0 ? 0 : arg);
}

void Rope(float* x, const int32_t* pos, const float* inv_freq, int T, int H, int D) {
  const int half = D / 2;
#pragma omp parallel for schedule(static) if (T > 16)
  for (int t = 0; t < T; ++t) {
    float cs[256], sn[256];  // D ≤ 512 (checked by the callers' shape validation)
    for (int i = 0; i < half; ++i) {
      // Angles in double: positions reach 1e5+, where float angles lose digits.
      const double a = static_cast<double>(pos[t]) * inv_freq[i];
      cs[i] = static_cast<float>(std::cos(a));
      sn[i] = static_cast<float>(std::sin(a));
    }
    for (int h = 0; h < H; ++h) {
      float* v = x + (int64_t{t} * H + h) * D;
      for (int i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cs[i] - b * sn[i];
        v[i + half] = b * cs[i] + a * sn[i];
      }
    }
  }
}

}  // namespace longctx::cpu

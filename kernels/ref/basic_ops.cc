// Reference row ops: RMSNorm, SwiGLU, Linear, RoPE, each a loop over its formula
// in double.
#include <cmath>

#include "kernels/ref/ops_ref.h"

namespace longctx::ref {

void RmsNorm(float* out, const float* x, const float* w, int T, int D, float eps) {
  for (int t = 0; t < T; ++t) {
    const float* xt = x + int64_t{t} * D;
    double sum_sq = 0;
    for (int i = 0; i < D; ++i) sum_sq += double{xt[i]} * xt[i];
    const double inv_rms = 1.0 / std::sqrt(sum_sq / D + eps);
    float* ot = out + int64_t{t} * D;  // written after x[t] is read: out may alias x
    for (int i = 0; i < D; ++i) ot[i] = static_cast<float>(xt[i] * inv_rms * w[i]);
  }
}

void SwiGlu(float* out, const float* gate, const float* up, int T, int F) {
  for (int64_t i = 0; i < int64_t{T} * F; ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

void Linear(float* out, const float* x, const float* w, const float* bias, int T, int N, int K) {
  for (int t = 0; t < T; ++t) {
    for (int n = 0; n < N; ++n) {
      double sum = bias != nullptr ? bias[n] : 0.0;
      for (int k = 0; k < K; ++k) sum += double{x[int64_t{t} * K + k]} * w[int64_t{n} * K + k];
      out[int64_t{t} * N + n] = static_cast<float>(sum);
    }
  }
}

void Rope(float* x, const int32_t* pos, const float* inv_freq, int T, int H, int D) {
  const int half = D / 2;
  for (int t = 0; t < T; ++t) {
    for (int h = 0; h < H; ++h) {
      float* v = x + (int64_t{t} * H + h) * D;
      for (int i = 0; i < half; ++i) {
        const double a = static_cast<double>(pos[t]) * inv_freq[i];
        const double lo = v[i], hi = v[i + half];
        v[i] = static_cast<float>(lo * std::cos(a) - hi * std::sin(a));
        v[i + half] = static_cast<float>(hi * std::cos(a) + lo * std::sin(a));
      }
    }
  }
}

}  // namespace longctx::ref

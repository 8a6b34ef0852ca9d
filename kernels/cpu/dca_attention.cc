// CPU Dual Chunk Attention over a paged KV cache (DESIGN §3).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/ops.h"

namespace longctx::cpu {
namespace {

// Rotates q (one head, D values) at position p into dst.
void RotateQuery(float* dst, const float* q, int p, const float* inv_freq, int D) {
  const int half = D / 2;
  for (int i = 0; i < half; ++i) {
    const double a = static_cast<double>(p) * inv_freq[i];
    const float c = static_cast<float>(std::cos(a)), s = static_cast<float>(std::sin(a));
    dst[i] = q[i] * c - q[i + half] * s;
    dst[i + half] = q[i + half] * c + q[i] * s;
  }
}

}  // namespace

void DcaAttention(float* out, const float* q, const PagedKvView& kv, const float* inv_freq,
                  const DcaParams& p, int n_q, int q_start, int H, int D) {
  const int group = H / kv.n_kv_heads;
  const int L = p.chunk_len;
  const int C = p.chunk_size;
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int r = 0; r < n_q; ++r) {
    for (int h = 0; h < H; ++h) {
      const int i = q_start + r;
      const int kvh = h / group;
      const float* qh = q + (int64_t{r} * H + h) * D;
      // The three query rotations: intra t(i), successive min(t(i)+L, C), inter C.
      std::vector<float> qrot(3 * D);
      const int ti = i % L;
      RotateQuery(qrot.data(), qh, ti, inv_freq, D);
      RotateQuery(qrot.data() + D, qh, std::min(ti + L, C), inv_freq, D);
      RotateQuery(qrot.data() + 2 * D, qh, C, inv_freq, D);
      std::vector<float> acc(D, 0.f);
      float m = -std::numeric_limits<float>::infinity();
      float l = 0.f;
      const int ni = i / L;
      for (int j = 0; j <= i; ++j) {
        if (j >= p.sink_tokens && j < p.window_start) j = p.window_start;  // absent keys
        if (j > i) break;
        const int delta = ni - j / L;
        const float* qr = qrot.data() + std::min(delta, 2) * D;
        const int64_t base = int64_t{kv.block_table[j / kv.block_size]} * kv.block_stride +
                             (int64_t{j % kv.block_size} * kv.n_kv_heads + kvh) * D;
        const float* kj = kv.k + base;
        const float* vj = kv.v + base;
        float s = 0.f;
        for (int d = 0; d < D; ++d) s += qr[d] * kj[d];
        s *= p.softmax_scale;
        if (s > m) {
          const float corr = std::exp(m - s);
          for (int d = 0; d < D; ++d) acc[d] *= corr;
          l *= corr;
          m = s;
        }
        const float e = std::exp(s - m);
        l += e;
        for (int d = 0; d < D; ++d) acc[d] += e * vj[d];
      }
      float* o = out + (int64_t{r} * H + h) * D;
      for (int d = 0; d < D; ++d) o[d] = acc[d] / l;
    }
  }
}

}  // namespace longctx::cpu

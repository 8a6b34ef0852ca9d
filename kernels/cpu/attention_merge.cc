// CPU context-parallel attention (docs/design.md §7): DCA attention over the key runs a
// rank holds, returning (o, lse), and the log-sum-exp merge of such partials.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/half.h"
#include "kernels/ops.h"

namespace longctx::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Rotates one head's query (D values) to position p into dst (rotate-half RoPE).
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

void DcaPartialAttention(float* out, float* lse, const float* q, const PagedKvView& kv,
                         const KeyRuns& runs, const float* inv_freq, const DcaParams& p, int n_q,
                         int q_start, int H, int D) {
  const int group = H / kv.n_kv_heads;
  const int L = p.chunk_len;
  const int C = p.chunk_size;
  // Local index of each run's first key.
  std::vector<int64_t> run_base(static_cast<size_t>(runs.n));
  int64_t local = 0;
  for (int s = 0; s < runs.n; ++s) {
    run_base[static_cast<size_t>(s)] = local;
    local += runs.count[s];
  }
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int r = 0; r < n_q; ++r) {
    for (int h = 0; h < H; ++h) {
      const int i = q_start + r;
      const int ni = i / L;
      const int kvh = h / group;
      const float* qh = q + (int64_t{r} * H + h) * D;
      // The three query rotations: intra t(i), successive min(t(i)+L, C), inter C.
      std::vector<float> qrot(3 * static_cast<size_t>(D));
      const int ti = i % L;
      RotateQuery(qrot.data(), qh, ti, inv_freq, D);
      RotateQuery(qrot.data() + D, qh, std::min(ti + L, C), inv_freq, D);
      RotateQuery(qrot.data() + 2 * D, qh, C, inv_freq, D);
      std::vector<float> acc(static_cast<size_t>(D), 0.f);
      std::vector<float> khalf(2 * static_cast<size_t>(D));  // a half cache's row in f32
      float m = kNegInf;
      float l = 0.f;
      for (int s = 0; s < runs.n && runs.first[s] <= i; ++s) {
        const int last = std::min(runs.first[s] + runs.count[s] - 1, i);
        for (int j = runs.first[s]; j <= last; ++j) {
          const int delta = ni - j / L;
          const float* qr = qrot.data() + std::min(delta, 2) * D;
          const int64_t lj = run_base[static_cast<size_t>(s)] + (j - runs.first[s]);
          const int64_t base = int64_t{kv.block_table[lj / kv.block_size]} * kv.block_stride +
                               ((lj % kv.block_size) * kv.n_kv_heads + kvh) * D;
          const float* kj = khalf.data();
          const float* vj = khalf.data() + D;
          if (kv.k16 != nullptr) {
            HalfToFloatRow(kv.k16 + base, khalf.data(), D);
            HalfToFloatRow(kv.v16 + base, khalf.data() + D, D);
          } else {
            kj = kv.k + base;
            vj = kv.v + base;
          }
          float sc = 0.f;
          for (int d = 0; d < D; ++d) sc += qr[d] * kj[d];
          sc *= p.softmax_scale;
          if (sc > m) {
            const float corr = std::exp(m - sc);
            for (int d = 0; d < D; ++d) acc[static_cast<size_t>(d)] *= corr;
            l *= corr;
            m = sc;
          }
          const float e = std::exp(sc - m);
          l += e;
          for (int d = 0; d < D; ++d) acc[static_cast<size_t>(d)] += e * vj[d];
        }
      }
      float* o = out + (int64_t{r} * H + h) * D;
      if (l > 0.f) {
        for (int d = 0; d < D; ++d) o[d] = acc[static_cast<size_t>(d)] / l;
        lse[int64_t{r} * H + h] = m + std::log(l);
      } else {
        std::fill(o, o + D, 0.f);
        lse[int64_t{r} * H + h] = kNegInf;
      }
    }
  }
}

void MergeAttention(float* out, float* lse, const float* o_parts, const float* lse_parts,
                    int64_t part_stride, int R, int64_t N, int D) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float m = kNegInf;
    for (int r = 0; r < R; ++r) m = std::max(m, lse_parts[r * part_stride + n]);
    float* o = out + n * D;
    if (m == kNegInf) {
      std::fill(o, o + D, 0.f);
      if (lse != nullptr) lse[n] = kNegInf;
      continue;
    }
    double w_sum = 0.0;
    for (int r = 0; r < R; ++r) w_sum += std::exp(double{lse_parts[r * part_stride + n]} - m);
    std::fill(o, o + D, 0.f);
    for (int r = 0; r < R; ++r) {
      const float lr = lse_parts[r * part_stride + n];
      if (lr == kNegInf) continue;
      const float w = static_cast<float>(std::exp(double{lr} - m) / w_sum);
      const float* orow = o_parts + r * part_stride + n * D;
      for (int d = 0; d < D; ++d) o[d] += w * orow[d];
    }
    if (lse != nullptr) lse[n] = static_cast<float>(double{m} + std::log(w_sum));
  }
}

}  // namespace longctx::cpu

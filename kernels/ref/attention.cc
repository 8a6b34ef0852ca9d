// Reference Dual Chunk Attention, its partial form over held key runs, and the
// log-sum-exp merge of partials. One (query, head) row at a time: list the keys
// it sees, score each against the query rotated at its DCA position, one dense
// softmax, weighted sum of values.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/ref/ops_ref.h"

namespace longctx::ref {
namespace {

// A key a row attends to: its absolute token index (for its DCA position) and
// its index in the paged cache (for its address).
struct KeyRef {
  int64_t token;
  int64_t slot;
};

// Offset of (cache index `slot`, kv head g) in kv.k and kv.v.
int64_t KvOffset(const PagedKvView& kv, int64_t slot, int g, int D) {
  const int64_t block = kv.block_table[slot / kv.block_size];
  return block * kv.block_stride + ((slot % kv.block_size) * kv.n_kv_heads + g) * D;
}

// y = x rotated at position pos (rotate-half RoPE), angles in double.
template <typename Acc>
void RotateAt(std::vector<Acc>& y, const float* x, int64_t pos, const float* inv_freq, int D) {
  const int half = D / 2;
  for (int i = 0; i < half; ++i) {
    const double a = static_cast<double>(pos) * inv_freq[i];
    const Acc c = static_cast<Acc>(std::cos(a)), s = static_cast<Acc>(std::sin(a));
    y[i] = x[i] * c - x[i + half] * s;
    y[i + half] = x[i + half] * c + x[i] * s;
  }
}

// Attention of query q_row (token i, un-rotated, D values) over `keys` of kv head
// g: writes out (D values) and returns lse = log Σ exp(s). No keys: out 0, −inf.
template <typename Acc>
Acc AttendRow(float* out, const float* q_row, int64_t i, const std::vector<KeyRef>& keys,
              const PagedKvView& kv, int g, const float* inv_freq, const DcaParams& p, int D) {
  if (keys.empty()) {
    std::fill(out, out + D, 0.f);
    return -std::numeric_limits<Acc>::infinity();
  }
  std::vector<Acc> scores(keys.size());
  std::vector<Acc> q_rot(D);
  int64_t rotated_at = -1;
  for (size_t n = 0; n < keys.size(); ++n) {
    // The query's position changes only where the chunk distance does.
    const int64_t pos = DcaQueryPosition(i, keys[n].token, p.chunk_len, p.chunk_size);
    if (pos != rotated_at) {
      RotateAt(q_rot, q_row, pos, inv_freq, D);
      rotated_at = pos;
    }
    const float* k = kv.k + KvOffset(kv, keys[n].slot, g, D);
    Acc dot = 0;
    for (int d = 0; d < D; ++d) dot += q_rot[d] * k[d];
    scores[n] = dot * static_cast<Acc>(p.softmax_scale);
  }
  const Acc max_score = *std::max_element(scores.begin(), scores.end());
  Acc sum = 0;
  for (Acc& s : scores) {
    s = std::exp(s - max_score);
    sum += s;
  }
  std::vector<Acc> acc(D, 0);
  for (size_t n = 0; n < keys.size(); ++n) {
    const float* v = kv.v + KvOffset(kv, keys[n].slot, g, D);
    for (int d = 0; d < D; ++d) acc[d] += scores[n] * v[d];
  }
  for (int d = 0; d < D; ++d) out[d] = static_cast<float>(acc[d] / sum);
  return max_score + std::log(sum);
}

}  // namespace

int64_t DcaQueryPosition(int64_t i, int64_t j, int64_t L, int64_t C) {
  const int64_t t = i % L;
  switch (i / L - j / L) {
    case 0:
      return t;
    case 1:
      return std::min(t + L, C);
    default:
      return C;
  }
}

PagedKvView DenseKvView(const float* k, const float* v, int T, int n_kv_heads) {
  static constexpr int32_t kOnlyBlock = 0;
  PagedKvView view;
  view.k = k;
  view.v = v;
  view.block_stride = 0;
  view.block_table = &kOnlyBlock;
  view.block_size = std::max(T, 1);
  view.n_kv_heads = n_kv_heads;
  return view;
}

template <typename Acc>
void DcaAttention(float* out, const float* q, const PagedKvView& kv, const float* inv_freq,
                  const DcaParams& p, int n_q, int q_start, int H, int D) {
  const int G = H / kv.n_kv_heads;
  const bool windowed = p.window_start > p.sink_tokens;
  for (int r = 0; r < n_q; ++r) {
    const int64_t i = q_start + r;
    std::vector<KeyRef> keys;
    for (int64_t j = 0; j <= i; ++j) {
      const bool absent = windowed && j >= p.sink_tokens && j < p.window_start;
      if (!absent) keys.push_back({j, j});
    }
    for (int h = 0; h < H; ++h) {
      const int64_t row = int64_t{r} * H + h;
      AttendRow<Acc>(out + row * D, q + row * D, i, keys, kv, h / G, inv_freq, p, D);
    }
  }
}

template <typename Acc>
void DcaPartialAttention(float* out, float* lse, const float* q, const PagedKvView& kv,
                         const KeyRuns& runs, const float* inv_freq, const DcaParams& p, int n_q,
                         int q_start, int H, int D) {
  const int G = H / kv.n_kv_heads;
  for (int r = 0; r < n_q; ++r) {
    const int64_t i = q_start + r;
    std::vector<KeyRef> keys;
    int64_t slot = 0;
    for (int s = 0; s < runs.n; ++s) {
      for (int64_t j = runs.first[s]; j < runs.first[s] + runs.count[s]; ++j, ++slot) {
        if (j <= i) keys.push_back({j, slot});
      }
    }
    for (int h = 0; h < H; ++h) {
      const int64_t row = int64_t{r} * H + h;
      lse[row] = static_cast<float>(
          AttendRow<Acc>(out + row * D, q + row * D, i, keys, kv, h / G, inv_freq, p, D));
    }
  }
}

void MergeAttention(float* out, float* lse, const float* o_parts, const float* lse_parts,
                    int64_t part_stride, int R, int64_t N, int D) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  for (int64_t n = 0; n < N; ++n) {
    double max_lse = neg_inf;
    for (int r = 0; r < R; ++r) max_lse = std::max(max_lse, double{lse_parts[r * part_stride + n]});
    float* o = out + n * D;
    if (max_lse == neg_inf) {
      std::fill(o, o + D, 0.f);
      if (lse != nullptr) lse[n] = static_cast<float>(neg_inf);
      continue;
    }
    // Weights relative to the largest lse; an empty partial (lse −inf) has
    // weight 0 and its o is not read.
    double weight_sum = 0;
    std::vector<double> acc(D, 0.0);
    for (int r = 0; r < R; ++r) {
      const double lse_r = lse_parts[r * part_stride + n];
      if (lse_r == neg_inf) continue;
      const double w = std::exp(lse_r - max_lse);
      weight_sum += w;
      const float* o_r = o_parts + r * part_stride + n * D;
      for (int d = 0; d < D; ++d) acc[d] += w * o_r[d];
    }
    for (int d = 0; d < D; ++d) o[d] = static_cast<float>(acc[d] / weight_sum);
    if (lse != nullptr) lse[n] = static_cast<float>(max_lse + std::log(weight_sum));
  }
}

template void DcaAttention<float>(float*, const float*, const PagedKvView&, const float*,
                                  const DcaParams&, int, int, int, int);
template void DcaAttention<double>(float*, const float*, const PagedKvView&, const float*,
                                   const DcaParams&, int, int, int, int);
template void DcaPartialAttention<float>(float*, float*, const float*, const PagedKvView&,
                                         const KeyRuns&, const float*, const DcaParams&, int, int,
                                         int, int);
template void DcaPartialAttention<double>(float*, float*, const float*, const PagedKvView&,
                                          const KeyRuns&, const float*, const DcaParams&, int, int,
                                          int, int);

}  // namespace longctx::ref

// Log-sum-exp merge of context-parallel partial attentions (docs/design.md §7): one
// pass over the R partials of each (query, head) row. A warp owns a row: lane 0
// .. R-1 read the partials' lse, the warp agrees on their maximum and the
// weights' sum, then every lane accumulates its dims over the partials. The
// weights are formed in f32 (cpu::MergeAttention uses double; the difference is
// a few ulp of the weights).
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace longctx::cuda {
namespace {

constexpr int kMergeWarps = 4;

// Partial r's o row n is at o + r * o_stride + n * D, its lse at
// lse + r * lse_stride + n.
__global__ void __launch_bounds__(kMergeWarps * 32)
    MergeAttentionKernel(float* out, const float* po, int64_t o_stride, const float* lse,
                         int64_t lse_stride, int n_parts, int rows, int H, int D) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t{blockIdx.x} * kMergeWarps + threadIdx.x / 32;  // (query, head) row
  const int64_t N = int64_t{rows} * H;
  if (n >= N) return;
  float m = -INFINITY;
  for (int r = lane; r < n_parts; r += 32) m = fmaxf(m, lse[r * lse_stride + n]);
  m = WarpMax(m);
  float* o = out + n * D;
  if (m == -INFINITY) {
    for (int d = lane; d < D; d += 32) o[d] = 0.f;
    return;
  }
  float w_sum = 0.f;
  for (int r = lane; r < n_parts; r += 32) w_sum += expf(lse[r * lse_stride + n] - m);
  w_sum = WarpSum(w_sum);
  const float inv = 1.f / w_sum;
  for (int d = lane; d < D; d += 32) {
    float acc = 0.f;
    for (int r = 0; r < n_parts; ++r) {
      const float lr = lse[r * lse_stride + n];
      // An empty partial's o is 0, but skip it anyway: 0 * exp(-inf) is fine,
      // a stray NaN in a slot that no key wrote is not.
      if (lr == -INFINITY) continue;
      acc += expf(lr - m) * po[r * o_stride + n * D + d];
    }
    o[d] = acc * inv;
  }
}

}  // namespace

cudaError_t MergeAttentionStrided(float* out, const float* o, int64_t o_stride, const float* lse,
                                  int64_t lse_stride, int n_parts, int rows, int H, int D,
                                  cudaStream_t stream) {
  const int64_t N = int64_t{rows} * H;
  if (N == 0) return cudaSuccess;
  if (n_parts < 1 || D < 1) return cudaErrorInvalidValue;
  const int64_t blocks = (N + kMergeWarps - 1) / kMergeWarps;
  MergeAttentionKernel<<<static_cast<unsigned>(blocks), kMergeWarps * 32, 0, stream>>>(
      out, o, o_stride, lse, lse_stride, n_parts, rows, H, D);
  return cudaGetLastError();
}

cudaError_t MergeAttention(float* out, const float* partials, int n_parts, int rows, int H, int D,
                           cudaStream_t stream) {
  const int64_t N = int64_t{rows} * H;
  const int64_t part = N * (D + 1);  // floats per partial: o [N, D], then lse [N]
  return MergeAttentionStrided(out, partials, part, partials + N * D, part, n_parts, rows, H, D,
                               stream);
}

}  // namespace longctx::cuda

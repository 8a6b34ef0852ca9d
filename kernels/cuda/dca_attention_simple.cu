// Reference-grade GPU Dual Chunk Attention: one warp per (query, head), keys
// visited one at a time with an online softmax in f32. Works for any chunk
// length, block size and held key runs; the fast kernels are checked against the CPU op and
// this one is the fallback where their tiling does not apply.
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace longctx::cuda {
namespace {

// Lane owns dims lane + 32 e, e < kPer; rotate-half partners are e and e + kPer/2.
template <int D>
__global__ void __launch_bounds__(kDcaSimpleRows * 32)
    DcaSimpleKernel(DcaAttentionParams p, const DcaRowTile* tiles) {
  constexpr int kPer = D / 32;
  constexpr int kHalf = kPer / 2;
  const DcaRowTile tile = tiles[blockIdx.x];
  const DcaSeqDesc seq = p.seqs[tile.seq];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r = tile.row0 + warp;
  if (r >= seq.n_q) return;
  const int h = blockIdx.y;
  const int kvh = h / (p.H / p.kv.n_kv_heads);
  const int i = seq.q_start + r;
  const int L = seq.chunk_len, C = seq.chunk_size;
  const int64_t row_stride = int64_t{p.H} * D;

  const float* qh = p.q + (int64_t{seq.q_row} + r) * row_stride + int64_t{h} * D;
  float q[kPer];
#pragma unroll
  for (int e = 0; e < kPer; ++e) q[e] = qh[lane + 32 * e];
  float qr[3][kPer];
#pragma unroll
  for (int part = 0; part < 3; ++part) {
    const int pos = DcaQueryPos(i, L, C, part);
#pragma unroll
    for (int e = 0; e < kHalf; ++e) {
      float s, c;
      RopeSinCos(pos, p.inv_freq[lane + 32 * e], &s, &c);
      const float2 v = RotatePair(q[e], q[e + kHalf], s, c);
      qr[part][e] = v.x;
      qr[part][e + kHalf] = v.y;
    }
  }

  const int32_t* table = p.block_tables + seq.block_table_offset;
  const float scale = seq.softmax_scale;
  const int ni = i / L;
  float m = -INFINITY, l = 0.f;
  float acc[kPer];
#pragma unroll
  for (int e = 0; e < kPer; ++e) acc[e] = 0.f;
  const int sink = seq.sink_tokens, window_start = seq.window_start;
  for (int ri = 0;; ++ri) {
    const KeyRunView run = LoadKeyRun(p.runs, seq, ri);
    if (run.first > i) break;
    const int j_last = min(run.end - 1, i);
    for (int j = run.first; j <= j_last; ++j) {
      if (KeyAbsent(j, sink, window_start)) {
        j = window_start - 1;
        continue;
      }
      const int part = min(ni - j / L, 2);
      const int lj = run.local + (j - run.first);
      const int64_t base = int64_t{table[lj / p.kv.block_size]} * p.kv.block_stride +
                           (int64_t{lj % p.kv.block_size} * p.kv.n_kv_heads + kvh) * D;
      const bf16* kj = p.kv.k + base;
      const bf16* vj = p.kv.v + base;
      float s = 0.f;
#pragma unroll
      for (int e = 0; e < kPer; ++e) {
        const float qe = part == 0 ? qr[0][e] : (part == 1 ? qr[1][e] : qr[2][e]);
        s += qe * __bfloat162float(kj[lane + 32 * e]);
      }
      s = WarpSum(s) * scale;
      const float m_new = fmaxf(m, s);
      const float corr = expf(m - m_new);
      const float w = expf(s - m_new);
      l = l * corr + w;
#pragma unroll
      for (int e = 0; e < kPer; ++e) {
        acc[e] = acc[e] * corr + w * __bfloat162float(vj[lane + 32 * e]);
      }
      m = m_new;
    }
  }
  // A row that saw no key (only with held runs) gets 0 and lse -inf.
  float* o = p.out + (int64_t{seq.q_row} + r) * row_stride + int64_t{h} * D;
  const float inv_l = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
  for (int e = 0; e < kPer; ++e) o[lane + 32 * e] = acc[e] * inv_l;
  if (p.lse != nullptr && lane == 0) {
    p.lse[(int64_t{seq.q_row} + r) * p.H + h] = l > 0.f ? m + logf(l) : -INFINITY;
  }
}

}  // namespace

cudaError_t DcaAttentionSimple(const DcaAttentionParams& p, const DcaRowTile* tiles, int n_tiles,
                               cudaStream_t stream) {
  if (n_tiles == 0) return cudaSuccess;
  const dim3 grid(n_tiles, p.H);
  switch (p.D) {
    case 64:
      DcaSimpleKernel<64><<<grid, kDcaSimpleRows * 32, 0, stream>>>(p, tiles);
      break;
    case 128:
      DcaSimpleKernel<128><<<grid, kDcaSimpleRows * 32, 0, stream>>>(p, tiles);
      break;
    case 256:
      DcaSimpleKernel<256><<<grid, kDcaSimpleRows * 32, 0, stream>>>(p, tiles);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace longctx::cuda

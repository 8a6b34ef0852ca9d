// Split-KV (flash-decoding) Dual Chunk Attention for decode steps, batched
// across sequences. A thread block owns up to kDcaSplitRows (query, q head) rows
// that share one kv head, and a range of 64-key tiles of their sequence; several
// blocks split one long context and DcaSplitCombineKernel merges their partial
// results by log-sum-exp. Decode is bound by reading K and V once, so the
// arithmetic runs on CUDA cores: D/8 lanes hold one key (16-byte loads), every
// key is read once for all rows of the group (GQA without repeating K/V). The
// DCA rotation is chosen per (row, key tile): a tile lies in one chunk.
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace longctx::cuda {
namespace {

template <int kHeadDim>
struct SplitTraits {
  static constexpr int D = kHeadDim;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kLanesPerKey = D / 8;
  static constexpr int kKeyGroups = 32 / kLanesPerKey;  // keys per warp per step
  static constexpr int kKeysPerStep = kWarps * kKeyGroups;
  static constexpr int kSteps = kDcaKeyTile / kKeysPerStep;
  static constexpr int kRows = kDcaSplitRows;
  static_assert(kSteps % 2 == 0, "steps are taken in pairs");
};

__device__ __forceinline__ void Bf16x8ToF32(const uint4& raw, float (&out)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 f = __bfloat1622float2(h[e]);
    out[2 * e] = f.x;
    out[2 * e + 1] = f.y;
  }
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads)
    DcaSplitKernel(DcaAttentionParams p, const DcaSplitItem* items, DcaSplitScratch scratch) {
  constexpr int D = Tr::D, R = Tr::kRows, kLanes = Tr::kLanesPerKey;
  __shared__ __align__(16) float q_s[3][R][D];
  __shared__ __align__(16) float red_o[Tr::kWarps][R][D];
  __shared__ float red_ml[Tr::kWarps][R][2];

  const DcaSplitItem item = items[blockIdx.x];
  const DcaSeqDesc seq = p.seqs[item.seq];
  const int kvh = blockIdx.y;
  const int group = p.H / p.kv.n_kv_heads;
  const int L = seq.chunk_len, C = seq.chunk_size;
  const int64_t row_stride = int64_t{p.H} * D;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int kg = lane / kLanes, sub = lane % kLanes;

  for (int idx = tid; idx < R * (D / 2); idx += Tr::kThreads) {
    const int rr = idx / (D / 2), c = idx % (D / 2);
    if (rr < item.n_rows) {
      const int row = item.rr0 + rr;
      const int r = row / group, head = kvh * group + row % group;
      const float* qh = p.q + (int64_t{seq.q_row} + r) * row_stride + int64_t{head} * D;
      const float a = qh[c], b = qh[c + D / 2];
      const float f = p.inv_freq[c];
#pragma unroll
      for (int part = 0; part < 3; ++part) {
        float s, co;
        RopeSinCos(DcaQueryPos(seq.q_start + r, L, C, part), f, &s, &co);
        const float2 v = RotatePair(a, b, s, co);
        q_s[part][rr][c] = v.x;
        q_s[part][rr][c + D / 2] = v.y;
      }
    }
  }
  __syncthreads();

  int i_row[R];
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {
    i_row[rr] = rr < item.n_rows ? seq.q_start + (item.rr0 + rr) / group : -1;
  }
  const int i_max = seq.q_start + (item.rr0 + item.n_rows - 1) / group;
  const float scale_log2 = seq.softmax_scale * 1.4426950408889634f;
  const int32_t* table = p.block_tables + seq.block_table_offset;
  const int64_t key_stride = int64_t{p.kv.n_kv_heads} * D;

  float m[R], l[R], acc[R][8];
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[rr][e] = 0.f;
  }

  for (int kt = item.tile_begin; kt < item.tile_end; ++kt) {
    const int j0 = kt * kDcaKeyTile;
    const int64_t base = int64_t{table[j0 / p.kv.block_size]} * p.kv.block_stride +
                         int64_t{j0 % p.kv.block_size} * key_stride + int64_t{kvh} * D + sub * 8;
    const int key_chunk = j0 / L;
    float qr[R][8];
#pragma unroll
    for (int rr = 0; rr < R; ++rr) {
      if (rr < item.n_rows) {
        const float* src = &q_s[DcaPart(i_row[rr], L, key_chunk)][rr][sub * 8];
        const float4 x = *reinterpret_cast<const float4*>(src);
        const float4 y = *reinterpret_cast<const float4*>(src + 4);
        qr[rr][0] = x.x, qr[rr][1] = x.y, qr[rr][2] = x.z, qr[rr][3] = x.w;
        qr[rr][4] = y.x, qr[rr][5] = y.y, qr[rr][6] = y.z, qr[rr][7] = y.w;
      }
    }
    for (int step = 0; step < Tr::kSteps; step += 2) {
      // Both steps' loads first: more bytes in flight per lane.
      uint4 k_raw[2], v_raw[2];
      int j[2];
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const int n = (step + u) * Tr::kKeysPerStep + warp * Tr::kKeyGroups + kg;
        j[u] = j0 + n;
        if (j[u] <= i_max) {
          k_raw[u] = *reinterpret_cast<const uint4*>(p.kv.k + base + n * key_stride);
          v_raw[u] = *reinterpret_cast<const uint4*>(p.kv.v + base + n * key_stride);
        } else {
          k_raw[u] = make_uint4(0, 0, 0, 0);
          v_raw[u] = make_uint4(0, 0, 0, 0);
        }
      }
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        float k[8], v[8];
        Bf16x8ToF32(k_raw[u], k);
        Bf16x8ToF32(v_raw[u], v);
#pragma unroll
        for (int rr = 0; rr < R; ++rr) {
          if (rr < item.n_rows) {
            float s = 0.f;
#pragma unroll
            for (int e = 0; e < 8; ++e) s += qr[rr][e] * k[e];
#pragma unroll
            for (int off = kLanes / 2; off > 0; off >>= 1) {
              s += __shfl_xor_sync(0xffffffffu, s, off);
            }
            s = j[u] <= i_row[rr] ? s * scale_log2 : -INFINITY;
            const float m_new = fmaxf(m[rr], s);
            if (m_new != -INFINITY) {
              const float corr = exp2f(m[rr] - m_new);
              const float w = exp2f(s - m_new);
              l[rr] = l[rr] * corr + w;
#pragma unroll
              for (int e = 0; e < 8; ++e) acc[rr][e] = acc[rr][e] * corr + w * v[e];
              m[rr] = m_new;
            }
          }
        }
      }
    }
  }

  // Merge the key groups of the warp (lanes with the same `sub`), then the warps.
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {
    if (rr < item.n_rows) {
#pragma unroll
      for (int off = kLanes; off < 32; off <<= 1) {
        const float m_o = __shfl_xor_sync(0xffffffffu, m[rr], off);
        const float l_o = __shfl_xor_sync(0xffffffffu, l[rr], off);
        const float m_new = fmaxf(m[rr], m_o);
        const float base = m_new == -INFINITY ? 0.f : m_new;
        const float c_self = exp2f(m[rr] - base), c_o = exp2f(m_o - base);
        l[rr] = l[rr] * c_self + l_o * c_o;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float a_o = __shfl_xor_sync(0xffffffffu, acc[rr][e], off);
          acc[rr][e] = acc[rr][e] * c_self + a_o * c_o;
        }
        m[rr] = m_new;
      }
      if (kg == 0) {
#pragma unroll
        for (int e = 0; e < 8; ++e) red_o[warp][rr][sub * 8 + e] = acc[rr][e];
        if (sub == 0) {
          red_ml[warp][rr][0] = m[rr];
          red_ml[warp][rr][1] = l[rr];
        }
      }
    }
  }
  __syncthreads();

  for (int idx = tid; idx < item.n_rows * D; idx += Tr::kThreads) {
    const int rr = idx / D, d = idx % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < Tr::kWarps; ++w) mx = fmaxf(mx, red_ml[w][rr][0]);
    const float base = mx == -INFINITY ? 0.f : mx;
    float sum = 0.f, o = 0.f;
#pragma unroll
    for (int w = 0; w < Tr::kWarps; ++w) {
      const float c = exp2f(red_ml[w][rr][0] - base);
      sum += red_ml[w][rr][1] * c;
      o += red_o[w][rr][d] * c;
    }
    o = sum > 0.f ? o / sum : 0.f;
    const int row = item.rr0 + rr;
    if (item.out_slot < 0) {
      const int r = row / group, head = kvh * group + row % group;
      p.out[(int64_t{seq.q_row} + r) * row_stride + int64_t{head} * D + d] = o;
    } else {
      const int64_t at = (int64_t{item.out_slot} * p.kv.n_kv_heads + kvh) * R + rr;
      scratch.o[at * D + d] = o;
      if (d == 0) {
        scratch.ml[at * 2] = mx;
        scratch.ml[at * 2 + 1] = sum;
      }
    }
  }
}

// Merges the partial results of the blocks that split one group of rows.
template <int D>
__global__ void DcaSplitCombineKernel(DcaAttentionParams p, const DcaCombineItem* combine,
                                      DcaSplitScratch scratch) {
  constexpr int R = kDcaSplitRows;
  const DcaCombineItem item = combine[blockIdx.x];
  const DcaSeqDesc seq = p.seqs[item.seq];
  const int kvh = blockIdx.y;
  const int group = p.H / p.kv.n_kv_heads;
  const int64_t row_stride = int64_t{p.H} * D;
  for (int idx = threadIdx.x; idx < item.n_rows * D; idx += blockDim.x) {
    const int rr = idx / D, d = idx % D;
    float mx = -INFINITY;
    for (int s = 0; s < item.n_slots; ++s) {
      const int64_t at = (int64_t{item.first_slot + s} * p.kv.n_kv_heads + kvh) * R + rr;
      mx = fmaxf(mx, scratch.ml[at * 2]);
    }
    const float base = mx == -INFINITY ? 0.f : mx;
    float sum = 0.f, o = 0.f;
    for (int s = 0; s < item.n_slots; ++s) {
      const int64_t at = (int64_t{item.first_slot + s} * p.kv.n_kv_heads + kvh) * R + rr;
      const float w = scratch.ml[at * 2 + 1] * exp2f(scratch.ml[at * 2] - base);
      sum += w;
      o += w * scratch.o[at * D + d];
    }
    const int row = item.rr0 + rr;
    const int r = row / group, head = kvh * group + row % group;
    p.out[(int64_t{seq.q_row} + r) * row_stride + int64_t{head} * D + d] = o / sum;
  }
}

template <int D>
cudaError_t LaunchSplit(const DcaAttentionParams& p, const DcaSplitItem* items, int n_items,
                        const DcaCombineItem* combine, int n_combine,
                        const DcaSplitScratch& scratch, cudaStream_t stream) {
  using Tr = SplitTraits<D>;
  DcaSplitKernel<Tr><<<dim3(n_items, p.kv.n_kv_heads), Tr::kThreads, 0, stream>>>(p, items,
                                                                                   scratch);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || n_combine == 0) return err;
  DcaSplitCombineKernel<D><<<dim3(n_combine, p.kv.n_kv_heads), 128, 0, stream>>>(p, combine,
                                                                                  scratch);
  return cudaGetLastError();
}

}  // namespace

bool DcaSplitSupported(int D) { return D == 64 || D == 128; }

cudaError_t DcaAttentionSplit(const DcaAttentionParams& p, const DcaSplitItem* items, int n_items,
                              const DcaCombineItem* combine, int n_combine,
                              const DcaSplitScratch& scratch, cudaStream_t stream) {
  if (n_items == 0) return cudaSuccess;
  switch (p.D) {
    case 64:
      return LaunchSplit<64>(p, items, n_items, combine, n_combine, scratch, stream);
    case 128:
      return LaunchSplit<128>(p, items, n_items, combine, n_combine, scratch, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace longctx::cuda

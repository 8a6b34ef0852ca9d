// Linear with 9 to 64 token rows on bf16 tensor cores (ops_cuda.h, GemvBf16):
// a batched decode step of a small model, where each product is a few MB of
// weights and the step is bound by launches and latency, not by bytes. One
// launch replaces the bf16 copy of x, the cuBLAS GEMMs of every job and the op
// after them.
//
// A block of eight warps owns 16 output rows of one job (SwiGLU: 16 gate and
// 16 up rows) for all T token rows; the warps split K between them in 32-wide
// slices (warp w takes slices w, w + 8, ...) and add their partial sums through
// shared memory at the end. The product is a short chain of memory latencies,
// so the kernel keeps it short: a warp loads the weights of up to kDepth of its
// slices at once, the first of them before waiting on the kernel ahead (a
// step never writes weights), and the next slice's activations while it
// multiplies the current ones. Each lane loads, per slice, 16 bytes of each of
// its weight rows and 32 bytes of each of its token rows straight into
// registers: lane (g, t) = (lane / 4, lane % 4) holds k = 8t .. 8t + 8 of the
// slice, and the slice's two m16n8k16 products take those k in the order
// (8t, 8t+1 | 8t+2, 8t+3) and (8t+4, 8t+5 | 8t+6, 8t+7) for both operands. A dot
// product does not care in which order its k come, so no shuffle or shared
// memory is needed to form the fragments.
#include <cstdint>

#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/gemv_common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace longctx::cuda {
namespace {

constexpr int kMmaWarps = 8;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kMmaRowsPerBlock = 16;  // output rows of a block
constexpr int kSlice = 32;            // k per warp step
// 16-byte weight loads a lane keeps in flight per group of slices.
constexpr int kWeightLoads = 12;

// The token rows g and g + 8 of 16-row tile mt at k .. k + 8 (zeros past T).
template <int MT>
__device__ __forceinline__ void LoadX(const GemvParams& p, int g, int k, float (&xv)[MT][2][8]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int t = mt * 16 + g + 8 * h;
      if (t < p.T) {
        const float4* xp = reinterpret_cast<const float4*>(p.x + int64_t{t} * p.K + k);
        const float4 lo = __ldg(xp), hi = __ldg(xp + 1);
        xv[mt][h][0] = lo.x, xv[mt][h][1] = lo.y, xv[mt][h][2] = lo.z, xv[mt][h][3] = lo.w;
        xv[mt][h][4] = hi.x, xv[mt][h][5] = hi.y, xv[mt][h][6] = hi.z, xv[mt][h][7] = hi.w;
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) xv[mt][h][i] = 0.f;
      }
    }
  }
}

// MT: 16-row tiles of tokens; n8 tiles: two of output rows, with SwiGLU two
// more of up rows. grid: ceil(N_j / 16) blocks per job j, one job's blocks
// after the other's.
template <int MT, GemvEpilogue E>
__global__ void __launch_bounds__(kMmaThreads) GemvMmaKernel(GemvParams p, GemvBlockStarts starts) {
  constexpr bool kGlu = E == GemvEpilogue::kSwiGlu;
  constexpr int NT = kGlu ? 4 : 2;
  constexpr int kDepth = kWeightLoads / NT;  // slices per group
  const auto [job, first] = JobOfBlock(p, starts);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t4 = lane % 4;
  const int n0 = (static_cast<int>(blockIdx.x) - first) * kMmaRowsPerBlock;
  // This lane's weight row of each n8 tile (rows past N re-read the last one;
  // their sums are not written).
  const uint4* wrow[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const bf16* w = kGlu && nt >= 2 ? job.w_up : job.w;
    const int n = min(n0 + (nt % 2) * 8 + g, job.N - 1);
    wrow[nt] = reinterpret_cast<const uint4*>(w + int64_t{n} * p.K) + t4;
  }
  const int slices = p.K / kSlice;
  auto load_group = [&](int s0, uint4(&wv)[kDepth][NT]) {
#pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      const int s = s0 + d * kMmaWarps;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        wv[d][nt] = s < slices ? LoadWeights(wrow[nt] + s * (kSlice / 8)) : make_uint4(0, 0, 0, 0);
      }
    }
  };
  uint4 wv[kDepth][NT];
  load_group(warp, wv);
  BeginAfterPredecessor();

  const bool norm = p.norm_w != nullptr;
  float acc[MT][NT][4];
  float ss[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    ss[mt][0] = ss[mt][1] = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.f;
    }
  }
  float xv[MT][2][8];
  if (warp < slices) LoadX<MT>(p, g, warp * kSlice + 8 * t4, xv);
  for (int s0 = warp; s0 < slices; s0 += kMmaWarps * kDepth) {
    if (s0 != warp) load_group(s0, wv);
#pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      const int s = s0 + d * kMmaWarps;
      if (s >= slices) break;
      const int k = s * kSlice + 8 * t4;
      float gn[8];
      if (norm) LoadNorm8(p.norm_w, p.norm_type, k, gn);
      // Fragment words: a[mt][h][j], rows g (h 0) and g + 8 (h 1); word j
      // holds the k pair 8t + 2j.
      uint32_t a[MT][2][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if (norm) {
#pragma unroll
            for (int i = 0; i < 8; ++i) {
              ss[mt][h] = fmaf(xv[mt][h][i], xv[mt][h][i], ss[mt][h]);
              xv[mt][h][i] *= gn[i];
            }
          }
#pragma unroll
          for (int j = 0; j < 4; ++j)
            a[mt][h][j] = PackBf16(xv[mt][h][2 * j], xv[mt][h][2 * j + 1]);
        }
      }
      // The next slice's activations in flight during the products.
      if (s + kMmaWarps < slices) LoadX<MT>(p, g, k + kMmaWarps * kSlice, xv);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const uint32_t frag[4] = {a[mt][0][2 * q], a[mt][1][2 * q], a[mt][0][2 * q + 1],
                                    a[mt][1][2 * q + 1]};
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            const uint32_t b0 = q == 0 ? wv[d][nt].x : wv[d][nt].z;
            const uint32_t b1 = q == 0 ? wv[d][nt].y : wv[d][nt].w;
            MmaBf16(acc[mt][nt], frag, b0, b1);
          }
        }
      }
    }
  }

  // The warps' partial sums, in two rounds through room for four: warps 4..7
  // leave theirs, warps 0..3 add their own; then each output once.
  constexpr int kHalf = kMmaWarps / 2;
  __shared__ float red[kHalf][MT * 16][NT * 8];
  __shared__ float red_ss[kMmaWarps][MT * 16];
  auto exchange = [&](bool add) {
    float* r = &red[warp % kHalf][0][0];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = mt * 16 + g + 8 * (e / 2), col = nt * 8 + 2 * t4 + e % 2;
          float& slot = r[row * NT * 8 + col];
          slot = add ? slot + acc[mt][nt][e] : acc[mt][nt][e];
        }
      }
    }
  };
  if (warp >= kHalf) exchange(false);
  if (norm) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float v = ss[mt][h];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        if (t4 == 0) red_ss[warp][mt * 16 + g + 8 * h] = v;
      }
    }
  }
  __syncthreads();
  if (warp < kHalf) exchange(true);
  __syncthreads();
  constexpr int kOut = kMmaRowsPerBlock;
  for (int idx = threadIdx.x; idx < p.T * kOut; idx += kMmaThreads) {
    const int t = idx / kOut, c = idx % kOut, n = n0 + c;
    if (n >= job.N) continue;
    float scale = 1.f;
    if (norm) {
      float total = 0.f;
#pragma unroll
      for (int w = 0; w < kMmaWarps; ++w) total += red_ss[w][t];
      scale = rsqrtf(total / p.K + p.norm_eps);
    }
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < kHalf; ++w) sum += red[w][t][c];
    sum *= scale;
    float* out = job.out + int64_t{t} * job.N + n;
    if constexpr (kGlu) {
      float up = 0.f;
#pragma unroll
      for (int w = 0; w < kHalf; ++w) up += red[w][t][c + kOut];
      *out = SiluTimes(sum, up * scale);
    } else {
      sum += BiasOf(job, n);
      if constexpr (E == GemvEpilogue::kAdd) {
        *out += sum;
      } else {
        *out = sum;
      }
    }
  }
}

template <int MT, GemvEpilogue E>
cudaError_t LaunchMma(const GemvParams& p, cudaStream_t stream) {
  int blocks = 0;
  const GemvBlockStarts starts = BlockStarts(p, kMmaRowsPerBlock, &blocks);
  LaunchAfter(GemvMmaKernel<MT, E>, blocks, kMmaThreads, 0, stream, p, starts);
  return cudaGetLastError();
}

template <int MT>
cudaError_t LaunchMmaEpilogue(const GemvParams& p, cudaStream_t stream) {
  switch (p.epilogue) {
    case GemvEpilogue::kSwiGlu:
      return LaunchMma<MT, GemvEpilogue::kSwiGlu>(p, stream);
    case GemvEpilogue::kAdd:
      return LaunchMma<MT, GemvEpilogue::kAdd>(p, stream);
    case GemvEpilogue::kStore:
      break;
  }
  return LaunchMma<MT, GemvEpilogue::kStore>(p, stream);
}

}  // namespace

cudaError_t GemvMmaBf16(const GemvParams& p, cudaStream_t stream) {
  static_assert(kGemvMmaMaxT == 64, "one case per 16-row tile count");
  switch ((p.T + 15) / 16) {
    case 1:
      return LaunchMmaEpilogue<1>(p, stream);
    case 2:
      return LaunchMmaEpilogue<2>(p, stream);
    case 3:
      return LaunchMmaEpilogue<3>(p, stream);
    default:
      return LaunchMmaEpilogue<4>(p, stream);
  }
}

}  // namespace longctx::cuda

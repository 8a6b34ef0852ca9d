// Pieces shared by the two few-row product kernels (gemv.cu on the CUDA cores
// for up to kGemvMaxT rows, gemv_mma.cu on the tensor cores above): the job of
// a block, weight loads, the epilogue's bias and SwiGLU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/ops_cuda.h"

namespace longctx::cuda {

// The tensor-core kernel (gemv_mma.cu), which GemvBf16 launches above
// kGemvMaxT rows. REQUIRES: GemvSupported(p), p.T > kGemvMaxT.
cudaError_t GemvMmaBf16(const GemvParams& p, cudaStream_t stream);

// First block of each job of a launch (prefix sums of the jobs' block counts).
struct GemvBlockStarts {
  int first[kGemvMaxJobs];
};

// Block counts of ceil(N_j / rows_per_block) for the jobs of p, one after the other.
inline GemvBlockStarts BlockStarts(const GemvParams& p, int rows_per_block, int* blocks) {
  GemvBlockStarts starts;
  *blocks = 0;
  for (int i = 0; i < kGemvMaxJobs; ++i) {
    starts.first[i] = *blocks;
    if (i < p.n_jobs) *blocks += (p.jobs[i].N + rows_per_block - 1) / rows_per_block;
  }
  return starts;
}

// This block's job (the last one that starts at or before it; a select per job,
// so the parameters stay in constant memory) and the job's first block.
struct BlockJob {
  GemvJob job;
  int first;
};
__device__ __forceinline__ BlockJob JobOfBlock(const GemvParams& p, const GemvBlockStarts& starts) {
  BlockJob b{p.jobs[0], 0};
#pragma unroll
  for (int i = 1; i < kGemvMaxJobs; ++i) {
    if (i < p.n_jobs && static_cast<int>(blockIdx.x) >= starts.first[i]) {
      b.job = p.jobs[i];
      b.first = starts.first[i];
    }
  }
  return b;
}

// A 16-byte weight load that bypasses L1 (each byte is read once; L1 keeps x).
__device__ __forceinline__ uint4 LoadWeights(const uint4* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];\n"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

// The two bf16 of a 32-bit word as floats, the lower address first.
__device__ __forceinline__ float2 Bf16PairToF32(uint32_t u) {
  return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}

__device__ __forceinline__ float BiasOf(const GemvJob& job, int n) {
  if (job.bias == nullptr) return 0.f;
  return job.bias_type == ElemType::kBF16 ? __bfloat162float(static_cast<const bf16*>(job.bias)[n])
                                          : static_cast<const float*>(job.bias)[n];
}

// The SwiGlu kernel's expression: silu(gate) * up.
__device__ __forceinline__ float SiluTimes(float gate, float up) {
  return gate / (1.f + expf(-gate)) * up;
}

// Eight consecutive norm weights (RMSNorm's w) as floats, 16-byte aligned.
__device__ __forceinline__ void LoadNorm8(const void* w, ElemType type, int k, float (&g)[8]) {
  if (type == ElemType::kBF16) {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(static_cast<const bf16*>(w) + k));
    const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = Bf16PairToF32(words[i]);
      g[2 * i] = f.x;
      g[2 * i + 1] = f.y;
    }
  } else {
    const float4* q = reinterpret_cast<const float4*>(static_cast<const float*>(w) + k);
    const float4 a = __ldg(q), b = __ldg(q + 1);
    g[0] = a.x, g[1] = a.y, g[2] = a.z, g[3] = a.w;
    g[4] = b.x, g[5] = b.y, g[6] = b.z, g[7] = b.w;
  }
}

}  // namespace longctx::cuda

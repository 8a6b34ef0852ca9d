// CUDA elementwise ops, RMSNorm, RoPE, conversions, gathers and the KV write.
#include <algorithm>
#include <type_traits>

#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/uniform_fill.h"

namespace longctx::cuda {
namespace {

constexpr int kThreads = 256;

int GridFor(int64_t n, int threads = kThreads) {
  return static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, int64_t{1} << 20));
}

template <typename T>
__device__ __forceinline__ float ToF32(T v);
template <>
__device__ __forceinline__ float ToF32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float ToF32<bf16>(bf16 v) {
  return __bfloat162float(v);
}

__global__ void F32ToBf16Kernel(bf16* out, const float* in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = __float2bfloat16_rn(in[i]);
  }
}

__global__ void Bf16ToF32Kernel(float* out, const bf16* in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = __bfloat162float(in[i]);
  }
}

template <typename T>
__global__ void FillUniformKernel(T* out, int64_t n, uint64_t seed, float lo, float span) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    // Explicit rounding (no FMA contraction) matches the CPU reference bit for bit.
    const float v = __fadd_rn(lo, __fmul_rn(span, UniformAt(seed, i)));
    if constexpr (std::is_same_v<T, bf16>) {
      out[i] = __float2bfloat16_rn(v);
    } else {
      out[i] = v;
    }
  }
}

// One block per token row.
template <typename T>
__global__ void EmbeddingKernel(float* out, const T* table, const int32_t* ids, int D) {
  const int t = blockIdx.x;
  const T* src = table + int64_t{ids[t]} * D;
  float* dst = out + int64_t{t} * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) dst[i] = ToF32(src[i]);
}

// One block per row; sum of squares in f32 with a block tree reduction.
template <typename T>
__global__ void RmsNormKernel(float* out, const float* x, const T* w, int D, float eps) {
  __shared__ float partial[kThreads / 32];
  const int t = blockIdx.x;
  const float* xr = x + int64_t{t} * D;
  float ss = 0.f;
  for (int i = threadIdx.x; i < D; i += blockDim.x) ss += xr[i] * xr[i];
  ss = WarpSum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < kThreads / 32; ++i) total += partial[i];
  const float inv = rsqrtf(total / D + eps);
  float* orow = out + int64_t{t} * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) orow[i] = xr[i] * inv * ToF32(w[i]);
}

template <typename T>
__global__ void AddBiasKernel(float* out, const T* bias, int64_t n, int N) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] += ToF32(bias[i % N]);
  }
}

__global__ void SwiGluKernel(float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.f + expf(-g)) * up[i];
  }
}

__global__ void AddInPlaceKernel(float* x, const float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    x[i] += y[i];
  }
}

// One block per token; thread i owns frequency i for every head.
__global__ void RopeKernel(float* x, const int32_t* pos, const float* inv_freq, int H, int D) {
  const int t = blockIdx.x;
  const int half = D / 2;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float s, c;
    RopeSinCos(pos[t], inv_freq[i], &s, &c);
    for (int h = 0; h < H; ++h) {
      float* v = x + (int64_t{t} * H + h) * D;
      const float2 r = RotatePair(v[i], v[i + half], s, c);
      v[i] = r.x;
      v[i + half] = r.y;
    }
  }
}

__global__ void GatherRowsKernel(float* out, const float* src, const int32_t* rows, int cols) {
  const int r = blockIdx.x;
  const float* s = src + int64_t{rows[r]} * cols;
  float* d = out + int64_t{r} * cols;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) d[i] = s[i];
}

// One block per written token.
__global__ void KvWriteKernel(KvWriteParams p) {
  const int r = blockIdx.x;
  const int slot = p.slots[r];
  const int64_t block = slot / p.block_size;
  const int64_t offset = slot % p.block_size;
  bf16* k_dst = p.arena + p.layer_offset + block * p.block_stride + offset * p.width;
  bf16* v_dst = k_dst + p.plane;
  const float* k = p.k + int64_t{r} * p.width;
  const float* v = p.v + int64_t{r} * p.width;
  for (int i = threadIdx.x; i < p.width; i += blockDim.x) {
    k_dst[i] = __float2bfloat16_rn(k[i]);
    v_dst[i] = __float2bfloat16_rn(v[i]);
  }
}

int RowThreads(int cols) { return std::min(kThreads, std::max(32, (cols + 31) / 32 * 32)); }

}  // namespace

cudaError_t ConvertF32ToBf16(bf16* out, const float* in, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  F32ToBf16Kernel<<<GridFor(n), kThreads, 0, stream>>>(out, in, n);
  return cudaGetLastError();
}

cudaError_t ConvertBf16ToF32(float* out, const bf16* in, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  Bf16ToF32Kernel<<<GridFor(n), kThreads, 0, stream>>>(out, in, n);
  return cudaGetLastError();
}

cudaError_t FillUniform(void* out, ElemType out_type, int64_t n, uint64_t seed, float lo, float hi,
                        cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (out_type == ElemType::kBF16) {
    FillUniformKernel<<<GridFor(n), kThreads, 0, stream>>>(static_cast<bf16*>(out), n, seed, lo,
                                                           hi - lo);
  } else {
    FillUniformKernel<<<GridFor(n), kThreads, 0, stream>>>(static_cast<float*>(out), n, seed, lo,
                                                           hi - lo);
  }
  return cudaGetLastError();
}

cudaError_t Embedding(float* out, const void* table, ElemType table_type, const int32_t* ids, int T,
                      int D, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (table_type == ElemType::kBF16) {
    EmbeddingKernel<<<T, RowThreads(D), 0, stream>>>(out, static_cast<const bf16*>(table), ids, D);
  } else {
    EmbeddingKernel<<<T, RowThreads(D), 0, stream>>>(out, static_cast<const float*>(table), ids, D);
  }
  return cudaGetLastError();
}

cudaError_t RmsNorm(float* out, const float* x, const void* w, ElemType w_type, int T, int D,
                    float eps, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (w_type == ElemType::kBF16) {
    RmsNormKernel<<<T, kThreads, 0, stream>>>(out, x, static_cast<const bf16*>(w), D, eps);
  } else {
    RmsNormKernel<<<T, kThreads, 0, stream>>>(out, x, static_cast<const float*>(w), D, eps);
  }
  return cudaGetLastError();
}

cudaError_t AddBias(float* out, const void* bias, ElemType bias_type, int T, int N,
                    cudaStream_t stream) {
  const int64_t n = int64_t{T} * N;
  if (n == 0) return cudaSuccess;
  if (bias_type == ElemType::kBF16) {
    AddBiasKernel<<<GridFor(n), kThreads, 0, stream>>>(out, static_cast<const bf16*>(bias), n, N);
  } else {
    AddBiasKernel<<<GridFor(n), kThreads, 0, stream>>>(out, static_cast<const float*>(bias), n, N);
  }
  return cudaGetLastError();
}

cudaError_t SwiGlu(float* out, const float* gate, const float* up, int T, int F,
                   cudaStream_t stream) {
  const int64_t n = int64_t{T} * F;
  if (n == 0) return cudaSuccess;
  SwiGluKernel<<<GridFor(n), kThreads, 0, stream>>>(out, gate, up, n);
  return cudaGetLastError();
}

cudaError_t AddInPlace(float* x, const float* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  AddInPlaceKernel<<<GridFor(n), kThreads, 0, stream>>>(x, y, n);
  return cudaGetLastError();
}

cudaError_t Rope(float* x, const int32_t* pos, const float* inv_freq, int T, int H, int D,
                 cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  RopeKernel<<<T, RowThreads(D / 2), 0, stream>>>(x, pos, inv_freq, H, D);
  return cudaGetLastError();
}

cudaError_t GatherRows(float* out, const float* src, const int32_t* rows, int n_rows, int cols,
                       cudaStream_t stream) {
  if (n_rows == 0) return cudaSuccess;
  GatherRowsKernel<<<n_rows, RowThreads(cols), 0, stream>>>(out, src, rows, cols);
  return cudaGetLastError();
}

cudaError_t KvWrite(const KvWriteParams& p, cudaStream_t stream) {
  if (p.T == 0) return cudaSuccess;
  KvWriteKernel<<<p.T, RowThreads(p.width), 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace longctx::cuda

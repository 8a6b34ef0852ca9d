// CUDA elementwise ops, RMSNorm, RoPE, conversions, gathers and the KV write.
#include <algorithm>
#include <atomic>
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

// v as Out (float or bf16, rounded to nearest even).
template <typename Out>
__device__ __forceinline__ Out FromF32(float v) {
  if constexpr (std::is_same_v<Out, bf16>) {
    return __float2bfloat16_rn(v);
  } else {
    return v;
  }
}

// Four consecutive values at `out` (16-byte aligned floats, 8-byte aligned bf16).
__device__ __forceinline__ void Store4(float* out, float4 v) {
  *reinterpret_cast<float4*>(out) = v;
}
__device__ __forceinline__ void Store4(bf16* out, float4 v) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  uint2 u;
  u.x = *reinterpret_cast<const uint32_t*>(&lo);
  u.y = *reinterpret_cast<const uint32_t*>(&hi);
  *reinterpret_cast<uint2*>(out) = u;
}

__global__ void F32ToBf16Kernel(bf16* out, const float* in, int64_t n) {
  BeginAfterPredecessor();
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
  BeginAfterPredecessor();
  const int t = blockIdx.x;
  const T* src = table + int64_t{ids[t]} * D;
  float* dst = out + int64_t{t} * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) dst[i] = ToF32(src[i]);
}

// One block per row; sum of squares in f32 with a block tree reduction. The
// general form, for rows whose width is not a multiple of 4 or that are not
// 16-byte aligned.
template <typename T, typename Out>
__global__ void RmsNormKernel(Out* out, const float* x, const T* w, int D, float eps) {
  BeginAfterPredecessor();
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
  Out* orow = out + int64_t{t} * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    orow[i] = FromF32<Out>(xr[i] * inv * ToF32(w[i]));
  }
}

// Four consecutive weights as floats.
__device__ __forceinline__ float4 Load4(const float* w) {
  return *reinterpret_cast<const float4*>(w);
}
__device__ __forceinline__ float4 Load4(const bf16* w) {
  const uint2 u = *reinterpret_cast<const uint2*>(w);
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
                     __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
}

// RMSNorm of rows of 4k floats, 16-byte aligned: one block per row, each thread
// holding kVec float4 of it in registers, so the row is read once with all its
// loads in flight together (a decode step's single row is a chain of dependent
// loads in the general kernel, ~15 us for 4096 floats).
constexpr int kRmsMaxThreads = 1024;
template <typename T, typename Out, int kVec>
__global__ void __launch_bounds__(kRmsMaxThreads)
    RmsNormVecKernel(Out* out, const float* x, const T* w, int D, float eps) {
  BeginAfterPredecessor();
  __shared__ float partial[kRmsMaxThreads / 32];
  const int n4 = D / 4;
  const float4* xr = reinterpret_cast<const float4*>(x + int64_t{blockIdx.x} * D);
  float4 v[kVec];
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    v[k] = i < n4 ? xr[i] : make_float4(0.f, 0.f, 0.f, 0.f);
    ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
  }
  ss = WarpSum(ss);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.f;
  for (int i = 0; i < static_cast<int>(blockDim.x / 32); ++i) total += partial[i];
  const float inv = rsqrtf(total / D + eps);
  Out* orow = out + int64_t{blockIdx.x} * D;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < n4) {
      const float4 g = Load4(w + 4 * i);
      Store4(orow + 4 * i, make_float4(v[k].x * inv * g.x, v[k].y * inv * g.y,
                                       v[k].z * inv * g.z, v[k].w * inv * g.w));
    }
  }
}

template <typename T, typename Out>
cudaError_t LaunchRmsNorm(Out* out, const float* x, const T* w, int T_rows, int D, float eps,
                          cudaStream_t stream) {
  const bool aligned = D % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(out) % (4 * sizeof(Out)) == 0 &&
                       reinterpret_cast<uintptr_t>(w) % (4 * sizeof(T)) == 0;
  const int n4 = D / 4;
  const int threads = std::min(kRmsMaxThreads, (n4 + 31) / 32 * 32);
  const int vec = threads > 0 ? (n4 + threads - 1) / threads : 0;
  if (!aligned || vec > 4) {
    LaunchAfter(RmsNormKernel<T, Out>, T_rows, kThreads, 0, stream, out, x, w, D, eps);
  } else if (vec == 1) {
    LaunchAfter(RmsNormVecKernel<T, Out, 1>, T_rows, threads, 0, stream, out, x, w, D, eps);
  } else if (vec == 2) {
    LaunchAfter(RmsNormVecKernel<T, Out, 2>, T_rows, threads, 0, stream, out, x, w, D, eps);
  } else {
    LaunchAfter(RmsNormVecKernel<T, Out, 4>, T_rows, threads, 0, stream, out, x, w, D, eps);
  }
  return cudaGetLastError();
}

template <typename T>
__global__ void AddBiasKernel(float* out, const T* bias, int64_t n, int N) {
  BeginAfterPredecessor();
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] += ToF32(bias[i % N]);
  }
}

template <typename Out>
__global__ void SwiGluKernel(Out* out, const float* gate, const float* up, int64_t n) {
  BeginAfterPredecessor();
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float g = gate[i];
    out[i] = FromF32<Out>(g / (1.f + expf(-g)) * up[i]);
  }
}

__global__ void AddInPlaceKernel(float* x, const float* y, int64_t n) {
  BeginAfterPredecessor();
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    x[i] += y[i];
  }
}

// One block per token; thread i owns frequency i for every head.
// One thread per (token, head, rotated pair): a decode step's single row is
// spread over the device instead of looping over its heads.
__global__ void RopeKernel(float* x, const int32_t* pos, const float* inv_freq, int T, int H,
                           int D) {
  BeginAfterPredecessor();
  const int half = D / 2;
  const int64_t n = int64_t{T} * H * half;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < n;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    const int64_t row = idx / half;  // token * H + head
    const int t = static_cast<int>(row / H);
    float s, c;
    RopeSinCos(pos[t], inv_freq[i], &s, &c);
    float* v = x + row * D;
    const float2 r = RotatePair(v[i], v[i + half], s, c);
    v[i] = r.x;
    v[i + half] = r.y;
  }
}

__global__ void GatherRowsKernel(float* out, const float* src, const int32_t* rows, int cols) {
  BeginAfterPredecessor();
  const int r = blockIdx.x;
  const float* s = src + int64_t{rows[r]} * cols;
  float* d = out + int64_t{r} * cols;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) d[i] = s[i];
}

// One block per row: each thread scans a strided slice, then the block keeps
// the largest value, the lowest column among equals; NaN never wins. A logit
// row (49152 floats) is a chain of loads for each thread, so rows of whole
// float4 take kArgMaxThreads threads with kArgMaxUnroll loads in flight each.
constexpr int kArgMaxThreads = 1024;
constexpr int kArgMaxUnroll = 4;
template <bool kVec4>
__global__ void __launch_bounds__(kArgMaxThreads)
    ArgMaxRowsKernel(int32_t* out, const float* x, int cols) {
  BeginAfterPredecessor();
  const float* row = x + int64_t{blockIdx.x} * cols;
  float best = -INFINITY;
  int arg = -1;
  auto take = [&](float v, int i) {
    if (v > best || (arg < 0 && v == best)) {  // ascending i per thread: the first wins
      best = v;
      arg = i;
    }
  };
  if constexpr (kVec4) {
    const float4* row4 = reinterpret_cast<const float4*>(row);
    const int n4 = cols / 4;
    constexpr int kStep = kArgMaxThreads * kArgMaxUnroll;
    for (int i0 = threadIdx.x; i0 < n4; i0 += kStep) {
      float4 v[kArgMaxUnroll];
#pragma unroll
      for (int u = 0; u < kArgMaxUnroll; ++u) {
        const int i = i0 + u * kArgMaxThreads;
        v[u] = i < n4 ? __ldg(row4 + i) : make_float4(NAN, NAN, NAN, NAN);
      }
#pragma unroll
      for (int u = 0; u < kArgMaxUnroll; ++u) {
        const int i = 4 * (i0 + u * kArgMaxThreads);
        take(v[u].x, i);
        take(v[u].y, i + 1);
        take(v[u].z, i + 2);
        take(v[u].w, i + 3);
      }
    }
  } else {
    for (int i = threadIdx.x; i < cols; i += blockDim.x) take(row[i], i);
  }
  // The warp's best (best, arg) pair in every lane; arg -1 = nothing seen but NaN.
  auto warp_best = [&] {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float v = __shfl_xor_sync(0xffffffffu, best, off);
      const int i = __shfl_xor_sync(0xffffffffu, arg, off);
      if (i >= 0 && (arg < 0 || v > best || (v == best && i < arg))) {
        best = v;
        arg = i;
      }
    }
  };
  warp_best();
  __shared__ float s_best[32];
  __shared__ int s_arg[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    s_best[warp] = best;
    s_arg[warp] = arg;
  }
  __syncthreads();
  if (warp != 0) return;
  const int n_warps = blockDim.x / 32;
  best = lane < n_warps ? s_best[lane] : -INFINITY;
  arg = lane < n_warps ? s_arg[lane] : -1;
  warp_best();
  if (lane == 0) out[blockIdx.x] = arg < 0 ? 0 : arg;
}

// The cache row of written row r (its K; V is p.plane further): slot -> block,
// offset in the layer-major arena.
__device__ __forceinline__ bf16* KvRowOf(const KvWriteParams& p, int r) {
  const int slot = p.slots[r];
  const int64_t block = slot / p.block_size;
  const int64_t offset = slot % p.block_size;
  return p.arena + p.layer_offset + block * p.block_stride + offset * p.width;
}

// One thread per kW values of a written row, K and V together: 4 (float4 in,
// 8-byte bf16 stores) where the rows allow, else 1.
template <int kW>
__global__ void KvWriteKernel(KvWriteParams p) {
  BeginAfterPredecessor();
  const int per_row = p.width / kW;
  const int64_t n = int64_t{p.T} * per_row;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < n;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int r = static_cast<int>(idx / per_row);
    const int i = static_cast<int>(idx % per_row) * kW;
    bf16* k_dst = KvRowOf(p, r) + i;
    const float* k = p.k + int64_t{r} * p.width + i;
    const float* v = p.v + int64_t{r} * p.width + i;
    if constexpr (kW == 4) {
      const float4 k4 = *reinterpret_cast<const float4*>(k);
      const float4 v4 = *reinterpret_cast<const float4*>(v);
      *reinterpret_cast<uint2*>(k_dst) = make_uint2(PackBf16(k4.x, k4.y), PackBf16(k4.z, k4.w));
      *reinterpret_cast<uint2*>(k_dst + p.plane) =
          make_uint2(PackBf16(v4.x, v4.y), PackBf16(v4.z, v4.w));
    } else {
      k_dst[0] = __float2bfloat16_rn(k[0]);
      k_dst[p.plane] = __float2bfloat16_rn(v[0]);
    }
  }
}

// Keys rotated as they are written: one thread per 4 rotated pairs (i, i +
// D/2) of a key head, its K and V elements together.
__global__ void RopeKvWriteKernel(KvWriteParams p) {
  BeginAfterPredecessor();
  const int half = p.head_dim / 2, heads = p.width / p.head_dim;
  const int per_row = heads * (half / 4);
  const int64_t n = int64_t{p.T} * per_row;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < n;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int r = static_cast<int>(idx / per_row);
    const int rem = static_cast<int>(idx % per_row);
    const int h = rem / (half / 4), i = (rem % (half / 4)) * 4;
    const int64_t col = int64_t{h} * p.head_dim + i;
    bf16* k_dst = KvRowOf(p, r) + col;
    const float* k = p.k + int64_t{r} * p.width + col;
    const float* v = p.v + int64_t{r} * p.width + col;
    const float4 a = *reinterpret_cast<const float4*>(k);
    const float4 b = *reinterpret_cast<const float4*>(k + half);
    const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
    float lo[4], hi[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float sn, cs;
      RopeSinCos(p.pos[r], p.inv_freq[i + e], &sn, &cs);
      const float2 rot = RotatePair(av[e], bv[e], sn, cs);
      lo[e] = rot.x;
      hi[e] = rot.y;
    }
    *reinterpret_cast<uint2*>(k_dst) = make_uint2(PackBf16(lo[0], lo[1]), PackBf16(lo[2], lo[3]));
    *reinterpret_cast<uint2*>(k_dst + half) =
        make_uint2(PackBf16(hi[0], hi[1]), PackBf16(hi[2], hi[3]));
    const float4 v0 = *reinterpret_cast<const float4*>(v);
    const float4 v1 = *reinterpret_cast<const float4*>(v + half);
    *reinterpret_cast<uint2*>(k_dst + p.plane) =
        make_uint2(PackBf16(v0.x, v0.y), PackBf16(v0.z, v0.w));
    *reinterpret_cast<uint2*>(k_dst + p.plane + half) =
        make_uint2(PackBf16(v1.x, v1.y), PackBf16(v1.z, v1.w));
  }
}

int RowThreads(int cols) { return std::min(kThreads, std::max(32, (cols + 31) / 32 * 32)); }

}  // namespace

namespace {
std::atomic<bool> dependent_launch{true};
}  // namespace

void SetDependentLaunch(bool enabled) { dependent_launch.store(enabled); }
bool DependentLaunch() { return dependent_launch.load(std::memory_order_relaxed); }

cudaError_t ConvertF32ToBf16(bf16* out, const float* in, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  LaunchAfter(F32ToBf16Kernel, GridFor(n), kThreads, 0, stream, out, in, n);
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
    LaunchAfter(EmbeddingKernel<bf16>, T, RowThreads(D), 0, stream, out,
                static_cast<const bf16*>(table), ids, D);
  } else {
    LaunchAfter(EmbeddingKernel<float>, T, RowThreads(D), 0, stream, out,
                static_cast<const float*>(table), ids, D);
  }
  return cudaGetLastError();
}

namespace {

// RmsNorm and SwiGlu written as Out (f32, or bf16 for a GEMM's input).
template <typename Out>
cudaError_t RmsNormAs(Out* out, const float* x, const void* w, ElemType w_type, int T, int D,
                      float eps, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (w_type == ElemType::kBF16) {
    return LaunchRmsNorm(out, x, static_cast<const bf16*>(w), T, D, eps, stream);
  }
  return LaunchRmsNorm(out, x, static_cast<const float*>(w), T, D, eps, stream);
}

template <typename Out>
cudaError_t SwiGluAs(Out* out, const float* gate, const float* up, int T, int F,
                     cudaStream_t stream) {
  const int64_t n = int64_t{T} * F;
  if (n == 0) return cudaSuccess;
  LaunchAfter(SwiGluKernel<Out>, GridFor(n), kThreads, 0, stream, out, gate, up, n);
  return cudaGetLastError();
}

}  // namespace

cudaError_t RmsNorm(float* out, const float* x, const void* w, ElemType w_type, int T, int D,
                    float eps, cudaStream_t stream) {
  return RmsNormAs(out, x, w, w_type, T, D, eps, stream);
}

cudaError_t RmsNormToBf16(bf16* out, const float* x, const void* w, ElemType w_type, int T, int D,
                          float eps, cudaStream_t stream) {
  return RmsNormAs(out, x, w, w_type, T, D, eps, stream);
}

cudaError_t AddBias(float* out, const void* bias, ElemType bias_type, int T, int N,
                    cudaStream_t stream) {
  const int64_t n = int64_t{T} * N;
  if (n == 0) return cudaSuccess;
  if (bias_type == ElemType::kBF16) {
    LaunchAfter(AddBiasKernel<bf16>, GridFor(n), kThreads, 0, stream, out,
                static_cast<const bf16*>(bias), n, N);
  } else {
    LaunchAfter(AddBiasKernel<float>, GridFor(n), kThreads, 0, stream, out,
                static_cast<const float*>(bias), n, N);
  }
  return cudaGetLastError();
}

cudaError_t SwiGlu(float* out, const float* gate, const float* up, int T, int F,
                   cudaStream_t stream) {
  return SwiGluAs(out, gate, up, T, F, stream);
}

cudaError_t SwiGluToBf16(bf16* out, const float* gate, const float* up, int T, int F,
                         cudaStream_t stream) {
  return SwiGluAs(out, gate, up, T, F, stream);
}

cudaError_t AddInPlace(float* x, const float* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  LaunchAfter(AddInPlaceKernel, GridFor(n), kThreads, 0, stream, x, y, n);
  return cudaGetLastError();
}

cudaError_t Rope(float* x, const int32_t* pos, const float* inv_freq, int T, int H, int D,
                 cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  LaunchAfter(RopeKernel, GridFor(int64_t{T} * H * (D / 2)), kThreads, 0, stream, x, pos, inv_freq,
              T, H, D);
  return cudaGetLastError();
}

cudaError_t GatherRows(float* out, const float* src, const int32_t* rows, int n_rows, int cols,
                       cudaStream_t stream) {
  if (n_rows == 0) return cudaSuccess;
  LaunchAfter(GatherRowsKernel, n_rows, RowThreads(cols), 0, stream, out, src, rows, cols);
  return cudaGetLastError();
}

cudaError_t ArgMaxRows(int32_t* out, const float* x, int n_rows, int cols, cudaStream_t stream) {
  if (n_rows == 0) return cudaSuccess;
  if (cols % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0) {
    LaunchAfter(ArgMaxRowsKernel<true>, n_rows, kArgMaxThreads, 0, stream, out, x, cols);
  } else {
    LaunchAfter(ArgMaxRowsKernel<false>, n_rows, kThreads, 0, stream, out, x, cols);
  }
  return cudaGetLastError();
}

cudaError_t KvWrite(const KvWriteParams& p, cudaStream_t stream) {
  if (p.T == 0) return cudaSuccess;
  if (p.pos != nullptr) {
    const bool ok = p.head_dim > 0 && p.head_dim % 8 == 0 && p.width % p.head_dim == 0 &&
                    reinterpret_cast<uintptr_t>(p.k) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(p.v) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(p.arena) % 8 == 0;
    if (!ok) return cudaErrorInvalidValue;
    LaunchAfter(RopeKvWriteKernel, GridFor(int64_t{p.T} * (p.width / 8)), kThreads, 0, stream, p);
    return cudaGetLastError();
  }
  const bool vec4 = p.width % 4 == 0 && reinterpret_cast<uintptr_t>(p.k) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(p.v) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(p.arena) % 8 == 0;
  if (vec4) {
    LaunchAfter(KvWriteKernel<4>, GridFor(int64_t{p.T} * (p.width / 4)), kThreads, 0, stream, p);
  } else {
    LaunchAfter(KvWriteKernel<1>, GridFor(int64_t{p.T} * p.width), kThreads, 0, stream, p);
  }
  return cudaGetLastError();
}

}  // namespace longctx::cuda

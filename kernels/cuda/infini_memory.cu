// CUDA Infini-attention compressive memory (docs/design.md §4): retrieval, the linear
// and delta folds, and the gated mix. References: kernels/cpu/infini_memory.cc.
//
// The memory of one layer is small (n_kv_heads × D² floats), so the kernels
// favour plain fixed-order fp32 sums over tensor cores: each output element is
// owned by one thread, which makes every launch deterministic.
#include <algorithm>

#include "kernels/cuda/ops_cuda.h"

namespace longctx::cuda {
namespace {

constexpr int kRowThreads = 128;   // retrieval and delta: one block per (token, head)
constexpr int kFoldThreads = 256;  // fold: M elements per block
constexpr int kMixThreads = 256;
constexpr int kMaxHeadDim = 1024;

// σ(x) = ELU(x) + 1, as cpu::EluPlusOne (accurate expf, not the fast intrinsic).
__device__ __forceinline__ float Sigma(float x) { return x > 0.f ? x + 1.f : expf(x); }

// out[t, h] = σ(q) M[g] / max(σ(q)·z[g], eps), 0 while σ(q)·z = 0.
// grid (T, H); dynamic shared memory: D floats of σ(q).
__global__ void InfiniRetrieveKernel(float* out, const float* q, const float* mem, const float* z,
                                     int H, int group, int D, float eps) {
  extern __shared__ float sq[];
  const int t = blockIdx.x, h = blockIdx.y, g = h / group;
  const int64_t row = (int64_t{t} * H + h) * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) sq[i] = Sigma(q[row + i]);
  __syncthreads();
  const float* zg = z + int64_t{g} * D;
  // Every thread forms the same denominator in the same order.
  float den = 0.f;
  for (int a = 0; a < D; ++a) den += sq[a] * zg[a];
  const float* mg = mem + int64_t{g} * D * D;
  if (den == 0.f) {
    // σ > 0 and z ≥ 0: only an empty memory gets here.
    for (int b = threadIdx.x; b < D; b += blockDim.x) out[row + b] = 0.f;
    return;
  }
  const float inv = 1.f / fmaxf(den, eps);
  for (int b = threadIdx.x; b < D; b += blockDim.x) {
    float acc = 0.f;
    for (int a = 0; a < D; ++a) acc += sq[a] * mg[int64_t{a} * D + b];
    out[row + b] = acc * inv;
  }
}

// Delta rule correction, read before the update:
// u[t, g] = v[t, g] − σ(k[t, g]) M[g] / max(σ(k[t, g])·z[g], eps).
// grid (T, n_kv_heads); dynamic shared memory: D floats of σ(k).
__global__ void InfiniDeltaKernel(float* u, const float* k, const float* v, const float* mem,
                                  const float* z, int n_kv_heads, int D, float eps) {
  extern __shared__ float sk[];
  const int t = blockIdx.x, g = blockIdx.y;
  const int64_t row = (int64_t{t} * n_kv_heads + g) * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) sk[i] = Sigma(k[row + i]);
  __syncthreads();
  const float* zg = z + int64_t{g} * D;
  float den = 0.f;
  for (int a = 0; a < D; ++a) den += sk[a] * zg[a];
  const float inv = 1.f / fmaxf(den, eps);
  const float* mg = mem + int64_t{g} * D * D;
  for (int b = threadIdx.x; b < D; b += blockDim.x) {
    float acc = 0.f;
    for (int a = 0; a < D; ++a) acc += sk[a] * mg[int64_t{a} * D + b];
    u[row + b] = v[row + b] - acc * inv;
  }
}

// The batched σ(K)ᵀU product: M[g][a][b] += Σ_t σ(k[t, g, a]) u[t, g, b], and
// z[g][a] += Σ_t σ(k[t, g, a]) by the threads of column 0.
// grid (ceil(D² / kFoldThreads), n_kv_heads); one thread per element of M[g].
__global__ void InfiniFoldKernel(float* mem, float* z, const float* k, const float* u, int T,
                                 int n_kv_heads, int D) {
  const int g = blockIdx.y;
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= D * D) return;
  const int a = e / D, b = e % D;
  const int64_t stride = int64_t{n_kv_heads} * D;  // between tokens
  const float* kg = k + int64_t{g} * D + a;
  const float* ug = u + int64_t{g} * D + b;
  float acc = 0.f, zacc = 0.f;
  for (int t = 0; t < T; ++t) {
    const float s = Sigma(kg[t * stride]);
    acc += s * ug[t * stride];
    zacc += s;
  }
  mem[int64_t{g} * D * D + e] += acc;
  if (b == 0) z[int64_t{g} * D + a] += zacc;
}

__global__ void InfiniMixKernel(float* out, const float* a_mem, const float* a_dca,
                                const float* beta, int64_t n, int H, int D) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int h = static_cast<int>((i / D) % H);
    const float s = 1.f / (1.f + expf(-beta[h]));
    out[i] = s * a_mem[i] + (1.f - s) * a_dca[i];
  }
}

}  // namespace

cudaError_t InfiniRetrieve(float* out, const float* q, const float* mem, const float* z, int T,
                           int H, int n_kv_heads, int D, float eps, cudaStream_t stream) {
  if (T < 0 || H <= 0 || n_kv_heads <= 0 || H % n_kv_heads != 0 || D <= 0 || D > kMaxHeadDim ||
      H > 65535) {
    return cudaErrorInvalidValue;
  }
  if (T == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>(H));
  InfiniRetrieveKernel<<<grid, kRowThreads, static_cast<size_t>(D) * sizeof(float), stream>>>(
      out, q, mem, z, H, H / n_kv_heads, D, eps);
  return cudaGetLastError();
}

cudaError_t InfiniFold(const InfiniFoldParams& p, cudaStream_t stream) {
  if (p.T < 0 || p.n_kv_heads <= 0 || p.n_kv_heads > 65535 || p.D <= 0 || p.D > kMaxHeadDim ||
      (p.delta && p.scratch == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (p.T == 0) return cudaSuccess;
  const float* u = p.v;
  if (p.delta) {
    const dim3 grid(static_cast<unsigned>(p.T), static_cast<unsigned>(p.n_kv_heads));
    InfiniDeltaKernel<<<grid, kRowThreads, static_cast<size_t>(p.D) * sizeof(float), stream>>>(
        p.scratch, p.k, p.v, p.mem, p.z, p.n_kv_heads, p.D, p.eps);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
    u = p.scratch;
  }
  const dim3 grid(static_cast<unsigned>((p.D * p.D + kFoldThreads - 1) / kFoldThreads),
                  static_cast<unsigned>(p.n_kv_heads));
  InfiniFoldKernel<<<grid, kFoldThreads, 0, stream>>>(p.mem, p.z, p.k, u, p.T, p.n_kv_heads, p.D);
  return cudaGetLastError();
}

cudaError_t InfiniMix(float* out, const float* a_mem, const float* a_dca, const float* beta, int T,
                      int H, int D, cudaStream_t stream) {
  if (T < 0 || H <= 0 || D <= 0) return cudaErrorInvalidValue;
  const int64_t n = int64_t{T} * H * D;
  if (n == 0) return cudaSuccess;
  const int blocks =
      static_cast<int>(std::min<int64_t>((n + kMixThreads - 1) / kMixThreads, int64_t{1} << 20));
  InfiniMixKernel<<<blocks, kMixThreads, 0, stream>>>(out, a_mem, a_dca, beta, n, H, D);
  return cudaGetLastError();
}

}  // namespace longctx::cuda

// Device helpers shared by the CUDA kernels: RoPE angles, DCA query positions,
// warp reductions and the PTX wrappers of the tensor-core kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/ops_cuda.h"

namespace longctx::cuda {

// --- programmatic dependent launch (sm_90) ---
// A kernel launched by LaunchAfter may start while the kernel ahead of it in
// the stream still runs (its launch and block scheduling hidden behind that
// kernel's tail). It must call BeginAfterPredecessor before touching memory:
// that waits until the kernel ahead has finished and its writes are visible,
// then lets the kernel behind launch in turn. Without the launch attribute
// (a normal launch, DependentLaunch off, or a kernel ahead that is not ours)
// the wait returns at once.
__device__ __forceinline__ void BeginAfterPredecessor() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

template <typename... Params, typename... Args>
cudaError_t LaunchAfter(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
                        cudaStream_t stream, Args... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = DependentLaunch() ? 1 : 0;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  config.attrs = &attr;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

// A held key run as the kernels walk it: absolute keys [first, end), the key
// `first` stored at local index `local`.
struct KeyRunView {
  int first;
  int end;
  int local;
};

// Run r of a sequence. Without runs (run_offset < 0) run 0 is every key, stored
// at its own index; past the last run comes a sentinel that starts after every
// key and never ends.
__device__ __forceinline__ KeyRunView LoadKeyRun(const DcaKeyRun* runs, const DcaSeqDesc& seq,
                                                 int r) {
  constexpr int kNever = 0x7fffffff;
  if (seq.run_offset < 0) return r == 0 ? KeyRunView{0, kNever, 0} : KeyRunView{kNever, kNever, 0};
  if (r >= seq.n_runs) return KeyRunView{kNever, kNever, 0};
  const DcaKeyRun k = runs[seq.run_offset + r];
  return KeyRunView{k.first, k.first + k.count, k.local};
}

// Natural log-sum-exp of a row from its online-softmax state in log2 units
// (max m2, sum of 2^(s - m2)); -inf for a row that saw no key.
__device__ __forceinline__ float LseFromLog2(float m2, float sum) {
  return sum > 0.f ? (m2 + log2f(sum)) * 0.6931471805599453f : -INFINITY;
}

// sin and cos of pos * inv_freq. The product is formed and reduced to [-pi, pi]
// in double (positions reach 1e5 and more, where a float angle keeps only a few
// digits), then evaluated in single precision: absolute error about 5e-7.
__device__ __forceinline__ void RopeSinCos(int pos, float inv_freq, float* s, float* c) {
  const double a = static_cast<double>(pos) * static_cast<double>(inv_freq);
  const double k = rint(a * 0.15915494309189535);  // 1 / (2 pi)
  const double r = fma(-k, 6.283185307179586, a);
  __sincosf(static_cast<float>(r), s, c);
}

// Rotate-half pair (x[i], x[i + D/2]) at an angle with sine s and cosine c.
__device__ __forceinline__ float2 RotatePair(float a, float b, float s, float c) {
  return make_float2(a * c - b * s, b * c + a * s);
}

// DCA query positions (docs/design.md §3) of token i for the three key-chunk distances:
// 0 intra t(i), 1 successive min(t(i) + L, C), 2 inter C.
__device__ __forceinline__ int DcaQueryPos(int i, int L, int C, int part) {
  const int t = i % L;
  return part == 0 ? t : (part == 1 ? min(t + L, C) : C);
}

// Which rotation row i uses against keys of chunk `key_chunk`.
__device__ __forceinline__ int DcaPart(int i, int L, int key_chunk) {
  return min(max(i / L - key_chunk, 0), 2);
}

// 2^x in one MUFU instruction (flushes subnormal results to zero, which the
// softmax's probabilities in [0, 1] can afford).
__device__ __forceinline__ float FastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Infini window: keys in [sink, window_start) are absent (empty when
// window_start <= sink).
__device__ __forceinline__ bool KeyAbsent(int j, int sink, int window_start) {
  return j >= sink && j < window_start;
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Two floats packed as bf16x2 (low half = a).
__device__ __forceinline__ uint32_t PackBf16(float a, float b) {
  __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte asynchronous global->shared copy; src_bytes 0 fills zeros.
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void LdMatrixX4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                           uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t addr, uint32_t& r0, uint32_t& r1,
                                                uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// D[16x8] += A[16x16] (row) * B[16x8] (col), bf16 in, f32 accumulate.
__device__ __forceinline__ void MmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace longctx::cuda

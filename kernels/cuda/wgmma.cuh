// Hopper warpgroup matrix multiply (wgmma, sm_90a): shared-memory descriptors,
// the 128-byte swizzled tile layout they read, fences and the instructions the
// attention kernels issue. Everything here is warpgroup-collective: the 128
// threads of 4 consecutive warps (the first warp index divisible by 4) execute
// each call together.
//
// Layout: a bf16 tile of `rows` x `cols` (cols a multiple of 64) is stored as
// cols / 64 column blocks of [rows][64]; each 128-byte row segment has its 16-byte
// chunks XOR-swizzled with row % 8, the hardware's 128-byte swizzle, so each
// 8-row group is one 1024-byte swizzle atom (tiles start 1024-byte aligned).
// Read K-major (a row's 64 columns contiguous: Q and K for S = Q K^T), the
// descriptor's stride byte offset is 1024 (8-row groups); read MN-major (V for
// O += P V, its rows being the reduction), the leading byte offset steps from
// one 64-column block to the next and the stride byte offset over 8 rows.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace longctx::cuda::wgmma {

// Element offset of (row, col) in a swizzled tile of `rows` rows.
__device__ __forceinline__ int TileOffset(int rows, int row, int col) {
  return ((col >> 6) * rows + row) * 64 + ((((col >> 3) & 7) ^ (row & 7)) << 3) + (col & 7);
}

// Shared-memory matrix descriptor with the 128-byte swizzle: start address,
// leading and stride byte offsets, all in 16-byte units.
__device__ __forceinline__ uint64_t Descriptor(uint32_t smem_addr, uint32_t leading_bytes,
                                              uint32_t stride_bytes) {
  return (uint64_t{(smem_addr & 0x3ffffu) >> 4}) | (uint64_t{(leading_bytes & 0x3ffffu) >> 4} << 16) |
         (uint64_t{(stride_bytes & 0x3ffffu) >> 4} << 32) | (uint64_t{1} << 62);
}

// Orders this thread's register writes before the next wgmma reads them.
__device__ __forceinline__ void Fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void Commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void Wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Makes this thread's ordinary shared-memory writes (stores, cp.async) visible
// to the async proxy that wgmma reads through; a barrier must follow.
__device__ __forceinline__ void FenceSharedForAsync() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Keeps the compiler from moving accesses of an accumulator across a wgmma
// that is still in flight.
template <int N>
__device__ __forceinline__ void PinRegisters(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// The same for A operands held in registers: a wgmma still in flight reads
// them, so they stay live (and unchanged) until its wait.
template <int N, int K>
__device__ __forceinline__ void PinRegisters(uint32_t (&a)[N][K]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int k = 0; k < K; ++k) asm volatile("" : "+r"(a[i][k])::"memory");
  }
}

// Operand lists of the accumulators: the register names in the instruction
// string and the "+f" bindings of d[0 .. 32) and d[32 .. 64).
#define LONGCTX_WGMMA_D32 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define LONGCTX_WGMMA_D64 \
  LONGCTX_WGMMA_D32 ", "                                                                  \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define LONGCTX_WGMMA_BIND32 \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), \
    "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), \
    "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), \
    "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), \
    "+f"(d[30]), "+f"(d[31])
#define LONGCTX_WGMMA_BIND64 \
  LONGCTX_WGMMA_BIND32, \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), \
    "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), \
    "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), \
    "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), \
    "+f"(d[62]), "+f"(d[63])

// d[64 x 64] (+)= a[64 x 16] . b[16 x 64]: a and b read through shared-memory
// descriptors; accumulate = 0 overwrites d.
__device__ __forceinline__ void WgmmaSS64(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                          int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" LONGCTX_WGMMA_D32
      "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : LONGCTX_WGMMA_BIND32
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// d[64 x N] += a[64 x 16] . b[16 x N], N = 64 or 128: a from registers (the
// layout of an accumulator's 16 columns packed to bf16), b an MN-major
// shared-memory tile. (The scale-d operand is a predicate, always true here.)
__device__ __forceinline__ void WgmmaRS64(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" LONGCTX_WGMMA_D32
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : LONGCTX_WGMMA_BIND32
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}
__device__ __forceinline__ void WgmmaRS128(float (&d)[64], const uint32_t (&a)[4],
                                           uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" LONGCTX_WGMMA_D64
      "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : LONGCTX_WGMMA_BIND64
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}

#undef LONGCTX_WGMMA_D32
#undef LONGCTX_WGMMA_D64
#undef LONGCTX_WGMMA_BIND32
#undef LONGCTX_WGMMA_BIND64

}  // namespace longctx::cuda::wgmma

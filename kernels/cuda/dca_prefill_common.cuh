// Pieces shared by the two prefill kernels (dca_attention_tiled.cu on mma.sync,
// dca_attention_wgmma.cu on Hopper's wgmma): the walk over a block's key tiles
// (Infini window gaps and context-parallel key runs skipped), the cp.async copy
// of one K/V tile from the paged cache, and the DCA re-rotation of the query
// tile when the key chunk changes. Each kernel brings its own shared-memory
// layout as a functor `int (int row, int col)` giving the element offset.
#pragma once

#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace longctx::cuda {

// Key tiles of N keys of one sequence, visited in ascending order. Without runs
// (kRuns false) the run bookkeeping compiles away.
template <int N, bool kRuns>
struct KeyTileWalk {
  // The run of the tile being visited: its index, end and local - first.
  struct Run {
    int ri, end, shift;
  };

  __device__ KeyTileWalk(const DcaAttentionParams& params, const DcaSeqDesc& s)
      : p(params), seq(s), sink(s.sink_tokens), window_start(s.window_start) {
    // Infini window: tiles wholly inside [sink, window_start) are skipped (their
    // blocks may be released); a tile that only overlaps it masks those keys.
    windowed = window_start > sink;
    absent_t0 = windowed ? (sink + N - 1) / N : 0;
    absent_t1 = windowed ? max(window_start / N, absent_t0) : 0;
  }

  __device__ int SkipAbsent(int t) const { return t >= absent_t0 && t < absent_t1 ? absent_t1 : t; }

  // Run r and, in *first, its first key. Held key runs (context-parallel
  // partials) start on tile boundaries (the planner checks), so a tile lies in
  // one run and only the end of a run can cut a tile.
  __device__ Run Enter(int r, int* first) const {
    const KeyRunView k = kRuns ? LoadKeyRun(p.runs, seq, r) : KeyRunView{0, 0x7fffffff, 0};
    *first = k.first;
    return Run{r, k.end, k.local - k.first};
  }

  // The tile after t (tiles outside every run and inside the window's gap
  // skipped); `run` moves along.
  __device__ int Next(int t, Run& run) const {
    t = SkipAbsent(t + 1);
    if (kRuns && t * N >= run.end) {
      int first;
      run = Enter(run.ri + 1, &first);
      t = first / N;
    }
    return t;
  }

  // Whether the tile starting at key j0 needs the window or run mask.
  __device__ bool InWindow(int j0) const { return windowed && j0 < window_start && j0 + N > sink; }
  __device__ bool Absent(int j, int run_end) const {
    return KeyAbsent(j, sink, window_start) || (kRuns && j >= run_end);
  }

  // cp.async copy of key tile kt's K and V rows of kv head kvh into k_dst and
  // v_dst, laid out by `layout`. Keys past i_last (or past their run, or in the
  // window's gap) are zero-filled: their slots may hold anything (even NaN),
  // and a masked probability of 0 times NaN would still poison the output; a
  // tile with none of those (nearly all of them) copies without a check per
  // row. Thread tid copies 16-byte chunk tid % (D / 8) of rows tid / (D / 8) +
  // t * kRowStep; kRowStep is a multiple of 8, so every row of one thread shares
  // its swizzle.
  template <int D, int kThreads, class Layout>
  __device__ void Load(int kt, const Run& run, int kvh, int i_last, bf16* k_dst, bf16* v_dst,
                       Layout layout) const {
    constexpr int kChunks = D / 8;
    constexpr int kRowStep = kThreads / kChunks;
    static_assert(kRowStep % 8 == 0 && N % kRowStep == 0, "rows step by whole swizzle periods");
    const int32_t* table = p.block_tables + seq.block_table_offset;
    const int64_t key_stride = int64_t{p.kv.n_kv_heads} * D;
    const int j0 = kt * N;
    const int lj0 = j0 + run.shift;
    // Block sizes are powers of two in practice: shifts instead of a division.
    const int bs = p.kv.block_size;
    const bool pow2 = (bs & (bs - 1)) == 0;
    const int blk = pow2 ? lj0 >> (__ffs(bs) - 1) : lj0 / bs;
    const int off = pow2 ? lj0 & (bs - 1) : lj0 % bs;
    const int64_t base =
        int64_t{table[blk]} * p.kv.block_stride + int64_t{off} * key_stride + int64_t{kvh} * D;
    const int tid = threadIdx.x;
    const int n0 = tid / kChunks, c = tid % kChunks;
    const bf16* src_k = p.kv.k + base + n0 * key_stride + c * 8;
    const bf16* src_v = p.kv.v + base + n0 * key_stride + c * 8;
    const int dst0 = layout(n0, c * 8);
    const uint32_t dst_k = SmemAddr(k_dst + dst0), dst_v = SmemAddr(v_dst + dst0);
    const bool whole = j0 + N - 1 <= i_last && !InWindow(j0) && !(kRuns && j0 + N > run.end);
    if (whole) {
#pragma unroll
      for (int t = 0; t < N / kRowStep; ++t) {
        const int64_t step = int64_t{t} * kRowStep * key_stride;
        const uint32_t dst_off = (layout(n0 + t * kRowStep, c * 8) - dst0) * sizeof(bf16);
        CpAsync16(dst_k + dst_off, src_k + step, 16);
        CpAsync16(dst_v + dst_off, src_v + step, 16);
      }
      return;
    }
#pragma unroll
    for (int t = 0; t < N / kRowStep; ++t) {
      const int j = j0 + n0 + t * kRowStep;
      const bool valid = j <= i_last && !Absent(j, run.end);
      const int64_t step = int64_t{t} * kRowStep * key_stride;
      const uint32_t dst_off = (layout(n0 + t * kRowStep, c * 8) - dst0) * sizeof(bf16);
      CpAsync16(dst_k + dst_off, valid ? src_k + step : p.kv.k, valid ? 16 : 0);
      CpAsync16(dst_v + dst_off, valid ? src_v + step : p.kv.v, valid ? 16 : 0);
    }
  }

  const DcaAttentionParams& p;
  const DcaSeqDesc& seq;
  int sink, window_start;
  bool windowed;
  int absent_t0, absent_t1;
};

// Writes into q_s (M rows laid out by `layout`), for every row whose part
// against key chunk `cj` differs from its part against `prev_cj` (-1: none
// yet), the query rotated for that part. Rows past n_rows get positions past
// the sequence's end: finite values whose results are dropped. Not inlined: it
// runs a few times per block, and kept out of line its temporaries do not
// compete with the accumulators for registers.
template <int D, int M, int kThreads, class Layout>
__device__ __noinline__ void RotateQueryRows(bf16* q_s, Layout layout, const float* q_base,
                                             int64_t row_stride, const float* inv_freq,
                                             int i_first, int n_rows, int L, int C, int cj,
                                             int prev_cj) {
  // kUnroll pairs per thread per step, their loads issued together: the pass
  // is bound by the latency of the q reads otherwise.
  constexpr int kUnroll = 4;
  constexpr int kPairs = M * (D / 2);
  static_assert(kPairs % (kThreads * kUnroll) == 0, "whole steps");
  for (int first = threadIdx.x; first < kPairs; first += kThreads * kUnroll) {
    float a[kUnroll], b[kUnroll];
    int part[kUnroll];
    bool todo[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int idx = first + u * kThreads;
      const int row = idx / (D / 2), c = idx % (D / 2);
      const int i = i_first + row;
      part[u] = DcaPart(i, L, cj);
      todo[u] = prev_cj < 0 || DcaPart(i, L, prev_cj) != part[u];
      a[u] = b[u] = 0.f;
      if (todo[u] && row < n_rows) {
        a[u] = q_base[row * row_stride + c];
        b[u] = q_base[row * row_stride + c + D / 2];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (!todo[u]) continue;
      const int idx = first + u * kThreads;
      const int row = idx / (D / 2), c = idx % (D / 2);
      float s, co;
      RopeSinCos(DcaQueryPos(i_first + row, L, C, part[u]), inv_freq[c], &s, &co);
      const float2 r = RotatePair(a[u], b[u], s, co);
      q_s[layout(row, c)] = __float2bfloat16_rn(r.x);
      q_s[layout(row, c + D / 2)] = __float2bfloat16_rn(r.y);
    }
  }
}

}  // namespace longctx::cuda

// Fused Dual Chunk Attention for prefill on Hopper tensor cores (wgmma).
//
// The same work list and key walk as the mma.sync kernel in
// dca_attention_tiled.cu (tiles of kDcaTiledRows = 128 query rows of one
// sequence and one q head; 64-key tiles copied by cp.async from the paged bf16
// cache of the head's kv head; each row rotated for the part its key chunk
// needs; one online softmax over the three parts), with the products on
// warpgroup MMA: each warpgroup owns 64 rows (a block has one or two); S = Q K^T
// reads Q and K straight from shared memory through descriptors (m64n64k16,
// D / 16 steps); the probabilities stay in registers as the A operand of
// O += P V (m64nDk16, V read MN-major from shared memory). Shared tiles use the
// hardware's 128-byte swizzle (wgmma.cuh); one barrier per key tile.
//
// Two schedules of a warpgroup's work on a key tile:
//  - serial (three K/V stages; the default): S = Q K^T, wait, softmax,
//    O += P V, wait;
//  - overlapped (four stages), as FlashAttention-3's intra-warpgroup pipeline:
//    S(t) = Q K(t)^T and O += P(t-1) V(t-1) are issued together, the softmax of
//    S(t) runs while the tensor cores do the P V product, and O is rescaled
//    once that product lands. V(t-1) is still read during tile t, hence the
//    fourth stage.
// Overlapped, blocks run longest key range first across all heads (the work
// list is sorted so, and a block's head is the fastest-moving part of its
// index), so the short tiles fill the grid's tail. The serial schedule is the
// default. The overlapped one (CudaAttentionKernels::kAutoWgmmaOverlapped) was
// faster on an H100 but gave wrong partials with held key runs (D 128) and
// non-finite rows in one plain 4097-token D 64 prefill (docs/cuda.md), so it
// stays opt-in until that is found. Built for sm_90a only; elsewhere the
// kernel traps and DcaWgmmaSupported says no.
#include "kernels/cuda/dca_prefill_common.cuh"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/wgmma.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LONGCTX_WGMMA_DEVICE 1
#else
#define LONGCTX_WGMMA_DEVICE 0
#endif

namespace longctx::cuda {
namespace {

template <int kHeadDim, int kWarpgroupsPerBlock, bool kOverlapProducts>
struct WgmmaTraits {
  static constexpr int D = kHeadDim;
  static constexpr int kWarpgroups = kWarpgroupsPerBlock;
  static constexpr bool kOverlap = kOverlapProducts;
  static constexpr int kBlockM = 64 * kWarpgroups;  // rows of one block
  static constexpr int kBlocksPerTile = kDcaTiledRows / kBlockM;
  static constexpr int kBlockN = kDcaKeyTile;
  static constexpr int kThreads = kWarpgroups * 128;
  static constexpr int kQElems = kBlockM * D;
  static constexpr int kKvStage = kBlockN * D;
  // K/V tiles in flight: the copy of tile t + 2 overlaps the work on tile t, and
  // a stage is refilled only after the one barrier per tile; overlapped, the
  // stage of tile t - 1 is still read during tile t.
  static constexpr int kStages = kOverlap ? 4 : 3;
  // + 1024: the dynamic shared memory is only 16-byte aligned, swizzle atoms
  // need 1024.
  static constexpr int kSmemBytes =
      (kQElems + 2 * kStages * kKvStage) * static_cast<int>(sizeof(bf16)) + 1024;
  // Resident blocks per SM the register budget aims at (accumulators: D / 2 of
  // O and 32 of S per thread; overlapped, two sets of packed probabilities).
  static constexpr int kMinBlocksPerSm = kWarpgroups == 2 ? (D == 64 ? 2 : 1) : (D == 64 ? 3 : 2);
  static_assert(kSmemBytes * kMinBlocksPerSm <= 227 * 1024, "the blocks fit one SM");
  static_assert(D == 64 || D == 128, "head dims 64 and 128");
  static_assert(kDcaTiledRows % kBlockM == 0 && kBlockN == 64, "m64n64 score tiles");
};

template <int M>
struct WgmmaLayout {
  __device__ int operator()(int row, int col) const { return wgmma::TileOffset(M, row, col); }
};

#if LONGCTX_WGMMA_DEVICE
// A descriptor from its two halves. The start address sits in the low half
// and offsets never carry out of it, so stepping one is a 32-bit add (a 64-bit
// add costs the issue-bound loop a carry chain per instruction).
__device__ __forceinline__ uint64_t Desc(uint32_t lo, uint32_t hi) {
  return (uint64_t{hi} << 32) | lo;
}

// s[64 x 64] = Q K^T of one warpgroup: Q's rows described by (q_lo, hi) (column
// block 0 of a tile of M rows), K's N rows by (k_lo, hi): both K-major. A K-major step of 16
// columns moves 32 bytes inside a 128-byte row; a column block moves rows x 128
// bytes. Offsets are in 16-byte units.
template <int D, int M, int N>
__device__ __forceinline__ void IssueScores(float (&s)[32], uint32_t q_lo, uint32_t k_lo,
                                            uint32_t hi) {
  wgmma::Fence();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t q_at = q_lo + ((kk / 4) * M * 128 + (kk % 4) * 32) / 16;
    const uint32_t k_at = k_lo + ((kk / 4) * N * 128 + (kk % 4) * 32) / 16;
    wgmma::WgmmaSS64(s, Desc(q_at, hi), Desc(k_at, hi), kk > 0);
  }
  wgmma::Commit();
}

// o += P V: V MN-major described by (v_lo, hi) (64-column blocks N x 128 bytes
// apart, 8-key groups 1024 bytes apart); a 16-key step moves 16 rows.
template <int D, int N>
__device__ __forceinline__ void IssuePv(float (&o)[D / 2], const uint32_t (&pf)[N / 16][4],
                                        uint32_t v_lo, uint32_t hi) {
  wgmma::Fence();
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk) {
    const uint64_t desc = Desc(v_lo + kk * 16 * 128 / 16, hi);
    if constexpr (D == 64) {
      wgmma::WgmmaRS64(o, pf[kk], desc);
    } else {
      wgmma::WgmmaRS128(o, pf[kk], desc);
    }
  }
  wgmma::Commit();
}
#endif

template <class Tr, bool kRuns>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinBlocksPerSm)
    DcaWgmmaKernel(DcaAttentionParams p, const DcaRowTile* tiles) {
#if LONGCTX_WGMMA_DEVICE
  constexpr int D = Tr::D, M = Tr::kBlockM, N = Tr::kBlockN;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* q_s = reinterpret_cast<bf16*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) &
                                      ~uintptr_t{1023});  // [D / 64][M][64]
  bf16* k_s = q_s + Tr::kQElems;                          // [stages][D / 64][N][64]
  bf16* v_s = k_s + Tr::kStages * Tr::kKvStage;           // [stages][D / 64][N][64]

  // Overlapped: one grid dimension, the head fastest, so every head's
  // longest tiles start first. Serial: (tiles, heads), as measured so far.
  const int h = Tr::kOverlap ? static_cast<int>(blockIdx.x % p.H) : static_cast<int>(blockIdx.y);
  const int tb = Tr::kOverlap ? static_cast<int>(blockIdx.x / p.H) : static_cast<int>(blockIdx.x);
  const DcaRowTile tile = tiles[tb / Tr::kBlocksPerTile];
  const DcaSeqDesc seq = p.seqs[tile.seq];
  const int row0 = tile.row0 + (tb % Tr::kBlocksPerTile) * M;
  const int n_rows = min(M, seq.n_q - row0);
  if (n_rows <= 0) return;  // the second half of a sequence's short last tile
  const int kvh = h / (p.H / p.kv.n_kv_heads);
  const int i_first = seq.q_start + row0;
  const int i_last = i_first + n_rows - 1;
  const int L = seq.chunk_len, C = seq.chunk_size;
  const int64_t row_stride = int64_t{p.H} * D;
  const float* q_base = p.q + (int64_t{seq.q_row} + row0) * row_stride + int64_t{h} * D;

  const KeyTileWalk<N, kRuns> walk(p, seq);
  using Run = typename KeyTileWalk<N, kRuns>::Run;
  auto load_tile = [&](int kt, const Run& run, int stage) {
    walk.template Load<D, Tr::kThreads>(kt, run, kvh, i_last, k_s + stage * Tr::kKvStage,
                                        v_s + stage * Tr::kKvStage, WgmmaLayout<N>{});
  };
  // Rows change part only when the key chunk reaches n(i) - 1 or n(i), so key
  // chunks outside [n(first row) - 1, n(last row)] leave the query tile as is.
  const int n_first = i_first / L, n_last = (i_first + M - 1) / L;
  int cur_cj = -1;
  int chunk_end = 0;  // first key past the chunk of the last tile seen
  auto rotate_for = [&](int kt) {
    if (kt * N < chunk_end) return;  // same chunk as the last tile
    const int cj = kt * N / L;
    chunk_end = (cj + 1) * L;
    if (cur_cj < 0 || (cj != cur_cj && cj >= n_first - 1 && cj <= n_last)) {
      // Every warpgroup is done with the rows of the last tile (the condition
      // is the same for the whole block).
      if (cur_cj >= 0) __syncthreads();
      RotateQueryRows<D, M, Tr::kThreads>(q_s, WgmmaLayout<M>{}, q_base, row_stride, p.inv_freq,
                                          i_first, n_rows, L, C, cj, cur_cj);
      cur_cj = cj;
    }
  };

  // Warpgroup wg owns rows wg * 64 ..; its warp w the 16 from wg * 64 + w * 16;
  // a lane's accumulator rows are g and g + 8 of those.
  const int tid = threadIdx.x, lane = tid % 32, w = (tid % 128) / 32;
  const int wg = Tr::kWarpgroups == 1 ? 0 : tid / 128;
  const int g = lane / 4, t4 = lane % 4;
  const int wg_row0 = wg * 64;
  const int wg_i_first = i_first + wg_row0, wg_i_last = wg_i_first + 63;
  const bool wg_active = wg_row0 < n_rows;
  const int row_lo = wg_i_first + w * 16 + g, row_hi = row_lo + 8;
  const float scale_log2 = seq.softmax_scale * 1.4426950408889634f;
  constexpr uint32_t kStageBytes = Tr::kKvStage * sizeof(bf16);
  // Descriptor halves: the address (low) and the strides and swizzle (high),
  // one high half for the K-major reads of Q and K, one for V's MN-major reads.
  const uint64_t desc_q = wgmma::Descriptor(SmemAddr(q_s) + wg_row0 * 128, 16, 1024);
  const uint64_t desc_k0 = wgmma::Descriptor(SmemAddr(k_s), 16, 1024);
  const uint64_t desc_v0 = wgmma::Descriptor(SmemAddr(v_s), N * 128, 1024);
  const uint32_t q_lo = static_cast<uint32_t>(desc_q), k_lo0 = static_cast<uint32_t>(desc_k0);
  const uint32_t v_lo0 = static_cast<uint32_t>(desc_v0);
  const uint32_t k_hi = static_cast<uint32_t>(desc_k0 >> 32);
  const uint32_t v_hi = static_cast<uint32_t>(desc_v0 >> 32);
  // Whether this warpgroup's rows see any key of tile kt (a prefix of the walk).
  auto wg_needs = [&](int kt) { return wg_active && kt * N <= wg_i_last; };

  // Masks the scores of the tile at key j0 where it needs it (the causal
  // diagonal, an Infini window's gap, the end of a held run), then one step of
  // the online softmax in log2 units: the maximum over the raw scores, each
  // probability one FFMA and one exp2, packed at once into pf, the A operand of
  // O += P V (the accumulator layout of two adjacent 8-key column groups is the
  // register layout of one 16-key step). corr: the factors O is to be rescaled
  // by. s[4 nt + e]: key nt * 8 + 2 t4 + (e & 1), row lo for e < 2, hi
  // otherwise.
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;
  auto softmax = [&](float(&s)[32], uint32_t(&pf)[N / 16][4], int j0, int run_end,
                     float& corr_lo, float& corr_hi) {
    if (j0 + N - 1 > wg_i_first || walk.InWindow(j0) || (kRuns && j0 + N > run_end)) {
#pragma unroll
      for (int nt = 0; nt < N / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int key = j0 + nt * 8 + 2 * t4 + e;
          const bool absent = walk.Absent(key, run_end);
          if (key > row_lo || absent) s[4 * nt + e] = -INFINITY;
          if (key > row_hi || absent) s[4 * nt + 2 + e] = -INFINITY;
        }
      }
    }
    float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < N / 8; ++nt) {
      mx_lo = fmaxf(mx_lo, fmaxf(s[4 * nt], s[4 * nt + 1]));
      mx_hi = fmaxf(mx_hi, fmaxf(s[4 * nt + 2], s[4 * nt + 3]));
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, off));
      mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, off));
    }
    const float new_lo = fmaxf(m_lo, mx_lo * scale_log2), new_hi = fmaxf(m_hi, mx_hi * scale_log2);
    const float base_lo = new_lo == -INFINITY ? 0.f : new_lo;
    const float base_hi = new_hi == -INFINITY ? 0.f : new_hi;
    corr_lo = FastExp2(m_lo - base_lo);
    corr_hi = FastExp2(m_hi - base_hi);
    m_lo = new_lo;
    m_hi = new_hi;
    float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
    for (int nt = 0; nt < N / 8; ++nt) {
      const float p0 = FastExp2(fmaf(s[4 * nt], scale_log2, -base_lo));
      const float p1 = FastExp2(fmaf(s[4 * nt + 1], scale_log2, -base_lo));
      const float p2 = FastExp2(fmaf(s[4 * nt + 2], scale_log2, -base_hi));
      const float p3 = FastExp2(fmaf(s[4 * nt + 3], scale_log2, -base_hi));
      sum_lo += p0 + p1;
      sum_hi += p2 + p3;
      pf[nt / 2][(nt % 2) * 2] = PackBf16(p0, p1);
      pf[nt / 2][(nt % 2) * 2 + 1] = PackBf16(p2, p3);
    }
    l_lo = l_lo * corr_lo + sum_lo;
    l_hi = l_hi * corr_hi + sum_hi;
  };
  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  // Once the row maxima settle most tiles leave them as they are: the warp
  // skips the rescale of O then.
  auto rescale = [&](float corr_lo, float corr_hi) {
    if (__any_sync(0xffffffffu, corr_lo != 1.f || corr_hi != 1.f)) {
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
        o[4 * dn] *= corr_lo;
        o[4 * dn + 1] *= corr_lo;
        o[4 * dn + 2] *= corr_hi;
        o[4 * dn + 3] *= corr_hi;
      }
    }
  };
  // Overlapped: the probabilities of the last tile this warpgroup scored and
  // the descriptor offset of its V stage, waiting for their P V product.
  uint32_t pf_prev[N / 16][4];
  bool have_prev = false;
  uint32_t prev_off = 0;
  auto flush_prev = [&]() {
    if (!have_prev) return;
    IssuePv<D, N>(o, pf_prev, v_lo0 + prev_off, v_hi);
    wgmma::Wait<0>();
    wgmma::PinRegisters(o);
    have_prev = false;
  };

  // The walk: tile kt (in `stage`) and the two after it (in the next stages).
  const int n_tiles = i_last / N + 1;
  int first_key;
  Run run = walk.Enter(0, &first_key);
  int kt = walk.SkipAbsent(first_key / N);
  Run run1 = run, run2 = run;
  int kt1 = n_tiles, kt2 = n_tiles;
  if (kt < n_tiles) {
    load_tile(kt, run, 0);
    kt1 = walk.Next(kt, run1);
  }
  CpAsyncCommit();
  if (kt1 < n_tiles) {
    load_tile(kt1, run1, 1);
    run2 = run1;
    kt2 = walk.Next(kt1, run2);
  }
  CpAsyncCommit();
  for (int stage = 0; kt < n_tiles; stage = stage + 1 == Tr::kStages ? 0 : stage + 1) {
    const int j0 = kt * N, run_end = run.end;
    const uint32_t stage_off = stage * (kStageBytes / 16);
    rotate_for(kt);
    CpAsyncWait<1>();
    // The tile (cp.async) and the rotated rows (stores) are read by wgmma
    // through the async proxy. After the barrier every warpgroup is also done
    // with every product issued before this tile but the P V of the tile
    // before it (overlapped), so the stage two behind this one takes the tile
    // two ahead.
    wgmma::FenceSharedForAsync();
    __syncthreads();
    if (kt2 < n_tiles) {
      load_tile(kt2, run2, stage + 2 >= Tr::kStages ? stage + 2 - Tr::kStages : stage + 2);
    }
    CpAsyncCommit();
    if (wg_needs(kt)) {
      float s[32];
      uint32_t pf[N / 16][4];
      float corr_lo, corr_hi;
      IssueScores<D, M, N>(s, q_lo, k_lo0 + stage_off, k_hi);
      if constexpr (Tr::kOverlap) {
        // S(t) and P(t-1) V(t-1) in flight together; the softmax of S(t) runs
        // under the second.
        if (have_prev) {
          IssuePv<D, N>(o, pf_prev, v_lo0 + prev_off, v_hi);
          wgmma::Wait<1>();
        } else {
          wgmma::Wait<0>();
        }
        wgmma::PinRegisters(s);
        softmax(s, pf, j0, run_end, corr_lo, corr_hi);
        wgmma::Wait<0>();
        wgmma::PinRegisters(o);
        wgmma::PinRegisters(pf_prev);
        rescale(corr_lo, corr_hi);
#pragma unroll
        for (int kk = 0; kk < N / 16; ++kk) {
#pragma unroll
          for (int r = 0; r < 4; ++r) pf_prev[kk][r] = pf[kk][r];
        }
        have_prev = true;
        prev_off = stage_off;
      } else {
        wgmma::Wait<0>();
        wgmma::PinRegisters(s);
        softmax(s, pf, j0, run_end, corr_lo, corr_hi);
        rescale(corr_lo, corr_hi);
        IssuePv<D, N>(o, pf, v_lo0 + stage_off, v_hi);
        wgmma::Wait<0>();
        wgmma::PinRegisters(o);
      }
    } else if constexpr (Tr::kOverlap) {
      flush_prev();  // this warpgroup's rows are done with the walk
    }
    kt = kt1;
    run = run1;
    kt1 = kt2;
    run1 = run2;
    if (kt2 < n_tiles) kt2 = walk.Next(kt2, run2);
  }
  if constexpr (Tr::kOverlap) flush_prev();

  // Row sums across the 4 lanes of a row, then the normalised output.
  float* out_base = p.out + (int64_t{seq.q_row} + row0) * row_stride + int64_t{h} * D;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = half == 0 ? l_lo : l_hi;
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int r = wg_row0 + w * 16 + g + 8 * half;
    if (r < n_rows) {
      // A row that saw no key (only with held runs) gets 0 and lse -inf.
      const float inv = sum > 0.f ? 1.f / sum : 0.f;
      if (kRuns && t4 == 0) {
        p.lse[(int64_t{seq.q_row} + row0 + r) * p.H + h] =
            LseFromLog2(half == 0 ? m_lo : m_hi, sum);
      }
      float* dst = out_base + r * row_stride + 2 * t4;
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
        const float a = o[4 * dn + 2 * half] * inv, b = o[4 * dn + 2 * half + 1] * inv;
        if constexpr (kRuns) {
          // A partial is a slice of a gathered buffer of [R, H * (D + 1)] rows
          // per rank: it may start on any float, so no paired stores.
          dst[dn * 8] = a;
          dst[dn * 8 + 1] = b;
        } else {
          *reinterpret_cast<float2*>(dst + dn * 8) = make_float2(a, b);
        }
      }
    }
  }
#else
  __trap();
#endif
}

template <class Tr, bool kRuns>
cudaError_t LaunchWgmma(const DcaAttentionParams& p, const DcaRowTile* tiles, int n_tiles,
                        cudaStream_t stream) {
  const cudaError_t err = cudaFuncSetAttribute(
      DcaWgmmaKernel<Tr, kRuns>, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes);
  if (err != cudaSuccess) return err;
  const unsigned blocks = static_cast<unsigned>(n_tiles) * Tr::kBlocksPerTile;
  const dim3 grid = Tr::kOverlap ? dim3(blocks * p.H) : dim3(blocks, p.H);
  DcaWgmmaKernel<Tr, kRuns><<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(p, tiles);
  return cudaGetLastError();
}

template <class Tr>
cudaError_t LaunchWgmma(const DcaAttentionParams& p, const DcaRowTile* tiles, int n_tiles,
                        cudaStream_t stream) {
  return p.runs != nullptr ? LaunchWgmma<Tr, true>(p, tiles, n_tiles, stream)
                           : LaunchWgmma<Tr, false>(p, tiles, n_tiles, stream);
}

}  // namespace

bool DcaWgmmaSupported(int D, int device) {
  if (D != 64 && D != 128) return false;
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    return false;
  }
  // Machine code for sm_90a runs on 9.0 devices only, and only a build that
  // targets it has the kernel's body.
  if (major != 9 || minor != 0) return false;
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, DcaWgmmaKernel<WgmmaTraits<64, 2, false>, false>) !=
      cudaSuccess) {
    return false;
  }
  return attr.binaryVersion == 90;
}

cudaError_t DcaAttentionWgmma(const DcaAttentionParams& p, const DcaRowTile* tiles, int n_tiles,
                              WgmmaSchedule schedule, cudaStream_t stream) {
  if (n_tiles == 0) return cudaSuccess;
  if (schedule == WgmmaSchedule::kOverlapped) {
    // Two warpgroups per block (K/V tiles shared by 128 rows) at both head
    // dims: the fourth stage leaves room for one block per SM at D = 128, two
    // at D = 64.
    switch (p.D) {
      case 64:
        return LaunchWgmma<WgmmaTraits<64, 2, true>>(p, tiles, n_tiles, stream);
      case 128:
        return LaunchWgmma<WgmmaTraits<128, 2, true>>(p, tiles, n_tiles, stream);
      default:
        return cudaErrorInvalidValue;
    }
  }
  // Serial: warpgroups per block, the faster of 1 and 2 on an H200
  // (docs/cuda.md): at D = 128 one (two independent blocks per SM overlap each
  // other's softmax and products), at D = 64 two (K/V tiles shared by 128 rows).
  switch (p.D) {
    case 64:
      return LaunchWgmma<WgmmaTraits<64, 2, false>>(p, tiles, n_tiles, stream);
    case 128:
      return LaunchWgmma<WgmmaTraits<128, 1, false>>(p, tiles, n_tiles, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace longctx::cuda

// Fused Dual Chunk Attention for prefill: flash-attention-2 style, one pass.
//
// A thread block owns kBlockM = 128 query rows of one sequence and one q head;
// each of its 4 warps owns 32 rows (two 16-row MMA tiles, so every K and V
// fragment read from shared memory feeds two tensor-core ops). Keys stream
// through shared memory in tiles of kBlockN = 64 (double-buffered cp.async),
// read straight from the paged bf16 cache of the head's kv head (GQA without
// repeating K/V). Because chunk_len and block_size are multiples of the tile, a
// key tile lies in one DCA chunk and one physical block, so each query row needs
// exactly one of its three rotations per tile. Shared memory holds one rotated
// copy of the query tile, each row in the rotation the current key chunk needs;
// keys are visited in ascending order, so a row's part only moves inter ->
// successive -> intra, and when the key chunk changes the rows whose part
// changed are re-rotated from q. Key tiles inside an Infini window's absent
// range, and for a context-parallel partial the tiles outside the held key runs
// (read at their local indices), are skipped; a partial also writes each row's
// log-sum-exp. The three parts share one online softmax (no
// merge pass). S = QK^T and O += PV run on bf16 tensor cores (mma.sync
// m16n8k16) with f32 accumulation; the softmax is f32 in log2 units.
#include "kernels/cuda/dca_prefill_common.cuh"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace longctx::cuda {
namespace {

template <int kHeadDim>
struct TiledTraits {
  static constexpr int D = kHeadDim;
  static constexpr int kBlockM = kDcaTiledRows;
  static constexpr int kBlockN = kDcaKeyTile;
  // Keys per softmax step: 32 at D = 128 keeps the 32 x 128 f32 accumulator
  // and the scores within 255 registers without spilling.
  static constexpr int kSubN = D == 128 ? 32 : 64;
  static constexpr int kWarps = 4;
  static constexpr int kMTiles = kBlockM / kWarps / 16;  // 16-row MMA tiles per warp
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kQElems = kBlockM * D;
  static constexpr int kKvStage = kBlockN * D;
  static constexpr int kSmemBytes = (kQElems + 4 * kKvStage) * static_cast<int>(sizeof(bf16));
  static_assert(D == 64 || D == 128, "head dims 64 and 128");
  static_assert(kMTiles == 2, "two MMA row tiles per warp");
};

// Element offset of (row, 16-byte chunk) in a [rows][D] bf16 tile. The chunk
// index is XOR-swizzled with the row so that the 8 row addresses of one
// ldmatrix phase fall in 8 different bank groups.
template <int D>
__device__ __forceinline__ int Swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

// The tile layout above as a functor of (row, column).
template <int D>
struct SwzLayout {
  __device__ int operator()(int row, int col) const { return Swz<D>(row, col / 8) + col % 8; }
};

// kRuns: a context-parallel partial call (held key runs, lse written); without
// it the run bookkeeping compiles away and costs no registers.
template <class Tr, bool kRuns>
__global__ void __launch_bounds__(Tr::kThreads, 2)
    DcaTiledKernel(DcaAttentionParams p, const DcaRowTile* tiles) {
  constexpr int D = Tr::D, M = Tr::kBlockM, N = Tr::kBlockN, MT = Tr::kMTiles, SN = Tr::kSubN;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* q_s = reinterpret_cast<bf16*>(smem_raw);  // [M][D]
  bf16* k_s = q_s + Tr::kQElems;                  // [2][N][D]
  bf16* v_s = k_s + 2 * Tr::kKvStage;             // [2][N][D]

  const DcaRowTile tile = tiles[blockIdx.x];
  const DcaSeqDesc seq = p.seqs[tile.seq];
  const int h = blockIdx.y;
  const int kvh = h / (p.H / p.kv.n_kv_heads);
  const int n_rows = min(M, seq.n_q - tile.row0);
  const int i_first = seq.q_start + tile.row0;
  const int i_last = i_first + n_rows - 1;
  const int L = seq.chunk_len, C = seq.chunk_size;
  const int64_t row_stride = int64_t{p.H} * D;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const float* q_base = p.q + (int64_t{seq.q_row} + tile.row0) * row_stride + int64_t{h} * D;

  const KeyTileWalk<N, kRuns> walk(p, seq);
  using Run = typename KeyTileWalk<N, kRuns>::Run;
  auto load_tile = [&](int kt, const Run& run, int stage) {
    walk.template Load<D, Tr::kThreads>(kt, run, kvh, i_last, k_s + stage * Tr::kKvStage,
                                        v_s + stage * Tr::kKvStage, SwzLayout<D>{});
  };

  // Rows of this lane's accumulator fragments: row_lo[mt] and row_lo[mt] + 8.
  const int g = lane / 4, t4 = lane % 4;
  const int warp_row0 = warp * 16 * MT;
  const int warp_i_first = i_first + warp_row0;
  const int warp_i_last = warp_i_first + 16 * MT - 1;
  const bool warp_active = warp_row0 < n_rows;
  const float scale_log2 = seq.softmax_scale * 1.4426950408889634f;

  float o[MT][D / 8][4];
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn)
      o[mt][dn][0] = o[mt][dn][1] = o[mt][dn][2] = o[mt][dn][3] = 0.f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.f;
  }

  const int n_tiles = i_last / N + 1;
  // Rows change part only when the key chunk reaches n(i) - 1 or n(i), so key
  // chunks outside [n(first row) - 1, n(last row)] leave the query tile as is.
  const int n_first = i_first / L, n_last = (i_first + M - 1) / L;
  int cur_cj = -1;
  int first_key;
  Run run = walk.Enter(0, &first_key);
  int kt = walk.SkipAbsent(first_key / N);
  if (kt < n_tiles) load_tile(kt, run, 0);
  CpAsyncCommit();
  for (int it = 0; kt < n_tiles; ++it) {
    const int j0 = kt * N;
    Run run_next = run;
    const int kt_next = walk.Next(kt, run_next);
    if (kt_next < n_tiles) {
      load_tile(kt_next, run_next, (it + 1) & 1);
      CpAsyncCommit();
    }
    const int cj = j0 / L;
    if (cur_cj < 0 || (cj != cur_cj && cj >= n_first - 1 && cj <= n_last)) {
      RotateQueryRows<D, M, Tr::kThreads>(q_s, SwzLayout<D>{}, q_base, row_stride, p.inv_freq,
                                          i_first, n_rows, L, C, cj, cur_cj);
      cur_cj = cj;
    }
    if (kt_next < n_tiles) {
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    const bool tile_in_window = walk.InWindow(j0);
    const int run_end = run.end;
    const bool tile_cut = kRuns && j0 + N > run_end;
    if (warp_active && j0 <= warp_i_last) {
      const bf16* ks = k_s + (it & 1) * Tr::kKvStage;
      const bf16* vs = v_s + (it & 1) * Tr::kKvStage;

      // The tile in sub-steps of SN keys: fewer live score registers.
#pragma unroll 1
      for (int k0 = 0; k0 < N; k0 += SN) {
        if (j0 + k0 > warp_i_last) break;
        float s[MT][SN / 8][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
          for (int nt = 0; nt < SN / 8; ++nt)
            s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
        }
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          uint32_t a[MT][4];
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            LdMatrixX4(SmemAddr(q_s + Swz<D>(warp_row0 + mt * 16 + lane % 16, 2 * kk + lane / 16)),
                       a[mt][0], a[mt][1], a[mt][2], a[mt][3]);
          }
#pragma unroll
          for (int nt = 0; nt < SN / 8; nt += 2) {
            const int key = k0 + nt * 8 + (lane / 16) * 8 + lane % 8;
            const int chunk = 2 * kk + (lane / 8) % 2;
            uint32_t b0, b1, b2, b3;
            LdMatrixX4(SmemAddr(ks + Swz<D>(key, chunk)), b0, b1, b2, b3);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              MmaBf16(s[mt][nt], a[mt], b0, b1);
              MmaBf16(s[mt][nt + 1], a[mt], b2, b3);
            }
          }
        }

        // Causal mask (only tiles that reach past the warp's first row), then the
        // online softmax in log2 units.
        const bool need_mask = j0 + k0 + SN - 1 > warp_i_first || tile_in_window || tile_cut;
        uint32_t pf[MT][SN / 16][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const int i_lo = warp_i_first + mt * 16 + g, i_hi = i_lo + 8;
          float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
          for (int nt = 0; nt < SN / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int key = j0 + k0 + nt * 8 + 2 * t4 + e;
              float lo = s[mt][nt][e] * scale_log2, hi = s[mt][nt][2 + e] * scale_log2;
              if (need_mask) {
                const bool absent = walk.Absent(key, run_end);
                if (key > i_lo || absent) lo = -INFINITY;
                if (key > i_hi || absent) hi = -INFINITY;
              }
              s[mt][nt][e] = lo;
              s[mt][nt][2 + e] = hi;
              mx_lo = fmaxf(mx_lo, lo);
              mx_hi = fmaxf(mx_hi, hi);
            }
          }
#pragma unroll
          for (int off = 1; off <= 2; off <<= 1) {
            mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, off));
            mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, off));
          }
          const float new_lo = fmaxf(m[mt][0], mx_lo), new_hi = fmaxf(m[mt][1], mx_hi);
          const float base_lo = new_lo == -INFINITY ? 0.f : new_lo;
          const float base_hi = new_hi == -INFINITY ? 0.f : new_hi;
          const float corr_lo = FastExp2(m[mt][0] - base_lo),
                      corr_hi = FastExp2(m[mt][1] - base_hi);
          m[mt][0] = new_lo;
          m[mt][1] = new_hi;
          float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
          for (int nt = 0; nt < SN / 8; ++nt) {
            const float p0 = FastExp2(s[mt][nt][0] - base_lo),
                        p1 = FastExp2(s[mt][nt][1] - base_lo);
            const float p2 = FastExp2(s[mt][nt][2] - base_hi),
                        p3 = FastExp2(s[mt][nt][3] - base_hi);
            sum_lo += p0 + p1;
            sum_hi += p2 + p3;
            // The accumulator layout of two adjacent 8-key tiles is the A-operand
            // layout of one 16-key step: pack P to bf16 right away.
            pf[mt][nt / 2][(nt % 2) * 2] = PackBf16(p0, p1);
            pf[mt][nt / 2][(nt % 2) * 2 + 1] = PackBf16(p2, p3);
          }
          l[mt][0] = l[mt][0] * corr_lo + sum_lo;
          l[mt][1] = l[mt][1] * corr_hi + sum_hi;
#pragma unroll
          for (int dn = 0; dn < D / 8; ++dn) {
            o[mt][dn][0] *= corr_lo;
            o[mt][dn][1] *= corr_lo;
            o[mt][dn][2] *= corr_hi;
            o[mt][dn][3] *= corr_hi;
          }
        }

        // O += P V.
#pragma unroll
        for (int kk = 0; kk < SN / 16; ++kk) {
#pragma unroll
          for (int dn = 0; dn < D / 8; dn += 2) {
            const int key = k0 + kk * 16 + lane % 8 + ((lane / 8) % 2) * 8;
            const int chunk = dn + lane / 16;
            uint32_t b0, b1, b2, b3;
            LdMatrixX4Trans(SmemAddr(vs + Swz<D>(key, chunk)), b0, b1, b2, b3);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              MmaBf16(o[mt][dn], pf[mt][kk], b0, b1);
              MmaBf16(o[mt][dn + 1], pf[mt][kk], b2, b3);
            }
          }
        }
      }
    }
    __syncthreads();
    kt = kt_next;
    run = run_next;
  }

  float* out_base = p.out + (int64_t{seq.q_row} + tile.row0) * row_stride + int64_t{h} * D;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float sum = l[mt][half];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int r = warp_row0 + mt * 16 + g + 8 * half;
      if (r < n_rows) {
        // A row that saw no key (only with held runs) gets 0 and lse -inf.
        const float inv = sum > 0.f ? 1.f / sum : 0.f;
        if (kRuns && t4 == 0) {
          p.lse[(int64_t{seq.q_row} + tile.row0 + r) * p.H + h] = LseFromLog2(m[mt][half], sum);
        }
        float* dst = out_base + r * row_stride + 2 * t4;
#pragma unroll
        for (int dn = 0; dn < D / 8; ++dn) {
          const float a = o[mt][dn][2 * half] * inv, b = o[mt][dn][2 * half + 1] * inv;
          if constexpr (kRuns) {
            // A partial is a slice of a gathered buffer of [R, H * (D + 1)]
            // rows per rank: it may start on any float, so no paired stores.
            dst[dn * 8] = a;
            dst[dn * 8 + 1] = b;
          } else {
            *reinterpret_cast<float2*>(dst + dn * 8) = make_float2(a, b);
          }
        }
      }
    }
  }
}

template <class Tr, bool kRuns>
cudaError_t LaunchTiled(const DcaAttentionParams& p, const DcaRowTile* tiles, int n_tiles,
                        cudaStream_t stream) {
  const cudaError_t err = cudaFuncSetAttribute(
      DcaTiledKernel<Tr, kRuns>, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes);
  if (err != cudaSuccess) return err;
  DcaTiledKernel<Tr, kRuns><<<dim3(n_tiles, p.H), Tr::kThreads, Tr::kSmemBytes, stream>>>(p, tiles);
  return cudaGetLastError();
}

template <class Tr>
cudaError_t LaunchTiled(const DcaAttentionParams& p, const DcaRowTile* tiles, int n_tiles,
                        cudaStream_t stream) {
  return p.runs != nullptr ? LaunchTiled<Tr, true>(p, tiles, n_tiles, stream)
                           : LaunchTiled<Tr, false>(p, tiles, n_tiles, stream);
}

}  // namespace

bool DcaTiledSupported(int D) { return D == 64 || D == 128; }

cudaError_t DcaAttentionTiled(const DcaAttentionParams& p, const DcaRowTile* tiles, int n_tiles,
                              cudaStream_t stream) {
  if (n_tiles == 0) return cudaSuccess;
  switch (p.D) {
    case 64:
      return LaunchTiled<TiledTraits<64>>(p, tiles, n_tiles, stream);
    case 128:
      return LaunchTiled<TiledTraits<128>>(p, tiles, n_tiles, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace longctx::cuda

// Split-KV (flash-decoding) Dual Chunk Attention for decode steps, batched
// across sequences.
//
// A thread block owns up to kDcaSplitRows = 16 rows that share one kv head:
// (query, q head in the group) pairs, so the GQA group is one 16-row MMA tile
// and every key is read once for all of its heads. The block takes a range of
// 64-key tiles of the sequence; several blocks split one long context. Inside
// the block each warp streams its own 32-key sub-tiles through a private two-stage
// cp.async pipeline (many bytes in flight: decode is bound by reading K and V
// once), runs S = QK^T and O += PV on bf16 tensor cores with an f32 online
// softmax, and the four warps merge through shared memory at the end. Of the
// blocks that split one row group, the last to finish merges their partials by
// log-sum-exp (a counter per row group and kv head), so the combine costs no
// launch and starts the moment its inputs are there. The DCA
// rotation is chosen per (row, sub-tile) by pointing each lane's ldmatrix at the
// rotated copy its row needs; a sub-tile lies in one chunk. For a
// context-parallel partial only the sub-tiles of the held key runs are read (at
// their local indices) and each row's log-sum-exp is written too.
#include <type_traits>

#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace longctx::cuda {
namespace {

template <int kHeadDim>
struct SplitTraits {
  static constexpr int D = kHeadDim;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRows = kDcaSplitRows;
  static constexpr int kSub = 32;  // keys per warp step
  static constexpr int kSubPerTile = kDcaKeyTile / kSub;
  static constexpr int kChunks = D / 8;
  static constexpr int kQElems = 3 * kRows * D;
  static constexpr int kWarpStage = 2 * kSub * D;  // K then V of one sub-tile
  static constexpr int kWarpElems = 2 * kWarpStage;
  static constexpr int kKvBytes = kWarps * kWarpElems * static_cast<int>(sizeof(bf16));
  static constexpr int kMergeBytes = kWarps * kRows * (D + 2) * static_cast<int>(sizeof(float));
  static constexpr int kSmemBytes =
      kQElems * static_cast<int>(sizeof(bf16)) + (kKvBytes > kMergeBytes ? kKvBytes : kMergeBytes);
  static_assert(kRows == 16, "one MMA row tile");
};

template <int D>
__device__ __forceinline__ int Swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

// Merges the partials of the blocks that split one group of rows (run by the
// last of them): a warp per row; lanes stride over the slots for the row's
// maximum and total weight, then each lane sums its D / 32 consecutive
// columns over the slots, many slots' loads in flight at once (the merge is a
// chain of L2 latencies, not of bytes). Reads through L2: other SMs wrote the
// partials.
template <int D>
__device__ void CombineSplits(const DcaAttentionParams& p, const DcaCombineItem& item, int kvh,
                              const DcaSplitScratch& scratch) {
  constexpr int R = kDcaSplitRows, kPerLane = D / 32;
  static_assert(kPerLane == 2 || kPerLane == 4, "one vector load per slot and lane");
  using Vec = std::conditional_t<kPerLane == 2, float2, float4>;
  const DcaSeqDesc seq = p.seqs[item.seq];
  const int group = p.H / p.kv.n_kv_heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float2* ml = reinterpret_cast<const float2*>(scratch.ml);
  auto slot_at = [&](int s, int rr) {
    return (int64_t{item.first_slot + s} * p.kv.n_kv_heads + kvh) * R + rr;
  };
  for (int rr = warp; rr < item.n_rows; rr += blockDim.x / 32) {
    float mx = -INFINITY;
    for (int s = lane; s < item.n_slots; s += 32) mx = fmaxf(mx, __ldcg(ml + slot_at(s, rr)).x);
    mx = WarpMax(mx);
    const float base = mx == -INFINITY ? 0.f : mx;
    float sum = 0.f;
    for (int s = lane; s < item.n_slots; s += 32) {
      const float2 v = __ldcg(ml + slot_at(s, rr));
      sum += v.y * exp2f(v.x - base);
    }
    sum = WarpSum(sum);
    float o[kPerLane] = {};
#pragma unroll 16
    for (int s = 0; s < item.n_slots; ++s) {
      const int64_t at = slot_at(s, rr);
      const float2 v = __ldcg(ml + at);
      const Vec part = __ldcg(reinterpret_cast<const Vec*>(scratch.o + at * D) + lane);
      const float w = v.y * exp2f(v.x - base);
      const float* pv = reinterpret_cast<const float*>(&part);
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) o[i] += w * pv[i];
    }
    const int row = item.rr0 + rr;
    const int64_t q_row = int64_t{seq.q_row} + row / group;
    const int head = kvh * group + row % group;
    // Rows no split saw a key for (only with held runs) get 0 and lse -inf.
    float* out = p.out + q_row * p.H * D + int64_t{head} * D + lane * kPerLane;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) out[i] = sum > 0.f ? o[i] / sum : 0.f;
    if (p.lse != nullptr && lane == 0) p.lse[q_row * p.H + head] = LseFromLog2(mx, sum);
  }
}

// kRuns: a context-parallel partial call (held key runs, lse written); without
// it the run bookkeeping compiles away.
template <class Tr, bool kRuns>
__global__ void __launch_bounds__(Tr::kThreads)
    DcaSplitKernel(DcaAttentionParams p, const DcaSplitItem* items, const DcaCombineItem* combine,
                   DcaSplitScratch scratch) {
  constexpr int D = Tr::D, R = Tr::kRows, S = Tr::kSub;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* q_s = reinterpret_cast<bf16*>(smem_raw);    // [3][R][D]
  bf16* kv_s = q_s + Tr::kQElems;                   // per warp: [2 stages][K|V][S][D]
  float* merge_o = reinterpret_cast<float*>(kv_s);  // after the loop: [warps][R][D]
  float* merge_ml = merge_o + Tr::kWarps * R * D;   // [warps][R][2]

  const DcaSplitItem item = items[blockIdx.x];
  const DcaSeqDesc seq = p.seqs[item.seq];
  const int kvh = blockIdx.y;
  const int group = p.H / p.kv.n_kv_heads;
  const int L = seq.chunk_len, C = seq.chunk_size;
  const int64_t row_stride = int64_t{p.H} * D;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  auto row_token = [&](int rr) {
    return rr < item.n_rows ? seq.q_start + (item.rr0 + rr) / group : -1;
  };

  const int i_max = row_token(item.n_rows - 1);
  const int32_t* table = p.block_tables + seq.block_table_offset;
  const int64_t key_stride = int64_t{p.kv.n_kv_heads} * D;
  bf16* my_kv = kv_s + warp * Tr::kWarpElems;
  // This warp's sub-tiles: sub_begin + warp, + kWarps, ... below sub_end.
  const int sub_begin = item.tile_begin * Tr::kSubPerTile;
  const int sub_end = min(item.tile_end * Tr::kSubPerTile, i_max / S + 1);

  // Infini window: sub-tiles wholly inside [sink, window_start) are skipped
  // (their blocks may be released); one that overlaps it masks those keys.
  const int sink = seq.sink_tokens, window_start = seq.window_start;
  // Held key runs (context-parallel partials): a sub-tile lies in at most one
  // run (runs start on key-tile boundaries); sub-tiles outside every run are
  // skipped. `run` is moved forward to the run that ends after sub-tile u (u only
  // grows), which holds u when u is held.
  auto load_run = [&](int r) {
    return kRuns ? LoadKeyRun(p.runs, seq, r) : KeyRunView{0, 0x7fffffff, 0};
  };
  auto seek = [&](int u, int& ri, KeyRunView& run) {
    while (kRuns && u * S >= run.end) run = load_run(++ri);
  };
  auto present = [&](int u, const KeyRunView& run) {
    return (!kRuns || u * S >= run.first) && !(u * S >= sink && (u + 1) * S <= window_start);
  };
  // Keys past i_max or past their run are zero-filled (their slots may hold
  // anything, even NaN).
  auto load_sub = [&](int u, const KeyRunView& run, int stage) {
    const int j0 = u * S;
    const int lj0 = run.local + (j0 - run.first);
    const int64_t base = int64_t{table[lj0 / p.kv.block_size]} * p.kv.block_stride +
                         int64_t{lj0 % p.kv.block_size} * key_stride + int64_t{kvh} * D;
    bf16* dst_k = my_kv + stage * Tr::kWarpStage;
    bf16* dst_v = dst_k + S * D;
#pragma unroll
    for (int t = 0; t < S * Tr::kChunks / 32; ++t) {
      const int idx = lane + 32 * t;
      const int n = idx / Tr::kChunks, c = idx % Tr::kChunks;
      const bool valid =
          j0 + n <= i_max && (!kRuns || j0 + n < run.end) && !KeyAbsent(j0 + n, sink, window_start);
      const int64_t src = base + n * key_stride + c * 8;
      CpAsync16(SmemAddr(dst_k + Swz<D>(n, c)), valid ? p.kv.k + src : p.kv.k, valid ? 16 : 0);
      CpAsync16(SmemAddr(dst_v + Swz<D>(n, c)), valid ? p.kv.v + src : p.kv.v, valid ? 16 : 0);
    }
  };

  const int g = lane / 4, t4 = lane % 4;
  const int i_lo = row_token(g), i_hi = row_token(g + 8);
  const int a_i = row_token(lane % 16);
  const float scale_log2 = seq.softmax_scale * 1.4426950408889634f;
  float o[D / 8][4];
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.f;
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;

  // Two run cursors: one for the sub-tile being loaded, one for the one computed.
  int ri_load = 0, ri = 0;
  KeyRunView run_load = load_run(0);
  int u = sub_begin + warp;
  seek(u, ri_load, run_load);
  KeyRunView run = run_load;
  ri = ri_load;
  // The work lists, block tables and the keys of earlier steps are not written
  // by the kernel ahead (with a dependent launch: the KV write of this step's
  // keys), so this warp's first sub-tile is on its way before waiting for it,
  // unless it holds one of this step's keys.
  const bool first = u < sub_end && present(u, run_load);
  const bool early = first && (u + 1) * S <= seq.q_start;
  if (early) load_sub(u, run_load, 0);
  BeginAfterPredecessor();
  if (first && !early) load_sub(u, run_load, 0);
  CpAsyncCommit();

  // The three rotations of every row (rows past n_rows: zeros).
  for (int idx = tid; idx < R * (D / 2); idx += Tr::kThreads) {
    const int rr = idx / (D / 2), c = idx % (D / 2);
    float a = 0.f, b = 0.f;
    const int i = row_token(rr);
    if (rr < item.n_rows) {
      const int row = item.rr0 + rr;
      const float* qh = p.q + (int64_t{seq.q_row} + row / group) * row_stride +
                        int64_t{kvh * group + row % group} * D;
      a = qh[c];
      b = qh[c + D / 2];
    }
#pragma unroll
    for (int part = 0; part < 3; ++part) {
      float s = 0.f, co = 1.f;
      if (i >= 0) RopeSinCos(DcaQueryPos(i, L, C, part), p.inv_freq[c], &s, &co);
      const float2 r = RotatePair(a, b, s, co);
      bf16* qp = q_s + part * R * D;
      qp[Swz<D>(rr, c / 8) + c % 8] = __float2bfloat16_rn(r.x);
      qp[Swz<D>(rr, (c + D / 2) / 8) + c % 8] = __float2bfloat16_rn(r.y);
    }
  }
  __syncthreads();

  for (int it = 0; u < sub_end; ++it, u += Tr::kWarps) {
    if (u + Tr::kWarps < sub_end) {
      seek(u + Tr::kWarps, ri_load, run_load);
      if (present(u + Tr::kWarps, run_load)) load_sub(u + Tr::kWarps, run_load, (it + 1) & 1);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncwarp();
    seek(u, ri, run);
    if (!present(u, run)) continue;
    const int j0 = u * S;
    const int run_end = run.end;
    const bf16* ks = my_kv + (it & 1) * Tr::kWarpStage;
    const bf16* vs = ks + S * D;
    const int part = a_i < 0 ? 0 : DcaPart(a_i, L, j0 / L);
    const bf16* qp = q_s + part * R * D;

    float s[S / 8][4];
#pragma unroll
    for (int nt = 0; nt < S / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      LdMatrixX4(SmemAddr(qp + Swz<D>(lane % 16, 2 * kk + lane / 16)), a[0], a[1], a[2], a[3]);
#pragma unroll
      for (int nt = 0; nt < S / 8; nt += 2) {
        const int key = nt * 8 + (lane / 16) * 8 + lane % 8;
        uint32_t b0, b1, b2, b3;
        LdMatrixX4(SmemAddr(ks + Swz<D>(key, 2 * kk + (lane / 8) % 2)), b0, b1, b2, b3);
        MmaBf16(s[nt], a, b0, b1);
        MmaBf16(s[nt + 1], a, b2, b3);
      }
    }

    float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < S / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int key = j0 + nt * 8 + 2 * t4 + e;
        const bool absent = KeyAbsent(key, sink, window_start) || (kRuns && key >= run_end);
        const float lo = key <= i_lo && !absent ? s[nt][e] * scale_log2 : -INFINITY;
        const float hi = key <= i_hi && !absent ? s[nt][2 + e] * scale_log2 : -INFINITY;
        s[nt][e] = lo;
        s[nt][2 + e] = hi;
        mx_lo = fmaxf(mx_lo, lo);
        mx_hi = fmaxf(mx_hi, hi);
      }
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, off));
      mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, off));
    }
    const float new_lo = fmaxf(m_lo, mx_lo), new_hi = fmaxf(m_hi, mx_hi);
    const float base_lo = new_lo == -INFINITY ? 0.f : new_lo;
    const float base_hi = new_hi == -INFINITY ? 0.f : new_hi;
    const float corr_lo = FastExp2(m_lo - base_lo), corr_hi = FastExp2(m_hi - base_hi);
    m_lo = new_lo;
    m_hi = new_hi;
    uint32_t pf[S / 16][4];
    float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
    for (int nt = 0; nt < S / 8; ++nt) {
      const float p0 = FastExp2(s[nt][0] - base_lo), p1 = FastExp2(s[nt][1] - base_lo);
      const float p2 = FastExp2(s[nt][2] - base_hi), p3 = FastExp2(s[nt][3] - base_hi);
      sum_lo += p0 + p1;
      sum_hi += p2 + p3;
      pf[nt / 2][(nt % 2) * 2] = PackBf16(p0, p1);
      pf[nt / 2][(nt % 2) * 2 + 1] = PackBf16(p2, p3);
    }
    l_lo = l_lo * corr_lo + sum_lo;
    l_hi = l_hi * corr_hi + sum_hi;
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
      o[dn][0] *= corr_lo;
      o[dn][1] *= corr_lo;
      o[dn][2] *= corr_hi;
      o[dn][3] *= corr_hi;
    }
#pragma unroll
    for (int kk = 0; kk < S / 16; ++kk) {
#pragma unroll
      for (int dn = 0; dn < D / 8; dn += 2) {
        const int key = kk * 16 + lane % 8 + ((lane / 8) % 2) * 8;
        uint32_t b0, b1, b2, b3;
        LdMatrixX4Trans(SmemAddr(vs + Swz<D>(key, dn + lane / 16)), b0, b1, b2, b3);
        MmaBf16(o[dn], pf[kk], b0, b1);
        MmaBf16(o[dn + 1], pf[kk], b2, b3);
      }
    }
    __syncwarp();
  }

  // Merge the warps: each leaves (m, l, unnormalised o) of its rows in shared
  // memory, which the K/V stages no longer need.
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
  __syncthreads();
  float* wo = merge_o + warp * R * D;
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn) {
    *reinterpret_cast<float2*>(wo + g * D + dn * 8 + 2 * t4) = make_float2(o[dn][0], o[dn][1]);
    *reinterpret_cast<float2*>(wo + (g + 8) * D + dn * 8 + 2 * t4) =
        make_float2(o[dn][2], o[dn][3]);
  }
  if (t4 == 0) {
    float* ml = merge_ml + warp * R * 2;
    ml[g * 2] = m_lo;
    ml[g * 2 + 1] = l_lo;
    ml[(g + 8) * 2] = m_hi;
    ml[(g + 8) * 2 + 1] = l_hi;
  }
  __syncthreads();

  for (int idx = tid; idx < item.n_rows * D; idx += Tr::kThreads) {
    const int rr = idx / D, d = idx % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < Tr::kWarps; ++w) mx = fmaxf(mx, merge_ml[(w * R + rr) * 2]);
    const float base = mx == -INFINITY ? 0.f : mx;
    float sum = 0.f, acc = 0.f;
#pragma unroll
    for (int w = 0; w < Tr::kWarps; ++w) {
      const float c = exp2f(merge_ml[(w * R + rr) * 2] - base);
      sum += merge_ml[(w * R + rr) * 2 + 1] * c;
      acc += merge_o[(w * R + rr) * D + d] * c;
    }
    const float out = sum > 0.f ? acc / sum : 0.f;
    const int row = item.rr0 + rr;
    if (item.out_slot < 0) {
      p.out[(int64_t{seq.q_row} + row / group) * row_stride +
            int64_t{kvh * group + row % group} * D + d] = out;
      if (kRuns && d == 0) {
        p.lse[(int64_t{seq.q_row} + row / group) * p.H + kvh * group + row % group] =
            LseFromLog2(mx, sum);
      }
    } else {
      const int64_t at = (int64_t{item.out_slot} * p.kv.n_kv_heads + kvh) * R + rr;
      scratch.o[at * D + d] = out;
      if (d == 0) {
        scratch.ml[at * 2] = mx;
        scratch.ml[at * 2 + 1] = sum;
      }
    }
  }
  if (item.out_slot < 0) return;
  // The last block of the row group (for this kv head) merges the partials;
  // it leaves the counter at 0 for the next launch.
  __shared__ int last;
  __threadfence();
  __syncthreads();
  const DcaCombineItem& c = combine[item.combine];
  if (tid == 0) {
    int* counter = scratch.counters + int64_t{item.combine} * p.kv.n_kv_heads + kvh;
    last = atomicAdd(counter, 1) == c.n_slots - 1;
    if (last) atomicExch(counter, 0);
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  CombineSplits<D>(p, c, kvh, scratch);
}

template <int D>
cudaError_t LaunchSplit(const DcaAttentionParams& p, const DcaSplitItem* items, int n_items,
                        const DcaCombineItem* combine, const DcaSplitScratch& scratch,
                        cudaStream_t stream) {
  using Tr = SplitTraits<D>;
  const auto kernel = p.runs != nullptr ? DcaSplitKernel<Tr, true> : DcaSplitKernel<Tr, false>;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes);
  if (err != cudaSuccess) return err;
  return LaunchAfter(kernel, dim3(n_items, p.kv.n_kv_heads), Tr::kThreads, Tr::kSmemBytes, stream,
                     p, items, combine, scratch);
}

}  // namespace

bool DcaSplitSupported(int D) { return D == 64 || D == 128; }

template <int D>
int SplitBlocksPerSm() {
  using Tr = SplitTraits<D>;
  const auto kernel = DcaSplitKernel<Tr, false>;
  int blocks = 0;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes) !=
          cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, Tr::kThreads,
                                                    Tr::kSmemBytes) != cudaSuccess) {
    cudaGetLastError();
    return 1;
  }
  return blocks > 0 ? blocks : 1;
}

int DcaSplitBlocksPerSm(int D) {
  switch (D) {
    case 64:
      return SplitBlocksPerSm<64>();
    case 128:
      return SplitBlocksPerSm<128>();
    default:
      return 1;
  }
}

cudaError_t DcaAttentionSplit(const DcaAttentionParams& p, const DcaSplitItem* items, int n_items,
                              const DcaCombineItem* combine, const DcaSplitScratch& scratch,
                              cudaStream_t stream) {
  if (n_items == 0) return cudaSuccess;
  switch (p.D) {
    case 64:
      return LaunchSplit<64>(p, items, n_items, combine, scratch, stream);
    case 128:
      return LaunchSplit<128>(p, items, n_items, combine, scratch, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace longctx::cuda

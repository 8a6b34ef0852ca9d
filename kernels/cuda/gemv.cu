// Linear with few token rows: f32 activations times bf16 weights, read at the
// speed of the weight stream (ops_cuda.h, GemvBf16).
#include <cstdint>

#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/gemv_common.cuh"
#include "kernels/cuda/ops_cuda.h"

namespace longctx::cuda {
namespace {

constexpr int kGemvThreads = 128;
constexpr int kGemvWarps = kGemvThreads / 32;
// 16-byte weight loads each lane keeps in flight (over all its rows): enough
// bytes in flight per SM to cover the memory latency at full bandwidth.
constexpr int kGemvLoadsInFlight = 8;
// From this many rows on, a warp owns two rows: half the activation reads per
// weight byte, and still several blocks per SM.
constexpr int kGemvTwoRowsMinN = 2048;

// Traits of one instantiation: T token rows, R weight rows per warp, epilogue
// E, the RMSNorm folded in (kN; a compile-time choice, so the kernels without
// it keep their instruction count: at 7B scale they are close to bound by it).
template <int kT, int kR, GemvEpilogue kE, bool kN>
struct GemvTraits {
  static constexpr int T = kT;
  static constexpr int R = kR;
  static constexpr GemvEpilogue E = kE;
  static constexpr bool kNorm = kN;
  static constexpr bool kGlu = kE == GemvEpilogue::kSwiGlu;
  static_assert(!kGlu || kR % 2 == 0, "a SwiGLU warp streams gate and up rows in pairs");
  static constexpr int kUnroll = kGemvLoadsInFlight / kR;  // loads per row per step
  // Output rows per warp: with SwiGLU each takes a gate and an up row.
  static constexpr int kOutRows = kGlu ? kR / 2 : kR;
  static constexpr int kRowsPerBlock = kGemvWarps * kOutRows;
};

// acc[r][t] += w[r][8v .. 8v + 8) . x[t][8v .. 8v + 8) for one 16-byte vector
// of each of the R rows. With the fused RMSNorm the weights are scaled by the
// norm's weights and ss[t] gathers x's squares (each lane reads every vector v
// of x once per warp, so the warp's sum covers the row once).
template <typename Tr>
__device__ __forceinline__ void GemvAccumulate(float (&acc)[Tr::R][Tr::T], float (&ss)[Tr::T],
                                               const uint4 (&wv)[Tr::R], const GemvParams& p,
                                               int v) {
  float gn[8];
  if constexpr (Tr::kNorm) LoadNorm8(p.norm_w, p.norm_type, 8 * v, gn);
  float wf[Tr::R][8];
#pragma unroll
  for (int r = 0; r < Tr::R; ++r) {
    const uint32_t words[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = Bf16PairToF32(words[i]);
      wf[r][2 * i] = f.x;
      wf[r][2 * i + 1] = f.y;
    }
    if constexpr (Tr::kNorm) {
#pragma unroll
      for (int i = 0; i < 8; ++i) wf[r][i] *= gn[i];
    }
  }
#pragma unroll
  for (int t = 0; t < Tr::T; ++t) {
    const float4* xp = reinterpret_cast<const float4*>(p.x + int64_t{t} * p.K) + 2 * v;
    const float4 a = __ldg(xp), b = __ldg(xp + 1);
    const float xs[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    if constexpr (Tr::kNorm) {
#pragma unroll
      for (int i = 0; i < 8; ++i) ss[t] = fmaf(xs[i], xs[i], ss[t]);
    }
#pragma unroll
    for (int r = 0; r < Tr::R; ++r) {
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[r][t] = fmaf(wf[r][i], xs[i], acc[r][t]);
    }
  }
}

// U vectors of each row per lane, at v, v + 32, ... (kGuarded: only those
// below nv), all loads issued before the first product.
template <typename Tr, bool kGuarded>
__device__ __forceinline__ void GemvLoad(uint4 (&wv)[Tr::kUnroll][Tr::R],
                                         const uint4* const (&rows)[Tr::R], int v, int nv) {
#pragma unroll
  for (int u = 0; u < Tr::kUnroll; ++u) {
#pragma unroll
    for (int r = 0; r < Tr::R; ++r) {
      wv[u][r] =
          !kGuarded || v + 32 * u < nv ? LoadWeights(rows[r] + v + 32 * u) : make_uint4(0, 0, 0, 0);
    }
  }
}

template <typename Tr, bool kGuarded>
__device__ __forceinline__ void GemvUse(float (&acc)[Tr::R][Tr::T], float (&ss)[Tr::T],
                                        const uint4 (&wv)[Tr::kUnroll][Tr::R], const GemvParams& p,
                                        int v, int nv) {
#pragma unroll
  for (int u = 0; u < Tr::kUnroll; ++u) {
    if (!kGuarded || v + 32 * u < nv) GemvAccumulate<Tr>(acc, ss, wv[u], p, v + 32 * u);
  }
}

// grid: ceil(N_j / kRowsPerBlock) blocks per job j, the jobs' blocks one after
// the other; warp i of a job's block b owns output rows (b * kGemvWarps + i) *
// kOutRows .. + kOutRows. Lanes stride over a row's 16-byte vectors; each lane
// keeps kUnroll vectors of each of its R weight rows in flight.
template <typename Tr>
__global__ void __launch_bounds__(kGemvThreads) GemvKernel(GemvParams p, GemvBlockStarts starts) {
  constexpr int R = Tr::R, T = Tr::T, U = Tr::kUnroll, O = Tr::kOutRows;
  const auto [job, first] = JobOfBlock(p, starts);
  const int lane = threadIdx.x % 32;
  const int n0 = ((static_cast<int>(blockIdx.x) - first) * kGemvWarps + threadIdx.x / 32) * O;
  if (n0 >= job.N) return;  // the whole warp
  const int nv = p.K / 8;
  const uint4* rows[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    // SwiGLU: gate and up rows of one output row side by side.
    const int o = Tr::kGlu ? r / 2 : r;
    const bf16* w = Tr::kGlu && r % 2 == 1 ? job.w_up : job.w;
    // A row past N (odd N) re-reads the last row; its sum is not written.
    rows[r] = reinterpret_cast<const uint4*>(w + int64_t{min(n0 + o, job.N - 1)} * p.K);
  }
  // The first step's weights are loaded before waiting on the kernel ahead: a
  // step never writes weights.
  int v = lane;
  uint4 wv[U][R];
  GemvLoad<Tr, true>(wv, rows, v, nv);
  BeginAfterPredecessor();
  float acc[R][T], ss[T];
#pragma unroll
  for (int t = 0; t < T; ++t) {
    ss[t] = 0.f;
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r][t] = 0.f;
  }
  GemvUse<Tr, true>(acc, ss, wv, p, v, nv);
  for (v += 32 * U; v + 32 * (U - 1) < nv; v += 32 * U) {
    GemvLoad<Tr, false>(wv, rows, v, nv);
    GemvUse<Tr, false>(acc, ss, wv, p, v, nv);
  }
  // The rest of the row (fewer than U vectors per lane), its loads in flight together.
  if (v < nv) {
    GemvLoad<Tr, true>(wv, rows, v, nv);
    GemvUse<Tr, true>(acc, ss, wv, p, v, nv);
  }
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const float scale = Tr::kNorm ? rsqrtf(WarpSum(ss[t]) / p.K + p.norm_eps) : 1.f;
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r][t] = WarpSum(acc[r][t]) * scale;
  }
  if (lane != 0) return;
  if constexpr (Tr::E == GemvEpilogue::kSwiGlu) {
#pragma unroll
    for (int o = 0; o < O; ++o) {
      const int n = n0 + o;
      if (n >= job.N) break;
#pragma unroll
      for (int t = 0; t < T; ++t) {
        job.out[int64_t{t} * job.N + n] = SiluTimes(acc[2 * o][t], acc[2 * o + 1][t]);
      }
    }
  } else {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int n = n0 + r;
      if (n >= job.N) break;
      const float b = BiasOf(job, n);
#pragma unroll
      for (int t = 0; t < T; ++t) {
        // The sum rounded first, as Linear then AddInPlace would.
        const float s = acc[r][t] + b;
        float* out = job.out + int64_t{t} * job.N + n;
        if constexpr (Tr::E == GemvEpilogue::kAdd) {
          *out += s;
        } else {
          *out = s;
        }
      }
    }
  }
}

int64_t TotalRows(const GemvParams& p) {
  int64_t n = 0;
  for (int i = 0; i < p.n_jobs; ++i) n += p.jobs[i].N;
  return n;
}

template <int T, int R, GemvEpilogue E, bool kNorm = false>
cudaError_t LaunchGemv(const GemvParams& p, cudaStream_t stream) {
  using Tr = GemvTraits<T, R, E, kNorm>;
  int blocks = 0;
  const GemvBlockStarts starts = BlockStarts(p, Tr::kRowsPerBlock, &blocks);
  LaunchAfter(GemvKernel<Tr>, blocks, kGemvThreads, 0, stream, p, starts);
  return cudaGetLastError();
}

// SwiGLU warps stream a gate and an up row, as two-row warps do; the others
// take two rows from kGemvTwoRowsMinN rows in all on. A folded norm comes with
// kStore and kSwiGlu (a layer's q/k/v and gate/up products).
template <int T>
cudaError_t LaunchGemvRows(const GemvParams& p, cudaStream_t stream) {
  const bool two = TotalRows(p) >= kGemvTwoRowsMinN;
  const bool norm = p.norm_w != nullptr;
  switch (p.epilogue) {
    case GemvEpilogue::kSwiGlu:
      return norm ? LaunchGemv<T, 2, GemvEpilogue::kSwiGlu, true>(p, stream)
                  : LaunchGemv<T, 2, GemvEpilogue::kSwiGlu>(p, stream);
    case GemvEpilogue::kAdd:
      return two ? LaunchGemv<T, 2, GemvEpilogue::kAdd>(p, stream)
                 : LaunchGemv<T, 1, GemvEpilogue::kAdd>(p, stream);
    case GemvEpilogue::kStore:
      break;
  }
  if (norm) {
    return two ? LaunchGemv<T, 2, GemvEpilogue::kStore, true>(p, stream)
               : LaunchGemv<T, 1, GemvEpilogue::kStore, true>(p, stream);
  }
  return two ? LaunchGemv<T, 2, GemvEpilogue::kStore>(p, stream)
             : LaunchGemv<T, 1, GemvEpilogue::kStore>(p, stream);
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

int64_t GemvWeights(const GemvParams& p) {
  int64_t weights = 0;
  for (int i = 0; i < p.n_jobs; ++i) weights += int64_t{p.jobs[i].N} * p.K;
  return p.epilogue == GemvEpilogue::kSwiGlu ? 2 * weights : weights;
}

bool GemvSupported(const GemvParams& p) {
  if (p.T < 1 || p.T > kGemvMmaMaxT || p.K < 1 || p.K % 8 != 0 || p.x == nullptr ||
      !Aligned16(p.x) || p.n_jobs < 1 || p.n_jobs > kGemvMaxJobs ||
      (p.norm_w != nullptr && !Aligned16(p.norm_w))) {
    return false;
  }
  const bool glu = p.epilogue == GemvEpilogue::kSwiGlu;
  for (int i = 0; i < p.n_jobs; ++i) {
    const GemvJob& j = p.jobs[i];
    if (j.N < 1 || j.out == nullptr || j.w == nullptr || !Aligned16(j.w)) return false;
    if (glu && (j.w_up == nullptr || !Aligned16(j.w_up) || j.bias != nullptr)) return false;
  }
  if (p.T > kGemvMaxT && (p.K % 32 != 0 || GemvWeights(p) > kGemvMmaMaxWeights)) return false;
  if (p.T <= kGemvMaxT && p.norm_w != nullptr && p.epilogue == GemvEpilogue::kAdd) return false;
  // One block per output row at most: the grid stays within int.
  return TotalRows(p) <= INT32_MAX;
}

cudaError_t GemvBf16(const GemvParams& p, cudaStream_t stream) {
  if (!GemvSupported(p)) return cudaErrorInvalidValue;
  if (p.T > kGemvMaxT) return GemvMmaBf16(p, stream);
  static_assert(kGemvMaxT == 8, "one case per row count");
  switch (p.T) {
    case 1:
      return LaunchGemvRows<1>(p, stream);
    case 2:
      return LaunchGemvRows<2>(p, stream);
    case 3:
      return LaunchGemvRows<3>(p, stream);
    case 4:
      return LaunchGemvRows<4>(p, stream);
    case 5:
      return LaunchGemvRows<5>(p, stream);
    case 6:
      return LaunchGemvRows<6>(p, stream);
    case 7:
      return LaunchGemvRows<7>(p, stream);
    default:
      return LaunchGemvRows<8>(p, stream);
  }
}

}  // namespace longctx::cuda

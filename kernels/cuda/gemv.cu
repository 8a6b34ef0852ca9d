// Linear with few token rows: f32 activations times bf16 weights, read at the
// speed of the weight stream (ops_cuda.h, GemvBf16).
#include <cstdint>

#include "kernels/cuda/device_common.cuh"
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

// Traits of one instantiation: T token rows, R weight rows per warp, epilogue E.
template <int kT, int kR, GemvEpilogue kE>
struct GemvTraits {
  static constexpr int T = kT;
  static constexpr int R = kR;
  static constexpr GemvEpilogue E = kE;
  static constexpr bool kGlu = kE == GemvEpilogue::kSwiGlu;
  static_assert(!kGlu || kR % 2 == 0, "a SwiGLU warp streams gate and up rows in pairs");
  static constexpr int kUnroll = kGemvLoadsInFlight / kR;  // loads per row per step
  // Output rows per warp: with SwiGLU each takes a gate and an up row.
  static constexpr int kOutRows = kGlu ? kR / 2 : kR;
  static constexpr int kRowsPerBlock = kGemvWarps * kOutRows;
};

// First block of each job of a launch (prefix sums of the jobs' block counts).
struct GemvBlockStarts {
  int first[kGemvMaxJobs];
};

// A 16-byte weight load that bypasses L1 (each byte is read once; L1 keeps x).
__device__ __forceinline__ uint4 LoadWeights(const uint4* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];\n"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

// The two bf16 of a 32-bit word as floats, the lower address first.
__device__ __forceinline__ float2 Bf16PairToF32(uint32_t u) {
  return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}

// acc[r][t] += w[r][8v .. 8v + 8) . x[t][8v .. 8v + 8) for one 16-byte vector
// of each of the R rows.
template <typename Tr>
__device__ __forceinline__ void GemvAccumulate(float (&acc)[Tr::R][Tr::T], const uint4 (&wv)[Tr::R],
                                               const float* __restrict__ x, int K, int v) {
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
  }
#pragma unroll
  for (int t = 0; t < Tr::T; ++t) {
    const float4* xp = reinterpret_cast<const float4*>(x + int64_t{t} * K) + 2 * v;
    const float4 a = __ldg(xp), b = __ldg(xp + 1);
    const float xs[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
    for (int r = 0; r < Tr::R; ++r) {
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[r][t] = fmaf(wf[r][i], xs[i], acc[r][t]);
    }
  }
}

// U vectors of each row per lane, at v, v + 32, ..., all loads issued before
// the first product; kGuarded: only those below nv.
template <typename Tr, bool kGuarded>
__device__ __forceinline__ void GemvStep(float (&acc)[Tr::R][Tr::T],
                                         const uint4* const (&rows)[Tr::R],
                                         const float* __restrict__ x, int K, int v, int nv) {
  constexpr int U = Tr::kUnroll;
  uint4 wv[U][Tr::R];
#pragma unroll
  for (int u = 0; u < U; ++u) {
#pragma unroll
    for (int r = 0; r < Tr::R; ++r) {
      wv[u][r] =
          !kGuarded || v + 32 * u < nv ? LoadWeights(rows[r] + v + 32 * u) : make_uint4(0, 0, 0, 0);
    }
  }
#pragma unroll
  for (int u = 0; u < U; ++u) {
    if (!kGuarded || v + 32 * u < nv) GemvAccumulate<Tr>(acc, wv[u], x, K, v + 32 * u);
  }
}

// grid: ceil(N_j / kRowsPerBlock) blocks per job j, the jobs' blocks one after
// the other; warp i of a job's block b owns output rows (b * kGemvWarps + i) *
// kOutRows .. + kOutRows. Lanes stride over a row's 16-byte vectors; each lane
// keeps kUnroll vectors of each of its R weight rows in flight.
template <typename Tr>
__global__ void __launch_bounds__(kGemvThreads) GemvKernel(GemvParams p, GemvBlockStarts starts) {
  BeginAfterPredecessor();
  constexpr int R = Tr::R, T = Tr::T, U = Tr::kUnroll, O = Tr::kOutRows;
  // This block's job: the last one that starts at or before it (a select per
  // job, so the parameters stay in constant memory).
  GemvJob job = p.jobs[0];
  int first = 0;
#pragma unroll
  for (int i = 1; i < kGemvMaxJobs; ++i) {
    if (i < p.n_jobs && static_cast<int>(blockIdx.x) >= starts.first[i]) {
      job = p.jobs[i];
      first = starts.first[i];
    }
  }
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
  float acc[R][T];
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int t = 0; t < T; ++t) acc[r][t] = 0.f;
  }
  int v = lane;
  for (; v + 32 * (U - 1) < nv; v += 32 * U) GemvStep<Tr, false>(acc, rows, p.x, p.K, v, nv);
  // The rest of the row (fewer than U vectors per lane) in one more step, its
  // loads in flight together.
  if (v < nv) GemvStep<Tr, true>(acc, rows, p.x, p.K, v, nv);
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int t = 0; t < T; ++t) acc[r][t] = WarpSum(acc[r][t]);
  }
  if (lane != 0) return;
  if constexpr (Tr::E == GemvEpilogue::kSwiGlu) {
#pragma unroll
    for (int o = 0; o < O; ++o) {
      const int n = n0 + o;
      if (n >= job.N) break;
#pragma unroll
      for (int t = 0; t < T; ++t) {
        // The SwiGlu kernel's expression: silu(gate) * up.
        const float g = acc[2 * o][t];
        job.out[int64_t{t} * job.N + n] = g / (1.f + expf(-g)) * acc[2 * o + 1][t];
      }
    }
  } else {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int n = n0 + r;
      if (n >= job.N) break;
      float b = 0.f;
      if (job.bias != nullptr) {
        b = job.bias_type == ElemType::kBF16
                ? __bfloat162float(static_cast<const bf16*>(job.bias)[n])
                : static_cast<const float*>(job.bias)[n];
      }
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

template <int T, int R, GemvEpilogue E>
cudaError_t LaunchGemv(const GemvParams& p, cudaStream_t stream) {
  using Tr = GemvTraits<T, R, E>;
  GemvBlockStarts starts;
  int blocks = 0;
  for (int i = 0; i < kGemvMaxJobs; ++i) {
    starts.first[i] = blocks;
    if (i < p.n_jobs) blocks += (p.jobs[i].N + Tr::kRowsPerBlock - 1) / Tr::kRowsPerBlock;
  }
  LaunchAfter(GemvKernel<Tr>, blocks, kGemvThreads, 0, stream, p, starts);
  return cudaGetLastError();
}

// SwiGLU warps stream a gate and an up row, as two-row warps do; the others
// take two rows from kGemvTwoRowsMinN rows in all on.
template <int T>
cudaError_t LaunchGemvRows(const GemvParams& p, cudaStream_t stream) {
  const bool two = TotalRows(p) >= kGemvTwoRowsMinN;
  switch (p.epilogue) {
    case GemvEpilogue::kSwiGlu:
      return LaunchGemv<T, 2, GemvEpilogue::kSwiGlu>(p, stream);
    case GemvEpilogue::kAdd:
      return two ? LaunchGemv<T, 2, GemvEpilogue::kAdd>(p, stream)
                 : LaunchGemv<T, 1, GemvEpilogue::kAdd>(p, stream);
    case GemvEpilogue::kStore:
      break;
  }
  return two ? LaunchGemv<T, 2, GemvEpilogue::kStore>(p, stream)
             : LaunchGemv<T, 1, GemvEpilogue::kStore>(p, stream);
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool GemvSupported(const GemvParams& p) {
  if (p.T < 1 || p.T > kGemvMaxT || p.K < 0 || p.K % 8 != 0 || p.x == nullptr || !Aligned16(p.x) ||
      p.n_jobs < 1 || p.n_jobs > kGemvMaxJobs) {
    return false;
  }
  const bool glu = p.epilogue == GemvEpilogue::kSwiGlu;
  for (int i = 0; i < p.n_jobs; ++i) {
    const GemvJob& j = p.jobs[i];
    if (j.N < 1 || j.out == nullptr || j.w == nullptr || !Aligned16(j.w)) return false;
    if (glu && (j.w_up == nullptr || !Aligned16(j.w_up) || j.bias != nullptr)) return false;
  }
  // One block per output row at most: the grid stays within int.
  return TotalRows(p) <= INT32_MAX;
}

cudaError_t GemvBf16(const GemvParams& p, cudaStream_t stream) {
  if (!GemvSupported(p)) return cudaErrorInvalidValue;
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

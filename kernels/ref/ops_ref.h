// The readable oracle of the op surface (STYLE rule 1): plain loops over the
// math, one per op of kernels/ops.h that computes anything, with the same
// parameters (destination first, shapes outermost first), so a test calls the
// fast op and its reference the same way. The fast CPU ops (kernels/cpu/) and
// the CUDA kernels (kernels/cuda/) are tested against these.
//
// Precision. Every op accumulates in double and rounds once when it stores a
// float: next to a float32 kernel it is exact for testing purposes. The
// attention ops take the accumulation type as a template argument; their float
// instantiation is the same naive loop in float32, the yardstick a fast op's
// tolerance is earned against (STYLE rule 2: no worse than 2x naive float32).
// The Infini memory state may be float (the call of cpu::) or double (an exact
// state carried over many segments).
//
// No SIMD, no threads, no blocking, no online softmax: each function is meant
// to be checked against its formula by eye. They are O(naive) and meant for
// test shapes. Ops that move data or round once per element (Embedding,
// AddInPlace, ArgMax, FillUniform) are their own reference and have none here.
//
// Thread safety: reentrant; no state.
#pragma once

#include <cstdint>

#include "kernels/ops.h"

namespace longctx::ref {

using cpu::DcaParams;
using cpu::InfiniUpdateRule;
using cpu::KeyRuns;
using cpu::PagedKvView;

// ---------------------------------------------------------------------------
// Row ops
// ---------------------------------------------------------------------------

// out[t, i] = x[t, i] / sqrt(mean_i(x[t, i]²) + eps) · w[i]
void RmsNorm(float* out,      // [T, D]  (may alias x)
             const float* x,  // [T, D]
             const float* w,  // [D]
             int T, int D, float eps);

// out = silu(gate) · up, silu(g) = g / (1 + e^−g)
void SwiGlu(float* out,         // [T, F] (may alias gate)
            const float* gate,  // [T, F]
            const float* up,    // [T, F]
            int T, int F);

// out = x · wᵀ (+ bias): out[t, n] = Σ_k x[t, k] w[n, k] (+ bias[n])
void Linear(float* out,         // [T, N]
            const float* x,     // [T, K]
            const float* w,     // [N, K]
            const float* bias,  // [N] or nullptr
            int T, int N, int K);

// Rotate-half RoPE in place, the only variant the engine uses (the model's rope
// scaling lives in inv_freq): for i < D/2, a = pos[t] · inv_freq[i],
//   x[i]       <- x[i] cos a − x[i + D/2] sin a
//   x[i + D/2] <- x[i + D/2] cos a + x[i] sin a
// A negative position is the inverse rotation.
void Rope(float* x,               // [T, H, D]
          const int32_t* pos,     // [T]
          const float* inv_freq,  // [D/2]
          int T, int H, int D);

// ---------------------------------------------------------------------------
// Dual Chunk Attention
// ---------------------------------------------------------------------------
// Keys are cached rotated at j mod L. Query i takes, against key j, the position
// chosen by the chunk distance n(i) − n(j), n(x) = floor(x / L):
//   0 (intra, same chunk):        t(i) = i mod L
//   1 (successive, next chunk):   min(t(i) + L, C)
//   ≥ 2 (inter):                  C
// so the relative position seen is exact inside a chunk and inside the local
// window w = C − L, and never above C. Plain RoPE is L = C = kDcaUnbounded
// (query at i, key at j).
int64_t DcaQueryPosition(int64_t i, int64_t j, int64_t L, int64_t C);

// A view of dense per-token keys and values as one paged block holding all T
// tokens: k, v [T, n_kv_heads, D]. The view points at k, v and a static table.
PagedKvView DenseKvView(const float* k, const float* v, int T, int n_kv_heads);

// Causal DCA attention, cpu::DcaAttention's contract. For query r (token
// i = q_start + r), q head h, kv head g = h / (H / n_kv_heads), over the present
// keys j ≤ i (all but sink_tokens ≤ j < window_start when window_start >
// sink_tokens):
//   s_j = softmax_scale · RoPE(q[r, h], DcaQueryPosition(i, j)) · k[j, g]
//   out[r, h] = Σ_j softmax(s)_j v[j, g]
// One dense softmax per row (max subtracted).
template <typename Acc = double>
void DcaAttention(float* out,             // [n_q, H, D]
                  const float* q,         // [n_q, H, D], un-rotated
                  const PagedKvView& kv,  // keys rotated at j mod L
                  const float* inv_freq,  // [D/2]
                  const DcaParams& p, int n_q, int q_start, int H, int D);

// cpu::DcaPartialAttention's contract: the attention above over the keys j ≤ i
// held in `runs` (run s covers tokens first[s] .. first[s] + count[s] − 1, at
// local cache indices count[0] + ... + count[s−1] onwards). Positions follow
// absolute indices. out is normalised over those keys and
// lse = log Σ_j exp(s_j); a row that sees no key gets out 0 and lse −inf.
// p.sink_tokens and p.window_start are not read: an absent key is in no run.
template <typename Acc = double>
void DcaPartialAttention(float* out,             // [n_q, H, D]
                         float* lse,             // [n_q, H]
                         const float* q,         // [n_q, H, D], un-rotated
                         const PagedKvView& kv,  // local indices, keys rotated at j mod L
                         const KeyRuns& runs,
                         const float* inv_freq,  // [D/2]
                         const DcaParams& p, int n_q, int q_start, int H, int D);

// cpu::MergeAttention's contract: per row n,
//   out[n] = Σ_r exp(lse_r[n]) o_r[n] / Σ_r exp(lse_r[n])
//   lse[n] = log Σ_r exp(lse_r[n])
// (evaluated relative to max_r lse_r[n]). Partial r is at o_parts + r ·
// part_stride and lse_parts + r · part_stride. Rows with every lse_r = −inf get
// out 0 and lse −inf.
void MergeAttention(float* out,              // [N, D]
                    float* lse,              // [N], or nullptr
                    const float* o_parts,    // R × [N, D]
                    const float* lse_parts,  // R × [N]
                    int64_t part_stride, int R, int64_t N, int D);

// ---------------------------------------------------------------------------
// Infini-attention compressive memory
// ---------------------------------------------------------------------------
// σ(x) = ELU(x) + 1 (x + 1 for x > 0, e^x otherwise). M [n_kv_heads, D, D] (row:
// key dim, column: value dim), z [n_kv_heads, D]. GQA: q head h reads kv head
// g = h / (H / n_kv_heads). Mem is float or double.

// out = σ(x), elementwise.
void EluPlusOne(float* out,      // [n] (may alias x)
                const float* x,  // [n]
                int64_t n);

// out[t, h] = σ(q[t, h]) M[g] / max(σ(q[t, h]) · z[g], eps), exactly 0 where
// σ(q[t, h]) · z[g] = 0 (an empty memory).
template <typename Mem>
void InfiniRetrieve(float* out,      // [T, H, D]
                    const float* q,  // [T, H, D], un-rotated
                    const Mem* mem,  // [n_kv_heads, D, D]
                    const Mem* z,    // [n_kv_heads, D]
                    int T, int H, int n_kv_heads, int D, float eps);

// One segment of T tokens, per kv head g, with M and z as they were before it:
//   linear: M[g] += Σ_t σ(k[t, g])ᵀ v[t, g]
//   delta:  M[g] += Σ_t σ(k[t, g])ᵀ (v[t, g] − r_t),
//           r_t = σ(k[t, g]) M[g] / max(σ(k[t, g]) · z[g], eps)
//   both:   z[g] += Σ_t σ(k[t, g])
template <typename Mem>
void InfiniFold(Mem* mem,        // [n_kv_heads, D, D], updated in place
                Mem* z,          // [n_kv_heads, D], updated in place
                const float* k,  // [T, n_kv_heads, D], un-rotated
                const float* v,  // [T, n_kv_heads, D]
                int T, int n_kv_heads, int D, InfiniUpdateRule rule, float eps);

// out[t, h] = s_h a_mem[t, h] + (1 − s_h) a_dca[t, h], s_h = 1 / (1 + e^−beta[h])
void InfiniMix(float* out,          // [T, H, D] (may alias a_dca or a_mem)
               const float* a_mem,  // [T, H, D]
               const float* a_dca,  // [T, H, D]
               const float* beta,   // [H]
               int T, int H, int D);

}  // namespace longctx::ref

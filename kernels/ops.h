// The one op surface of longctx: the CPU backend's kernels. CUDA kernels in
// kernels/cuda/ have the same parameters; both are tested against the plain
// references of kernels/ref/ops_ref.h. Destination first; shapes in comments,
// outermost first.
// Nothing of the rest of the project is included here.
//
// Thread safety: ops are reentrant; they parallelise internally with OpenMP and
// must not be called from inside an OpenMP parallel region.
#pragma once

#include <cstdint>

namespace longctx::cpu {

// out[t, :] = table[ids[t], :]
void Embedding(float* out,            // [T, D]
               const float* table,    // [V, D]
               const int32_t* ids,    // [T], each in [0, V)
               int T, int D);

// out = x / rms(x) * w, per row.
void RmsNorm(float* out,              // [T, D]  (may alias x)
             const float* x,          // [T, D]
             const float* w,          // [D]
             int T, int D, float eps);

// out = x · wᵀ (+ bias). Through BLAS sgemm.
// All CPU parallelism is OpenMP's: every BLAS caller first calls this, which
// makes OpenBLAS single-threaded (once per process). Two thread pools spinning
// on the same cores (OpenBLAS's threads yield in a loop between calls) cost
// several times the work itself.
void SingleThreadedBlas();

void Linear(float* out,               // [T, N]
            const float* x,           // [T, K]
            const float* w,           // [N, K]
            const float* bias,        // [N] or nullptr
            int T, int N, int K);

// out = silu(gate) * up
void SwiGlu(float* out,               // [T, F] (may alias gate)
            const float* gate,        // [T, F]
            const float* up,          // [T, F]
            int T, int F);

// x += y
void AddInPlace(float* x, const float* y, int64_t n);

// --- Products over weights kept in their file's blocks (kernels/cpu/quant_*.cc) -----
// Weight rows are stored as in GGUF: a row of K elements is K / block elements
// blocks, little-endian, laid out as ggml defines them.
enum class WeightFormat { kF16, kBF16, kQ4_0, kQ4_1, kQ8_0, kQ4_K, kQ5_K, kQ6_K };

// Elements per block (1 for f16 / bf16, 32 for the legacy quants, 256 for the
// k-quants) and bytes of one row of K elements: -1 when K is not a positive
// multiple of the block.
int WeightBlockElements(WeightFormat f);
int64_t WeightRowBytes(WeightFormat f, int64_t K);

// Instruction set of QuantLinear. kAuto resolves once to the best the CPU runs:
// AVX-512 with VNNI (and BW, VL), else AVX2 with FMA and F16C, else the scalar
// code. Tests force the others to check every path.
enum class CpuIsa { kAuto, kAvx512, kAvx2, kScalar };
CpuIsa ResolveCpuIsa(CpuIsa isa);          // kAuto → the best supported one
bool CpuIsaSupported(CpuIsa isa);          // this CPU runs it (kAuto, kScalar: true)
const char* CpuIsaName(CpuIsa isa);

// out = x · dequant(w)ᵀ (+ bias). Block formats: each row of x is quantized to
// int8 in blocks of 32 with one f32 scale (amax / 127), and the products are
// integer dot products (vpdpbusd with AVX-512 VNNI, pmaddwd with AVX2) scaled
// per block: out differs from the f32 product by the activation rounding only,
// as llama.cpp's. f16 / bf16 weights multiply f32 x exactly (f32 sums).
// Parallel over output columns (OpenMP). REQUIRES: WeightRowBytes(f, K) > 0,
// isa supported.
void QuantLinear(float* out,               // [T, N]
                 const float* x,           // [T, K]
                 const uint8_t* w,         // [N, WeightRowBytes(f, K)]
                 WeightFormat f,
                 const float* bias,        // [N] or nullptr
                 int T, int N, int K, CpuIsa isa);

// out[t, :] = dequant(w[ids[t], :]): the embedding lookup of a table kept in blocks.
void DequantizeWeightRows(float* out,           // [T, K]
                          const uint8_t* w,     // [V, WeightRowBytes(f, K)]
                          WeightFormat f,
                          const int32_t* ids,   // [T], each in [0, V)
                          int T, int K);

// The index of the largest of x[0 .. n), the lowest among equals (as
// std::max_element on finite values); NaN never wins, a row of NaN gives 0.
int32_t ArgMax(const float* x, int64_t n);

// out[i] = lo + (hi − lo) · u(seed, i) with u uniform in [0, 1) from a
// counter-based hash (kernels/uniform_fill.h): synthetic weights for benchmarks,
// identical on every backend.
void FillUniform(float* out,          // [n]
                 int64_t n, uint64_t seed, float lo, float hi);

// Rotate-half RoPE in place: for i < D/2, angle = pos[t] * inv_freq[i],
// (x[i], x[i + D/2]) <- (x[i] cos − x[i + D/2] sin, x[i + D/2] cos + x[i] sin).
// A negative position rotates back (the inverse rotation).
void Rope(float* x,                   // [T, H, D]
          const int32_t* pos,         // [T]
          const float* inv_freq,      // [D/2]
          int T, int H, int D);

// Dual Chunk Attention parameters (docs/design.md §3). Plain RoPE attention is the
// special case chunk_len = chunk_size = kDcaUnbounded.
inline constexpr int kDcaUnbounded = 1 << 30;
struct DcaParams {
  int chunk_len = kDcaUnbounded;   // L = C − w; keys cached at position j mod L
  int chunk_size = kDcaUnbounded;  // C; successive parts clamp at C, inter parts sit at C
  float softmax_scale = 0.f;       // 1/sqrt(D), times sf² when the length temperature is on
  // Infini window (docs/design.md §4): keys j with sink_tokens ≤ j < window_start are
  // absent (folded or dropped, their blocks freed) and never read. Positions stay
  // absolute. The defaults (window_start ≤ sink_tokens) mean every key is present.
  int sink_tokens = 0;
  int window_start = 0;
};

// Paged KV of one layer. Token j of a sequence lives in physical block
// block_table[j / block_size], slot j % block_size; element (slot s, kv head h,
// dim d) of physical block b is at k[b * block_stride + (s * n_kv_heads + h) * D + d]
// (same for v). Keys are stored already rotated at position j mod chunk_len.
// The elements are f32 (k, v) or IEEE half (k16, v16, when set; kernels/cpu/half.h).
struct PagedKvView {
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t block_stride = 0;            // elements between consecutive physical blocks
  const int32_t* block_table = nullptr;
  int block_size = 0;
  int n_kv_heads = 0;
  const uint16_t* k16 = nullptr;
  const uint16_t* v16 = nullptr;
};

// Causal DCA attention of n_q new queries over a sequence's paged KV.
// Query r is token q_start + r and attends keys 0 .. q_start + r, which must be
// in the cache, except the absent window range of `p` (REQUIRES window_start ≤
// q_start when it is not empty). Queries come un-rotated; the rotation is chosen
// per key chunk: intra (same chunk) t(i), successive min(t(i) + L, C), inter C, where
// t(i) = i mod L. One softmax over all keys; online (streaming) softmax over key
// blocks, no [T, T] matrix. GQA: q head h reads kv head h / (H / n_kv_heads).
void DcaAttention(float* out,               // [n_q, H, D]
                  const float* q,           // [n_q, H, D], un-rotated
                  const PagedKvView& kv,
                  const float* inv_freq,    // [D/2]
                  const DcaParams& p,
                  int n_q, int q_start, int H, int D);

// --- Context-parallel attention (docs/design.md §7) ---------------------------------
// A long sequence's keys are spread over ranks. Each rank attends the queries to
// the keys it holds (DcaPartialAttention) and the partials are combined by
// log-sum-exp (MergeAttention); the result equals DcaAttention over all keys.

// Keys of one sequence held by one rank: n runs of consecutive absolute token
// indices [first[s], first[s] + count[s]), ascending and disjoint. They are stored
// back to back in the rank's paged KV: run s starts at local index
// count[0] + ... + count[s-1], and the block table maps local indices.
struct KeyRuns {
  const int32_t* first = nullptr;  // [n]
  const int32_t* count = nullptr;  // [n], each ≥ 1
  int n = 0;
};

// DcaAttention restricted to the keys in `runs`. Query r is token i = q_start + r
// and sees the held keys j ≤ i. Its rotation per key follows the chunk distance of
// ABSOLUTE indices, n(i) − n(j), so chunks held elsewhere do not shift positions.
// out is normalised over the seen keys; lse = m + log Σ exp(s − m) over their
// scaled scores s. A query that sees no held key gets out 0 and lse −inf.
void DcaPartialAttention(float* out,             // [n_q, H, D]
                         float* lse,             // [n_q, H]
                         const float* q,         // [n_q, H, D], un-rotated
                         const PagedKvView& kv,  // local indices, see KeyRuns
                         const KeyRuns& runs,
                         const float* inv_freq,  // [D/2]
                         const DcaParams& p,
                         int n_q, int q_start, int H, int D);

// Combines R partial attentions of the same N (query, head) rows:
// out[n] = Σ_r w_r o_r[n] / Σ_r w_r with w_r = exp(lse_r[n] − max_r lse_r[n]).
// Partial r is o_parts + r * part_stride and lse_parts + r * part_stride (one
// stride for both, so a gathered [R, packed partial] buffer can be read in
// place). Rows where every lse is −inf get out 0 (and lse −inf). out must not
// alias the partials.
void MergeAttention(float* out,              // [N, D]
                    float* lse,              // [N] merged log-sum-exp, or nullptr
                    const float* o_parts,    // R × [N, D], see part_stride
                    const float* lse_parts,  // R × [N]
                    int64_t part_stride,     // elements between partials r and r+1
                    int R, int64_t N, int D);

// ===========================================================================
// Infini-attention compressive memory (docs/design.md §4)
// ===========================================================================
// One layer's memory is M [n_kv_heads, D, D] (row: key dim, column: value dim)
// and z [n_kv_heads, D], both fp32. σ(x) = ELU(x) + 1 (x + 1 for x > 0, e^x
// otherwise), so σ > 0 and z only grows. The memory sees UN-rotated q and k:
// cached keys (rotated at j mod L) are rotated back with Rope at −(j mod L)
// before a fold. GQA: q head h reads kv head h / (H / n_kv_heads).

enum class InfiniUpdateRule { kLinear, kDelta };

// out = σ(x), elementwise.
void EluPlusOne(float* out,           // [n] (may alias x)
                const float* x,       // [n]
                int64_t n);

// Retrieval: out[t, h] = σ(q[t, h]) M[g] / max(σ(q[t, h])·z[g], eps), with
// g = h / (H / n_kv_heads). Exactly 0 where σ(q)·z = 0, i.e. while the memory is
// empty. Through BLAS sgemm, one call per q head.
void InfiniRetrieve(float* out,        // [T, H, D]
                    const float* q,    // [T, H, D], un-rotated
                    const float* mem,  // [n_kv_heads, D, D]
                    const float* z,    // [n_kv_heads, D]
                    int T, int H, int n_kv_heads, int D, float eps);

// Folds one segment of T tokens into the memory, per kv head g:
//   linear: M[g] += σ(K_g)ᵀ V_g
//   delta:  M[g] += σ(K_g)ᵀ (V_g − σ(K_g) M[g] / max(σ(K_g) z[g], eps))
// and z[g] += Σ_t σ(K_g[t]) for both. The delta correction reads the memory as
// it was before this segment. The products are BLAS sgemm calls.
void InfiniFold(float* mem,           // [n_kv_heads, D, D], updated in place
                float* z,             // [n_kv_heads, D], updated in place
                const float* k,       // [T, n_kv_heads, D], un-rotated
                const float* v,       // [T, n_kv_heads, D]
                int T, int n_kv_heads, int D, InfiniUpdateRule rule, float eps);

// Gate: out[t, h] = s_h a_mem[t, h] + (1 − s_h) a_dca[t, h], s_h = sigmoid(beta[h]).
void InfiniMix(float* out,            // [T, H, D] (may alias a_dca or a_mem)
               const float* a_mem,    // [T, H, D]
               const float* a_dca,    // [T, H, D]
               const float* beta,     // [H]
               int T, int H, int D);

}  // namespace longctx::cpu

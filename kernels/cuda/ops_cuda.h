// CUDA kernels of longctx: the GPU versions of the ops in kernels/ops.h, with the
// same parameters plus element types and a stream. Every launcher enqueues its
// work on `stream` and returns the launch status (cudaGetLastError()); execution
// errors surface at the next synchronisation. Pointers are device memory unless
// a comment says otherwise. Destination first; shapes outermost first.
//
// Activations are f32; weights may be f32 or bf16 (ElemType); the KV cache is bf16.
// Nothing of the rest of the project is included here.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace longctx::cuda {

using bf16 = __nv_bfloat16;

enum class ElemType { kF32, kBF16 };

// --- conversions ---
cudaError_t ConvertF32ToBf16(bf16* out, const float* in, int64_t n, cudaStream_t stream);
cudaError_t ConvertBf16ToF32(float* out, const bf16* in, int64_t n, cudaStream_t stream);

// out[i] = lo + (hi − lo) · u(seed, i) rounded to out_type; the same values as
// cpu::FillUniform before rounding (kernels/uniform_fill.h).
cudaError_t FillUniform(void* out,  // [n], out_type
                        ElemType out_type, int64_t n, uint64_t seed, float lo, float hi,
                        cudaStream_t stream);

// --- elementwise, normalisation, RoPE (same math as longctx::cpu) ---
cudaError_t Embedding(float* out,         // [T, D]
                      const void* table,  // [V, D], table_type
                      ElemType table_type,
                      const int32_t* ids,  // [T], each in [0, V) (checked by the caller)
                      int T, int D, cudaStream_t stream);

cudaError_t RmsNorm(float* out,      // [T, D] (may alias x)
                    const float* x,  // [T, D]
                    const void* w,   // [D], w_type
                    ElemType w_type, int T, int D, float eps, cudaStream_t stream);

// RmsNorm rounded to bf16 (round to nearest even): a cuBLAS GEMM's input
// written at once, without the f32 rows and their conversion.
cudaError_t RmsNormToBf16(bf16* out,      // [T, D], not overlapping x
                          const float* x,  // [T, D]
                          const void* w,   // [D], w_type
                          ElemType w_type, int T, int D, float eps, cudaStream_t stream);

// out[t, n] += bias[n]: the bias half of Linear when the product is a cuBLAS GEMM.
cudaError_t AddBias(float* out,        // [T, N]
                    const void* bias,  // [N], bias_type
                    ElemType bias_type, int T, int N, cudaStream_t stream);

// Whether the decode-path kernels (the row ops, the few-row products, the
// split-KV attention and its combine) launch as programmatic dependents of the
// kernel ahead of them, overlapping its tail (device_common.cuh, LaunchAfter).
// Process-wide; on by default.
void SetDependentLaunch(bool enabled);
bool DependentLaunch();

// --- Linear with few token rows (cpu::Linear is the reference) ---
// out = x w^T (+ bias) for 1 <= T <= kGemvMmaMaxT rows of f32 activations
// against bf16 weights, f32 accumulation; no bf16 copy of x is made.
//   T <= kGemvMaxT (decode of a few sessions): on the CUDA cores. The products
//   are bound by the weight stream: each warp streams one weight row (two for
//   large N) in 16-byte loads while the activations, a few KiB, stay in L1;
//   x keeps f32.
//   kGemvMaxT < T <= kGemvMmaMaxT (a small model's batched step): bf16 tensor
//   cores (gemv_mma.cu), x rounded to bf16 as a GEMM would. Taken only for K a
//   multiple of 32 and at most kGemvMmaMaxWeights weights per launch: such
//   products are a few MB, bound by launches, and one kernel replaces the bf16
//   copy of x, a cuBLAS GEMM per job and the op after them. Larger products
//   are left to cuBLAS. (Taking 32 rows on the CUDA cores made the 135M
//   model's batched step 2.1 times slower than cuBLAS on an H200: docs/cuda.md.)
//
// One launch runs up to kGemvMaxJobs products of the same x (a layer's q, k
// and v): the grid covers the rows of every job, each block working on one job.
// The epilogue, fixed per launch, fuses the op that follows the product; an
// optional RMSNorm of x (cpu::RmsNorm) is fused before it.
inline constexpr int kGemvMaxT = 8;
inline constexpr int kGemvMmaMaxT = 64;
inline constexpr int64_t kGemvMmaMaxWeights = int64_t{16} << 20;
inline constexpr int kGemvMaxJobs = 4;

enum class GemvEpilogue {
  kStore,   // out = s (+ bias), s = x w^T
  kAdd,     // out += s (+ bias): a residual update (AddInPlace)
  kSwiGlu,  // out = silu(x w^T) * (x w_up^T) as cpu::SwiGlu; no bias
};

struct GemvJob {
  float* out = nullptr;        // [T, N]; must not overlap x or another job's out
  const bf16* w = nullptr;     // [N, K], 16-byte aligned (kSwiGlu: the gate weights)
  const bf16* w_up = nullptr;  // [N, K], 16-byte aligned; kSwiGlu only
  const void* bias = nullptr;  // [N], bias_type; nullptr: none
  ElemType bias_type = ElemType::kF32;
  int N = 0;
};

struct GemvParams {
  GemvJob jobs[kGemvMaxJobs];
  int n_jobs = 0;            // 1 .. kGemvMaxJobs
  const float* x = nullptr;  // [T, K], 16-byte aligned
  int T = 0;
  int K = 0;  // multiple of 8 (whole 16-byte loads per row); of 32 above kGemvMaxT rows
  GemvEpilogue epilogue = GemvEpilogue::kStore;
  // Set: the products take RmsNorm(x, norm_w, norm_eps) instead of x: each
  // row's sum of squares is gathered while x is read and the scale applied to
  // the sums (x · (s g) w = s · (x g) w). Up to kGemvMaxT rows with kStore and
  // kSwiGlu only.
  const void* norm_w = nullptr;  // [K], norm_type, 16-byte aligned
  ElemType norm_type = ElemType::kF32;
  float norm_eps = 0.f;
};
// Weights one launch reads: N x K per job, twice that with kSwiGlu.
int64_t GemvWeights(const GemvParams& p);
// Whether GemvBf16 takes these shapes and addresses.
bool GemvSupported(const GemvParams& p);
// REQUIRES: GemvSupported(p) (else cudaErrorInvalidValue, nothing launched).
cudaError_t GemvBf16(const GemvParams& p, cudaStream_t stream);

cudaError_t SwiGlu(float* out,         // [T, F] (may alias gate)
                   const float* gate,  // [T, F]
                   const float* up,    // [T, F]
                   int T, int F, cudaStream_t stream);

// SwiGlu rounded to bf16: the down product's GEMM input, written at once.
cudaError_t SwiGluToBf16(bf16* out,          // [T, F], not overlapping gate or up
                         const float* gate,  // [T, F]
                         const float* up,    // [T, F]
                         int T, int F, cudaStream_t stream);

cudaError_t AddInPlace(float* x, const float* y, int64_t n, cudaStream_t stream);

// Rotate-half RoPE in place, angles reduced in double as on the CPU.
cudaError_t Rope(float* x,               // [T, H, D]
                 const int32_t* pos,     // [T]
                 const float* inv_freq,  // [D/2]
                 int T, int H, int D, cudaStream_t stream);

// out[r, :] = src[rows[r], :]
cudaError_t GatherRows(float* out,           // [n_rows, cols]
                       const float* src,     // [*, cols]
                       const int32_t* rows,  // [n_rows], in range (checked by the caller)
                       int n_rows, int cols, cudaStream_t stream);

// out[r] = the column of row r's largest value, the lowest among equals; NaN
// never wins (a row of NaN only gives 0). The greedy token of logit rows.
cudaError_t ArgMaxRows(int32_t* out,    // [n_rows], device
                       const float* x,  // [n_rows, cols]
                       int n_rows, int cols, cudaStream_t stream);

// --- paged KV cache ---
// Arena layout on the device: layer-major, [layer][block][k|v][slot][kv_head][head_dim].
// One layer's K and V of all blocks are contiguous, so the keys of one layer of a
// sequence whose blocks are consecutive are one contiguous range, as in a
// one-layer arena. (Block-major, consecutive blocks of one layer lay the bytes
// of all layers apart, 1.4 MiB on the default model: a decode step's reads of
// one layer scatter over the whole session's memory, one device page per block.)
// KvReadBlock / KvWriteBlock keep the host format of one block, [layer][k|v][...].
struct KvWriteParams {
  bf16* arena = nullptr;
  int64_t block_stride = 0;  // elements between consecutive blocks of one layer (2 * plane)
  int64_t layer_offset = 0;  // layer * n_blocks * block_stride
  int64_t plane = 0;         // block_size * width: K to V distance inside a layer
  int block_size = 0;
  int width = 0;                   // n_kv_heads * head_dim
  const float* k = nullptr;        // [T, width], rotated at j mod L (or see pos)
  const float* v = nullptr;        // [T, width]
  const int32_t* slots = nullptr;  // [T] physical slot = block * block_size + offset
  int T = 0;
  // Set: k is un-rotated and each key is rotated (as Rope) at pos[t] while it
  // is written; k itself is left as it is.
  const int32_t* pos = nullptr;     // [T]
  const float* inv_freq = nullptr;  // [head_dim / 2]
  int head_dim = 0;                 // with pos: width = n_kv_heads * head_dim, head_dim % 8 == 0
};
cudaError_t KvWrite(const KvWriteParams& p, cudaStream_t stream);

// --- Dual Chunk Attention (docs/design.md §3; cpu::DcaAttention is the reference) ---

// One layer of the bf16 paged cache; same addressing as cpu::PagedKvView, with
// each sequence's block table found through DcaSeqDesc::block_table_offset.
struct PagedKvViewBf16 {
  const bf16* k = nullptr;
  const bf16* v = nullptr;
  int64_t block_stride = 0;
  int block_size = 0;
  int n_kv_heads = 0;
};

// A run of held keys of a context-parallel sequence (cpu::KeyRuns): absolute
// tokens first .. first + count - 1, stored from local index `local` on.
struct DcaKeyRun {
  int first = 0;
  int count = 0;
  int local = 0;
};

// One sequence of a batched attention call (device copy of engine's AttentionSeq
// or PartialAttentionSeq).
struct DcaSeqDesc {
  int q_row = 0;  // first row of the sequence in q/out
  int n_q = 0;    // new tokens: query r is token q_start + r
  int q_start = 0;
  int block_table_offset = 0;  // into DcaAttentionParams::block_tables
  int chunk_len = 0;           // L
  int chunk_size = 0;          // C
  float softmax_scale = 0.f;
  // Infini window (cpu::DcaParams): keys sink_tokens <= j < window_start are
  // absent (their blocks may be released) and never read.
  int sink_tokens = 0;
  int window_start = 0;
  // Keys a query sees: run_offset < 0, every key j <= i, stored at index j of the
  // block table; else only those of DcaAttentionParams::runs[run_offset ..
  // run_offset + n_runs) (ascending, disjoint, each count >= 1), stored back to
  // back at their local indices. DCA positions follow the absolute indices.
  int run_offset = -1;
  int n_runs = 0;
};

struct DcaAttentionParams {
  float* out = nullptr;      // [rows, H * D]; rows that see no key get 0
  float* lse = nullptr;      // [rows, H] log-sum-exp (natural log) of each row's scaled
                             // scores, -inf where it sees no key; nullptr: not written
  const float* q = nullptr;  // [rows, H * D], un-rotated
  PagedKvViewBf16 kv;
  const int32_t* block_tables = nullptr;  // all sequences' tables, concatenated
  const DcaSeqDesc* seqs = nullptr;
  // All sequences' held runs, concatenated. A partial call sets runs and lse
  // (null runs: every run_offset < 0 and lse null); the fast kernels compile a
  // variant without the run bookkeeping for the other calls.
  const DcaKeyRun* runs = nullptr;
  const float* inv_freq = nullptr;  // [D/2]
  int H = 0;
  int D = 0;
};

// Key tile of the fast kernels: they need chunk_len and block_size multiples of
// it, so a tile lies in one chunk (one query rotation per row) and one block;
// with held runs, also every run's first index and every run's count but the
// last's, so a tile lies in one run.
inline constexpr int kDcaKeyTile = 64;
// Query rows per thread block of the tiled prefill kernel (one head per block).
inline constexpr int kDcaTiledRows = 128;
// Rows per warp-per-row reference kernel block.
inline constexpr int kDcaSimpleRows = 4;
// (query, head) rows per block of the split-KV kernel, all of one kv head: one
// 16-row tensor-core tile.
inline constexpr int kDcaSplitRows = 16;

// Work item of the simple and tiled kernels: rows row0 .. row0 + rows of a sequence.
struct DcaRowTile {
  int seq = 0;
  int row0 = 0;
};

// Simple kernel: one warp per (query, head), D in {64, 128, 256}, any chunk_len
// and block size. The correctness baseline and the fallback.
// grid: (n_tiles, H); each tile covers kDcaSimpleRows rows.
cudaError_t DcaAttentionSimple(const DcaAttentionParams& p, const DcaRowTile* tiles, int n_tiles,
                               cudaStream_t stream);

// Tiled prefill kernel (flash-attention-2 style, bf16 mma.sync, fp32 softmax):
// D in {64, 128}; each tile covers kDcaTiledRows rows of one sequence.
// grid: (n_tiles, H).
bool DcaTiledSupported(int D);
cudaError_t DcaAttentionTiled(const DcaAttentionParams& p, const DcaRowTile* tiles, int n_tiles,
                              cudaStream_t stream);

// The tiled prefill kernel's work on Hopper tensor cores (wgmma): same tiles,
// arguments and results. Supported for D in {64, 128} on compute capability
// 9.0 when the build targets sm_90a.
bool DcaWgmmaSupported(int D, int device);
// How a warpgroup orders its two products and the softmax of one key tile:
// one after the other, or the softmax of a tile under the P V product of the
// tile before it (dca_attention_wgmma.cu).
enum class WgmmaSchedule { kSerial, kOverlapped };
cudaError_t DcaAttentionWgmma(const DcaAttentionParams& p, const DcaRowTile* tiles, int n_tiles,
                              WgmmaSchedule schedule, cudaStream_t stream);

// Split-KV (flash-decoding) kernel, bf16 mma.sync like the tiled kernel, D in
// {64, 128}. Rows are (query, head in group) pairs of one kv head: row rr of a
// sequence is query rr / group, q head kv_head * group + rr % group. A work
// item covers rows rr0 .. rr0 + n_rows (≤ kDcaSplitRows) and key tiles
// [tile_begin, tile_end). Items with out_slot < 0 are the only split of their
// rows and write `out` directly; the others write partial results to slot
// out_slot, and the last of the combine item's splits to finish (per kv head)
// merges them into `out`.
struct DcaSplitItem {
  int seq = 0;
  int rr0 = 0;
  int n_rows = 0;
  int tile_begin = 0;
  int tile_end = 0;
  int out_slot = -1;
  int combine = -1;  // index of the rows' DcaCombineItem where out_slot >= 0
};
// Rows whose key range was split: partial slots first_slot .. first_slot + n_slots.
struct DcaCombineItem {
  int seq = 0;
  int rr0 = 0;
  int n_rows = 0;
  int first_slot = 0;
  int n_slots = 0;
};
struct DcaSplitScratch {
  float* o = nullptr;   // [slots, n_kv_heads, kDcaSplitRows, D], normalised partial outputs
  float* ml = nullptr;  // [slots, n_kv_heads, kDcaSplitRows, 2]: max score (log2 units), sum
  // [n_combine, n_kv_heads] arrival counts of the splits; all 0 before a launch,
  // and the launch leaves them 0 (the last split resets its count).
  int* counters = nullptr;
};
bool DcaSplitSupported(int D);
// Split-KV blocks of head dim D that fit on one SM at once (shared memory and
// registers); at least 1.
int DcaSplitBlocksPerSm(int D);
// grid: (n_items, n_kv_heads).
cudaError_t DcaAttentionSplit(const DcaAttentionParams& p, const DcaSplitItem* items, int n_items,
                              const DcaCombineItem* combine, const DcaSplitScratch& scratch,
                              cudaStream_t stream);

// --- context-parallel merge (cpu::MergeAttention is the reference) ---
// out[n] = sum_r w_r o_r[n] / sum_r w_r, w_r = exp(lse_r[n] - max_r lse_r[n]), for
// the N = rows * H (query, head) rows of n_parts partials laid out as the
// backend's partials: partial r is [rows, H * (D + 1)] f32 at
// partials + r * rows * H * (D + 1), o [rows, H, D] then lse [rows, H]. Rows
// where every lse is -inf get 0.
cudaError_t MergeAttention(float* out,             // [rows, H * D]
                           const float* partials,  // [n_parts * rows, H * (D + 1)]
                           int n_parts, int rows, int H, int D, cudaStream_t stream);
// The same for partials anywhere: partial r's o [rows, H, D] at o + r * o_stride
// and its lse [rows, H] at lse + r * lse_stride (floats).
cudaError_t MergeAttentionStrided(float* out, const float* o, int64_t o_stride, const float* lse,
                                  int64_t lse_stride, int n_parts, int rows, int H, int D,
                                  cudaStream_t stream);

// --- Infini-attention compressive memory (docs/design.md §4; cpu::InfiniRetrieve,
// cpu::InfiniFold and cpu::InfiniMix are the references) ---
// One layer's memory: M [n_kv_heads, D, D] (row: key dim, column: value dim)
// and z [n_kv_heads, D], fp32. σ = ELU + 1 on UN-rotated q and k. GQA: q head h
// reads kv head h / (H / n_kv_heads). Sums run in fp32 in a fixed order (no
// atomics), so a launch is deterministic.

// out[t, h] = σ(q[t, h]) M[g] / max(σ(q[t, h])·z[g], eps); exactly 0 where
// σ(q)·z = 0 (an empty memory). D ≤ 1024. grid: (T, H), one block per row.
cudaError_t InfiniRetrieve(float* out,        // [T, H, D]
                           const float* q,    // [T, H, D], un-rotated
                           const float* mem,  // [n_kv_heads, D, D]
                           const float* z,    // [n_kv_heads, D]
                           int T, int H, int n_kv_heads, int D, float eps, cudaStream_t stream);

// Folds one segment of T tokens into the memory, per kv head g:
//   linear: M[g] += σ(K_g)ᵀ V_g
//   delta:  M[g] += σ(K_g)ᵀ (V_g − σ(K_g) M[g] / max(σ(K_g) z[g], eps))
// and z[g] += Σ_t σ(K_g[t]). The delta correction reads the memory as it was
// before the segment (a first kernel writes the corrected values to
// `scratch`, then the batched σ(K)ᵀU product updates M and z).
struct InfiniFoldParams {
  float* mem = nullptr;      // [n_kv_heads, D, D], updated in place
  float* z = nullptr;        // [n_kv_heads, D], updated in place
  const float* k = nullptr;  // [T, n_kv_heads, D], un-rotated
  const float* v = nullptr;  // [T, n_kv_heads, D]
  float* scratch = nullptr;  // [T, n_kv_heads, D]; delta only (may be null for linear)
  int T = 0;
  int n_kv_heads = 0;
  int D = 0;  // ≤ 1024
  bool delta = false;
  float eps = 1e-6f;
};
cudaError_t InfiniFold(const InfiniFoldParams& p, cudaStream_t stream);

// out[t, h] = s_h a_mem[t, h] + (1 − s_h) a_dca[t, h], s_h = sigmoid(beta[h]).
cudaError_t InfiniMix(float* out,          // [T, H, D] (may alias a_mem or a_dca)
                      const float* a_mem,  // [T, H, D]
                      const float* a_dca,  // [T, H, D]
                      const float* beta,   // [H]
                      int T, int H, int D, cudaStream_t stream);

}  // namespace longctx::cuda

// The compute backend the model is written against (docs/design.md §1). Chosen once at
// start-up (backend_factory.h): CpuBackend is always built, CudaBackend when
// LONGCTX_CUDA is on.
//
// Memory handed out by a backend ("device memory") is only touched through the
// backend. Ops are enqueued in order on the backend's one stream; errors of an op
// may surface at a later Synchronize().
//
// Thread safety: a Backend is owned by one engine thread; none of its methods may
// be called concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/ops.h"

namespace longctx {

// Element types, and the block types of weights kept as the model file stores
// them (GGUF; a row of a block type is whole blocks, kernels/ops.h WeightFormat).
enum class DType { kF32, kBF16, kF16, kQ4_0, kQ4_1, kQ8_0, kQ4_K, kQ5_K, kQ6_K };
// Bytes of one element. REQUIRES: an element type (f32, bf16, f16).
size_t DTypeSize(DType t);
// Bytes of a row of `cols` elements; -1 when `cols` is not a whole number of
// the type's blocks.
int64_t DTypeRowBytes(DType t, int64_t cols);
// The kernels' format of a non-f32 type.
cpu::WeightFormat WeightFormatOf(DType t);  // REQUIRES: t != kF32

class Backend;

// Owned device allocation; freed through its backend.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend* backend, void* data, size_t bytes)
      : backend_(backend), data_(data), bytes_(bytes) {}
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  void Release();
  Backend* backend_ = nullptr;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Non-owning 2-D view [rows, cols] of contiguous row-major device memory.
struct Tensor {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t numel() const { return rows * cols; }
  size_t bytes() const { return static_cast<size_t>(rows * DTypeRowBytes(dtype, cols)); }
  Tensor Rows(int64_t first, int64_t count) const;  // REQUIRES: in range
};

// Geometry of the paged KV arena (one arena per backend, all layers per block).
// Physical block b holds, for each layer l, K then V of block_size tokens:
// [layer][k|v][slot][kv_head][head_dim].
struct KvGeometry {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int block_size = 0;
  int64_t n_blocks = 0;
  int64_t ElementsPerBlock() const {
    return int64_t{n_layers} * 2 * block_size * n_kv_heads * head_dim;
  }
};

// One sequence's part of a batched attention call.
struct AttentionSeq {
  int q_row = 0;                         // first row of this sequence in q/out
  int n_q = 0;                           // new tokens
  int q_start = 0;                       // absolute index of the first new token
  std::span<const int32_t> block_table;  // host memory, ceil((q_start+n_q)/block_size)
  cpu::DcaParams dca;
};

// One sequence's part of a context-parallel attention call (docs/design.md §7): its
// queries attend only to the keys this rank holds, runs of absolute token indices
// stored back to back in the sequence's local block table (cpu::KeyRuns).
struct PartialAttentionSeq {
  int q_row = 0;                         // first row of this sequence in q
  int n_q = 0;                           // new tokens
  int q_start = 0;                       // absolute index of the first new token
  std::span<const int32_t> block_table;  // host memory, local indices
  std::span<const int32_t> run_first;    // host memory, absolute first index per run
  std::span<const int32_t> run_count;    // host memory, tokens per run
  cpu::DcaParams dca;
};

// An RMSNorm fused before a product (Backend::RmsNormLinearMany and
// RmsNormLinearSwiGlu): the product's input is RmsNorm(x, w, eps).
struct RowNorm {
  Tensor w;  // [K]
  float eps = 0.f;
  Tensor xn;  // [T, K] scratch: the normalised rows where a backend runs the
              // two ops apart; its contents are undefined afterwards
};

// One product of a LinearMany call: out = x w^T (+ bias).
struct LinearJob {
  Tensor out;                    // [T, N]
  Tensor w;                      // [N, K]
  const Tensor* bias = nullptr;  // [N]; nullptr: none
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string Name() const = 0;
  // Element type of weights, activations and KV on this backend.
  virtual DType WeightType() const = 0;
  virtual DType ActivationType() const = 0;
  virtual DType KvType() const = 0;

  // Whether weights of type t may come as they are (UploadRaw) rather than
  // as f32: the backend multiplies them in that type (block types: the
  // quantized products of kernels/ops.h). The loader keeps such matrices in
  // their file's blocks.
  virtual bool TakesWeights(DType t) const { return t == DType::kF32; }

  // --- memory ---
  virtual absl::StatusOr<DeviceBuffer> Allocate(size_t bytes) = 0;
  virtual void Free(void* data) = 0;
  // f32 host data converted to the tensor's dtype.
  virtual absl::Status Upload(Tensor dst, const float* host) = 0;
  // dst.bytes() bytes already in dst.dtype's layout (a weight's GGUF rows).
  // INVALID_ARGUMENT when the size differs or !TakesWeights(dst.dtype).
  virtual absl::Status UploadRaw(Tensor dst, std::span<const uint8_t> bytes);
  // Tensor converted to f32 host data.
  virtual absl::Status Download(float* host, Tensor src) = 0;
  virtual absl::Status Synchronize() = 0;
  // Device memory free now, where the backend has its own (UNIMPLEMENTED for
  // host memory).
  virtual absl::StatusOr<int64_t> FreeDeviceBytes() const {
    return absl::UnimplementedError("no device memory");
  }

  // --- KV arena ---
  // Allocates the arena for `geometry` (n_blocks blocks). Called once.
  virtual absl::Status InitKv(const KvGeometry& geometry) = 0;
  // Writes rows of k/v ([T, n_kv_heads * head_dim], k already rotated) of
  // `layer` to slots (physical block * block_size + offset), one per row.
  virtual absl::Status KvWrite(int layer, Tensor k, Tensor v, std::span<const int32_t> slots) = 0;
  // Rope(k, n_kv_heads, pos, inv_freq) then KvWrite(layer, k, v, slots): the
  // new keys rotated (at j mod L, pos [T]) as they are cached, in one pass
  // where a backend has one. k's contents are undefined afterwards.
  virtual absl::Status RopeKvWrite(int layer, Tensor k, Tensor v, std::span<const int32_t> slots,
                                   std::span<const int32_t> pos, std::span<const float> inv_freq);
  // Copies one physical block's contents (all layers) to host f32 and back:
  // export/import and the Infini fold.
  virtual absl::Status KvReadBlock(int64_t block, float* host) = 0;
  virtual absl::Status KvWriteBlock(int64_t block, const float* host) = 0;

  // --- ops (shapes as in kernels/ops.h) ---
  virtual absl::Status Embedding(Tensor out, Tensor table, std::span<const int32_t> ids) = 0;
  virtual absl::Status RmsNorm(Tensor out, Tensor x, Tensor w, float eps) = 0;
  virtual absl::Status Linear(Tensor out, Tensor x, Tensor w, const Tensor* bias) = 0;
  virtual absl::Status SwiGlu(Tensor out, Tensor gate, Tensor up) = 0;
  virtual absl::Status AddInPlace(Tensor x, Tensor y) = 0;
  // x viewed as [T, n_heads, head_dim]; pos [T].
  virtual absl::Status Rope(Tensor x, int n_heads, std::span<const int32_t> pos,
                            std::span<const float> inv_freq) = 0;
  // q, out: [total new tokens, n_heads * head_dim]; q un-rotated.
  virtual absl::Status Attention(Tensor out, Tensor q, int layer, int n_heads,
                                 std::span<const AttentionSeq> seqs,
                                 std::span<const float> inv_freq) = 0;
  // out[r] = src[rows[r]]
  virtual absl::Status GatherRows(Tensor out, Tensor src, std::span<const int32_t> rows) = 0;
  // out[r] = the column of row r of x ([out.size(), N]) holding its largest
  // value, the lowest among equals (std::max_element's choice); NaN never wins
  // (a row of NaN only gives 0). Results on the host: the greedy tokens of
  // logit rows without their download. Reads results back, so not inside a
  // step bracket. The default downloads the rows and searches on the host.
  virtual absl::Status ArgMaxRows(Tensor x, std::span<int32_t> out);
  // dst = cpu::FillUniform(seed, lo, hi) in dst's dtype: synthetic weights made
  // where they live. The default generates on the host and uploads.
  virtual absl::Status FillUniform(Tensor dst, uint64_t seed, float lo, float hi);

  // --- fused products (a decode step's launches: one kernel each where the
  // backend has one) ---
  // The defaults compose the ops above in the order given, so a backend without
  // its own version computes exactly what the separate calls would. Outputs
  // must not overlap the inputs or each other (INVALID_ARGUMENT, checked before
  // anything runs, as are the shapes). A `scratch` tensor holds an
  // intermediate product where a backend needs one; its contents are undefined
  // afterwards.
  //
  // Linear(job.out, x, job.w, job.bias) for each job in order: products that
  // share their input (q, k and v of a layer). x: [T, K].
  virtual absl::Status LinearMany(std::span<const LinearJob> jobs, Tensor x);
  // out = silu(x w_gate^T) * (x w_up^T): Linear(out, x, w_gate), Linear(scratch,
  // x, w_up), SwiGlu(out, out, scratch). out, scratch: [T, F]; x: [T, K];
  // w_gate, w_up: [F, K].
  virtual absl::Status LinearSwiGlu(Tensor out, Tensor x, Tensor w_gate, Tensor w_up,
                                    Tensor scratch);
  // x += h w^T (a residual update): Linear(scratch, h, w), AddInPlace(x, scratch).
  // x, scratch: [T, N]; h: [T, K]; w: [N, K].
  virtual absl::Status LinearAddInPlace(Tensor x, Tensor h, Tensor w, Tensor scratch);
  // LinearMany(jobs, RmsNorm(x, norm.w, norm.eps)) and LinearSwiGlu(out,
  // RmsNorm(x, ...), w_gate, w_up, scratch): a layer's normalised input feeds
  // only its products, so a backend may fold the norm into them. The defaults
  // write RmsNorm(norm.xn, x, norm.w, norm.eps) then run the product on norm.xn;
  // norm.xn must not overlap x or any output.
  virtual absl::Status RmsNormLinearMany(std::span<const LinearJob> jobs, Tensor x,
                                         const RowNorm& norm);
  virtual absl::Status RmsNormLinearSwiGlu(Tensor out, Tensor x, const RowNorm& norm, Tensor w_gate,
                                           Tensor w_up, Tensor scratch);
  // A layer's whole feed-forward block, x += SwiGlu(RmsNorm(x) w_gate^T,
  // RmsNorm(x) w_up^T) w_down^T: RmsNormLinearSwiGlu(gate, x, norm, w_gate,
  // w_up, up), then LinearAddInPlace(x, gate, w_down, norm.xn). gate, up:
  // [T, F]; w_down: [D, F]. A backend may keep the intermediate products in
  // its own precision between the three products (gate's contents are then
  // undefined afterwards, as up's and norm.xn's are).
  virtual absl::Status RmsNormFeedForward(Tensor x, const RowNorm& norm, Tensor w_gate,
                                          Tensor w_up, Tensor w_down, Tensor gate, Tensor up);

  // --- step graphs (optional) ---
  // A forward step may be bracketed by BeginStep / EndStep(launch). Inside the
  // bracket a backend may defer the step's device work and run it at EndStep as
  // one recorded graph (CUDA graphs), so no op inside may read results back
  // (Download, Synchronize). EndStep(false) drops the step without running it.
  // EndStep(true) returns ABORTED when the backend could not run the deferred
  // step (the recording did not fit this step's arguments or failed): nothing of
  // the step ran and the caller redoes it outside a bracket. Backends without
  // graphs run every op at once; their BeginStep / EndStep do nothing.
  virtual absl::Status BeginStep() { return absl::OkStatus(); }
  virtual absl::Status EndStep(bool /*launch*/) { return absl::OkStatus(); }

  // --- context-parallel attention (docs/design.md §7; CPU reference in kernels/ops.h) ---
  // A partial of R rows is f32 [R, n_heads * (head_dim + 1)] holding o
  // [R, n_heads, head_dim] followed by lse [R, n_heads]: ready to gather as is.
  // Backends without these ops return UNIMPLEMENTED.
  //
  // Attention of q (as in Attention) over the held keys of each sequence only.
  virtual absl::Status PartialAttention(Tensor partial, Tensor q, int layer, int n_heads,
                                        std::span<const PartialAttentionSeq> seqs,
                                        std::span<const float> inv_freq);
  // out [R, n_heads * head_dim] = log-sum-exp merge of `partials`, n_parts
  // partials of R rows back to back (f32 [n_parts * R, n_heads * (head_dim + 1)]).
  virtual absl::Status MergeAttention(Tensor out, Tensor partials, int n_parts, int n_heads);

  // --- Infini-attention memory (docs/design.md §4; CPU reference in kernels/ops.h) ---
  // A layer's memory, M [n_kv_heads, D, D] and z [n_kv_heads, D] fp32, is
  // session state on the host; backends with kernels stage it per call.
  // Without them (HasInfiniKernels() false) callers run the cpu:: ops on host
  // copies and these return UNIMPLEMENTED.
  virtual bool HasInfiniKernels() const { return false; }
  // attn = sigmoid(β)·A_mem(q) + (1 − sigmoid(β))·attn, A_mem the retrieval of
  // q from the memory. attn, q: [T, n_heads * D], q un-rotated; beta [n_heads].
  virtual absl::Status InfiniMix(Tensor attn, Tensor q, int n_heads, int n_kv_heads,
                                 const float* mem, const float* z, std::span<const float> beta,
                                 float eps);
  // Folds one layer of whole KV blocks into mem and z (host, updated in place
  // when it returns): the tokens of `blocks` in order, T = blocks.size() *
  // block_size, their cached keys rotated by back_pos [T] (−(j mod L): back to
  // un-rotated) before the fold.
  virtual absl::Status InfiniFoldKv(float* mem, float* z, int layer,
                                    std::span<const int32_t> blocks,
                                    std::span<const int32_t> back_pos,
                                    std::span<const float> inv_freq, cpu::InfiniUpdateRule rule,
                                    float eps);

 protected:
  // The argument checks of the fused products (shapes, overlaps), shared by
  // the defaults and the backends' own versions.
  static absl::Status CheckLinearMany(std::span<const LinearJob> jobs, Tensor x);
  static absl::Status CheckLinearSwiGlu(Tensor out, Tensor x, Tensor w_gate, Tensor w_up,
                                        Tensor scratch);
  static absl::Status CheckLinearAddInPlace(Tensor x, Tensor h, Tensor w, Tensor scratch);
  // Those of LinearMany / LinearSwiGlu, and norm.w [x.cols], norm.xn the shape
  // of x and apart from x and from every output.
  static absl::Status CheckRmsNormLinearMany(std::span<const LinearJob> jobs, Tensor x,
                                             const RowNorm& norm);
  static absl::Status CheckRmsNormLinearSwiGlu(Tensor out, Tensor x, const RowNorm& norm,
                                               Tensor w_gate, Tensor w_up, Tensor scratch);
  // Those of both of RmsNormFeedForward's steps, before either runs.
  static absl::Status CheckRmsNormFeedForward(Tensor x, const RowNorm& norm, Tensor w_gate,
                                              Tensor w_up, Tensor w_down, Tensor gate, Tensor up);
};

}  // namespace longctx

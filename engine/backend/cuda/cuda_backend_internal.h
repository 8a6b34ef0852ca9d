// The CUDA backend's class, shared by the files that implement it, one concern
// each: cuda_backend.cc (set-up, memory, copies and the public accessors),
// cuda_backend_kv.cc (the KV arena), cuda_backend_ops.cc (row-wise ops),
// cuda_backend_linear.cc (products), cuda_backend_attention.cc (attention) and
// cuda_backend_infini.cc (Infini memory). Nothing outside those files includes
// it (checked by layering_test); the rest of the project sees the backend
// through cuda_backend.h.
//
// Thread safety: as every Backend, owned by one engine thread.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/backend/backend.h"
#include "engine/backend/cuda/attention_plan.h"
#include "engine/backend/cuda/cuda_check.h"
#include "engine/backend/cuda/cuda_options.h"
#include "engine/backend/cuda/device_memory.h"
#include "engine/backend/cuda/step_graph.h"
#include "engine/util/status_macros.h"
#include "kernels/cuda/ops_cuda.h"

namespace longctx::cuda_backend_internal {

// Elements converted per step of Upload / Download (a 32 MiB f32 staging buffer).
inline constexpr int64_t kConvertChunk = int64_t{8} << 20;

enum class OpId : uint64_t {
  kEmbedding = 1,
  kRmsNorm,
  kLinear,
  kSwiGlu,
  kAdd,
  kRope,
  kKvWrite,
  kAttention,
  kGather,
  kLinearMany,
  kLinearSwiGlu,
  kLinearAdd,
  kGemmMany,
  kFeedForward,
};

inline uint64_t U(const void* p) { return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)); }
inline uint64_t U(OpId id) { return static_cast<uint64_t>(id); }
inline uint64_t U(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

inline cuda::ElemType ElemOf(DType t) {
  return t == DType::kBF16 ? cuda::ElemType::kBF16 : cuda::ElemType::kF32;
}

inline absl::Status RequireF32(const Tensor& t, const char* op, const char* what) {
  if (t.dtype != DType::kF32 || (t.data == nullptr && t.numel() > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda backend: ", op, ": ", what, " must be an f32 device tensor"));
  }
  return absl::OkStatus();
}

inline absl::Status RequireShape(bool ok, const char* op) {
  return ok ? absl::OkStatus()
            : absl::InvalidArgumentError(absl::StrCat("cuda backend: shape mismatch in ", op));
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaBackendOptions& options) : options_(options) {}
  ~CudaBackend() override;

  absl::Status Init();

  std::string Name() const override { return absl::StrCat("cuda:", options_.device); }
  DType WeightType() const override { return DType::kBF16; }
  DType ActivationType() const override { return DType::kF32; }
  DType KvType() const override { return DType::kBF16; }

  absl::StatusOr<DeviceBuffer> Allocate(size_t bytes) override;
  void Free(void* data) override;
  absl::Status Upload(Tensor dst, const float* host) override;
  absl::Status Download(float* host, Tensor src) override;
  absl::Status Synchronize() override;
  absl::StatusOr<int64_t> FreeDeviceBytes() const override {
    size_t free_bytes = 0, total = 0;
    CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total));
    return static_cast<int64_t>(free_bytes);
  }

  absl::Status InitKv(const KvGeometry& geometry) override;
  absl::Status KvWrite(int layer, Tensor k, Tensor v, std::span<const int32_t> slots) override;
  // One kernel: keys rotated as they are written.
  absl::Status RopeKvWrite(int layer, Tensor k, Tensor v, std::span<const int32_t> slots,
                           std::span<const int32_t> pos, std::span<const float> inv_freq) override;
  absl::Status KvReadBlock(int64_t block, float* host) override;
  absl::Status KvWriteBlock(int64_t block, const float* host) override;

  absl::Status Embedding(Tensor out, Tensor table, std::span<const int32_t> ids) override;
  absl::Status RmsNorm(Tensor out, Tensor x, Tensor w, float eps) override;
  absl::Status Linear(Tensor out, Tensor x, Tensor w, const Tensor* bias) override;
  absl::Status SwiGlu(Tensor out, Tensor gate, Tensor up) override;
  absl::Status AddInPlace(Tensor x, Tensor y) override;
  absl::Status Rope(Tensor x, int n_heads, std::span<const int32_t> pos,
                    std::span<const float> inv_freq) override;
  absl::Status Attention(Tensor out, Tensor q, int layer, int n_heads,
                         std::span<const AttentionSeq> seqs,
                         std::span<const float> inv_freq) override;
  absl::Status GatherRows(Tensor out, Tensor src, std::span<const int32_t> rows) override;
  absl::Status ArgMaxRows(Tensor x, std::span<int32_t> out) override;
  absl::Status FillUniform(Tensor dst, uint64_t seed, float lo, float hi) override;
  // One launch of the few-row kernel where it applies, else the composition.
  absl::Status LinearMany(std::span<const LinearJob> jobs, Tensor x) override;
  absl::Status LinearSwiGlu(Tensor out, Tensor x, Tensor w_gate, Tensor w_up,
                            Tensor scratch) override;
  absl::Status LinearAddInPlace(Tensor x, Tensor h, Tensor w, Tensor scratch) override;
  // The norm folded into the few-row kernels' launch where it applies.
  absl::Status RmsNormLinearMany(std::span<const LinearJob> jobs, Tensor x,
                                 const RowNorm& norm) override;
  absl::Status RmsNormLinearSwiGlu(Tensor out, Tensor x, const RowNorm& norm, Tensor w_gate,
                                   Tensor w_up, Tensor scratch) override;
  // Above kGemvMmaMaxT rows of bf16 weights (prefill): the norm written in bf16,
  // the gate and up GEMMs, SwiGlu written in bf16 as the down GEMM's input,
  // and that GEMM accumulating into x: no f32 copy of the normalised rows or
  // of the SwiGlu product, and two launches fewer. Else the composition.
  absl::Status RmsNormFeedForward(Tensor x, const RowNorm& norm, Tensor w_gate, Tensor w_up,
                                  Tensor w_down, Tensor gate, Tensor up) override;
  // Products of bf16 weights with more rows than the few-row kernel takes,
  // through cuBLAS with x converted to bf16 once for all of them: out = x w^T
  // (+ bias), or out += x w^T with `accumulate` (the GEMM's beta, so no
  // separate add). With `norm`, the products take RmsNorm(x) instead of x,
  // written in bf16 by one kernel (no f32 rows of it, no conversion). False
  // for at most kGemvMaxT rows or a weight not in bf16: the caller composes
  // the separate ops then.
  absl::StatusOr<bool> GemmBf16Many(std::span<const LinearJob> jobs, Tensor x, bool accumulate,
                                    const RowNorm* norm = nullptr);
  // job.out (+)= x_bf16_[T, K] job.w^T (+ job.bias), bf16 weights, f32 out.
  absl::Status GemmBf16(const LinearJob& job, int T, int K, float beta);

  absl::Status BeginStep() override { return graph_.Begin(); }
  absl::Status EndStep(bool launch) override { return graph_.End(launch); }

  const CudaStepGraphStats& GraphStats() const { return graph_.stats(); }
  absl::Status SetStepGraphs(bool enabled) { return graph_.SetEnabled(enabled); }
  absl::StatusOr<double> CopyBandwidth(size_t bytes, int reps);

  absl::Status PartialAttention(Tensor partial, Tensor q, int layer, int n_heads,
                                std::span<const PartialAttentionSeq> seqs,
                                std::span<const float> inv_freq) override;
  absl::Status MergeAttention(Tensor out, Tensor partials, int n_parts, int n_heads) override;

  bool HasInfiniKernels() const override { return true; }
  absl::Status InfiniMix(Tensor attn, Tensor q, int n_heads, int n_kv_heads, const float* mem,
                         const float* z, std::span<const float> beta, float eps) override;
  absl::Status InfiniFoldKv(float* mem, float* z, int layer, std::span<const int32_t> blocks,
                            std::span<const int32_t> back_pos, std::span<const float> inv_freq,
                            cpu::InfiniUpdateRule rule, float eps) override;

 private:
  struct StagedAttention;
  // Checks shared by Attention and PartialAttention; fills the plan's shape.
  absl::Status CheckAttention(Tensor q, int layer, int n_heads, std::span<const float> inv_freq,
                              AttentionPlanShape* shape);
  // Uploads a plan's work lists and tables in one staged copy and describes them in *w.
  absl::Status StageAttention(const AttentionPlan& plan, std::span<const float> inv_freq,
                              StagedAttention* w);
  // Launches a staged call: out [rows, H * D]; lse [rows, H] for a partial call
  // (the plan of PlanPartialAttention), else null.
  absl::Status LaunchAttention(const StagedAttention& w, float* out, float* lse, Tensor q,
                               int layer, int n_heads);
  // Prefill of one sequence whose query tiles alone would leave SMs idle (a
  // piece of a few thousand tokens after a long context, few heads): how many
  // parts to cut its keys into (1: none).
  int PrefillKeySplits(std::span<const AttentionSeq> seqs, int n_heads) const;
  // That prefill as `parts` partial attentions over consecutive key ranges,
  // run in one launch, merged by log-sum-exp into out.
  absl::Status SplitPrefillAttention(Tensor out, Tensor q, int layer, int n_heads,
                                     const AttentionSeq& s, int parts,
                                     std::span<const float> inv_freq, AttentionPlanShape shape);
  // LinearMany / LinearSwiGlu with an optional fused norm (checked by the caller).
  absl::Status FusedLinearMany(std::span<const LinearJob> jobs, Tensor x, const RowNorm* norm);
  absl::Status FusedLinearSwiGlu(Tensor out, Tensor x, const RowNorm* norm, Tensor w_gate,
                                 Tensor w_up, Tensor scratch);
  // The trace key of a fused norm (zeros without one).
  void TraceNorm(const RowNorm* norm) {
    Trace({U(norm != nullptr ? norm->w.data : nullptr),
           static_cast<uint64_t>(norm != nullptr ? norm->w.dtype : DType::kF32),
           U(norm != nullptr ? norm->eps : 0.f)});
  }
  // KvWrite, and RopeKvWrite with pos and inv_freq set.
  absl::Status WriteKv(int layer, Tensor k, Tensor v, std::span<const int32_t> slots,
                       std::span<const int32_t> pos, std::span<const float> inv_freq);
  bool Replaying() const { return graph_.replaying(); }
  void Trace(std::initializer_list<uint64_t> key) { graph_.Trace(key); }
  absl::Status RequireNotDeferred(const char* op) const;

  template <typename T>
  absl::StatusOr<const T*> StageSpan(std::span<const T> s) {
    ASSIGN_OR_RETURN(void* d, StageArgs(s.data(), s.size_bytes(), s.size_bytes()));
    return static_cast<const T*>(d);
  }
  // Host arguments of one op: through the staging ring outside recorded steps;
  // inside them, at a fixed place of the step's argument buffer that holds up
  // to `capacity` bytes (room for growth between replays).
  absl::StatusOr<void*> StageArgs(const void* host, size_t bytes, size_t capacity);
  // Grows `buf` outside recorded steps; inside them breaks the step instead.
  absl::Status ReserveScratch(ScratchBuffer& buf, size_t bytes);
  // f32 host <-> device tensor of either dtype, through the conversion buffer.
  absl::Status CopyIn(void* dst, DType dtype, const float* host, int64_t n);
  absl::Status CopyOut(float* host, const void* src, DType dtype, int64_t n);
  // One physical block of every layer between the host format of KvReadBlock
  // ([layer][k|v][slot][kv_head][head_dim], f32) and the layer-major arena: a
  // group of layers per pass through the conversion buffer. Exactly one of
  // `out` and `in` is set.
  absl::Status CopyKvBlock(int64_t block, float* out, const float* in);

  // Layer-major arena (kernels/cuda/ops_cuda.h): K then V of one block of one
  // layer are KvBlockStride() elements; a layer holds n_blocks of them.
  int64_t KvPlane() const {
    return int64_t{kv_geometry_.block_size} * kv_geometry_.n_kv_heads * kv_geometry_.head_dim;
  }
  int64_t KvBlockStride() const { return 2 * KvPlane(); }
  cuda::bf16* KvLayer(int layer) const {
    return kv_ + int64_t{layer} * kv_geometry_.n_blocks * KvBlockStride();
  }

  CudaBackendOptions options_;
  int num_sms_ = 0;
  bool wgmma_ = false;                   // tiled attention on the Hopper kernel
  int split_blocks_per_sm_[2] = {1, 1};  // resident split-KV blocks, D 64 and 128
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  ArgStaging staging_;
  ScratchBuffer convert_;  // f32 staging of Upload / Download / KV blocks
  ScratchBuffer x_bf16_;   // Linear's activations in bf16 for a cuBLAS GEMM
  ScratchBuffer argmax_;   // ArgMaxRows results before their download
  ScratchBuffer split_o_;  // split-KV partial outputs
  ScratchBuffer split_ml_;
  ScratchBuffer split_counts_;   // the splits' arrival counts (DcaSplitScratch::counters)
  ScratchBuffer infini_;         // Infini memory, its retrieval and the fold's K, V
  ScratchBuffer prefill_split_;  // SplitPrefillAttention: copies of q, partials
  // The staged work lists of the last Attention call of a recorded step. The
  // layers of one step pass the same sequences, so later layers reuse them
  // instead of planning and staging them again.
  struct StagedAttention {
    uint64_t step = 0;  // StepGraph::step_serial(); 0 = none
    const AttentionSeq* seqs = nullptr;
    size_t n_seqs = 0;
    const float* inv_freq = nullptr;
    int n_heads = 0;
    int64_t q_rows = 0;
    unsigned char* base = nullptr;
    size_t at_seqs = 0, at_freq = 0, at_runs = 0, at_simple = 0, at_tiled = 0, at_split = 0,
           at_combine = 0, at_tables = 0;
    int n_descs = 0, n_simple = 0, n_tiled = 0, n_split = 0, n_combine = 0, split_slots = 0;
  };
  StagedAttention staged_attention_;
  KvGeometry kv_geometry_;
  cuda::bf16* kv_ = nullptr;  // owned arena
  void* cublas_workspace_ = nullptr;

  StepGraph graph_;  // CudaBackendOptions::step_graphs
};

}  // namespace longctx::cuda_backend_internal

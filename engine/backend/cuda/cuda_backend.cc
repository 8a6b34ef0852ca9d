#include "engine/backend/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/attention_plan.h"
#include "engine/backend/cuda/cuda_check.h"
#include "engine/backend/cuda/device_memory.h"
#include "engine/backend/cuda/step_graph.h"
#include "engine/util/status_macros.h"
#include "kernels/cuda/ops_cuda.h"

namespace longctx {
namespace {

// Elements converted per step of Upload / Download (a 32 MiB f32 staging buffer).
constexpr int64_t kConvertChunk = int64_t{8} << 20;
// cuBLAS workspace, fixed so that captured GEMMs use the same memory on replay.
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

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
};

uint64_t U(const void* p) { return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)); }
uint64_t U(OpId id) { return static_cast<uint64_t>(id); }
uint64_t U(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

cuda::ElemType ElemOf(DType t) {
  return t == DType::kBF16 ? cuda::ElemType::kBF16 : cuda::ElemType::kF32;
}

absl::Status RequireF32(const Tensor& t, const char* op, const char* what) {
  if (t.dtype != DType::kF32 || (t.data == nullptr && t.numel() > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda backend: ", op, ": ", what, " must be an f32 device tensor"));
  }
  return absl::OkStatus();
}

absl::Status RequireShape(bool ok, const char* op) {
  return ok ? absl::OkStatus()
            : absl::InvalidArgumentError(absl::StrCat("cuda backend: shape mismatch in ", op));
}

// The few-row kernels' launch for the products of `jobs` on x with `epilogue`
// (kSwiGlu: one job, its up weights w_up), the RMSNorm `norm` fused before them
// when set, or nullopt where it does not apply: more than kGemvMmaMaxT rows or
// kGemvMaxJobs jobs, a weight not in bf16, shapes or addresses the kernels do
// not take, or nothing to compute.
std::optional<cuda::GemvParams> FewRowGemv(std::span<const LinearJob> jobs, Tensor x,
                                           cuda::GemvEpilogue epilogue,
                                           const Tensor* w_up = nullptr,
                                           const RowNorm* norm = nullptr) {
  if (x.rows < 1 || x.rows > cuda::kGemvMmaMaxT || jobs.empty() ||
      jobs.size() > static_cast<size_t>(cuda::kGemvMaxJobs) ||
      (w_up != nullptr && w_up->dtype != DType::kBF16)) {
    return std::nullopt;
  }
  cuda::GemvParams p;
  p.n_jobs = static_cast<int>(jobs.size());
  p.x = static_cast<const float*>(x.data);
  p.T = static_cast<int>(x.rows);
  p.K = static_cast<int>(x.cols);
  p.epilogue = epilogue;
  if (norm != nullptr) {
    p.norm_w = norm->w.data;
    p.norm_type = ElemOf(norm->w.dtype);
    p.norm_eps = norm->eps;
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    const LinearJob& j = jobs[i];
    if (j.w.dtype != DType::kBF16) return std::nullopt;
    cuda::GemvJob& g = p.jobs[i];
    g.out = static_cast<float*>(j.out.data);
    g.w = static_cast<const cuda::bf16*>(j.w.data);
    g.w_up = w_up != nullptr ? static_cast<const cuda::bf16*>(w_up->data) : nullptr;
    g.bias = j.bias != nullptr ? j.bias->data : nullptr;
    g.bias_type = j.bias != nullptr ? ElemOf(j.bias->dtype) : cuda::ElemType::kF32;
    g.N = static_cast<int>(j.w.rows);
  }
  if (!cuda::GemvSupported(p)) return std::nullopt;
  return p;
}

// Whether a fused RMSNorm stays folded into the few-row launch `p`. Above
// kGemvMaxT rows (tensor cores) the fold costs a multiply per activation. At
// up to kGemvMaxT rows the CUDA-core kernel scales every weight vector: free
// for small products, which are bound by launches, but a quarter more
// instructions per weight for large ones, which are bound by the weight stream
// (the Llama-2-7B shape's batch-1 step on an H200 went from 4.93 to 5.62 ms),
// so there the norm runs apart.
constexpr int64_t kFoldNormMaxWeights = int64_t{4} << 20;
bool FoldNorm(const cuda::GemvParams& p) {
  return p.T > cuda::kGemvMaxT || cuda::GemvWeights(p) <= kFoldNormMaxWeights;
}

// Appends `v` to a byte pack at a 16-byte boundary; returns its offset.
template <typename T>
size_t PackAppend(std::vector<unsigned char>& pack, const std::vector<T>& v) {
  const size_t at = (pack.size() + 15) / 16 * 16;
  pack.resize(at + v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(pack.data() + at, v.data(), v.size() * sizeof(T));
  return at;
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
  // Products of bf16 weights with more rows than the few-row kernel takes,
  // through cuBLAS with x converted to bf16 once for all of them: out = x w^T
  // (+ bias), or out += x w^T with `accumulate` (the GEMM's beta, so no
  // separate add). False for at most kGemvMaxT rows or a weight not in bf16:
  // the caller composes the separate ops then.
  absl::StatusOr<bool> GemmBf16Many(std::span<const LinearJob> jobs, Tensor x, bool accumulate);
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

CudaBackend::~CudaBackend() {
  // Members that use the stream go first; the stream itself last.
  graph_.Release();
  staging_.Release();
  convert_.Release();
  argmax_.Release();
  x_bf16_.Release();
  split_o_.Release();
  split_ml_.Release();
  split_counts_.Release();
  infini_.Release();
  prefill_split_.Release();
  if (kv_ != nullptr) cudaFree(kv_);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (cublas_workspace_ != nullptr) cudaFree(cublas_workspace_);
  if (stream_ != nullptr) {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
}

absl::Status CudaBackend::Init() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || options_.device < 0 ||
      options_.device >= count) {
    cudaGetLastError();
    return absl::FailedPreconditionError(
        absl::StrCat("cuda backend: no CUDA device ", options_.device, " (", count, " present)"));
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, options_.device));
  // Both head dims the tiled kernels take (64, 128) have the wgmma variant.
  wgmma_ = options_.attention != CudaAttentionKernels::kAutoMmaSync &&
           cuda::DcaWgmmaSupported(64, options_.device);
  split_blocks_per_sm_[0] = cuda::DcaSplitBlocksPerSm(64);
  split_blocks_per_sm_[1] = cuda::DcaSplitBlocksPerSm(128);
  // Keep freed pool memory for reuse instead of returning it at each sync.
  cudaMemPool_t pool;
  CUDA_RETURN_IF_ERROR(cudaDeviceGetDefaultMemPool(&pool, options_.device));
  uint64_t threshold = UINT64_MAX;
  CUDA_RETURN_IF_ERROR(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  CUBLAS_RETURN_IF_ERROR(cublasCreate(&cublas_));
  CUBLAS_RETURN_IF_ERROR(cublasSetStream(cublas_, stream_));
  // After cublasSetStream, which resets the workspace to the library's pool.
  CUDA_RETURN_IF_ERROR(cudaMalloc(&cublas_workspace_, kCublasWorkspaceBytes));
  CUBLAS_RETURN_IF_ERROR(cublasSetWorkspace(cublas_, cublas_workspace_, kCublasWorkspaceBytes));
  graph_.Init(stream_, options_.step_graphs);
  cuda::SetDependentLaunch(options_.dependent_launch);
  // Pure f32 products for f32 weights (no TF32); bf16 products accumulate in f32.
  CUBLAS_RETURN_IF_ERROR(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
  return staging_.Init(size_t{1} << 20, stream_);
}

absl::StatusOr<DeviceBuffer> CudaBackend::Allocate(size_t bytes) {
  RETURN_IF_ERROR(RequireNotDeferred("Allocate"));
  void* p = nullptr;
  CUDA_RETURN_IF_ERROR(cudaMallocAsync(&p, std::max<size_t>(bytes, 1), stream_));
  return DeviceBuffer(this, p, bytes);
}

void CudaBackend::Free(void* data) {
  if (data != nullptr) cudaFreeAsync(data, stream_);
}

absl::Status CudaBackend::Synchronize() {
  RETURN_IF_ERROR(RequireNotDeferred("Synchronize"));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status CudaBackend::CopyIn(void* dst, DType dtype, const float* host, int64_t n) {
  RETURN_IF_ERROR(RequireNotDeferred("Upload"));
  if (n == 0) return absl::OkStatus();
  if (dtype == DType::kF32) {
    CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst, host, n * sizeof(float), cudaMemcpyHostToDevice, stream_));
    return Synchronize();
  }
  RETURN_IF_ERROR(convert_.Reserve(std::min(n, kConvertChunk) * sizeof(float), stream_));
  auto* out = static_cast<cuda::bf16*>(dst);
  for (int64_t at = 0; at < n; at += kConvertChunk) {
    const int64_t len = std::min(kConvertChunk, n - at);
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(convert_.as<float>(), host + at, len * sizeof(float),
                                         cudaMemcpyHostToDevice, stream_));
    CUDA_RETURN_IF_ERROR(cuda::ConvertF32ToBf16(out + at, convert_.as<float>(), len, stream_));
  }
  return Synchronize();
}

absl::Status CudaBackend::CopyOut(float* host, const void* src, DType dtype, int64_t n) {
  RETURN_IF_ERROR(RequireNotDeferred("Download"));
  if (n == 0) return Synchronize();
  if (dtype == DType::kF32) {
    CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(host, src, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    return Synchronize();
  }
  RETURN_IF_ERROR(convert_.Reserve(std::min(n, kConvertChunk) * sizeof(float), stream_));
  const auto* in = static_cast<const cuda::bf16*>(src);
  for (int64_t at = 0; at < n; at += kConvertChunk) {
    const int64_t len = std::min(kConvertChunk, n - at);
    CUDA_RETURN_IF_ERROR(cuda::ConvertBf16ToF32(convert_.as<float>(), in + at, len, stream_));
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host + at, convert_.as<float>(), len * sizeof(float),
                                         cudaMemcpyDeviceToHost, stream_));
  }
  return Synchronize();
}

absl::Status CudaBackend::CopyKvBlock(int64_t block, float* out, const float* in) {
  RETURN_IF_ERROR(RequireNotDeferred(out != nullptr ? "KvReadBlock" : "KvWriteBlock"));
  const int64_t seg = KvBlockStride();  // one layer's K and V of the block
  const int n_layers = kv_geometry_.n_layers;
  const int per_pass = static_cast<int>(std::clamp<int64_t>(kConvertChunk / seg, 1, n_layers));
  // f32 [per_pass, seg], then the same in bf16, packed.
  const size_t f32_bytes = static_cast<size_t>(per_pass * seg) * sizeof(float);
  RETURN_IF_ERROR(convert_.Reserve(
      f32_bytes + static_cast<size_t>(per_pass * seg) * sizeof(cuda::bf16), stream_));
  float* f32 = convert_.as<float>();
  auto* packed = reinterpret_cast<cuda::bf16*>(convert_.as<unsigned char>() + f32_bytes);
  const size_t seg_bytes = static_cast<size_t>(seg) * sizeof(cuda::bf16);
  // Layers lie n_blocks * seg apart, often past the pitch limit of a 2D copy.
  auto gather = [&](int l0, int n, bool to_arena) -> absl::Status {
    for (int l = 0; l < n; ++l) {
      cuda::bf16* arena = KvLayer(l0 + l) + block * seg;
      cuda::bf16* packed_layer = packed + int64_t{l} * seg;
      CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(to_arena ? arena : packed_layer,
                                           to_arena ? packed_layer : arena, seg_bytes,
                                           cudaMemcpyDeviceToDevice, stream_));
    }
    return absl::OkStatus();
  };
  for (int l0 = 0; l0 < n_layers; l0 += per_pass) {
    const int n = std::min(per_pass, n_layers - l0);
    const int64_t len = int64_t{n} * seg;
    if (out != nullptr) {
      RETURN_IF_ERROR(gather(l0, n, /*to_arena=*/false));
      CUDA_RETURN_IF_ERROR(cuda::ConvertBf16ToF32(f32, packed, len, stream_));
      CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out + l0 * seg, f32, len * sizeof(float),
                                           cudaMemcpyDeviceToHost, stream_));
    } else {
      CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(f32, in + l0 * seg, len * sizeof(float),
                                           cudaMemcpyHostToDevice, stream_));
      CUDA_RETURN_IF_ERROR(cuda::ConvertF32ToBf16(packed, f32, len, stream_));
      RETURN_IF_ERROR(gather(l0, n, /*to_arena=*/true));
    }
  }
  return Synchronize();
}

absl::Status CudaBackend::Upload(Tensor dst, const float* host) {
  if (dst.data == nullptr && dst.numel() > 0) {
    return absl::InvalidArgumentError("cuda backend: Upload to a null tensor");
  }
  return CopyIn(dst.data, dst.dtype, host, dst.numel());
}

absl::Status CudaBackend::Download(float* host, Tensor src) {
  if (src.data == nullptr && src.numel() > 0) {
    return absl::InvalidArgumentError("cuda backend: Download from a null tensor");
  }
  return CopyOut(host, src.data, src.dtype, src.numel());
}

absl::Status CudaBackend::InitKv(const KvGeometry& g) {
  RETURN_IF_ERROR(RequireNotDeferred("InitKv"));
  if (kv_ != nullptr)
    return absl::FailedPreconditionError("cuda backend: KV arena already initialised");
  if (g.n_layers <= 0 || g.n_kv_heads <= 0 || g.head_dim <= 0 || g.head_dim % 8 != 0 ||
      g.block_size <= 0 || g.n_blocks <= 0) {
    return absl::InvalidArgumentError("cuda backend: bad KV geometry");
  }
  const size_t bytes = static_cast<size_t>(g.n_blocks * g.ElementsPerBlock()) * sizeof(cuda::bf16);
  void* p = nullptr;
  CUDA_RETURN_IF_ERROR(cudaMalloc(&p, bytes));
  kv_ = static_cast<cuda::bf16*>(p);
  // Zeroed like the CPU arena, so export of a partly filled block is defined.
  CUDA_RETURN_IF_ERROR(cudaMemsetAsync(kv_, 0, bytes, stream_));
  kv_geometry_ = g;
  return Synchronize();
}

absl::Status CudaBackend::KvWrite(int layer, Tensor k, Tensor v, std::span<const int32_t> slots) {
  return WriteKv(layer, k, v, slots, {}, {});
}

absl::Status CudaBackend::RopeKvWrite(int layer, Tensor k, Tensor v, std::span<const int32_t> slots,
                                      std::span<const int32_t> pos,
                                      std::span<const float> inv_freq) {
  RETURN_IF_ERROR(RequireShape(
      pos.size() == slots.size() && static_cast<int>(inv_freq.size()) * 2 == kv_geometry_.head_dim,
      "RopeKvWrite"));
  // The fused kernel takes whole float4 pairs of a head from 16-byte rows.
  const bool fits = kv_geometry_.head_dim % 8 == 0 &&
                    reinterpret_cast<uintptr_t>(k.data) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(v.data) % 16 == 0;
  if (!fits) return Backend::RopeKvWrite(layer, k, v, slots, pos, inv_freq);
  return WriteKv(layer, k, v, slots, pos, inv_freq);
}

absl::Status CudaBackend::WriteKv(int layer, Tensor k, Tensor v, std::span<const int32_t> slots,
                                  std::span<const int32_t> pos, std::span<const float> inv_freq) {
  const KvGeometry& g = kv_geometry_;
  if (kv_ == nullptr)
    return absl::FailedPreconditionError("cuda backend: KV arena not initialised");
  RETURN_IF_ERROR(RequireF32(k, "KvWrite", "k"));
  RETURN_IF_ERROR(RequireF32(v, "KvWrite", "v"));
  const int width = g.n_kv_heads * g.head_dim;
  RETURN_IF_ERROR(RequireShape(k.cols == width && v.cols == width && k.rows == v.rows &&
                                   static_cast<size_t>(k.rows) == slots.size() && layer >= 0 &&
                                   layer < g.n_layers,
                               "KvWrite"));
  const int64_t n_slots = g.n_blocks * g.block_size;
  for (int32_t s : slots) {
    if (s < 0 || s >= n_slots) {
      return absl::OutOfRangeError(
          absl::StrCat("cuda backend: KvWrite slot ", s, " outside [0, ", n_slots, ")"));
    }
  }
  if (slots.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(const int32_t* d_slots, StageSpan(slots));
  cuda::KvWriteParams p;
  p.arena = kv_;
  p.plane = KvPlane();
  p.block_stride = KvBlockStride();
  p.layer_offset = KvLayer(layer) - kv_;
  p.block_size = g.block_size;
  p.width = width;
  p.k = static_cast<const float*>(k.data);
  p.v = static_cast<const float*>(v.data);
  p.slots = d_slots;
  p.T = static_cast<int>(slots.size());
  if (!pos.empty()) {
    ASSIGN_OR_RETURN(p.pos, StageSpan(pos));
    ASSIGN_OR_RETURN(p.inv_freq, StageSpan(inv_freq));
    p.head_dim = g.head_dim;
  }
  Trace({U(OpId::kKvWrite), U(kv_), static_cast<uint64_t>(layer), U(k.data), U(v.data),
         static_cast<uint64_t>(p.T), U(d_slots), U(p.pos), U(p.inv_freq)});
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cuda::KvWrite(p, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::KvReadBlock(int64_t block, float* host) {
  if (kv_ == nullptr)
    return absl::FailedPreconditionError("cuda backend: KV arena not initialised");
  if (block < 0 || block >= kv_geometry_.n_blocks)
    return absl::OutOfRangeError("KvReadBlock: block");
  return CopyKvBlock(block, host, nullptr);
}

absl::Status CudaBackend::KvWriteBlock(int64_t block, const float* host) {
  if (kv_ == nullptr)
    return absl::FailedPreconditionError("cuda backend: KV arena not initialised");
  if (block < 0 || block >= kv_geometry_.n_blocks)
    return absl::OutOfRangeError("KvWriteBlock: block");
  return CopyKvBlock(block, nullptr, host);
}

absl::Status CudaBackend::Embedding(Tensor out, Tensor table, std::span<const int32_t> ids) {
  RETURN_IF_ERROR(RequireF32(out, "Embedding", "out"));
  RETURN_IF_ERROR(RequireShape(
      out.rows == static_cast<int64_t>(ids.size()) && out.cols == table.cols, "Embedding"));
  for (int32_t id : ids) {
    if (id < 0 || id >= table.rows) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " outside the vocabulary"));
    }
  }
  if (ids.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(const int32_t* d_ids, StageSpan(ids));
  Trace({U(OpId::kEmbedding), U(out.data), U(table.data), static_cast<uint64_t>(table.dtype),
         ids.size(), static_cast<uint64_t>(table.cols), U(d_ids)});
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cuda::Embedding(static_cast<float*>(out.data), table.data,
                                       ElemOf(table.dtype), d_ids, static_cast<int>(ids.size()),
                                       static_cast<int>(table.cols), stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::RmsNorm(Tensor out, Tensor x, Tensor w, float eps) {
  RETURN_IF_ERROR(RequireF32(out, "RmsNorm", "out"));
  RETURN_IF_ERROR(RequireF32(x, "RmsNorm", "x"));
  RETURN_IF_ERROR(
      RequireShape(out.rows == x.rows && out.cols == x.cols && w.numel() == x.cols, "RmsNorm"));
  Trace({U(OpId::kRmsNorm), U(out.data), U(x.data), U(w.data), static_cast<uint64_t>(w.dtype),
         static_cast<uint64_t>(x.rows), static_cast<uint64_t>(x.cols), U(eps)});
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cuda::RmsNorm(
      static_cast<float*>(out.data), static_cast<const float*>(x.data), w.data, ElemOf(w.dtype),
      static_cast<int>(x.rows), static_cast<int>(x.cols), eps, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::Linear(Tensor out, Tensor x, Tensor w, const Tensor* bias) {
  RETURN_IF_ERROR(RequireF32(out, "Linear", "out"));
  RETURN_IF_ERROR(RequireF32(x, "Linear", "x"));
  RETURN_IF_ERROR(RequireShape(out.rows == x.rows && out.cols == w.rows && x.cols == w.cols &&
                                   (bias == nullptr || bias->numel() == w.rows),
                               "Linear"));
  const int T = static_cast<int>(x.rows), N = static_cast<int>(w.rows),
            K = static_cast<int>(w.cols);
  if (T == 0 || N == 0) return absl::OkStatus();
  // Few token rows against bf16 weights (decode): the weight-streaming kernel
  // on f32 activations, bias fused. Which path runs follows from the traced
  // key (T, K, dtype and the addresses), so a replay takes the recorded one.
  const LinearJob job{out, w, bias};
  const std::optional<cuda::GemvParams> gemv = FewRowGemv({&job, 1}, x, cuda::GemvEpilogue::kStore);
  const bool use_gemv = gemv.has_value();
  if (w.dtype == DType::kBF16 && !use_gemv) {
    RETURN_IF_ERROR(ReserveScratch(x_bf16_, static_cast<size_t>(x.numel()) * sizeof(cuda::bf16)));
  }
  Trace({U(OpId::kLinear), U(out.data), U(x.data), U(w.data), static_cast<uint64_t>(w.dtype),
         static_cast<uint64_t>(T), static_cast<uint64_t>(N), static_cast<uint64_t>(K),
         U(use_gemv ? nullptr : x_bf16_.as<void>()), U(bias != nullptr ? bias->data : nullptr)});
  if (Replaying()) return absl::OkStatus();
  if (use_gemv) {
    CUDA_RETURN_IF_ERROR(cuda::GemvBf16(*gemv, stream_));
    return absl::OkStatus();
  }
  if (w.dtype == DType::kBF16) {
    CUDA_RETURN_IF_ERROR(cuda::ConvertF32ToBf16(
        x_bf16_.as<cuda::bf16>(), static_cast<const float*>(x.data), x.numel(), stream_));
    return GemmBf16(job, T, K, 0.f);
  }
  const float one = 1.f, zero = 0.f;
  // Row-major out[T, N] = x[T, K] w[N, K]^T is column-major out^T = w^T-view * x.
  CUBLAS_RETURN_IF_ERROR(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &one, w.data,
                                      CUDA_R_32F, K, x.data, CUDA_R_32F, K, &zero, out.data,
                                      CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  if (bias != nullptr) {
    CUDA_RETURN_IF_ERROR(cuda::AddBias(static_cast<float*>(out.data), bias->data,
                                       ElemOf(bias->dtype), T, N, stream_));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::LinearMany(std::span<const LinearJob> jobs, Tensor x) {
  RETURN_IF_ERROR(CheckLinearMany(jobs, x));
  return FusedLinearMany(jobs, x, nullptr);
}

absl::Status CudaBackend::RmsNormLinearMany(std::span<const LinearJob> jobs, Tensor x,
                                            const RowNorm& norm) {
  RETURN_IF_ERROR(CheckRmsNormLinearMany(jobs, x, norm));
  return FusedLinearMany(jobs, x, &norm);
}

absl::Status CudaBackend::FusedLinearMany(std::span<const LinearJob> jobs, Tensor x,
                                          const RowNorm* norm) {
  RETURN_IF_ERROR(RequireF32(x, "LinearMany", "x"));
  for (const LinearJob& j : jobs) RETURN_IF_ERROR(RequireF32(j.out, "LinearMany", "out"));
  const std::optional<cuda::GemvParams> gemv =
      FewRowGemv(jobs, x, cuda::GemvEpilogue::kStore, nullptr, norm);
  if (norm != nullptr && (!gemv.has_value() || !FoldNorm(*gemv))) {
    RETURN_IF_ERROR(RmsNorm(norm->xn, x, norm->w, norm->eps));
    return FusedLinearMany(jobs, norm->xn, nullptr);
  }
  if (!gemv.has_value()) {
    ASSIGN_OR_RETURN(const bool done, GemmBf16Many(jobs, x, /*accumulate=*/false));
    return done ? absl::OkStatus() : Backend::LinearMany(jobs, x);
  }
  Trace({U(OpId::kLinearMany), U(x.data), static_cast<uint64_t>(gemv->T),
         static_cast<uint64_t>(gemv->K), jobs.size()});
  TraceNorm(norm);
  for (const LinearJob& j : jobs) {
    Trace({U(j.out.data), U(j.w.data), static_cast<uint64_t>(j.w.rows),
           U(j.bias != nullptr ? j.bias->data : nullptr),
           static_cast<uint64_t>(j.bias != nullptr ? j.bias->dtype : DType::kF32)});
  }
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cuda::GemvBf16(*gemv, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::LinearSwiGlu(Tensor out, Tensor x, Tensor w_gate, Tensor w_up,
                                       Tensor scratch) {
  RETURN_IF_ERROR(CheckLinearSwiGlu(out, x, w_gate, w_up, scratch));
  return FusedLinearSwiGlu(out, x, nullptr, w_gate, w_up, scratch);
}

absl::Status CudaBackend::RmsNormLinearSwiGlu(Tensor out, Tensor x, const RowNorm& norm,
                                              Tensor w_gate, Tensor w_up, Tensor scratch) {
  RETURN_IF_ERROR(CheckRmsNormLinearSwiGlu(out, x, norm, w_gate, w_up, scratch));
  return FusedLinearSwiGlu(out, x, &norm, w_gate, w_up, scratch);
}

absl::Status CudaBackend::FusedLinearSwiGlu(Tensor out, Tensor x, const RowNorm* norm,
                                            Tensor w_gate, Tensor w_up, Tensor scratch) {
  RETURN_IF_ERROR(RequireF32(out, "LinearSwiGlu", "out"));
  RETURN_IF_ERROR(RequireF32(x, "LinearSwiGlu", "x"));
  const LinearJob job{out, w_gate, nullptr};
  const std::optional<cuda::GemvParams> gemv =
      FewRowGemv({&job, 1}, x, cuda::GemvEpilogue::kSwiGlu, &w_up, norm);
  if (norm != nullptr && (!gemv.has_value() || !FoldNorm(*gemv))) {
    RETURN_IF_ERROR(RmsNorm(norm->xn, x, norm->w, norm->eps));
    return FusedLinearSwiGlu(out, norm->xn, nullptr, w_gate, w_up, scratch);
  }
  if (!gemv.has_value()) {
    const LinearJob both[2] = {{out, w_gate, nullptr}, {scratch, w_up, nullptr}};
    ASSIGN_OR_RETURN(const bool done, GemmBf16Many(both, x, /*accumulate=*/false));
    return done ? SwiGlu(out, out, scratch) : Backend::LinearSwiGlu(out, x, w_gate, w_up, scratch);
  }
  Trace({U(OpId::kLinearSwiGlu), U(out.data), U(x.data), U(w_gate.data), U(w_up.data),
         static_cast<uint64_t>(gemv->T), static_cast<uint64_t>(w_gate.rows),
         static_cast<uint64_t>(gemv->K)});
  TraceNorm(norm);
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cuda::GemvBf16(*gemv, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::LinearAddInPlace(Tensor x, Tensor h, Tensor w, Tensor scratch) {
  RETURN_IF_ERROR(CheckLinearAddInPlace(x, h, w, scratch));
  RETURN_IF_ERROR(RequireF32(x, "LinearAddInPlace", "x"));
  RETURN_IF_ERROR(RequireF32(h, "LinearAddInPlace", "h"));
  const LinearJob job{x, w, nullptr};
  const std::optional<cuda::GemvParams> gemv = FewRowGemv({&job, 1}, h, cuda::GemvEpilogue::kAdd);
  if (!gemv.has_value()) {
    ASSIGN_OR_RETURN(const bool done, GemmBf16Many({&job, 1}, h, /*accumulate=*/true));
    return done ? absl::OkStatus() : Backend::LinearAddInPlace(x, h, w, scratch);
  }
  Trace({U(OpId::kLinearAdd), U(x.data), U(h.data), U(w.data), static_cast<uint64_t>(gemv->T),
         static_cast<uint64_t>(w.rows), static_cast<uint64_t>(gemv->K)});
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cuda::GemvBf16(*gemv, stream_));
  return absl::OkStatus();
}

absl::StatusOr<bool> CudaBackend::GemmBf16Many(std::span<const LinearJob> jobs, Tensor x,
                                               bool accumulate) {
  // Up to kGemvMaxT rows the separate products keep to the few-row kernel
  // (f32 activations) wherever it applies: no bf16 copy of x then.
  if (x.rows <= cuda::kGemvMaxT) return false;
  for (const LinearJob& j : jobs) {
    if (j.w.dtype != DType::kBF16) return false;
  }
  const int T = static_cast<int>(x.rows), K = static_cast<int>(x.cols);
  RETURN_IF_ERROR(ReserveScratch(x_bf16_, static_cast<size_t>(x.numel()) * sizeof(cuda::bf16)));
  Trace({U(OpId::kGemmMany), U(x.data), U(x_bf16_.as<void>()), static_cast<uint64_t>(T),
         static_cast<uint64_t>(K), jobs.size(), static_cast<uint64_t>(accumulate)});
  for (const LinearJob& j : jobs) {
    Trace({U(j.out.data), U(j.w.data), static_cast<uint64_t>(j.w.rows),
           U(j.bias != nullptr ? j.bias->data : nullptr),
           static_cast<uint64_t>(j.bias != nullptr ? j.bias->dtype : DType::kF32)});
  }
  if (Replaying()) return true;
  CUDA_RETURN_IF_ERROR(cuda::ConvertF32ToBf16(
      x_bf16_.as<cuda::bf16>(), static_cast<const float*>(x.data), x.numel(), stream_));
  for (const LinearJob& j : jobs) RETURN_IF_ERROR(GemmBf16(j, T, K, accumulate ? 1.f : 0.f));
  return true;
}

absl::Status CudaBackend::GemmBf16(const LinearJob& job, int T, int K, float beta) {
  const int N = static_cast<int>(job.w.rows);
  const float one = 1.f;
  // Row-major out[T, N] = x[T, K] w[N, K]^T is column-major out^T = w^T-view * x.
  CUBLAS_RETURN_IF_ERROR(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &one, job.w.data,
                                      CUDA_R_16BF, K, x_bf16_.as<cuda::bf16>(), CUDA_R_16BF, K,
                                      &beta, job.out.data, CUDA_R_32F, N, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
  if (job.bias != nullptr) {
    CUDA_RETURN_IF_ERROR(cuda::AddBias(static_cast<float*>(job.out.data), job.bias->data,
                                       ElemOf(job.bias->dtype), T, N, stream_));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::SwiGlu(Tensor out, Tensor gate, Tensor up) {
  RETURN_IF_ERROR(RequireF32(out, "SwiGlu", "out"));
  RETURN_IF_ERROR(RequireF32(gate, "SwiGlu", "gate"));
  RETURN_IF_ERROR(RequireF32(up, "SwiGlu", "up"));
  RETURN_IF_ERROR(RequireShape(
      out.numel() == gate.numel() && gate.numel() == up.numel() && gate.cols > 0, "SwiGlu"));
  Trace({U(OpId::kSwiGlu), U(out.data), U(gate.data), U(up.data), static_cast<uint64_t>(gate.rows),
         static_cast<uint64_t>(gate.cols)});
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cuda::SwiGlu(static_cast<float*>(out.data),
                                    static_cast<const float*>(gate.data),
                                    static_cast<const float*>(up.data), static_cast<int>(gate.rows),
                                    static_cast<int>(gate.cols), stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::AddInPlace(Tensor x, Tensor y) {
  RETURN_IF_ERROR(RequireF32(x, "AddInPlace", "x"));
  RETURN_IF_ERROR(RequireF32(y, "AddInPlace", "y"));
  RETURN_IF_ERROR(RequireShape(x.numel() == y.numel(), "AddInPlace"));
  Trace({U(OpId::kAdd), U(x.data), U(y.data), static_cast<uint64_t>(x.numel())});
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cuda::AddInPlace(static_cast<float*>(x.data),
                                        static_cast<const float*>(y.data), x.numel(), stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::Rope(Tensor x, int n_heads, std::span<const int32_t> pos,
                               std::span<const float> inv_freq) {
  RETURN_IF_ERROR(RequireF32(x, "Rope", "x"));
  const int64_t D = static_cast<int64_t>(inv_freq.size()) * 2;
  RETURN_IF_ERROR(RequireShape(
      x.rows == static_cast<int64_t>(pos.size()) && x.cols == n_heads * D && D > 0 && D <= 512,
      "Rope"));
  if (pos.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(const int32_t* d_pos, StageSpan(pos));
  ASSIGN_OR_RETURN(const float* d_freq, StageSpan(inv_freq));
  Trace({U(OpId::kRope), U(x.data), static_cast<uint64_t>(x.rows), static_cast<uint64_t>(n_heads),
         static_cast<uint64_t>(D), U(d_pos), U(d_freq)});
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cuda::Rope(static_cast<float*>(x.data), d_pos, d_freq,
                                  static_cast<int>(x.rows), n_heads, static_cast<int>(D), stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::CheckAttention(Tensor q, int layer, int n_heads,
                                         std::span<const float> inv_freq,
                                         AttentionPlanShape* shape) {
  const KvGeometry& g = kv_geometry_;
  if (kv_ == nullptr)
    return absl::FailedPreconditionError("cuda backend: KV arena not initialised");
  RETURN_IF_ERROR(RequireF32(q, "Attention", "q"));
  const int D = g.head_dim;
  RETURN_IF_ERROR(RequireShape(
      q.cols == int64_t{n_heads} * D && n_heads > 0 && n_heads % g.n_kv_heads == 0 &&
          static_cast<int>(inv_freq.size()) * 2 == D && layer >= 0 && layer < g.n_layers,
      "Attention"));
  shape->n_heads = n_heads;
  shape->n_kv_heads = g.n_kv_heads;
  shape->head_dim = D;
  shape->block_size = g.block_size;
  shape->n_blocks = g.n_blocks;
  shape->q_rows = q.rows;
  shape->num_sms = num_sms_;
  shape->split_resident_blocks = D == 64 ? split_blocks_per_sm_[0] : split_blocks_per_sm_[1];
  shape->kernels = options_.attention;
  return absl::OkStatus();
}

absl::Status CudaBackend::StageAttention(const AttentionPlan& plan, std::span<const float> inv_freq,
                                         StagedAttention* w) {
  // One staged upload carries every table of the call. The block tables, the
  // only part that grows while a batch decodes, go last, so a recorded step
  // keeps its layout and has room to grow at the end.
  std::vector<unsigned char> pack;
  *w = StagedAttention{};
  w->at_seqs = PackAppend(pack, plan.seqs);
  w->at_freq = PackAppend(pack, std::vector<float>(inv_freq.begin(), inv_freq.end()));
  w->at_runs = PackAppend(pack, plan.runs);
  w->at_simple = PackAppend(pack, plan.simple_tiles);
  w->at_tiled = PackAppend(pack, plan.tiled_tiles);
  w->at_split = PackAppend(pack, plan.split_items);
  w->at_combine = PackAppend(pack, plan.combine_items);
  w->at_tables = PackAppend(pack, plan.block_tables);
  const size_t table_bytes = pack.size() - w->at_tables;
  const size_t capacity = pack.size() + table_bytes / 4 + 4096;
  ASSIGN_OR_RETURN(void* staged, StageArgs(pack.data(), pack.size(), capacity));
  w->base = static_cast<unsigned char*>(staged);
  w->n_descs = static_cast<int>(plan.seqs.size());
  w->n_simple = static_cast<int>(plan.simple_tiles.size());
  w->n_tiled = static_cast<int>(plan.tiled_tiles.size());
  w->n_split = static_cast<int>(plan.split_items.size());
  w->n_combine = static_cast<int>(plan.combine_items.size());
  w->split_slots = plan.split_slots;
  return absl::OkStatus();
}

absl::Status CudaBackend::Attention(Tensor out, Tensor q, int layer, int n_heads,
                                    std::span<const AttentionSeq> seqs,
                                    std::span<const float> inv_freq) {
  RETURN_IF_ERROR(RequireF32(out, "Attention", "out"));
  RETURN_IF_ERROR(RequireShape(out.rows == q.rows && out.cols == q.cols, "Attention"));
  AttentionPlanShape shape;
  RETURN_IF_ERROR(CheckAttention(q, layer, n_heads, inv_freq, &shape));
  if (const int parts = PrefillKeySplits(seqs, n_heads); parts > 1) {
    return SplitPrefillAttention(out, q, layer, n_heads, seqs[0], parts, inv_freq, shape);
  }
  // The layers of one recorded step pass the same sequences: plan and stage once.
  StagedAttention& w = staged_attention_;
  const bool reuse = graph_.deferred() && w.step == graph_.step_serial() && w.seqs == seqs.data() &&
                     w.n_seqs == seqs.size() && w.inv_freq == inv_freq.data() &&
                     w.n_heads == n_heads && w.q_rows == q.rows;
  if (!reuse) {
    ASSIGN_OR_RETURN(AttentionPlan plan, PlanAttention(seqs, shape));
    RETURN_IF_ERROR(StageAttention(plan, inv_freq, &w));
    if (graph_.deferred()) {
      w.step = graph_.step_serial();
      w.seqs = seqs.data();
      w.n_seqs = seqs.size();
      w.inv_freq = inv_freq.data();
      w.n_heads = n_heads;
      w.q_rows = q.rows;
    }
  }
  return LaunchAttention(w, static_cast<float*>(out.data), nullptr, q, layer, n_heads);
}

int CudaBackend::PrefillKeySplits(std::span<const AttentionSeq> seqs, int n_heads) const {
  // Only op by op (a recorded step keeps its launches fixed), with the automatic
  // kernel choice, for one sequence without an Infini window (partials read
  // every key of their runs).
  const bool automatic = options_.attention == CudaAttentionKernels::kAuto ||
                         options_.attention == CudaAttentionKernels::kAutoMmaSync;
  if (graph_.deferred() || !automatic || seqs.size() != 1) {
    return 1;
  }
  const AttentionSeq& s = seqs[0];
  if (s.n_q < cuda::kDcaTiledRows || s.dca.window_start > s.dca.sink_tokens) return 1;
  constexpr int kMinKeysPerPart = 4096;
  constexpr int kMaxParts = 8;
  const int64_t blocks = int64_t{(s.n_q + cuda::kDcaTiledRows - 1) / cuda::kDcaTiledRows} * n_heads;
  const int64_t keys = int64_t{s.q_start} + s.n_q;
  // Aim at 6 query tiles per SM: the tiled kernel keeps 1-2 blocks per SM
  // resident, and a few waves even out the tail (the prefill of a 135M model
  // at 128k went from 30k to 51k tok/s between pieces of 4096 and 32768). A
  // 7B-shaped piece of 4096 (1024 tiles) is left alone: cut in two it ran 6 %
  // slower.
  const int64_t target = 6 * int64_t{num_sms_};
  if (blocks >= target) return 1;
  const int64_t want = (target + blocks - 1) / blocks;
  return static_cast<int>(std::min<int64_t>({want, keys / kMinKeysPerPart, kMaxParts}));
}

absl::Status CudaBackend::SplitPrefillAttention(Tensor out, Tensor q, int layer, int n_heads,
                                                const AttentionSeq& s, int parts,
                                                std::span<const float> inv_freq,
                                                AttentionPlanShape shape) {
  const int64_t n = s.n_q, D = kv_geometry_.head_dim, bs = kv_geometry_.block_size;
  const int64_t keys = int64_t{s.q_start} + n;
  // Parts start on whole key tiles and KV blocks.
  const int64_t align = std::max<int64_t>(64, bs);
  const size_t q_floats = static_cast<size_t>(n * q.cols);
  const size_t o_floats = static_cast<size_t>(n * n_heads * D);
  const size_t lse_floats = static_cast<size_t>(n * n_heads);
  RETURN_IF_ERROR(ReserveScratch(
      prefill_split_, static_cast<size_t>(parts) * (q_floats + o_floats + lse_floats) * 4));
  float* q_rep = prefill_split_.as<float>();
  float* o = q_rep + parts * q_floats;
  float* lse = o + parts * o_floats;
  std::vector<PartialAttentionSeq> part(static_cast<size_t>(parts));
  std::vector<int32_t> first(static_cast<size_t>(parts)), count(static_cast<size_t>(parts));
  for (int p = 0; p < parts; ++p) {
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(q_rep + p * q_floats, q.data, q_floats * sizeof(float),
                                         cudaMemcpyDeviceToDevice, stream_));
    const int64_t b0 = keys * p / parts / align * align;
    const int64_t b1 = p + 1 == parts ? keys : keys * (p + 1) / parts / align * align;
    first[static_cast<size_t>(p)] = static_cast<int32_t>(b0);
    count[static_cast<size_t>(p)] = static_cast<int32_t>(b1 - b0);
    PartialAttentionSeq& ps = part[static_cast<size_t>(p)];
    ps.q_row = static_cast<int>(p * n);
    ps.n_q = static_cast<int>(n);
    ps.q_start = s.q_start;
    ps.block_table = s.block_table.subspan(static_cast<size_t>(b0 / bs),
                                           static_cast<size_t>((b1 - b0 + bs - 1) / bs));
    ps.run_first = std::span<const int32_t>(&first[static_cast<size_t>(p)], 1);
    ps.run_count = std::span<const int32_t>(&count[static_cast<size_t>(p)], 1);
    ps.dca = s.dca;
  }
  shape.q_rows = parts * n;
  ASSIGN_OR_RETURN(AttentionPlan plan, PlanPartialAttention(part, shape));
  StagedAttention w;
  RETURN_IF_ERROR(StageAttention(plan, inv_freq, &w));
  const Tensor q_all{q_rep, DType::kF32, parts * n, q.cols};
  RETURN_IF_ERROR(LaunchAttention(w, o, lse, q_all, layer, n_heads));
  CUDA_RETURN_IF_ERROR(
      cuda::MergeAttentionStrided(static_cast<float*>(out.data), o, static_cast<int64_t>(o_floats),
                                  lse, static_cast<int64_t>(lse_floats), parts, static_cast<int>(n),
                                  n_heads, static_cast<int>(D), stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::PartialAttention(Tensor partial, Tensor q, int layer, int n_heads,
                                           std::span<const PartialAttentionSeq> seqs,
                                           std::span<const float> inv_freq) {
  // Context-parallel steps run op by op (they talk to other ranks between layers).
  RETURN_IF_ERROR(RequireNotDeferred("PartialAttention"));
  RETURN_IF_ERROR(RequireF32(partial, "PartialAttention", "partial"));
  const int64_t D = kv_geometry_.head_dim;
  RETURN_IF_ERROR(RequireShape(partial.rows == q.rows && partial.cols == n_heads * (D + 1),
                               "PartialAttention"));
  AttentionPlanShape shape;
  RETURN_IF_ERROR(CheckAttention(q, layer, n_heads, inv_freq, &shape));
  ASSIGN_OR_RETURN(AttentionPlan plan, PlanPartialAttention(seqs, shape));
  StagedAttention w;
  RETURN_IF_ERROR(StageAttention(plan, inv_freq, &w));
  // o [rows, H, D], then lse [rows, H].
  float* o = static_cast<float*>(partial.data);
  return LaunchAttention(w, o, o + q.rows * n_heads * D, q, layer, n_heads);
}

absl::Status CudaBackend::MergeAttention(Tensor out, Tensor partials, int n_parts, int n_heads) {
  RETURN_IF_ERROR(RequireNotDeferred("MergeAttention"));
  RETURN_IF_ERROR(RequireF32(out, "MergeAttention", "out"));
  RETURN_IF_ERROR(RequireF32(partials, "MergeAttention", "partials"));
  RETURN_IF_ERROR(RequireShape(n_parts >= 1 && n_heads >= 1 && out.cols % n_heads == 0 &&
                                   partials.rows == n_parts * out.rows &&
                                   partials.cols == out.cols + n_heads,
                               "MergeAttention"));
  CUDA_RETURN_IF_ERROR(cuda::MergeAttention(
      static_cast<float*>(out.data), static_cast<const float*>(partials.data), n_parts,
      static_cast<int>(out.rows), n_heads, static_cast<int>(out.cols / n_heads), stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::LaunchAttention(const StagedAttention& w, float* out, float* lse,
                                          Tensor q, int layer, int n_heads) {
  const KvGeometry& g = kv_geometry_;
  const int D = g.head_dim;
  unsigned char* base = w.base;
  if (w.n_split > 0) {
    const size_t slot_rows =
        static_cast<size_t>(std::max(w.split_slots, 1)) * g.n_kv_heads * cuda::kDcaSplitRows;
    RETURN_IF_ERROR(ReserveScratch(split_o_, slot_rows * D * sizeof(float)));
    RETURN_IF_ERROR(ReserveScratch(split_ml_, slot_rows * 2 * sizeof(float)));
    // The splits' arrival counts start at 0 and every launch leaves them so;
    // only a fresh allocation needs clearing (outside recorded steps: inside
    // one, growth breaks the step and the op-by-op redo clears it).
    const size_t counts_bytes =
        static_cast<size_t>(std::max(w.n_combine, 1)) * g.n_kv_heads * sizeof(int);
    const size_t had = split_counts_.bytes();
    RETURN_IF_ERROR(ReserveScratch(split_counts_, counts_bytes));
    if (split_counts_.bytes() != had) {
      CUDA_RETURN_IF_ERROR(
          cudaMemsetAsync(split_counts_.as<void>(), 0, split_counts_.bytes(), stream_));
    }
  }
  Trace({U(OpId::kAttention), U(out), U(q.data), U(kv_), static_cast<uint64_t>(layer),
         static_cast<uint64_t>(n_heads), static_cast<uint64_t>(q.rows),
         static_cast<uint64_t>(w.n_descs), static_cast<uint64_t>(w.n_simple),
         static_cast<uint64_t>(w.n_tiled), static_cast<uint64_t>(w.n_split),
         static_cast<uint64_t>(w.n_combine), static_cast<uint64_t>(w.split_slots), U(base),
         w.at_tables, U(split_o_.as<void>()), U(split_ml_.as<void>()),
         U(split_counts_.as<void>())});
  if (Replaying()) return absl::OkStatus();

  cuda::DcaAttentionParams p;
  p.out = out;
  p.lse = lse;
  p.q = static_cast<const float*>(q.data);
  p.kv.k = KvLayer(layer);
  p.kv.v = p.kv.k + KvPlane();
  p.kv.block_stride = KvBlockStride();
  p.kv.block_size = g.block_size;
  p.kv.n_kv_heads = g.n_kv_heads;
  p.block_tables = reinterpret_cast<const int32_t*>(base + w.at_tables);
  p.seqs = reinterpret_cast<const cuda::DcaSeqDesc*>(base + w.at_seqs);
  if (lse != nullptr) p.runs = reinterpret_cast<const cuda::DcaKeyRun*>(base + w.at_runs);
  p.inv_freq = reinterpret_cast<const float*>(base + w.at_freq);
  p.H = n_heads;
  p.D = D;

  CUDA_RETURN_IF_ERROR(cuda::DcaAttentionSimple(
      p, reinterpret_cast<const cuda::DcaRowTile*>(base + w.at_simple), w.n_simple, stream_));
  const auto* tiled = reinterpret_cast<const cuda::DcaRowTile*>(base + w.at_tiled);
  CUDA_RETURN_IF_ERROR(wgmma_ ? cuda::DcaAttentionWgmma(p, tiled, w.n_tiled, stream_)
                              : cuda::DcaAttentionTiled(p, tiled, w.n_tiled, stream_));
  if (w.n_split > 0) {
    cuda::DcaSplitScratch scratch{split_o_.as<float>(), split_ml_.as<float>(),
                                  split_counts_.as<int>()};
    CUDA_RETURN_IF_ERROR(cuda::DcaAttentionSplit(
        p, reinterpret_cast<const cuda::DcaSplitItem*>(base + w.at_split), w.n_split,
        reinterpret_cast<const cuda::DcaCombineItem*>(base + w.at_combine), scratch, stream_));
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::GatherRows(Tensor out, Tensor src, std::span<const int32_t> rows) {
  RETURN_IF_ERROR(RequireF32(out, "GatherRows", "out"));
  RETURN_IF_ERROR(RequireF32(src, "GatherRows", "src"));
  RETURN_IF_ERROR(RequireShape(
      out.rows == static_cast<int64_t>(rows.size()) && out.cols == src.cols, "GatherRows"));
  for (int32_t r : rows) {
    if (r < 0 || r >= src.rows) return absl::OutOfRangeError("GatherRows: row");
  }
  if (rows.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(const int32_t* d_rows, StageSpan(rows));
  Trace({U(OpId::kGather), U(out.data), U(src.data), rows.size(), static_cast<uint64_t>(src.cols),
         U(d_rows)});
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(
      cuda::GatherRows(static_cast<float*>(out.data), static_cast<const float*>(src.data), d_rows,
                       static_cast<int>(rows.size()), static_cast<int>(src.cols), stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::ArgMaxRows(Tensor x, std::span<int32_t> out) {
  RETURN_IF_ERROR(RequireNotDeferred("ArgMaxRows"));
  RETURN_IF_ERROR(RequireF32(x, "ArgMaxRows", "x"));
  RETURN_IF_ERROR(RequireShape(x.rows == static_cast<int64_t>(out.size()) && x.cols > 0 &&
                                   x.cols <= std::numeric_limits<int32_t>::max(),
                               "ArgMaxRows"));
  if (out.empty()) return absl::OkStatus();
  RETURN_IF_ERROR(ReserveScratch(argmax_, out.size_bytes()));
  CUDA_RETURN_IF_ERROR(cuda::ArgMaxRows(argmax_.as<int32_t>(), static_cast<const float*>(x.data),
                                        static_cast<int>(out.size()), static_cast<int>(x.cols),
                                        stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out.data(), argmax_.as<int32_t>(), out.size_bytes(),
                                       cudaMemcpyDeviceToHost, stream_));
  return Synchronize();
}

absl::Status CudaBackend::InfiniMix(Tensor attn, Tensor q, int n_heads, int n_kv_heads,
                                    const float* mem, const float* z, std::span<const float> beta,
                                    float eps) {
  // Steps that mix the memory are not recorded (LlamaModel::Forward).
  RETURN_IF_ERROR(RequireNotDeferred("InfiniMix"));
  RETURN_IF_ERROR(RequireF32(attn, "InfiniMix", "attn"));
  RETURN_IF_ERROR(RequireF32(q, "InfiniMix", "q"));
  RETURN_IF_ERROR(RequireShape(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0 &&
                                   q.cols % n_heads == 0 && attn.rows == q.rows &&
                                   attn.cols == q.cols && static_cast<int>(beta.size()) == n_heads,
                               "InfiniMix"));
  const int D = static_cast<int>(q.cols / n_heads), T = static_cast<int>(q.rows);
  if (T == 0) return absl::OkStatus();
  const int64_t mem_n = int64_t{n_kv_heads} * D * D, z_n = int64_t{n_kv_heads} * D;
  RETURN_IF_ERROR(
      infini_.Reserve(static_cast<size_t>(mem_n + z_n + q.numel()) * sizeof(float), stream_));
  float* d_mem = infini_.as<float>();
  float* d_z = d_mem + mem_n;
  float* d_mem_out = d_z + z_n;  // A_mem [T, n_heads * D]
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_mem, mem, static_cast<size_t>(mem_n) * sizeof(float),
                                       cudaMemcpyHostToDevice, stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_z, z, static_cast<size_t>(z_n) * sizeof(float),
                                       cudaMemcpyHostToDevice, stream_));
  ASSIGN_OR_RETURN(const float* d_beta, StageSpan(beta));
  CUDA_RETURN_IF_ERROR(cuda::InfiniRetrieve(d_mem_out, static_cast<const float*>(q.data), d_mem,
                                            d_z, T, n_heads, n_kv_heads, D, eps, stream_));
  float* a = static_cast<float*>(attn.data);
  CUDA_RETURN_IF_ERROR(cuda::InfiniMix(a, d_mem_out, a, d_beta, T, n_heads, D, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::InfiniFoldKv(float* mem, float* z, int layer,
                                       std::span<const int32_t> blocks,
                                       std::span<const int32_t> back_pos,
                                       std::span<const float> inv_freq, cpu::InfiniUpdateRule rule,
                                       float eps) {
  RETURN_IF_ERROR(RequireNotDeferred("InfiniFoldKv"));
  if (kv_ == nullptr)
    return absl::FailedPreconditionError("cuda backend: KV arena not initialised");
  const KvGeometry& g = kv_geometry_;
  const int bs = g.block_size, n_kv = g.n_kv_heads, D = g.head_dim;
  const int64_t T = static_cast<int64_t>(blocks.size()) * bs;
  RETURN_IF_ERROR(RequireShape(layer >= 0 && layer < g.n_layers &&
                                   static_cast<int64_t>(back_pos.size()) == T &&
                                   static_cast<int>(inv_freq.size()) * 2 == D && D <= 512,
                               "InfiniFoldKv"));
  for (int32_t b : blocks) {
    if (b < 0 || b >= g.n_blocks) return absl::OutOfRangeError("InfiniFoldKv: block");
  }
  if (T == 0) return absl::OkStatus();
  const bool delta = rule == cpu::InfiniUpdateRule::kDelta;
  const int64_t mem_n = int64_t{n_kv} * D * D, z_n = int64_t{n_kv} * D;
  const int64_t rows_n = T * n_kv * D;  // one of K, V or the delta values
  RETURN_IF_ERROR(infini_.Reserve(
      static_cast<size_t>(mem_n + z_n + (delta ? 3 : 2) * rows_n) * sizeof(float), stream_));
  float* d_mem = infini_.as<float>();
  float* d_z = d_mem + mem_n;
  float* d_k = d_z + z_n;
  float* d_v = d_k + rows_n;
  // Layer `layer` of a block is K then V, each [block_size, n_kv, D]
  // contiguous: the segment's rows in order, block after block.
  const int64_t plane = KvPlane();
  for (size_t i = 0; i < blocks.size(); ++i) {
    const cuda::bf16* src = KvLayer(layer) + blocks[i] * KvBlockStride();
    const int64_t at = static_cast<int64_t>(i) * plane;
    CUDA_RETURN_IF_ERROR(cuda::ConvertBf16ToF32(d_k + at, src, plane, stream_));
    CUDA_RETURN_IF_ERROR(cuda::ConvertBf16ToF32(d_v + at, src + plane, plane, stream_));
  }
  // Cached keys sit rotated at j mod L; back_pos rotates them back.
  ASSIGN_OR_RETURN(const int32_t* d_pos, StageSpan(back_pos));
  ASSIGN_OR_RETURN(const float* d_freq, StageSpan(inv_freq));
  CUDA_RETURN_IF_ERROR(cuda::Rope(d_k, d_pos, d_freq, static_cast<int>(T), n_kv, D, stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_mem, mem, static_cast<size_t>(mem_n) * sizeof(float),
                                       cudaMemcpyHostToDevice, stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_z, z, static_cast<size_t>(z_n) * sizeof(float),
                                       cudaMemcpyHostToDevice, stream_));
  cuda::InfiniFoldParams p;
  p.mem = d_mem;
  p.z = d_z;
  p.k = d_k;
  p.v = d_v;
  p.scratch = delta ? d_v + rows_n : nullptr;
  p.T = static_cast<int>(T);
  p.n_kv_heads = n_kv;
  p.D = D;
  p.delta = delta;
  p.eps = eps;
  CUDA_RETURN_IF_ERROR(cuda::InfiniFold(p, stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(mem, d_mem, static_cast<size_t>(mem_n) * sizeof(float),
                                       cudaMemcpyDeviceToHost, stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(z, d_z, static_cast<size_t>(z_n) * sizeof(float),
                                       cudaMemcpyDeviceToHost, stream_));
  // The memory is host state: it must hold the result when this returns.
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::FillUniform(Tensor dst, uint64_t seed, float lo, float hi) {
  RETURN_IF_ERROR(RequireNotDeferred("FillUniform"));
  if (dst.data == nullptr && dst.numel() > 0) {
    return absl::InvalidArgumentError("cuda backend: FillUniform of a null tensor");
  }
  CUDA_RETURN_IF_ERROR(
      cuda::FillUniform(dst.data, ElemOf(dst.dtype), dst.numel(), seed, lo, hi, stream_));
  return absl::OkStatus();
}

// --- step graphs ---

absl::Status CudaBackend::RequireNotDeferred(const char* op) const {
  if (!graph_.deferred()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("cuda backend: ", op, " inside a recorded step"));
}

absl::StatusOr<void*> CudaBackend::StageArgs(const void* host, size_t bytes, size_t capacity) {
  if (!graph_.deferred()) return staging_.Stage(host, bytes);
  return graph_.Stage(host, bytes, capacity);
}

absl::Status CudaBackend::ReserveScratch(ScratchBuffer& buf, size_t bytes) {
  if (!graph_.deferred()) return buf.Reserve(bytes, stream_);
  // No allocation inside a recorded step: the step is redone op by op, which grows it.
  if (buf.as<void>() == nullptr || buf.bytes() < bytes) graph_.Break("a scratch buffer must grow");
  return absl::OkStatus();
}

absl::StatusOr<double> CudaBackend::CopyBandwidth(size_t bytes, int reps) {
  RETURN_IF_ERROR(RequireNotDeferred("CopyBandwidth"));
  if (bytes == 0 || reps <= 0) return absl::InvalidArgumentError("copy bandwidth: empty copy");
  RETURN_IF_ERROR(Synchronize());
  void* a = nullptr;
  void* b = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  auto release = [&] {
    if (a != nullptr) cudaFree(a);
    if (b != nullptr) cudaFree(b);
    if (start != nullptr) cudaEventDestroy(start);
    if (stop != nullptr) cudaEventDestroy(stop);
  };
  auto run = [&]() -> absl::StatusOr<double> {
    CUDA_RETURN_IF_ERROR(cudaMalloc(&a, bytes));
    CUDA_RETURN_IF_ERROR(cudaMalloc(&b, bytes));
    CUDA_RETURN_IF_ERROR(cudaMemsetAsync(a, 1, bytes, stream_));
    CUDA_RETURN_IF_ERROR(cudaEventCreate(&start));
    CUDA_RETURN_IF_ERROR(cudaEventCreate(&stop));
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream_));
    CUDA_RETURN_IF_ERROR(cudaEventRecord(start, stream_));
    for (int r = 0; r < reps; ++r) {
      CUDA_RETURN_IF_ERROR(r % 2 == 0
                               ? cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream_)
                               : cudaMemcpyAsync(a, b, bytes, cudaMemcpyDeviceToDevice, stream_));
    }
    CUDA_RETURN_IF_ERROR(cudaEventRecord(stop, stream_));
    CUDA_RETURN_IF_ERROR(cudaEventSynchronize(stop));
    float ms = 0.f;
    CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, start, stop));
    if (ms <= 0.f) return absl::InternalError("copy bandwidth: no elapsed time");
    return 2.0 * static_cast<double>(bytes) * reps / (ms * 1e-3);
  };
  absl::StatusOr<double> result = run();
  release();
  return result;
}

}  // namespace

bool CudaDeviceAvailable() {
  int count = 0;
  const bool ok = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  cudaGetLastError();
  return ok;
}

namespace {

absl::StatusOr<CudaBackend*> AsCuda(const Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(const_cast<Backend*>(&backend));
  if (cuda == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("backend ", backend.Name(), " is not a CUDA backend"));
  }
  return cuda;
}

}  // namespace

absl::StatusOr<CudaStepGraphStats> GetCudaStepGraphStats(const Backend& backend) {
  ASSIGN_OR_RETURN(CudaBackend * cuda, AsCuda(backend));
  return cuda->GraphStats();
}

absl::Status SetCudaStepGraphs(Backend& backend, bool enabled) {
  ASSIGN_OR_RETURN(CudaBackend * cuda, AsCuda(backend));
  return cuda->SetStepGraphs(enabled);
}

absl::StatusOr<CudaMemoryInfo> GetCudaMemoryInfo(Backend& backend) {
  ASSIGN_OR_RETURN(CudaBackend * cuda, AsCuda(backend));
  RETURN_IF_ERROR(cuda->Synchronize());
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
  return CudaMemoryInfo{static_cast<int64_t>(free_bytes), static_cast<int64_t>(total_bytes)};
}

absl::StatusOr<double> MeasureCudaCopyBandwidth(Backend& backend, size_t bytes, int reps) {
  ASSIGN_OR_RETURN(CudaBackend * cuda, AsCuda(backend));
  return cuda->CopyBandwidth(bytes, reps);
}

absl::Status SetCudaProfilerCapture(Backend& backend, bool on) {
  ASSIGN_OR_RETURN(CudaBackend * cuda, AsCuda(backend));
  RETURN_IF_ERROR(cuda->Synchronize());
  CUDA_RETURN_IF_ERROR(on ? cudaProfilerStart() : cudaProfilerStop());
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options) {
  auto backend = std::make_unique<CudaBackend>(options);
  RETURN_IF_ERROR(backend->Init());
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace longctx

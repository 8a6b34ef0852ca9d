// The CUDA backend's products: the few-row (decode) kernels where they apply,
// cuBLAS GEMMs otherwise, and the fused products built on them.
#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>

#include "engine/backend/cuda/cuda_backend_internal.h"

namespace longctx::cuda_backend_internal {

namespace {

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

}  // namespace

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
  // No few-row kernel: cuBLAS (the norm written in bf16 for it), else the
  // norm apart and then the separate products.
  if (!gemv.has_value()) {
    ASSIGN_OR_RETURN(const bool done, GemmBf16Many(jobs, x, /*accumulate=*/false, norm));
    if (done) return absl::OkStatus();
    if (norm == nullptr) return Backend::LinearMany(jobs, x);
  }
  if (norm != nullptr && (!gemv.has_value() || !FoldNorm(*gemv))) {
    RETURN_IF_ERROR(RmsNorm(norm->xn, x, norm->w, norm->eps));
    return FusedLinearMany(jobs, norm->xn, nullptr);
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
  // As FusedLinearMany.
  if (!gemv.has_value()) {
    const LinearJob both[2] = {{out, w_gate, nullptr}, {scratch, w_up, nullptr}};
    ASSIGN_OR_RETURN(const bool done, GemmBf16Many(both, x, /*accumulate=*/false, norm));
    if (done) return SwiGlu(out, out, scratch);
    if (norm == nullptr) return Backend::LinearSwiGlu(out, x, w_gate, w_up, scratch);
  }
  if (norm != nullptr && (!gemv.has_value() || !FoldNorm(*gemv))) {
    RETURN_IF_ERROR(RmsNorm(norm->xn, x, norm->w, norm->eps));
    return FusedLinearSwiGlu(out, norm->xn, nullptr, w_gate, w_up, scratch);
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

absl::Status CudaBackend::RmsNormFeedForward(Tensor x, const RowNorm& norm, Tensor w_gate,
                                             Tensor w_up, Tensor w_down, Tensor gate, Tensor up) {
  RETURN_IF_ERROR(CheckRmsNormFeedForward(x, norm, w_gate, w_up, w_down, gate, up));
  const bool fused = x.rows > cuda::kGemvMmaMaxT && w_gate.dtype == DType::kBF16 &&
                     w_up.dtype == DType::kBF16 && w_down.dtype == DType::kBF16 &&
                     x.dtype == DType::kF32 && gate.dtype == DType::kF32 &&
                     up.dtype == DType::kF32;
  if (!fused) return Backend::RmsNormFeedForward(x, norm, w_gate, w_up, w_down, gate, up);
  const int T = static_cast<int>(x.rows), F = static_cast<int>(gate.cols);
  // x_bf16_ holds the normalised rows, then the SwiGlu product: sized for the
  // larger before the first GEMM reads it.
  RETURN_IF_ERROR(ReserveScratch(
      x_bf16_, static_cast<size_t>(std::max(x.numel(), gate.numel())) * sizeof(cuda::bf16)));
  const LinearJob both[2] = {{gate, w_gate, nullptr}, {up, w_up, nullptr}};
  ASSIGN_OR_RETURN(const bool done, GemmBf16Many(both, x, /*accumulate=*/false, &norm));
  if (!done) return Backend::RmsNormFeedForward(x, norm, w_gate, w_up, w_down, gate, up);
  Trace({U(OpId::kFeedForward), U(x.data), U(gate.data), U(up.data), U(w_down.data),
         static_cast<uint64_t>(T), static_cast<uint64_t>(F), U(x_bf16_.as<void>())});
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cuda::SwiGluToBf16(x_bf16_.as<cuda::bf16>(),
                                          static_cast<const float*>(gate.data),
                                          static_cast<const float*>(up.data), T, F, stream_));
  return GemmBf16({x, w_down, nullptr}, T, F, 1.f);
}

absl::StatusOr<bool> CudaBackend::GemmBf16Many(std::span<const LinearJob> jobs, Tensor x,
                                               bool accumulate, const RowNorm* norm) {
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
  TraceNorm(norm);
  for (const LinearJob& j : jobs) {
    Trace({U(j.out.data), U(j.w.data), static_cast<uint64_t>(j.w.rows),
           U(j.bias != nullptr ? j.bias->data : nullptr),
           static_cast<uint64_t>(j.bias != nullptr ? j.bias->dtype : DType::kF32)});
  }
  if (Replaying()) return true;
  if (norm != nullptr) {
    CUDA_RETURN_IF_ERROR(cuda::RmsNormToBf16(x_bf16_.as<cuda::bf16>(),
                                             static_cast<const float*>(x.data), norm->w.data,
                                             ElemOf(norm->w.dtype), T, K, norm->eps, stream_));
  } else {
    CUDA_RETURN_IF_ERROR(cuda::ConvertF32ToBf16(
        x_bf16_.as<cuda::bf16>(), static_cast<const float*>(x.data), x.numel(), stream_));
  }
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

}  // namespace longctx::cuda_backend_internal

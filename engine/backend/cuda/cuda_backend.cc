#include "engine/backend/cuda/cuda_backend.h"

#include <cuda_profiler_api.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "engine/backend/cuda/cuda_backend_internal.h"

namespace longctx::cuda_backend_internal {

namespace {

// cuBLAS workspace, fixed so that captured GEMMs use the same memory on replay.
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

}  // namespace

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

}  // namespace longctx::cuda_backend_internal

namespace longctx {

using cuda_backend_internal::CudaBackend;

namespace {

// The NVIDIA driver's CUDA version (e.g. 13000), 0 when no driver is loaded.
int DriverCudaVersion() {
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess) version = 0;
  cudaGetLastError();
  return version;
}

std::string CudaVersionName(int version) {
  return absl::StrCat(version / 1000, ".", (version % 1000) / 10);
}

// Whether code built for one entry of CMake's CMAKE_CUDA_ARCHITECTURES runs on
// a device of compute capability `cc` (major * 10 + minor): "90a" uses
// features of that capability alone; "100f" and "90-real" are machine code for
// later minors of the same major version; "90" and "90-virtual" carry PTX that
// the driver compiles for any later device.
bool ArchRuns(absl::string_view arch, int cc) {
  size_t digits = 0;
  while (digits < arch.size() && arch[digits] >= '0' && arch[digits] <= '9') ++digits;
  int built = 0;
  if (digits == 0 || !absl::SimpleAtoi(arch.substr(0, digits), &built)) return false;
  const absl::string_view suffix = arch.substr(digits);
  if (suffix == "a") return cc == built;
  if (suffix == "f" || suffix == "-real") return cc / 10 == built / 10 && cc >= built;
  return cc >= built;
}

// The start-up check: a driver new enough for the CUDA runtime this build
// links, and a GPU the build has code for. FAILED_PRECONDITION says what is
// there and what is needed.
absl::Status CheckCudaDevice(int device) {
  const int driver = DriverCudaVersion();
  const int runtime = CUDART_VERSION;
  if (driver / 1000 < runtime / 1000) {
    const std::string found = driver == 0
                                  ? "no NVIDIA driver is loaded"
                                  : "the NVIDIA driver supports CUDA " + CudaVersionName(driver);
    return absl::FailedPreconditionError(absl::StrCat(
        "cuda backend: ", found, "; this build uses the CUDA ", CudaVersionName(runtime),
        " runtime, which needs a driver for CUDA ", runtime / 1000,
        ".x or newer (CUDA 13: R580 or newer). Update the driver, or run with backend cpu"));
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count) {
    cudaGetLastError();
    return absl::FailedPreconditionError(
        absl::StrCat("cuda backend: no CUDA device ", device, " (", count, " present)"));
  }
  cudaDeviceProp prop;
  CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  const int cc = prop.major * 10 + prop.minor;
  for (absl::string_view arch : absl::StrSplit(LONGCTX_CUDA_ARCHS, ',')) {
    if (ArchRuns(arch, cc)) return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "cuda backend: GPU ", device, " (", prop.name, ") has compute capability ", prop.major, ".",
      prop.minor, "; this build has code for CUDA architectures ", LONGCTX_CUDA_ARCHS,
      " only (sm_90a: H100, H200). Build with -DCMAKE_CUDA_ARCHITECTURES for this GPU "
      "(docs/deployment.md), or run with backend cpu"));
}

}  // namespace

// Also true when an NVIDIA driver is loaded but too old to show its devices:
// backend auto then fails with CreateCudaBackend's message rather than running
// on the CPU of a GPU machine unnoticed.
bool CudaDeviceAvailable() {
  int count = 0;
  const bool ok = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  cudaGetLastError();
  const int driver = DriverCudaVersion();
  return ok || (driver > 0 && driver / 1000 < CUDART_VERSION / 1000);
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
  RETURN_IF_ERROR(CheckCudaDevice(options.device));
  auto backend = std::make_unique<CudaBackend>(options);
  RETURN_IF_ERROR(backend->Init());
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace longctx

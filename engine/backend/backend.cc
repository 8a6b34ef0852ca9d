#include "engine/backend/backend.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu_backend.h"
#ifdef LONGCTX_WITH_CUDA
#include "engine/backend/cuda/cuda_backend.h"
#endif

namespace longctx {

size_t DTypeSize(DType t) { return t == DType::kF32 ? 4 : 2; }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : backend_(std::exchange(o.backend_, nullptr)),
      data_(std::exchange(o.data_, nullptr)),
      bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    Release();
    backend_ = std::exchange(o.backend_, nullptr);
    data_ = std::exchange(o.data_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() { Release(); }

absl::Status Backend::PartialAttention(Tensor, Tensor, int, int,
                                       std::span<const PartialAttentionSeq>,
                                       std::span<const float>) {
  return absl::UnimplementedError(
      absl::StrCat("the ", Name(), " backend has no context-parallel attention"));
}

absl::Status Backend::FillUniform(Tensor dst, uint64_t seed, float lo, float hi) {
  std::vector<float> host(static_cast<size_t>(dst.numel()));
  cpu::FillUniform(host.data(), dst.numel(), seed, lo, hi);
  return Upload(dst, host.data());
}

absl::Status Backend::MergeAttention(Tensor, Tensor, int, int) {
  return absl::UnimplementedError(
      absl::StrCat("the ", Name(), " backend has no context-parallel attention"));
}

absl::Status Backend::InfiniMix(Tensor, Tensor, int, int, const float*, const float*,
                                std::span<const float>, float) {
  return absl::UnimplementedError(
      absl::StrCat("the ", Name(), " backend has no Infini memory kernels"));
}

absl::Status Backend::InfiniFoldKv(float*, float*, int, std::span<const int32_t>,
                                   std::span<const int32_t>, std::span<const float>,
                                   cpu::InfiniUpdateRule, float) {
  return absl::UnimplementedError(
      absl::StrCat("the ", Name(), " backend has no Infini memory kernels"));
}

void DeviceBuffer::Release() {
  if (backend_ != nullptr && data_ != nullptr) backend_->Free(data_);
  backend_ = nullptr;
  data_ = nullptr;
  bytes_ = 0;
}

Tensor Tensor::Rows(int64_t first, int64_t count) const {
  Tensor t = *this;
  t.data = static_cast<char*>(data) + static_cast<size_t>(first * cols) * DTypeSize(dtype);
  t.rows = count;
  return t;
}

absl::StatusOr<BackendKind> ParseBackendKind(std::string_view s) {
  if (s == "auto") return BackendKind::kAuto;
  if (s == "cpu") return BackendKind::kCpu;
  if (s == "cuda") return BackendKind::kCuda;
  return absl::InvalidArgumentError(
      absl::StrCat("backend: unknown kind '", std::string(s), "' (want auto, cpu or cuda)"));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(BackendKind kind) {
#ifdef LONGCTX_WITH_CUDA
  if (kind == BackendKind::kCuda || (kind == BackendKind::kAuto && CudaDeviceAvailable())) {
    return CreateCudaBackend();
  }
#else
  if (kind == BackendKind::kCuda) {
    return absl::FailedPreconditionError("backend: this build has no CUDA backend");
  }
#endif
  return std::unique_ptr<Backend>(std::make_unique<CpuBackend>());
}

}  // namespace longctx

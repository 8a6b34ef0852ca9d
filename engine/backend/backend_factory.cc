#include "engine/backend/backend_factory.h"

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu_backend.h"
#ifdef LONGCTX_WITH_CUDA
#include "engine/backend/cuda/cuda_backend.h"
#endif

namespace longctx {

absl::StatusOr<BackendKind> ParseBackendKind(std::string_view s) {
  if (s == "auto") return BackendKind::kAuto;
  if (s == "cpu") return BackendKind::kCpu;
  if (s == "cuda") return BackendKind::kCuda;
  return absl::InvalidArgumentError(
      absl::StrCat("backend: unknown kind '", std::string(s), "' (want auto, cpu or cuda)"));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(BackendKind kind,
                                                       const CpuBackendOptions& cpu) {
#ifdef LONGCTX_WITH_CUDA
  if (kind == BackendKind::kCuda || (kind == BackendKind::kAuto && CudaDeviceAvailable())) {
    return CreateCudaBackend();
  }
#else
  if (kind == BackendKind::kCuda) {
    return absl::FailedPreconditionError("backend: this build has no CUDA backend");
  }
#endif
  if (absl::Status s = cpu.Validate(); !s.ok()) return s;
  return std::unique_ptr<Backend>(std::make_unique<CpuBackend>(cpu));
}

}  // namespace longctx

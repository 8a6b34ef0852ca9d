#include "engine/backend/cuda/cuda_check.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace longctx {

absl::Status CudaErrorToStatus(cudaError_t err, const char* expr, const char* file, int line) {
  std::string msg = absl::StrCat("CUDA error ", cudaGetErrorName(err), " (",
                                 cudaGetErrorString(err), ") in ", expr, " at ", file, ":", line);
  if (err == cudaErrorMemoryAllocation) {
    // Clear the sticky-free error state so later calls are not reported as failing.
    cudaGetLastError();
    return absl::ResourceExhaustedError(msg);
  }
  return absl::InternalError(msg);
}

absl::Status CublasErrorToStatus(cublasStatus_t err, const char* expr, const char* file, int line) {
  std::string msg =
      absl::StrCat("cuBLAS error ", cublasGetStatusName(err), " (", cublasGetStatusString(err),
                   ") in ", expr, " at ", file, ":", line);
  if (err == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

}  // namespace longctx

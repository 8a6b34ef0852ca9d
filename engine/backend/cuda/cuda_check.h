// One macro family turning CUDA runtime and cuBLAS errors into absl::Status
// with the failing expression, file and line (STYLE rule 5). A device
// out-of-memory becomes RESOURCE_EXHAUSTED, so the caller can fail one request
// and keep serving; every other error is INTERNAL.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "absl/status/status.h"

namespace longctx {

absl::Status CudaErrorToStatus(cudaError_t err, const char* expr, const char* file, int line);
absl::Status CublasErrorToStatus(cublasStatus_t err, const char* expr, const char* file, int line);

}  // namespace longctx

// Evaluates a cudaError_t expression; returns a Status from the enclosing
// function when it is not cudaSuccess.
#define CUDA_RETURN_IF_ERROR(expr)                                                       \
  do {                                                                                   \
    const cudaError_t _longctx_cuda_err = (expr);                                        \
    if (_longctx_cuda_err != cudaSuccess) {                                              \
      return ::longctx::CudaErrorToStatus(_longctx_cuda_err, #expr, __FILE__, __LINE__); \
    }                                                                                    \
  } while (0)

// Same for cublasStatus_t.
#define CUBLAS_RETURN_IF_ERROR(expr)                                                         \
  do {                                                                                       \
    const cublasStatus_t _longctx_cublas_err = (expr);                                       \
    if (_longctx_cublas_err != CUBLAS_STATUS_SUCCESS) {                                      \
      return ::longctx::CublasErrorToStatus(_longctx_cublas_err, #expr, __FILE__, __LINE__); \
    }                                                                                        \
  } while (0)

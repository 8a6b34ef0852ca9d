// The CUDA backend (DESIGN §1): bf16 weights and paged bf16 KV on one GPU, f32
// activations (the residual stream keeps full precision), cuBLAS GEMMs with f32
// accumulation and the kernels of kernels/cuda. All work runs in order on one
// stream owned by the backend; memory comes from the device's stream-ordered
// pool. A device out-of-memory is RESOURCE_EXHAUSTED and leaves the backend
// usable.
//
// Thread safety: as every Backend, owned by one engine thread.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"

namespace longctx {

// Which attention kernels the backend runs (kernels/cuda/ops_cuda.h).
enum class CudaAttentionKernels {
  kAuto,    // split-KV for decode-sized sequences, tiled for the rest, simple
            // where the tiling does not apply (chunk length or block size not a
            // multiple of 64, head dim not 64 or 128)
  kSimple,  // the warp-per-row kernel for every sequence
  kTiled,   // the tiled kernel wherever it applies, else simple
  kSplit,   // the split-KV kernel wherever it applies, else simple
};

struct CudaBackendOptions {
  int device = 0;  // CUDA device ordinal
  CudaAttentionKernels attention = CudaAttentionKernels::kAuto;
};

// True when the CUDA runtime sees at least one device.
bool CudaDeviceAvailable();

// REQUIRES: options.device names a present device (else FAILED_PRECONDITION).
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options = {});

}  // namespace longctx

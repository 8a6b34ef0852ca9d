// The CUDA backend (docs/design.md §1): bf16 weights and paged bf16 KV on one GPU, f32
// activations (the residual stream keeps full precision), cuBLAS GEMMs with f32
// accumulation and the kernels of kernels/cuda. All work runs in order on one
// stream owned by the backend; memory comes from the device's stream-ordered
// pool. A device out-of-memory is RESOURCE_EXHAUSTED and leaves the backend
// usable.
//
// Thread safety: as every Backend, owned by one engine thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/backend/cuda/cuda_options.h"

namespace longctx {

// Device memory as the CUDA runtime reports it.
struct CudaMemoryInfo {
  int64_t free_bytes = 0;
  int64_t total_bytes = 0;
};

// True when the CUDA runtime sees at least one device, or when an NVIDIA
// driver is loaded that is too old for this build's runtime (so that backend
// auto reports it rather than falling back to the CPU).
bool CudaDeviceAvailable();

// The functions below take any Backend and return INVALID_ARGUMENT unless it
// is a CUDA backend.
absl::StatusOr<CudaStepGraphStats> GetCudaStepGraphStats(const Backend& backend);
// Turns step graphs on or off (dropping any recorded graph); REQUIRES: no
// bracketed step in progress.
absl::Status SetCudaStepGraphs(Backend& backend, bool enabled);
absl::StatusOr<CudaMemoryInfo> GetCudaMemoryInfo(Backend& backend);
// Device-to-device copy bandwidth in bytes/s, counting each copied byte twice
// (read and write), from `reps` cudaMemcpyAsync copies of `bytes` between two
// fresh buffers on the backend's stream after one warm-up copy.
absl::StatusOr<double> MeasureCudaCopyBandwidth(Backend& backend, size_t bytes, int reps);
// Opens or closes the profiler's capture range (cudaProfilerStart/Stop) after
// the backend's stream has drained, so a profiler started with capture off
// (`ncu --profile-from-start off`) sees exactly the work in between.
absl::Status SetCudaProfilerCapture(Backend& backend, bool on);

// REQUIRES: options.device names a present device (else FAILED_PRECONDITION).
// Checks first that the driver supports this build's CUDA runtime (CUDA 13:
// R580 or newer) and that the build has code for the GPU's compute capability
// (as built, sm_90a: H100 and H200); FAILED_PRECONDITION names the GPU, its
// capability or the driver's CUDA version, and what is needed.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options = {});

}  // namespace longctx

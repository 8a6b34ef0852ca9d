// RAII device resources of the CUDA backend (STYLE rule 13): scratch buffers
// that grow on demand, and the staging ring that carries small per-op host
// arguments (token ids, positions, block tables) to the device without
// stalling the stream.
//
// Thread safety: owned by the backend's engine thread.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace longctx {

// A device allocation from the stream-ordered pool, freed on the owning stream.
class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer();

  // Grows to at least `bytes` (contents not kept). Ops already enqueued that use
  // the old allocation still see it: the free is ordered on `stream`.
  absl::Status Reserve(size_t bytes, cudaStream_t stream);
  void Release();
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  cudaStream_t stream_ = nullptr;
};

// Pinned host ring mirrored by a device ring, in two halves. Stage() copies host
// bytes into the current half and enqueues their upload; a half is refilled
// only after an event shows the device has consumed it.
class ArgStaging {
 public:
  ArgStaging() = default;
  ArgStaging(const ArgStaging&) = delete;
  ArgStaging& operator=(const ArgStaging&) = delete;
  ~ArgStaging();

  absl::Status Init(size_t half_bytes, cudaStream_t stream);
  // Waits for the stream and frees everything. REQUIRES: the stream still exists.
  void Release();
  // Returns the device address of the staged copy (256-byte aligned). Valid for
  // ops enqueued on the stream before the next Stage() call that wraps.
  absl::StatusOr<void*> Stage(const void* host, size_t bytes);

 private:
  absl::Status Grow(size_t bytes);

  cudaStream_t stream_ = nullptr;
  size_t half_ = 0;
  unsigned char* host_ = nullptr;  // pinned, 2 * half_
  unsigned char* device_ = nullptr;
  cudaEvent_t done_[2] = {nullptr, nullptr};
  bool pending_[2] = {false, false};
  int cur_ = 0;
  size_t offset_ = 0;
};

}  // namespace longctx

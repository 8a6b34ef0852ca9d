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
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  cudaStream_t stream_ = nullptr;
};

// A pinned host buffer and a device buffer of the same size: the arguments of
// a recorded step, written on the host and copied up in one transfer before the
// graph that reads them from fixed device addresses runs.
class MirroredBuffer {
 public:
  MirroredBuffer() = default;
  MirroredBuffer(const MirroredBuffer&) = delete;
  MirroredBuffer& operator=(const MirroredBuffer&) = delete;
  ~MirroredBuffer();

  // Grows to at least `bytes` (contents not kept); waits for `stream` first.
  absl::Status Reserve(size_t bytes, cudaStream_t stream);
  // Waits for `stream`, then frees both buffers.
  void Release();
  size_t bytes() const { return bytes_; }
  unsigned char* host() const { return host_; }
  unsigned char* device() const { return device_; }
  // Enqueues the copy of host()[0, bytes) to device() on `stream` and records
  // an event; WaitCopied() returns once the host side may be rewritten.
  absl::Status CopyUp(size_t bytes, cudaStream_t stream);
  absl::Status WaitCopied();

 private:
  unsigned char* host_ = nullptr;  // pinned
  unsigned char* device_ = nullptr;
  size_t bytes_ = 0;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t copied_ = nullptr;
  bool pending_ = false;
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

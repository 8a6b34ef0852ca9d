#include "engine/backend/cuda/device_memory.h"

#include <algorithm>
#include <cstring>

#include "engine/backend/cuda/cuda_check.h"

namespace longctx {

ScratchBuffer::~ScratchBuffer() { Release(); }

void ScratchBuffer::Release() {
  if (data_ != nullptr) cudaFreeAsync(data_, stream_);
  data_ = nullptr;
  bytes_ = 0;
}

absl::Status ScratchBuffer::Reserve(size_t bytes, cudaStream_t stream) {
  if (bytes <= bytes_ && data_ != nullptr) return absl::OkStatus();
  Release();
  stream_ = stream;
  // Round up so a slowly growing batch does not reallocate every step.
  const size_t want = std::max<size_t>(bytes + bytes / 4, 1 << 16);
  CUDA_RETURN_IF_ERROR(cudaMallocAsync(&data_, want, stream));
  bytes_ = want;
  return absl::OkStatus();
}

MirroredBuffer::~MirroredBuffer() { Release(); }

void MirroredBuffer::Release() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  stream_ = nullptr;
  if (copied_ != nullptr) cudaEventDestroy(copied_);
  if (host_ != nullptr) cudaFreeHost(host_);
  if (device_ != nullptr) cudaFree(device_);
  copied_ = nullptr;
  host_ = nullptr;
  device_ = nullptr;
  bytes_ = 0;
  pending_ = false;
}

absl::Status MirroredBuffer::Reserve(size_t bytes, cudaStream_t stream) {
  if (bytes <= bytes_ && host_ != nullptr) return absl::OkStatus();
  stream_ = stream;
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  if (host_ != nullptr) cudaFreeHost(host_);
  if (device_ != nullptr) cudaFree(device_);
  host_ = nullptr;
  device_ = nullptr;
  bytes_ = 0;
  pending_ = false;
  if (copied_ == nullptr) {
    CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming));
  }
  const size_t want = std::max<size_t>(bytes + bytes / 2, 1 << 16);
  CUDA_RETURN_IF_ERROR(cudaMallocHost(&host_, want));
  CUDA_RETURN_IF_ERROR(cudaMalloc(&device_, want));
  bytes_ = want;
  return absl::OkStatus();
}

absl::Status MirroredBuffer::CopyUp(size_t bytes, cudaStream_t stream) {
  if (bytes > 0) {
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(device_, host_, bytes, cudaMemcpyHostToDevice, stream));
  }
  CUDA_RETURN_IF_ERROR(cudaEventRecord(copied_, stream));
  pending_ = true;
  return absl::OkStatus();
}

absl::Status MirroredBuffer::WaitCopied() {
  if (pending_) CUDA_RETURN_IF_ERROR(cudaEventSynchronize(copied_));
  pending_ = false;
  return absl::OkStatus();
}

ArgStaging::~ArgStaging() { Release(); }

void ArgStaging::Release() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  stream_ = nullptr;
  for (cudaEvent_t& e : done_) {
    if (e != nullptr) cudaEventDestroy(e);
    e = nullptr;
  }
  if (host_ != nullptr) cudaFreeHost(host_);
  if (device_ != nullptr) cudaFree(device_);
  host_ = nullptr;
  device_ = nullptr;
}

absl::Status ArgStaging::Init(size_t half_bytes, cudaStream_t stream) {
  stream_ = stream;
  for (cudaEvent_t& e : done_) {
    CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  return Grow(half_bytes);
}

absl::Status ArgStaging::Grow(size_t bytes) {
  // Everything staged so far must have been consumed before the rings move.
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  if (host_ != nullptr) cudaFreeHost(host_);
  if (device_ != nullptr) cudaFree(device_);
  host_ = nullptr;
  device_ = nullptr;
  half_ = bytes;
  CUDA_RETURN_IF_ERROR(cudaMallocHost(&host_, 2 * half_));
  CUDA_RETURN_IF_ERROR(cudaMalloc(&device_, 2 * half_));
  pending_[0] = pending_[1] = false;
  cur_ = 0;
  offset_ = 0;
  return absl::OkStatus();
}

absl::StatusOr<void*> ArgStaging::Stage(const void* host, size_t bytes) {
  constexpr size_t kAlign = 256;
  if (bytes > half_) {
    size_t grown = half_;
    while (grown < bytes) grown *= 2;
    if (auto s = Grow(grown); !s.ok()) return s;
  }
  if (offset_ + bytes > half_) {
    // Leave this half (the device reads it until the event) and wait until the
    // other half's last reader has run.
    CUDA_RETURN_IF_ERROR(cudaEventRecord(done_[cur_], stream_));
    pending_[cur_] = true;
    cur_ ^= 1;
    if (pending_[cur_]) CUDA_RETURN_IF_ERROR(cudaEventSynchronize(done_[cur_]));
    pending_[cur_] = false;
    offset_ = 0;
  }
  unsigned char* h = host_ + cur_ * half_ + offset_;
  unsigned char* d = device_ + cur_ * half_ + offset_;
  if (bytes > 0) {
    std::memcpy(h, host, bytes);
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, stream_));
  }
  offset_ += (bytes + kAlign - 1) / kAlign * kAlign;
  return static_cast<void*>(d);
}

}  // namespace longctx

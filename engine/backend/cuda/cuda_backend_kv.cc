// The CUDA backend's KV arena: its allocation, writes of new keys and values
// and whole-block copies to and from the host.
#include <algorithm>
#include <cstdint>
#include <span>

#include "engine/backend/cuda/cuda_backend_internal.h"

namespace longctx::cuda_backend_internal {

absl::Status CudaBackend::CopyKvBlock(int64_t block, float* out, const float* in) {
  RETURN_IF_ERROR(RequireNotDeferred(out != nullptr ? "KvReadBlock" : "KvWriteBlock"));
  const int64_t seg = KvBlockStride();  // one layer's K and V of the block
  const int n_layers = kv_geometry_.n_layers;
  const int per_pass = static_cast<int>(std::clamp<int64_t>(kConvertChunk / seg, 1, n_layers));
  // f32 [per_pass, seg], then the same in bf16, packed.
  const size_t f32_bytes = static_cast<size_t>(per_pass * seg) * sizeof(float);
  RETURN_IF_ERROR(convert_.Reserve(
      f32_bytes + static_cast<size_t>(per_pass * seg) * sizeof(cuda::bf16), stream_));
  float* f32 = convert_.as<float>();
  auto* packed = reinterpret_cast<cuda::bf16*>(convert_.as<unsigned char>() + f32_bytes);
  const size_t seg_bytes = static_cast<size_t>(seg) * sizeof(cuda::bf16);
  // Layers lie n_blocks * seg apart, often past the pitch limit of a 2D copy.
  auto gather = [&](int l0, int n, bool to_arena) -> absl::Status {
    for (int l = 0; l < n; ++l) {
      cuda::bf16* arena = KvLayer(l0 + l) + block * seg;
      cuda::bf16* packed_layer = packed + int64_t{l} * seg;
      CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(to_arena ? arena : packed_layer,
                                           to_arena ? packed_layer : arena, seg_bytes,
                                           cudaMemcpyDeviceToDevice, stream_));
    }
    return absl::OkStatus();
  };
  for (int l0 = 0; l0 < n_layers; l0 += per_pass) {
    const int n = std::min(per_pass, n_layers - l0);
    const int64_t len = int64_t{n} * seg;
    if (out != nullptr) {
      RETURN_IF_ERROR(gather(l0, n, /*to_arena=*/false));
      CUDA_RETURN_IF_ERROR(cuda::ConvertBf16ToF32(f32, packed, len, stream_));
      CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out + l0 * seg, f32, len * sizeof(float),
                                           cudaMemcpyDeviceToHost, stream_));
    } else {
      CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(f32, in + l0 * seg, len * sizeof(float),
                                           cudaMemcpyHostToDevice, stream_));
      CUDA_RETURN_IF_ERROR(cuda::ConvertF32ToBf16(packed, f32, len, stream_));
      RETURN_IF_ERROR(gather(l0, n, /*to_arena=*/true));
    }
  }
  return Synchronize();
}

absl::Status CudaBackend::InitKv(const KvGeometry& g) {
  RETURN_IF_ERROR(RequireNotDeferred("InitKv"));
  if (kv_ != nullptr)
    return absl::FailedPreconditionError("cuda backend: KV arena already initialised");
  if (g.n_layers <= 0 || g.n_kv_heads <= 0 || g.head_dim <= 0 || g.head_dim % 8 != 0 ||
      g.block_size <= 0 || g.n_blocks <= 0) {
    return absl::InvalidArgumentError("cuda backend: bad KV geometry");
  }
  const size_t bytes = static_cast<size_t>(g.n_blocks * g.ElementsPerBlock()) * sizeof(cuda::bf16);
  void* p = nullptr;
  CUDA_RETURN_IF_ERROR(cudaMalloc(&p, bytes));
  kv_ = static_cast<cuda::bf16*>(p);
  // Zeroed like the CPU arena, so export of a partly filled block is defined.
  CUDA_RETURN_IF_ERROR(cudaMemsetAsync(kv_, 0, bytes, stream_));
  kv_geometry_ = g;
  return Synchronize();
}

absl::Status CudaBackend::KvWrite(int layer, Tensor k, Tensor v, std::span<const int32_t> slots) {
  return WriteKv(layer, k, v, slots, {}, {});
}

absl::Status CudaBackend::RopeKvWrite(int layer, Tensor k, Tensor v, std::span<const int32_t> slots,
                                      std::span<const int32_t> pos,
                                      std::span<const float> inv_freq) {
  RETURN_IF_ERROR(RequireShape(
      pos.size() == slots.size() && static_cast<int>(inv_freq.size()) * 2 == kv_geometry_.head_dim,
      "RopeKvWrite"));
  // The fused kernel takes whole float4 pairs of a head from 16-byte rows.
  const bool fits = kv_geometry_.head_dim % 8 == 0 &&
                    reinterpret_cast<uintptr_t>(k.data) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(v.data) % 16 == 0;
  if (!fits) return Backend::RopeKvWrite(layer, k, v, slots, pos, inv_freq);
  return WriteKv(layer, k, v, slots, pos, inv_freq);
}

absl::Status CudaBackend::WriteKv(int layer, Tensor k, Tensor v, std::span<const int32_t> slots,
                                  std::span<const int32_t> pos, std::span<const float> inv_freq) {
  const KvGeometry& g = kv_geometry_;
  if (kv_ == nullptr)
    return absl::FailedPreconditionError("cuda backend: KV arena not initialised");
  RETURN_IF_ERROR(RequireF32(k, "KvWrite", "k"));
  RETURN_IF_ERROR(RequireF32(v, "KvWrite", "v"));
  const int width = g.n_kv_heads * g.head_dim;
  RETURN_IF_ERROR(RequireShape(k.cols == width && v.cols == width && k.rows == v.rows &&
                                   static_cast<size_t>(k.rows) == slots.size() && layer >= 0 &&
                                   layer < g.n_layers,
                               "KvWrite"));
  const int64_t n_slots = g.n_blocks * g.block_size;
  for (int32_t s : slots) {
    if (s < 0 || s >= n_slots) {
      return absl::OutOfRangeError(
          absl::StrCat("cuda backend: KvWrite slot ", s, " outside [0, ", n_slots, ")"));
    }
  }
  if (slots.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(const int32_t* d_slots, StageSpan(slots));
  cuda::KvWriteParams p;
  p.arena = kv_;
  p.plane = KvPlane();
  p.block_stride = KvBlockStride();
  p.layer_offset = KvLayer(layer) - kv_;
  p.block_size = g.block_size;
  p.width = width;
  p.k = static_cast<const float*>(k.data);
  p.v = static_cast<const float*>(v.data);
  p.slots = d_slots;
  p.T = static_cast<int>(slots.size());
  if (!pos.empty()) {
    ASSIGN_OR_RETURN(p.pos, StageSpan(pos));
    ASSIGN_OR_RETURN(p.inv_freq, StageSpan(inv_freq));
    p.head_dim = g.head_dim;
  }
  Trace({U(OpId::kKvWrite), U(kv_), static_cast<uint64_t>(layer), U(k.data), U(v.data),
         static_cast<uint64_t>(p.T), U(d_slots), U(p.pos), U(p.inv_freq)});
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cuda::KvWrite(p, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::KvReadBlock(int64_t block, float* host) {
  if (kv_ == nullptr)
    return absl::FailedPreconditionError("cuda backend: KV arena not initialised");
  if (block < 0 || block >= kv_geometry_.n_blocks)
    return absl::OutOfRangeError("KvReadBlock: block");
  return CopyKvBlock(block, host, nullptr);
}

absl::Status CudaBackend::KvWriteBlock(int64_t block, const float* host) {
  if (kv_ == nullptr)
    return absl::FailedPreconditionError("cuda backend: KV arena not initialised");
  if (block < 0 || block >= kv_geometry_.n_blocks)
    return absl::OutOfRangeError("KvWriteBlock: block");
  return CopyKvBlock(block, nullptr, host);
}

}  // namespace longctx::cuda_backend_internal

// The CUDA backend's Infini-attention memory: retrieval mixed into attention,
// and the fold of cached KV blocks into the memory.
#include <cstdint>
#include <span>

#include "engine/backend/cuda/cuda_backend_internal.h"

namespace longctx::cuda_backend_internal {

absl::Status CudaBackend::InfiniMix(Tensor attn, Tensor q, int n_heads, int n_kv_heads,
                                    const float* mem, const float* z, std::span<const float> beta,
                                    float eps) {
  // Steps that mix the memory are not recorded (LlamaModel::Forward).
  RETURN_IF_ERROR(RequireNotDeferred("InfiniMix"));
  RETURN_IF_ERROR(RequireF32(attn, "InfiniMix", "attn"));
  RETURN_IF_ERROR(RequireF32(q, "InfiniMix", "q"));
  RETURN_IF_ERROR(RequireShape(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0 &&
                                   q.cols % n_heads == 0 && attn.rows == q.rows &&
                                   attn.cols == q.cols && static_cast<int>(beta.size()) == n_heads,
                               "InfiniMix"));
  const int D = static_cast<int>(q.cols / n_heads), T = static_cast<int>(q.rows);
  if (T == 0) return absl::OkStatus();
  const int64_t mem_n = int64_t{n_kv_heads} * D * D, z_n = int64_t{n_kv_heads} * D;
  RETURN_IF_ERROR(
      infini_.Reserve(static_cast<size_t>(mem_n + z_n + q.numel()) * sizeof(float), stream_));
  float* d_mem = infini_.as<float>();
  float* d_z = d_mem + mem_n;
  float* d_mem_out = d_z + z_n;  // A_mem [T, n_heads * D]
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_mem, mem, static_cast<size_t>(mem_n) * sizeof(float),
                                       cudaMemcpyHostToDevice, stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_z, z, static_cast<size_t>(z_n) * sizeof(float),
                                       cudaMemcpyHostToDevice, stream_));
  ASSIGN_OR_RETURN(const float* d_beta, StageSpan(beta));
  CUDA_RETURN_IF_ERROR(cuda::InfiniRetrieve(d_mem_out, static_cast<const float*>(q.data), d_mem,
                                            d_z, T, n_heads, n_kv_heads, D, eps, stream_));
  float* a = static_cast<float*>(attn.data);
  CUDA_RETURN_IF_ERROR(cuda::InfiniMix(a, d_mem_out, a, d_beta, T, n_heads, D, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::InfiniFoldKv(float* mem, float* z, int layer,
                                       std::span<const int32_t> blocks,
                                       std::span<const int32_t> back_pos,
                                       std::span<const float> inv_freq, cpu::InfiniUpdateRule rule,
                                       float eps) {
  RETURN_IF_ERROR(RequireNotDeferred("InfiniFoldKv"));
  if (kv_ == nullptr)
    return absl::FailedPreconditionError("cuda backend: KV arena not initialised");
  const KvGeometry& g = kv_geometry_;
  const int bs = g.block_size, n_kv = g.n_kv_heads, D = g.head_dim;
  const int64_t T = static_cast<int64_t>(blocks.size()) * bs;
  RETURN_IF_ERROR(RequireShape(layer >= 0 && layer < g.n_layers &&
                                   static_cast<int64_t>(back_pos.size()) == T &&
                                   static_cast<int>(inv_freq.size()) * 2 == D && D <= 512,
                               "InfiniFoldKv"));
  for (int32_t b : blocks) {
    if (b < 0 || b >= g.n_blocks) return absl::OutOfRangeError("InfiniFoldKv: block");
  }
  if (T == 0) return absl::OkStatus();
  const bool delta = rule == cpu::InfiniUpdateRule::kDelta;
  const int64_t mem_n = int64_t{n_kv} * D * D, z_n = int64_t{n_kv} * D;
  const int64_t rows_n = T * n_kv * D;  // one of K, V or the delta values
  RETURN_IF_ERROR(infini_.Reserve(
      static_cast<size_t>(mem_n + z_n + (delta ? 3 : 2) * rows_n) * sizeof(float), stream_));
  float* d_mem = infini_.as<float>();
  float* d_z = d_mem + mem_n;
  float* d_k = d_z + z_n;
  float* d_v = d_k + rows_n;
  // Layer `layer` of a block is K then V, each [block_size, n_kv, D]
  // contiguous: the segment's rows in order, block after block.
  const int64_t plane = KvPlane();
  for (size_t i = 0; i < blocks.size(); ++i) {
    const cuda::bf16* src = KvLayer(layer) + blocks[i] * KvBlockStride();
    const int64_t at = static_cast<int64_t>(i) * plane;
    CUDA_RETURN_IF_ERROR(cuda::ConvertBf16ToF32(d_k + at, src, plane, stream_));
    CUDA_RETURN_IF_ERROR(cuda::ConvertBf16ToF32(d_v + at, src + plane, plane, stream_));
  }
  // Cached keys sit rotated at j mod L; back_pos rotates them back.
  ASSIGN_OR_RETURN(const int32_t* d_pos, StageSpan(back_pos));
  ASSIGN_OR_RETURN(const float* d_freq, StageSpan(inv_freq));
  CUDA_RETURN_IF_ERROR(cuda::Rope(d_k, d_pos, d_freq, static_cast<int>(T), n_kv, D, stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_mem, mem, static_cast<size_t>(mem_n) * sizeof(float),
                                       cudaMemcpyHostToDevice, stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_z, z, static_cast<size_t>(z_n) * sizeof(float),
                                       cudaMemcpyHostToDevice, stream_));
  cuda::InfiniFoldParams p;
  p.mem = d_mem;
  p.z = d_z;
  p.k = d_k;
  p.v = d_v;
  p.scratch = delta ? d_v + rows_n : nullptr;
  p.T = static_cast<int>(T);
  p.n_kv_heads = n_kv;
  p.D = D;
  p.delta = delta;
  p.eps = eps;
  CUDA_RETURN_IF_ERROR(cuda::InfiniFold(p, stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(mem, d_mem, static_cast<size_t>(mem_n) * sizeof(float),
                                       cudaMemcpyDeviceToHost, stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(z, d_z, static_cast<size_t>(z_n) * sizeof(float),
                                       cudaMemcpyDeviceToHost, stream_));
  // The memory is host state: it must hold the result when this returns.
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

}  // namespace longctx::cuda_backend_internal

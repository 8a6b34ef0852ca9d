// The CUDA backend's row-wise ops: embedding, norms, activations, rotation,
// gathers and the greedy arg-max.
#include <cstdint>
#include <limits>
#include <span>

#include "engine/backend/cuda/cuda_backend_internal.h"

namespace longctx::cuda_backend_internal {

absl::Status CudaBackend::Embedding(Tensor out, Tensor table, std::span<const int32_t> ids) {
  RETURN_IF_ERROR(RequireF32(out, "Embedding", "out"));
  RETURN_IF_ERROR(RequireShape(
      out.rows == static_cast<int64_t>(ids.size()) && out.cols == table.cols, "Embedding"));
  for (int32_t id : ids) {
    if (id < 0 || id >= table.rows) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " outside the vocabulary"));
    }
  }
  if (ids.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(const int32_t* d_ids, StageSpan(ids));
  Trace({U(OpId::kEmbedding), U(out.data), U(table.data), static_cast<uint64_t>(table.dtype),
         ids.size(), static_cast<uint64_t>(table.cols), U(d_ids)});
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cuda::Embedding(static_cast<float*>(out.data), table.data,
                                       ElemOf(table.dtype), d_ids, static_cast<int>(ids.size()),
                                       static_cast<int>(table.cols), stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::RmsNorm(Tensor out, Tensor x, Tensor w, float eps) {
  RETURN_IF_ERROR(RequireF32(out, "RmsNorm", "out"));
  RETURN_IF_ERROR(RequireF32(x, "RmsNorm", "x"));
  RETURN_IF_ERROR(
      RequireShape(out.rows == x.rows && out.cols == x.cols && w.numel() == x.cols, "RmsNorm"));
  Trace({U(OpId::kRmsNorm), U(out.data), U(x.data), U(w.data), static_cast<uint64_t>(w.dtype),
         static_cast<uint64_t>(x.rows), static_cast<uint64_t>(x.cols), U(eps)});
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cuda::RmsNorm(
      static_cast<float*>(out.data), static_cast<const float*>(x.data), w.data, ElemOf(w.dtype),
      static_cast<int>(x.rows), static_cast<int>(x.cols), eps, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::SwiGlu(Tensor out, Tensor gate, Tensor up) {
  RETURN_IF_ERROR(RequireF32(out, "SwiGlu", "out"));
  RETURN_IF_ERROR(RequireF32(gate, "SwiGlu", "gate"));
  RETURN_IF_ERROR(RequireF32(up, "SwiGlu", "up"));
  RETURN_IF_ERROR(RequireShape(
      out.numel() == gate.numel() && gate.numel() == up.numel() && gate.cols > 0, "SwiGlu"));
  Trace({U(OpId::kSwiGlu), U(out.data), U(gate.data), U(up.data), static_cast<uint64_t>(gate.rows),
         static_cast<uint64_t>(gate.cols)});
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cuda::SwiGlu(static_cast<float*>(out.data),
                                    static_cast<const float*>(gate.data),
                                    static_cast<const float*>(up.data), static_cast<int>(gate.rows),
                                    static_cast<int>(gate.cols), stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::AddInPlace(Tensor x, Tensor y) {
  RETURN_IF_ERROR(RequireF32(x, "AddInPlace", "x"));
  RETURN_IF_ERROR(RequireF32(y, "AddInPlace", "y"));
  RETURN_IF_ERROR(RequireShape(x.numel() == y.numel(), "AddInPlace"));
  Trace({U(OpId::kAdd), U(x.data), U(y.data), static_cast<uint64_t>(x.numel())});
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cuda::AddInPlace(static_cast<float*>(x.data),
                                        static_cast<const float*>(y.data), x.numel(), stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::Rope(Tensor x, int n_heads, std::span<const int32_t> pos,
                               std::span<const float> inv_freq) {
  RETURN_IF_ERROR(RequireF32(x, "Rope", "x"));
  const int64_t D = static_cast<int64_t>(inv_freq.size()) * 2;
  RETURN_IF_ERROR(RequireShape(
      x.rows == static_cast<int64_t>(pos.size()) && x.cols == n_heads * D && D > 0 && D <= 512,
      "Rope"));
  if (pos.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(const int32_t* d_pos, StageSpan(pos));
  ASSIGN_OR_RETURN(const float* d_freq, StageSpan(inv_freq));
  Trace({U(OpId::kRope), U(x.data), static_cast<uint64_t>(x.rows), static_cast<uint64_t>(n_heads),
         static_cast<uint64_t>(D), U(d_pos), U(d_freq)});
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(cuda::Rope(static_cast<float*>(x.data), d_pos, d_freq,
                                  static_cast<int>(x.rows), n_heads, static_cast<int>(D), stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::GatherRows(Tensor out, Tensor src, std::span<const int32_t> rows) {
  RETURN_IF_ERROR(RequireF32(out, "GatherRows", "out"));
  RETURN_IF_ERROR(RequireF32(src, "GatherRows", "src"));
  RETURN_IF_ERROR(RequireShape(
      out.rows == static_cast<int64_t>(rows.size()) && out.cols == src.cols, "GatherRows"));
  for (int32_t r : rows) {
    if (r < 0 || r >= src.rows) return absl::OutOfRangeError("GatherRows: row");
  }
  if (rows.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(const int32_t* d_rows, StageSpan(rows));
  Trace({U(OpId::kGather), U(out.data), U(src.data), rows.size(), static_cast<uint64_t>(src.cols),
         U(d_rows)});
  if (Replaying()) return absl::OkStatus();
  CUDA_RETURN_IF_ERROR(
      cuda::GatherRows(static_cast<float*>(out.data), static_cast<const float*>(src.data), d_rows,
                       static_cast<int>(rows.size()), static_cast<int>(src.cols), stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::ArgMaxRows(Tensor x, std::span<int32_t> out) {
  RETURN_IF_ERROR(RequireNotDeferred("ArgMaxRows"));
  RETURN_IF_ERROR(RequireF32(x, "ArgMaxRows", "x"));
  RETURN_IF_ERROR(RequireShape(x.rows == static_cast<int64_t>(out.size()) && x.cols > 0 &&
                                   x.cols <= std::numeric_limits<int32_t>::max(),
                               "ArgMaxRows"));
  if (out.empty()) return absl::OkStatus();
  RETURN_IF_ERROR(ReserveScratch(argmax_, out.size_bytes()));
  CUDA_RETURN_IF_ERROR(cuda::ArgMaxRows(argmax_.as<int32_t>(), static_cast<const float*>(x.data),
                                        static_cast<int>(out.size()), static_cast<int>(x.cols),
                                        stream_));
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out.data(), argmax_.as<int32_t>(), out.size_bytes(),
                                       cudaMemcpyDeviceToHost, stream_));
  return Synchronize();
}

}  // namespace longctx::cuda_backend_internal

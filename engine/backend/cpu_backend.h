// CPU backend: f32 activations, f16 (or f32) KV, ops from kernels/cpu. Weights of GGUF
// block types (and f16 / bf16) stay in their blocks and go through
// cpu::QuantLinear (int8 activations, AVX-512 VNNI or AVX2); f32 weights through
// BLAS.
#pragma once

#include "engine/backend/backend.h"
#include "engine/backend/cpu_options.h"

namespace longctx {

class CpuBackend final : public Backend {
 public:
  // REQUIRES: options.Validate() is OK.
  explicit CpuBackend(const CpuBackendOptions& options = {}) : options_(options) {}
  ~CpuBackend() override;

  bool TakesWeights(DType t) const override;
  absl::Status UploadRaw(Tensor dst, std::span<const uint8_t> bytes) override;

  std::string Name() const override { return "cpu"; }
  DType WeightType() const override { return DType::kF32; }
  DType ActivationType() const override { return DType::kF32; }
  DType KvType() const override { return options_.kv_type; }

  absl::StatusOr<DeviceBuffer> Allocate(size_t bytes) override;
  void Free(void* data) override;
  absl::Status Upload(Tensor dst, const float* host) override;
  absl::Status Download(float* host, Tensor src) override;
  absl::Status Synchronize() override { return absl::OkStatus(); }

  absl::Status InitKv(const KvGeometry& geometry) override;
  absl::Status KvWrite(int layer, Tensor k, Tensor v, std::span<const int32_t> slots) override;
  absl::Status KvReadBlock(int64_t block, float* host) override;
  absl::Status KvWriteBlock(int64_t block, const float* host) override;

  absl::Status Embedding(Tensor out, Tensor table, std::span<const int32_t> ids) override;
  absl::Status RmsNorm(Tensor out, Tensor x, Tensor w, float eps) override;
  absl::Status Linear(Tensor out, Tensor x, Tensor w, const Tensor* bias) override;
  absl::Status SwiGlu(Tensor out, Tensor gate, Tensor up) override;
  absl::Status AddInPlace(Tensor x, Tensor y) override;
  absl::Status Rope(Tensor x, int n_heads, std::span<const int32_t> pos,
                    std::span<const float> inv_freq) override;
  absl::Status Attention(Tensor out, Tensor q, int layer, int n_heads,
                         std::span<const AttentionSeq> seqs,
                         std::span<const float> inv_freq) override;
  absl::Status GatherRows(Tensor out, Tensor src, std::span<const int32_t> rows) override;
  absl::Status PartialAttention(Tensor partial, Tensor q, int layer, int n_heads,
                                std::span<const PartialAttentionSeq> seqs,
                                std::span<const float> inv_freq) override;
  absl::Status MergeAttention(Tensor out, Tensor partials, int n_parts, int n_heads) override;

 private:
  // The paged K and V of one layer, without a block table.
  cpu::PagedKvView LayerView(int layer) const;

  bool half_kv() const { return options_.kv_type == DType::kF16; }
  float* Float() const { return static_cast<float*>(kv_); }
  uint16_t* Half() const { return static_cast<uint16_t*>(kv_); }

  CpuBackendOptions options_;
  KvGeometry kv_geometry_;
  // Owned: n_blocks * ElementsPerBlock() elements of KvType(), pages committed lazily.
  void* kv_ = nullptr;
};

}  // namespace longctx

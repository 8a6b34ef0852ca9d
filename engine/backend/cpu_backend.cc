#include "engine/backend/cpu_backend.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/half.h"
#include "kernels/ops.h"

namespace longctx {
namespace {

float* F32(Tensor t) { return static_cast<float*>(t.data); }

absl::Status CheckF32(const Tensor& t, const char* what) {
  if (t.dtype != DType::kF32 || t.data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cpu backend: ", what, " must be f32"));
  }
  return absl::OkStatus();
}

absl::Status CheckShape(bool ok, const char* op) {
  return ok ? absl::OkStatus()
            : absl::InvalidArgumentError(absl::StrCat("cpu backend: shape mismatch in ", op));
}

}  // namespace

CpuBackend::~CpuBackend() { std::free(kv_); }

bool CpuBackend::TakesWeights(DType t) const {
  return t == DType::kF32 || options_.quantized_weights;
}

absl::Status CpuBackend::UploadRaw(Tensor dst, std::span<const uint8_t> bytes) {
  if (dst.dtype == DType::kF32 || !TakesWeights(dst.dtype) || dst.data == nullptr ||
      DTypeRowBytes(dst.dtype, dst.cols) <= 0 || bytes.size() != dst.bytes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cpu backend: raw upload of ", bytes.size(), " bytes into a [", dst.rows, ", ", dst.cols,
        "] tensor of a type it does not take or of another size"));
  }
  std::memcpy(dst.data, bytes.data(), bytes.size());
  return absl::OkStatus();
}

absl::StatusOr<DeviceBuffer> CpuBackend::Allocate(size_t bytes) {
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("cpu backend: cannot allocate ", bytes, " bytes"));
  }
  return DeviceBuffer(this, p, bytes);
}

void CpuBackend::Free(void* data) { std::free(data); }

absl::Status CpuBackend::Upload(Tensor dst, const float* host) {
  if (auto s = CheckF32(dst, "upload destination"); !s.ok()) return s;
  std::memcpy(dst.data, host, dst.bytes());
  return absl::OkStatus();
}

absl::Status CpuBackend::Download(float* host, Tensor src) {
  if (auto s = CheckF32(src, "download source"); !s.ok()) return s;
  std::memcpy(host, src.data, src.bytes());
  return absl::OkStatus();
}

absl::Status CpuBackend::InitKv(const KvGeometry& g) {
  if (kv_ != nullptr) return absl::FailedPreconditionError("cpu backend: KV arena already initialised");
  const size_t bytes = static_cast<size_t>(g.n_blocks * g.ElementsPerBlock()) * DTypeSize(KvType());
  // calloc of a large size maps fresh zero pages: memory is committed as blocks are used.
  kv_ = std::calloc(1, bytes);
  if (kv_ == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("cpu backend: cannot reserve ", bytes, " bytes of KV"));
  }
  kv_geometry_ = g;
  return absl::OkStatus();
}

absl::Status CpuBackend::KvWrite(int layer, Tensor k, Tensor v, std::span<const int32_t> slots) {
  const KvGeometry& g = kv_geometry_;
  const int width = g.n_kv_heads * g.head_dim;
  if (kv_ == nullptr) return absl::FailedPreconditionError("cpu backend: KV arena not initialised");
  if (auto s = CheckShape(k.cols == width && v.cols == width && k.rows == v.rows &&
                              static_cast<size_t>(k.rows) == slots.size() && layer >= 0 &&
                              layer < g.n_layers,
                          "KvWrite");
      !s.ok()) {
    return s;
  }
  const int64_t plane = int64_t{g.block_size} * width;
  for (size_t r = 0; r < slots.size(); ++r) {
    const int64_t block = slots[r] / g.block_size, slot = slots[r] % g.block_size;
    const int64_t at = block * g.ElementsPerBlock() + int64_t{layer} * 2 * plane + slot * width;
    if (half_kv()) {
      cpu::FloatToHalfRow(F32(k) + r * width, Half() + at, width);
      cpu::FloatToHalfRow(F32(v) + r * width, Half() + at + plane, width);
    } else {
      std::memcpy(Float() + at, F32(k) + r * width, sizeof(float) * width);
      std::memcpy(Float() + at + plane, F32(v) + r * width, sizeof(float) * width);
    }
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::KvReadBlock(int64_t block, float* host) {
  if (block < 0 || block >= kv_geometry_.n_blocks) return absl::OutOfRangeError("KvReadBlock: block");
  const int64_t n = kv_geometry_.ElementsPerBlock();
  if (half_kv()) {
    cpu::HalfToFloatRow(Half() + block * n, host, static_cast<int>(n));
  } else {
    std::memcpy(host, Float() + block * n, sizeof(float) * n);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::KvWriteBlock(int64_t block, const float* host) {
  if (block < 0 || block >= kv_geometry_.n_blocks) return absl::OutOfRangeError("KvWriteBlock: block");
  const int64_t n = kv_geometry_.ElementsPerBlock();
  if (half_kv()) {
    cpu::FloatToHalfRow(host, Half() + block * n, static_cast<int>(n));
  } else {
    std::memcpy(Float() + block * n, host, sizeof(float) * n);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Embedding(Tensor out, Tensor table, std::span<const int32_t> ids) {
  if (auto s = CheckShape(out.rows == static_cast<int64_t>(ids.size()) && out.cols == table.cols,
                          "Embedding");
      !s.ok()) {
    return s;
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= table.rows) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " outside the vocabulary"));
    }
  }
  if (table.dtype != DType::kF32) {
    cpu::DequantizeWeightRows(F32(out), static_cast<const uint8_t*>(table.data),
                              WeightFormatOf(table.dtype), ids.data(), static_cast<int>(ids.size()),
                              static_cast<int>(table.cols));
    return absl::OkStatus();
  }
  cpu::Embedding(F32(out), F32(table), ids.data(), static_cast<int>(ids.size()),
                 static_cast<int>(table.cols));
  return absl::OkStatus();
}

absl::Status CpuBackend::RmsNorm(Tensor out, Tensor x, Tensor w, float eps) {
  if (auto s = CheckShape(out.rows == x.rows && out.cols == x.cols && w.numel() == x.cols, "RmsNorm");
      !s.ok()) {
    return s;
  }
  cpu::RmsNorm(F32(out), F32(x), F32(w), static_cast<int>(x.rows), static_cast<int>(x.cols), eps);
  return absl::OkStatus();
}

absl::Status CpuBackend::Linear(Tensor out, Tensor x, Tensor w, const Tensor* bias) {
  if (auto s = CheckShape(out.rows == x.rows && out.cols == w.rows && x.cols == w.cols &&
                              DTypeRowBytes(w.dtype, w.cols) > 0 &&
                              (bias == nullptr || bias->numel() == w.rows),
                          "Linear");
      !s.ok()) {
    return s;
  }
  if (w.dtype != DType::kF32) {
    cpu::QuantLinear(F32(out), F32(x), static_cast<const uint8_t*>(w.data), WeightFormatOf(w.dtype),
                     bias ? F32(*bias) : nullptr, static_cast<int>(x.rows),
                     static_cast<int>(w.rows), static_cast<int>(w.cols), options_.isa);
    return absl::OkStatus();
  }
  cpu::Linear(F32(out), F32(x), F32(w), bias ? F32(*bias) : nullptr, static_cast<int>(x.rows),
              static_cast<int>(w.rows), static_cast<int>(w.cols));
  return absl::OkStatus();
}

absl::Status CpuBackend::SwiGlu(Tensor out, Tensor gate, Tensor up) {
  if (auto s = CheckShape(out.numel() == gate.numel() && gate.numel() == up.numel(), "SwiGlu");
      !s.ok()) {
    return s;
  }
  cpu::SwiGlu(F32(out), F32(gate), F32(up), static_cast<int>(gate.rows), static_cast<int>(gate.cols));
  return absl::OkStatus();
}

absl::Status CpuBackend::AddInPlace(Tensor x, Tensor y) {
  if (auto s = CheckShape(x.numel() == y.numel(), "AddInPlace"); !s.ok()) return s;
  cpu::AddInPlace(F32(x), F32(y), x.numel());
  return absl::OkStatus();
}

absl::Status CpuBackend::Rope(Tensor x, int n_heads, std::span<const int32_t> pos,
                              std::span<const float> inv_freq) {
  const int64_t D = inv_freq.size() * 2;
  if (auto s = CheckShape(x.rows == static_cast<int64_t>(pos.size()) && x.cols == n_heads * D &&
                              D <= 512,
                          "Rope");
      !s.ok()) {
    return s;
  }
  cpu::Rope(F32(x), pos.data(), inv_freq.data(), static_cast<int>(x.rows), n_heads,
            static_cast<int>(D));
  return absl::OkStatus();
}

cpu::PagedKvView CpuBackend::LayerView(int layer) const {
  const KvGeometry& g = kv_geometry_;
  const int64_t plane = int64_t{g.block_size} * g.n_kv_heads * g.head_dim;
  cpu::PagedKvView view;
  const int64_t at = int64_t{layer} * 2 * plane;
  if (half_kv()) {
    view.k16 = Half() + at;
    view.v16 = view.k16 + plane;
  } else {
    view.k = Float() + at;
    view.v = view.k + plane;
  }
  view.block_stride = g.ElementsPerBlock();
  view.block_size = g.block_size;
  view.n_kv_heads = g.n_kv_heads;
  return view;
}

absl::Status CpuBackend::Attention(Tensor out, Tensor q, int layer, int n_heads,
                                   std::span<const AttentionSeq> seqs,
                                   std::span<const float> inv_freq) {
  const KvGeometry& g = kv_geometry_;
  const int D = g.head_dim;
  if (auto s = CheckShape(q.cols == int64_t{n_heads} * D && out.rows == q.rows &&
                              out.cols == q.cols && n_heads % g.n_kv_heads == 0 &&
                              static_cast<int>(inv_freq.size()) * 2 == D,
                          "Attention");
      !s.ok()) {
    return s;
  }
  cpu::PagedKvView view = LayerView(layer);
  for (const AttentionSeq& seq : seqs) {
    if (seq.q_row + seq.n_q > q.rows ||
        static_cast<int64_t>(seq.block_table.size()) * g.block_size < seq.q_start + seq.n_q) {
      return absl::InvalidArgumentError("cpu backend: attention sequence out of range");
    }
    view.block_table = seq.block_table.data();
    cpu::DcaAttention(F32(out) + int64_t{seq.q_row} * q.cols, F32(q) + int64_t{seq.q_row} * q.cols,
                      view, inv_freq.data(), seq.dca, seq.n_q, seq.q_start, n_heads, D);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::GatherRows(Tensor out, Tensor src, std::span<const int32_t> rows) {
  if (auto s = CheckShape(out.rows == static_cast<int64_t>(rows.size()) && out.cols == src.cols,
                          "GatherRows");
      !s.ok()) {
    return s;
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    if (rows[r] < 0 || rows[r] >= src.rows) return absl::OutOfRangeError("GatherRows: row");
    std::memcpy(F32(out) + r * out.cols, F32(src) + int64_t{rows[r]} * src.cols,
                sizeof(float) * src.cols);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::PartialAttention(Tensor partial, Tensor q, int layer, int n_heads,
                                         std::span<const PartialAttentionSeq> seqs,
                                         std::span<const float> inv_freq) {
  const KvGeometry& g = kv_geometry_;
  const int D = g.head_dim;
  if (kv_ == nullptr) return absl::FailedPreconditionError("cpu backend: KV arena not initialised");
  if (auto s = CheckShape(q.cols == int64_t{n_heads} * D && partial.rows == q.rows &&
                              partial.cols == int64_t{n_heads} * (D + 1) &&
                              n_heads % g.n_kv_heads == 0 &&
                              static_cast<int>(inv_freq.size()) * 2 == D &&
                              layer >= 0 && layer < g.n_layers,
                          "PartialAttention");
      !s.ok()) {
    return s;
  }
  cpu::PagedKvView view = LayerView(layer);
  float* o = F32(partial);
  float* lse = o + q.rows * n_heads * D;
  for (const PartialAttentionSeq& seq : seqs) {
    int64_t held = 0;
    bool ordered = seq.run_first.size() == seq.run_count.size();
    for (size_t s = 0; ordered && s < seq.run_first.size(); ++s) {
      ordered = seq.run_count[s] > 0 && seq.run_first[s] >= 0 &&
                (s == 0 || seq.run_first[s] >= seq.run_first[s - 1] + seq.run_count[s - 1]);
      held += seq.run_count[s];
    }
    if (!ordered || seq.q_row + seq.n_q > q.rows ||
        static_cast<int64_t>(seq.block_table.size()) * g.block_size < held) {
      return absl::InvalidArgumentError("cpu backend: partial attention sequence out of range");
    }
    view.block_table = seq.block_table.data();
    const cpu::KeyRuns runs{seq.run_first.data(), seq.run_count.data(),
                            static_cast<int>(seq.run_first.size())};
    cpu::DcaPartialAttention(o + int64_t{seq.q_row} * q.cols, lse + int64_t{seq.q_row} * n_heads,
                             F32(q) + int64_t{seq.q_row} * q.cols, view, runs, inv_freq.data(),
                             seq.dca, seq.n_q, seq.q_start, n_heads, D);
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::MergeAttention(Tensor out, Tensor partials, int n_parts, int n_heads) {
  if (auto s = CheckF32(partials, "partials"); !s.ok()) return s;
  const int64_t rows = out.rows;
  if (auto s = CheckShape(n_parts >= 1 && n_heads >= 1 && out.cols % n_heads == 0 &&
                              partials.rows == n_parts * rows &&
                              partials.cols == out.cols + n_heads,
                          "MergeAttention");
      !s.ok()) {
    return s;
  }
  const int D = static_cast<int>(out.cols / n_heads);
  const float* o = F32(partials);
  cpu::MergeAttention(F32(out), nullptr, o, o + rows * out.cols, rows * partials.cols, n_parts,
                      rows * n_heads, D);
  return absl::OkStatus();
}

}  // namespace longctx

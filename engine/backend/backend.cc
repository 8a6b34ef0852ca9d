#include "engine/backend/backend.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"

namespace longctx {

size_t DTypeSize(DType t) { return t == DType::kF32 ? 4 : 2; }

cpu::WeightFormat WeightFormatOf(DType t) {
  switch (t) {
    case DType::kBF16:
      return cpu::WeightFormat::kBF16;
    case DType::kQ4_0:
      return cpu::WeightFormat::kQ4_0;
    case DType::kQ4_1:
      return cpu::WeightFormat::kQ4_1;
    case DType::kQ8_0:
      return cpu::WeightFormat::kQ8_0;
    case DType::kQ4_K:
      return cpu::WeightFormat::kQ4_K;
    case DType::kQ5_K:
      return cpu::WeightFormat::kQ5_K;
    case DType::kQ6_K:
      return cpu::WeightFormat::kQ6_K;
    default:
      return cpu::WeightFormat::kF16;
  }
}

int64_t DTypeRowBytes(DType t, int64_t cols) {
  if (t == DType::kF32 || t == DType::kBF16 || t == DType::kF16) {
    return cols * static_cast<int64_t>(DTypeSize(t));
  }
  return cpu::WeightRowBytes(WeightFormatOf(t), cols);
}

namespace {

// Whether the memory of two non-empty tensors intersects.
bool Overlap(const Tensor& a, const Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  const auto a0 = reinterpret_cast<uintptr_t>(a.data), b0 = reinterpret_cast<uintptr_t>(b.data);
  return a0 < b0 + b.bytes() && b0 < a0 + a.bytes();
}

absl::Status FusedShape(bool ok, const char* op) {
  return ok ? absl::OkStatus() : absl::InvalidArgumentError(absl::StrCat(op, ": shape mismatch"));
}

absl::Status FusedDisjoint(const Tensor& out, const Tensor& in, const char* op, const char* what) {
  return Overlap(out, in) ? absl::InvalidArgumentError(absl::StrCat(op, ": ", what, " overlap"))
                          : absl::OkStatus();
}

}  // namespace

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : backend_(std::exchange(o.backend_, nullptr)),
      data_(std::exchange(o.data_, nullptr)),
      bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    Release();
    backend_ = std::exchange(o.backend_, nullptr);
    data_ = std::exchange(o.data_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() { Release(); }

absl::Status Backend::PartialAttention(Tensor, Tensor, int, int,
                                       std::span<const PartialAttentionSeq>,
                                       std::span<const float>) {
  return absl::UnimplementedError(
      absl::StrCat("the ", Name(), " backend has no context-parallel attention"));
}

absl::Status Backend::UploadRaw(Tensor, std::span<const uint8_t>) {
  return absl::InvalidArgumentError(
      absl::StrCat("the ", Name(), " backend takes no weights in their file's blocks"));
}

absl::Status Backend::FillUniform(Tensor dst, uint64_t seed, float lo, float hi) {
  std::vector<float> host(static_cast<size_t>(dst.numel()));
  cpu::FillUniform(host.data(), dst.numel(), seed, lo, hi);
  return Upload(dst, host.data());
}

absl::Status Backend::ArgMaxRows(Tensor x, std::span<int32_t> out) {
  if (x.rows != static_cast<int64_t>(out.size()) || (x.rows > 0 && x.cols <= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ArgMaxRows: ", x.rows, " rows for ", out.size(), " results"));
  }
  std::vector<float> host(static_cast<size_t>(x.numel()));
  RETURN_IF_ERROR(Download(host.data(), x));
  for (size_t r = 0; r < out.size(); ++r) out[r] = cpu::ArgMax(host.data() + r * x.cols, x.cols);
  return absl::OkStatus();
}

absl::Status Backend::MergeAttention(Tensor, Tensor, int, int) {
  return absl::UnimplementedError(
      absl::StrCat("the ", Name(), " backend has no context-parallel attention"));
}

absl::Status Backend::InfiniMix(Tensor, Tensor, int, int, const float*, const float*,
                                std::span<const float>, float) {
  return absl::UnimplementedError(
      absl::StrCat("the ", Name(), " backend has no Infini memory kernels"));
}

absl::Status Backend::InfiniFoldKv(float*, float*, int, std::span<const int32_t>,
                                   std::span<const int32_t>, std::span<const float>,
                                   cpu::InfiniUpdateRule, float) {
  return absl::UnimplementedError(
      absl::StrCat("the ", Name(), " backend has no Infini memory kernels"));
}

absl::Status Backend::CheckLinearMany(std::span<const LinearJob> jobs, Tensor x) {
  for (size_t i = 0; i < jobs.size(); ++i) {
    const LinearJob& j = jobs[i];
    RETURN_IF_ERROR(FusedShape(j.out.rows == x.rows && j.out.cols == j.w.rows &&
                                   j.w.cols == x.cols &&
                                   (j.bias == nullptr || j.bias->numel() == j.w.rows),
                               "LinearMany"));
    RETURN_IF_ERROR(FusedDisjoint(j.out, x, "LinearMany", "an output and the input"));
    for (size_t k = 0; k < i; ++k) {
      RETURN_IF_ERROR(FusedDisjoint(j.out, jobs[k].out, "LinearMany", "two outputs"));
    }
  }
  return absl::OkStatus();
}

absl::Status Backend::CheckLinearSwiGlu(Tensor out, Tensor x, Tensor w_gate, Tensor w_up,
                                        Tensor scratch) {
  RETURN_IF_ERROR(FusedShape(out.rows == x.rows && out.cols == w_gate.rows &&
                                 w_gate.cols == x.cols && w_up.rows == w_gate.rows &&
                                 w_up.cols == w_gate.cols && scratch.rows == out.rows &&
                                 scratch.cols == out.cols,
                             "LinearSwiGlu"));
  RETURN_IF_ERROR(FusedDisjoint(out, x, "LinearSwiGlu", "out and x"));
  RETURN_IF_ERROR(FusedDisjoint(scratch, x, "LinearSwiGlu", "scratch and x"));
  return FusedDisjoint(scratch, out, "LinearSwiGlu", "scratch and out");
}

absl::Status Backend::CheckLinearAddInPlace(Tensor x, Tensor h, Tensor w, Tensor scratch) {
  RETURN_IF_ERROR(FusedShape(x.rows == h.rows && x.cols == w.rows && w.cols == h.cols &&
                                 scratch.rows == x.rows && scratch.cols == x.cols,
                             "LinearAddInPlace"));
  RETURN_IF_ERROR(FusedDisjoint(x, h, "LinearAddInPlace", "x and h"));
  RETURN_IF_ERROR(FusedDisjoint(scratch, h, "LinearAddInPlace", "scratch and h"));
  return FusedDisjoint(scratch, x, "LinearAddInPlace", "scratch and x");
}

absl::Status Backend::LinearMany(std::span<const LinearJob> jobs, Tensor x) {
  RETURN_IF_ERROR(CheckLinearMany(jobs, x));
  for (const LinearJob& j : jobs) RETURN_IF_ERROR(Linear(j.out, x, j.w, j.bias));
  return absl::OkStatus();
}

absl::Status Backend::LinearSwiGlu(Tensor out, Tensor x, Tensor w_gate, Tensor w_up,
                                   Tensor scratch) {
  RETURN_IF_ERROR(CheckLinearSwiGlu(out, x, w_gate, w_up, scratch));
  RETURN_IF_ERROR(Linear(out, x, w_gate, nullptr));
  RETURN_IF_ERROR(Linear(scratch, x, w_up, nullptr));
  return SwiGlu(out, out, scratch);
}

absl::Status Backend::LinearAddInPlace(Tensor x, Tensor h, Tensor w, Tensor scratch) {
  RETURN_IF_ERROR(CheckLinearAddInPlace(x, h, w, scratch));
  RETURN_IF_ERROR(Linear(scratch, h, w, nullptr));
  return AddInPlace(x, scratch);
}

absl::Status Backend::RopeKvWrite(int layer, Tensor k, Tensor v, std::span<const int32_t> slots,
                                  std::span<const int32_t> pos, std::span<const float> inv_freq) {
  const int64_t D = static_cast<int64_t>(inv_freq.size()) * 2;
  if (D == 0 || k.cols % D != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("RopeKvWrite: ", k.cols, " key columns are not whole heads of ", D));
  }
  RETURN_IF_ERROR(Rope(k, static_cast<int>(k.cols / D), pos, inv_freq));
  return KvWrite(layer, k, v, slots);
}

namespace {

// norm.w [x.cols], norm.xn the shape of x and apart from x and from `outs`.
absl::Status CheckRowNorm(const RowNorm& norm, Tensor x, std::span<const Tensor> outs,
                          const char* op) {
  RETURN_IF_ERROR(
      FusedShape(norm.w.numel() == x.cols && norm.xn.rows == x.rows && norm.xn.cols == x.cols, op));
  RETURN_IF_ERROR(FusedDisjoint(norm.xn, x, op, "the norm's scratch and x"));
  for (const Tensor& o : outs) {
    RETURN_IF_ERROR(FusedDisjoint(norm.xn, o, op, "the norm's scratch and an output"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Backend::CheckRmsNormLinearMany(std::span<const LinearJob> jobs, Tensor x,
                                             const RowNorm& norm) {
  RETURN_IF_ERROR(CheckLinearMany(jobs, x));
  std::vector<Tensor> outs;
  for (const LinearJob& j : jobs) outs.push_back(j.out);
  return CheckRowNorm(norm, x, outs, "RmsNormLinearMany");
}

absl::Status Backend::CheckRmsNormLinearSwiGlu(Tensor out, Tensor x, const RowNorm& norm,
                                               Tensor w_gate, Tensor w_up, Tensor scratch) {
  RETURN_IF_ERROR(CheckLinearSwiGlu(out, x, w_gate, w_up, scratch));
  const Tensor outs[] = {out, scratch};
  return CheckRowNorm(norm, x, outs, "RmsNormLinearSwiGlu");
}

absl::Status Backend::RmsNormLinearMany(std::span<const LinearJob> jobs, Tensor x,
                                        const RowNorm& norm) {
  RETURN_IF_ERROR(CheckRmsNormLinearMany(jobs, x, norm));
  RETURN_IF_ERROR(RmsNorm(norm.xn, x, norm.w, norm.eps));
  return LinearMany(jobs, norm.xn);
}

absl::Status Backend::RmsNormLinearSwiGlu(Tensor out, Tensor x, const RowNorm& norm, Tensor w_gate,
                                          Tensor w_up, Tensor scratch) {
  RETURN_IF_ERROR(CheckRmsNormLinearSwiGlu(out, x, norm, w_gate, w_up, scratch));
  RETURN_IF_ERROR(RmsNorm(norm.xn, x, norm.w, norm.eps));
  return LinearSwiGlu(out, norm.xn, w_gate, w_up, scratch);
}

absl::Status Backend::CheckRmsNormFeedForward(Tensor x, const RowNorm& norm, Tensor w_gate,
                                              Tensor w_up, Tensor w_down, Tensor gate, Tensor up) {
  RETURN_IF_ERROR(CheckRmsNormLinearSwiGlu(gate, x, norm, w_gate, w_up, up));
  return CheckLinearAddInPlace(x, gate, w_down, norm.xn);
}

absl::Status Backend::RmsNormFeedForward(Tensor x, const RowNorm& norm, Tensor w_gate, Tensor w_up,
                                         Tensor w_down, Tensor gate, Tensor up) {
  RETURN_IF_ERROR(CheckRmsNormFeedForward(x, norm, w_gate, w_up, w_down, gate, up));
  RETURN_IF_ERROR(RmsNormLinearSwiGlu(gate, x, norm, w_gate, w_up, up));
  return LinearAddInPlace(x, gate, w_down, norm.xn);
}

void DeviceBuffer::Release() {
  if (backend_ != nullptr && data_ != nullptr) backend_->Free(data_);
  backend_ = nullptr;
  data_ = nullptr;
  bytes_ = 0;
}

Tensor Tensor::Rows(int64_t first, int64_t count) const {
  Tensor t = *this;
  t.data = static_cast<char*>(data) + static_cast<size_t>(first * DTypeRowBytes(dtype, cols));
  t.rows = count;
  return t;
}

}  // namespace longctx

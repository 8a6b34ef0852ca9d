#include "engine/model/infini_memory.h"

#include <bit>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/util/checksum.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the Infini memory byte format is little-endian; add byte swaps for this host");

constexpr char kMagic[4] = {'L', 'C', 'I', 'M'};
// Version 2 changed the checksum from FNV-1a to XXH3; version 1 is still read
// (sessions exported before carry it).
constexpr uint32_t kVersion = 2;
// Limits that keep a hostile header from asking for absurd allocations.
constexpr uint32_t kMaxLayers = 1024, kMaxKvHeads = 1024, kMaxHeadDim = 1024;

struct Header {
  char magic[4];
  uint32_t version;
  uint32_t n_layers;
  uint32_t n_kv_heads;
  uint32_t head_dim;
  uint32_t rule;
  float eps;
  uint32_t reserved;
  int64_t folded_tokens;
};
static_assert(sizeof(Header) == 40);

// The checksum a memory of `version` ends with.
uint64_t ChecksumOf(uint32_t version, const char* p, size_t n) {
  const absl::string_view bytes(p, n);
  return version >= 2 ? Checksum64(bytes) : Fnv1a64(bytes);
}

}  // namespace

InfiniMemory::InfiniMemory(int n_layers, int n_kv_heads, int head_dim, cpu::InfiniUpdateRule rule,
                           float eps)
    : n_layers_(n_layers), n_kv_heads_(n_kv_heads), head_dim_(head_dim), rule_(rule), eps_(eps) {
  state_.assign(static_cast<size_t>(int64_t{n_layers} * LayerFloats()), 0.f);
}

void InfiniMemory::Fold(int layer, const float* k, const float* v, int T) {
  float* m = state_.data() + layer * LayerFloats();
  cpu::InfiniFold(m, m + MemFloats(), k, v, T, n_kv_heads_, head_dim_, rule_, eps_);
}

absl::Status InfiniMemory::FoldKv(Backend& backend, int layer, std::span<const int32_t> blocks,
                                  std::span<const int32_t> back_pos,
                                  std::span<const float> inv_freq) {
  if (layer < 0 || layer >= n_layers_) {
    return absl::InvalidArgumentError(absl::StrCat("infini fold: layer ", layer, " out of range"));
  }
  float* m = state_.data() + layer * LayerFloats();
  return backend.InfiniFoldKv(m, m + MemFloats(), layer, blocks, back_pos, inv_freq, rule_, eps_);
}

void InfiniMemory::Retrieve(float* out, int layer, const float* q, int T, int n_heads) const {
  cpu::InfiniRetrieve(out, q, mem(layer), z(layer), T, n_heads, n_kv_heads_, head_dim_, eps_);
}

absl::Status InfiniMemory::MixInto(Backend& backend, int layer, Tensor attn, Tensor q, int n_heads,
                                   std::span<const float> beta) const {
  const int64_t width = int64_t{n_heads} * head_dim_;
  if (layer < 0 || layer >= n_layers_ || attn.rows != q.rows || attn.cols != width ||
      q.cols != width || static_cast<int>(beta.size()) != n_heads || n_heads % n_kv_heads_ != 0) {
    return absl::InvalidArgumentError("infini mix: shapes do not match the memory");
  }
  if (backend.HasInfiniKernels()) {
    return backend.InfiniMix(attn, q, n_heads, n_kv_heads_, mem(layer), z(layer), beta, eps_);
  }
  const int T = static_cast<int>(q.rows);
  std::vector<float> qh(static_cast<size_t>(T * width)), ah(qh.size()), mh(qh.size());
  RETURN_IF_ERROR(backend.Download(qh.data(), q));
  RETURN_IF_ERROR(backend.Download(ah.data(), attn));
  RETURN_IF_ERROR(backend.Synchronize());
  Retrieve(mh.data(), layer, qh.data(), T, n_heads);
  cpu::InfiniMix(ah.data(), mh.data(), ah.data(), beta.data(), T, n_heads, head_dim_);
  return backend.Upload(attn, ah.data());
}

void InfiniMemory::Clear() {
  std::fill(state_.begin(), state_.end(), 0.f);
  folded_tokens_ = 0;
}

std::string InfiniMemory::Serialize() const {
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof(kMagic));
  h.version = kVersion;
  h.n_layers = static_cast<uint32_t>(n_layers_);
  h.n_kv_heads = static_cast<uint32_t>(n_kv_heads_);
  h.head_dim = static_cast<uint32_t>(head_dim_);
  h.rule = rule_ == cpu::InfiniUpdateRule::kDelta ? 1 : 0;
  h.eps = eps_;
  h.folded_tokens = folded_tokens_;
  const size_t payload = state_.size() * sizeof(float);
  std::string out;
  out.reserve(sizeof(Header) + payload + sizeof(uint64_t));
  out.append(reinterpret_cast<const char*>(&h), sizeof(Header));
  out.append(reinterpret_cast<const char*>(state_.data()), payload);
  const uint64_t sum = ChecksumOf(kVersion, out.data(), out.size());
  out.append(reinterpret_cast<const char*>(&sum), sizeof(sum));
  return out;
}

absl::StatusOr<InfiniMemory> InfiniMemory::Deserialize(std::string_view bytes) {
  Header h;
  if (bytes.size() < sizeof(Header)) {
    return absl::DataLossError(
        absl::StrCat("infini memory: ", bytes.size(), " bytes is shorter than the header"));
  }
  std::memcpy(&h, bytes.data(), sizeof(Header));
  if (std::memcmp(h.magic, kMagic, sizeof(kMagic)) != 0) {
    return absl::InvalidArgumentError("infini memory: bad magic");
  }
  if (h.version != kVersion && h.version != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("infini memory: unsupported version ", h.version));
  }
  if (h.n_layers == 0 || h.n_layers > kMaxLayers || h.n_kv_heads == 0 ||
      h.n_kv_heads > kMaxKvHeads || h.head_dim == 0 || h.head_dim > kMaxHeadDim || h.rule > 1 ||
      !(h.eps > 0.f) || h.folded_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "infini memory: bad header (layers ", h.n_layers, ", kv heads ", h.n_kv_heads,
        ", head_dim ", h.head_dim, ", rule ", h.rule, ", folded ", h.folded_tokens, ")"));
  }
  // Size check before any allocation: the header alone must not allocate.
  const uint64_t floats =
      uint64_t{h.n_layers} * h.n_kv_heads * (uint64_t{h.head_dim} * h.head_dim + h.head_dim);
  const size_t payload = static_cast<size_t>(floats * sizeof(float));
  if (bytes.size() != sizeof(Header) + payload + sizeof(uint64_t)) {
    return absl::DataLossError(absl::StrCat("infini memory: ", bytes.size(), " bytes, want ",
                                            sizeof(Header) + payload + sizeof(uint64_t)));
  }
  InfiniMemory m(
      static_cast<int>(h.n_layers), static_cast<int>(h.n_kv_heads), static_cast<int>(h.head_dim),
      h.rule == 1 ? cpu::InfiniUpdateRule::kDelta : cpu::InfiniUpdateRule::kLinear, h.eps);
  m.folded_tokens_ = h.folded_tokens;
  uint64_t sum;
  std::memcpy(&sum, bytes.data() + sizeof(Header) + payload, sizeof(sum));
  if (sum != ChecksumOf(h.version, bytes.data(), sizeof(Header) + payload)) {
    return absl::DataLossError("infini memory: checksum mismatch");
  }
  std::memcpy(m.state_.data(), bytes.data() + sizeof(Header), payload);
  return m;
}

bool InfiniMemory::operator==(const InfiniMemory& o) const {
  return n_layers_ == o.n_layers_ && n_kv_heads_ == o.n_kv_heads_ && head_dim_ == o.head_dim_ &&
         rule_ == o.rule_ && std::memcmp(&eps_, &o.eps_, sizeof(float)) == 0 &&
         folded_tokens_ == o.folded_tokens_ && state_.size() == o.state_.size() &&
         std::memcmp(state_.data(), o.state_.data(), state_.size() * sizeof(float)) == 0;
}

}  // namespace longctx

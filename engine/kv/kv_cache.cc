#include "engine/kv/kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace longctx {

KvCache::KvCache(const KvGeometry& g, int64_t bytes_per_element)
    : geometry_(g), bytes_per_element_(bytes_per_element) {
  free_.reserve(static_cast<size_t>(g.n_blocks));
  // Stack order: block 0 is handed out first.
  for (int64_t b = g.n_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

int64_t KvCache::BytesPerBlock() const { return geometry_.ElementsPerBlock() * bytes_per_element_; }

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(Backend* backend, int n_layers,
                                                        int n_kv_heads, int head_dim,
                                                        const KvCacheConfig& config) {
  if (config.block_size <= 0 || config.block_size > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache.block_size must be in [1, 4096], got ", config.block_size));
  }
  KvGeometry g;
  g.n_layers = n_layers;
  g.n_kv_heads = n_kv_heads;
  g.head_dim = head_dim;
  g.block_size = config.block_size;
  const int64_t element = static_cast<int64_t>(DTypeSize(backend->KvType()));
  const int64_t block_bytes = g.ElementsPerBlock() * element;
  g.n_blocks = std::min<int64_t>(config.max_bytes / block_bytes, int64_t{1} << 30);
  if (g.n_blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("kv_cache.max_bytes ", config.max_bytes,
                                                   " is below one block (", block_bytes, " bytes)"));
  }
  auto status = backend->InitKv(g);
  if (!status.ok()) return status;
  return std::unique_ptr<KvCache>(new KvCache(g, element));
}

std::unique_ptr<KvCache> KvCache::CreateLedger(const KvGeometry& g, int64_t bytes_per_element) {
  return std::unique_ptr<KvCache>(new KvCache(g, bytes_per_element));
}

absl::Status KvCache::Append(KvSequence& seq, int n_new, std::vector<int32_t>* slots) {
  const int bs = geometry_.block_size;
  const int64_t have = static_cast<int64_t>(seq.blocks_.size());
  const int64_t need = (int64_t{seq.length_} + n_new + bs - 1) / bs;
  if (need - have > static_cast<int64_t>(free_.size())) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache full: ", need - have, " blocks needed, ", free_.size(), " free of ",
        geometry_.n_blocks));
  }
  for (int64_t b = have; b < need; ++b) {
    seq.blocks_.push_back(free_.back());
    free_.pop_back();
  }
  slots->clear();
  slots->reserve(static_cast<size_t>(n_new));
  for (int j = seq.length_; j < seq.length_ + n_new; ++j) {
    slots->push_back(seq.blocks_[j / bs] * bs + j % bs);
  }
  seq.length_ += n_new;
  return absl::OkStatus();
}

void KvCache::Truncate(KvSequence& seq, int length) {
  if (length >= seq.length_) return;
  const int bs = geometry_.block_size;
  const size_t keep = static_cast<size_t>((std::max(length, 0) + bs - 1) / bs);
  while (seq.blocks_.size() > keep) {
    if (seq.blocks_.back() != kAbsentBlock) free_.push_back(seq.blocks_.back());
    seq.blocks_.pop_back();
  }
  seq.length_ = std::max(length, 0);
}

absl::Status KvCache::ReleaseRange(KvSequence& seq, int begin, int end) {
  const int bs = geometry_.block_size;
  if (begin < 0 || end < begin || begin % bs != 0 || end % bs != 0 || end > seq.length_ / bs * bs) {
    return absl::InvalidArgumentError(absl::StrCat("KV release of tokens [", begin, ", ", end,
                                                   ") must cover whole blocks of ", bs,
                                                   " inside the sequence of ", seq.length_));
  }
  for (int b = begin / bs; b < end / bs; ++b) {
    int32_t& entry = seq.blocks_[static_cast<size_t>(b)];
    if (entry == kAbsentBlock) continue;
    free_.push_back(entry);
    entry = kAbsentBlock;
  }
  return absl::OkStatus();
}

absl::Status KvCache::AppendAbsent(KvSequence& seq, int n) {
  const int bs = geometry_.block_size;
  if (n < 0 || n % bs != 0 || seq.length_ % bs != 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV: ", n, " absent tokens after ", seq.length_,
                                                   " must be whole blocks of ", bs));
  }
  seq.blocks_.insert(seq.blocks_.end(), static_cast<size_t>(n / bs), kAbsentBlock);
  seq.length_ += n;
  return absl::OkStatus();
}

int64_t KvSequence::resident_blocks() const {
  return std::count_if(blocks_.begin(), blocks_.end(), [](int32_t b) { return b != kAbsentBlock; });
}

}  // namespace longctx

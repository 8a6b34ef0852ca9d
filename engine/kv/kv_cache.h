// Paged KV cache bookkeeping (docs/design.md §5): a pool of fixed-size blocks in the
// backend's KV arena, and per-sequence block tables. The data itself lives in
// the backend; this class only hands out block ids.
//
// Thread safety: owned by the engine thread; not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "engine/backend/backend.h"

namespace longctx {

struct KvCacheConfig {
  int block_size = 64;           // tokens per block; DCA chunk lengths are multiples of it
  int64_t max_bytes = int64_t{4} << 30;  // arena budget (backend element size)
  // max_bytes 0: automatic, see AutoKvBytes (engine/model/llama_model.h).

};

// Block-table entry of a block released from the middle of a sequence (an
// Infini window eviction): the tokens keep their indices but have no KV.
inline constexpr int32_t kAbsentBlock = -1;

// One sequence's view of the cache: its length and block table.
class KvSequence {
 public:
  int length() const { return length_; }
  // Entries may be kAbsentBlock (see KvCache::ReleaseRange).
  const std::vector<int32_t>& block_table() const { return blocks_; }
  // Blocks actually held (entries that are not absent).
  int64_t resident_blocks() const;

 private:
  friend class KvCache;
  int length_ = 0;
  std::vector<int32_t> blocks_;
};

class KvCache {
 public:
  // Initialises the backend's KV arena for `config`'s budget.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(Backend* backend, int n_layers,
                                                         int n_kv_heads, int head_dim,
                                                         const KvCacheConfig& config);

  // Bookkeeping only, with no arena behind it: the token accounting of a
  // group of ranks' caches (engine/dist), `g.n_blocks` blocks in all.
  static std::unique_ptr<KvCache> CreateLedger(const KvGeometry& g, int64_t bytes_per_element);

  const KvGeometry& geometry() const { return geometry_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t total_blocks() const { return geometry_.n_blocks; }
  int64_t BytesPerBlock() const;

  // Grows `seq` to hold `n_new` more tokens and fills `slots` with their physical
  // slots. RESOURCE_EXHAUSTED (and `seq` unchanged) when the pool is short.
  absl::Status Append(KvSequence& seq, int n_new, std::vector<int32_t>* slots);
  // Shrinks `seq` to `length` tokens (rollback), returning whole freed blocks.
  void Truncate(KvSequence& seq, int length);
  // Frees the blocks holding tokens [begin, end) of `seq` and marks them
  // absent; the sequence keeps its length and later tokens their slots.
  // Attention must then skip those keys (DcaParams::sink_tokens/window_start).
  // INVALID_ARGUMENT unless begin and end are multiples of the block size and
  // 0 ≤ begin ≤ end ≤ length rounded down to a block. Already absent blocks are skipped.
  absl::Status ReleaseRange(KvSequence& seq, int begin, int end);
  // Grows `seq` by `n` tokens that have no KV (absent blocks), e.g. to restore
  // a session whose old tokens live only in its Infini memory. INVALID_ARGUMENT
  // unless the length and n are multiples of the block size.
  absl::Status AppendAbsent(KvSequence& seq, int n);
  // Returns all of `seq`'s blocks.
  void Release(KvSequence& seq) { Truncate(seq, 0); }

 private:
  KvCache(const KvGeometry& g, int64_t bytes_per_element);
  KvGeometry geometry_;
  int64_t bytes_per_element_;
  std::vector<int32_t> free_;  // stack of free physical blocks
};

}  // namespace longctx

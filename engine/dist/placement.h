// Where a context-parallel session's state lives (docs/design.md §7). Each session has a
// home rank, which runs its non-attention layers and merges its attention; its
// KV is cut into spans of `span` tokens (the DCA chunk length, so a chunk is
// never split) dealt round-robin over the ranks starting at the home: span c
// lives on rank (home + c) mod world_size. A session can thus hold about
// world_size times the KV one GPU holds, and a short one (a single span) lives
// entirely on its home.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/ops.h"

namespace longctx {

// Span for plain-RoPE sessions (no DCA chunk to align to), in tokens.
inline constexpr int kDefaultRopeSpan = 4096;

// Placement span of a session: its DCA chunk length, or `rope_span` when DCA is
// off (chunk_len = kDcaUnbounded).
int PlacementSpan(const cpu::DcaParams& dca, int rope_span = kDefaultRopeSpan);

// The placement of one session. Immutable and cheap to copy.
class ChunkPlacement {
 public:
  // INVALID_ARGUMENT unless world_size ≥ 1, home in [0, world_size), span ≥ 1.
  static absl::StatusOr<ChunkPlacement> Create(int world_size, int home, int span);

  int world_size() const { return world_size_; }
  int home() const { return home_; }
  int span() const { return span_; }

  int OwnerOf(int64_t token) const {
    return static_cast<int>((home_ + token / span_) % world_size_);
  }
  // Tokens of [begin, end) that `rank` holds.
  int64_t CountHeld(int rank, int64_t begin, int64_t end) const;
  // The runs of [0, length) that `rank` holds, ascending: first[s], count[s]
  // (the shape of cpu::KeyRuns).
  void HeldRuns(int rank, int64_t length, std::vector<int32_t>* first,
                std::vector<int32_t>* count) const;

 private:
  ChunkPlacement(int world_size, int home, int span)
      : world_size_(world_size), home_(home), span_(span) {}
  int world_size_;
  int home_;
  int span_;
};

// Per-rank load as the placement table sees it.
struct RankLoad {
  int sessions = 0;    // sessions homed on the rank
  int64_t tokens = 0;  // KV tokens held on the rank, all sessions
};

// Chooses homes and tracks what each rank holds. Owned by the session manager
// (one thread); not thread-safe.
class PlacementTable {
 public:
  explicit PlacementTable(int world_size);

  int world_size() const { return static_cast<int>(load_.size()); }
  const RankLoad& load(int rank) const { return load_[static_cast<size_t>(rank)]; }

  // Places a new, empty session with placement span `span`: its home is the
  // least loaded rank — fewest homed sessions (the home does the session's
  // non-attention work), then fewest KV tokens held, then the lowest rank.
  absl::StatusOr<ChunkPlacement> Place(int span);
  // A session's length went from `from` to `to` tokens (growth or rollback).
  void Resize(const ChunkPlacement& p, int64_t from, int64_t to);
  // The session of `length` tokens is gone.
  void Remove(const ChunkPlacement& p, int64_t length);

 private:
  std::vector<RankLoad> load_;
};

}  // namespace longctx

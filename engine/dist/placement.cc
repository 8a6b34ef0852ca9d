#include "engine/dist/placement.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace longctx {

int PlacementSpan(const cpu::DcaParams& dca, int rope_span) {
  return dca.chunk_len == cpu::kDcaUnbounded ? rope_span : dca.chunk_len;
}

absl::StatusOr<ChunkPlacement> ChunkPlacement::Create(int world_size, int home, int span) {
  if (world_size < 1 || home < 0 || home >= world_size || span < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("placement: world size ", world_size, ", home ", home, ", span ", span));
  }
  return ChunkPlacement(world_size, home, span);
}

int64_t ChunkPlacement::CountHeld(int rank, int64_t begin, int64_t end) const {
  int64_t n = 0;
  // Spans in [begin, end): at most two partial ones, the rest whole.
  for (int64_t c = begin / span_; c * span_ < end; ++c) {
    if (OwnerOf(c * span_) != rank) continue;
    n += std::min(end, (c + 1) * span_) - std::max(begin, c * span_);
  }
  return n;
}

void ChunkPlacement::HeldRuns(int rank, int64_t length, std::vector<int32_t>* first,
                              std::vector<int32_t>* count) const {
  first->clear();
  count->clear();
  // Span c is on rank (home + c) mod W: this rank's first span is (rank − home) mod W.
  const int64_t c0 = ((rank - home_) % world_size_ + world_size_) % world_size_;
  for (int64_t c = c0; c * span_ < length; c += world_size_) {
    first->push_back(static_cast<int32_t>(c * span_));
    count->push_back(static_cast<int32_t>(std::min<int64_t>(span_, length - c * span_)));
  }
}

PlacementTable::PlacementTable(int world_size) : load_(static_cast<size_t>(world_size)) {}

absl::StatusOr<ChunkPlacement> PlacementTable::Place(int span) {
  int home = 0;
  for (int r = 1; r < world_size(); ++r) {
    const RankLoad& a = load(r);
    const RankLoad& b = load(home);
    if (a.sessions < b.sessions || (a.sessions == b.sessions && a.tokens < b.tokens)) home = r;
  }
  auto p = ChunkPlacement::Create(world_size(), home, span);
  if (p.ok()) ++load_[static_cast<size_t>(home)].sessions;
  return p;
}

void PlacementTable::Resize(const ChunkPlacement& p, int64_t from, int64_t to) {
  const int64_t lo = std::min(from, to), hi = std::max(from, to);
  const int64_t sign = to > from ? 1 : -1;
  for (int r = 0; r < world_size(); ++r) {
    load_[static_cast<size_t>(r)].tokens += sign * p.CountHeld(r, lo, hi);
  }
}

void PlacementTable::Remove(const ChunkPlacement& p, int64_t length) {
  Resize(p, length, 0);
  --load_[static_cast<size_t>(p.home())].sessions;
}

}  // namespace longctx

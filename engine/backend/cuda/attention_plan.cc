#include "engine/backend/cuda/attention_plan.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

enum class Kernel { kSimple, kTiled, kSplit };

// Fewest key tiles one split-KV block takes: below this the combine costs more
// than the parallelism gains.
constexpr int kMinTilesPerSplit = 2;
// Most split-KV blocks per SM the planner aims for (fewer where fewer fit):
// enough to fill the device and balance uneven sequences without splitting
// short contexts needlessly.
constexpr int kSplitBlocksPerSm = 4;
// Splits per row group above which a group's merge (one block, slot after
// slot) weighs more than a third resident block per SM gains.
constexpr int64_t kManySplitsPerGroup = 8;

// One sequence of either kind of call.
struct PlanSeq {
  int q_row = 0;
  int n_q = 0;
  int q_start = 0;
  std::span<const int32_t> block_table;
  cpu::DcaParams dca;
  bool partial = false;  // only the held runs below are seen
  std::span<const int32_t> run_first;
  std::span<const int32_t> run_count;
};

// Held runs on key-tile boundaries: every run starts on one and all but the
// last fill whole tiles, so their local indices stay tile-aligned too.
bool RunsTileAligned(const PlanSeq& s) {
  for (size_t r = 0; r < s.run_first.size(); ++r) {
    if (s.run_first[r] % cuda::kDcaKeyTile != 0) return false;
    if (r + 1 < s.run_first.size() && s.run_count[r] % cuda::kDcaKeyTile != 0) return false;
  }
  return true;
}

Kernel ChooseKernel(const PlanSeq& s, const AttentionPlanShape& shape) {
  const bool tiles_fit = s.dca.chunk_len % cuda::kDcaKeyTile == 0 &&
                         shape.block_size % cuda::kDcaKeyTile == 0 &&
                         (!s.partial || RunsTileAligned(s));
  const bool tiled_ok = tiles_fit && cuda::DcaTiledSupported(shape.head_dim);
  const bool split_ok = tiles_fit && cuda::DcaSplitSupported(shape.head_dim);
  switch (shape.kernels) {
    case CudaAttentionKernels::kSimple:
      return Kernel::kSimple;
    case CudaAttentionKernels::kTiled:
      return tiled_ok ? Kernel::kTiled : Kernel::kSimple;
    case CudaAttentionKernels::kSplit:
      return split_ok ? Kernel::kSplit : Kernel::kSimple;
    case CudaAttentionKernels::kAuto:
    case CudaAttentionKernels::kAutoMmaSync:
    case CudaAttentionKernels::kAutoWgmmaOverlapped:
      break;
  }
  const int group = shape.n_heads / shape.n_kv_heads;
  if (split_ok && int64_t{s.n_q} * group <= cuda::kDcaSplitRows) return Kernel::kSplit;
  if (tiled_ok) return Kernel::kTiled;
  return Kernel::kSimple;
}

// Keys stored in the sequence's block table: its held runs for a partial
// (INVALID_ARGUMENT unless each is non-empty, non-negative and past the one
// before), else 0 .. the end of its new tokens.
absl::StatusOr<int64_t> StoredKeys(const PlanSeq& s, size_t si) {
  const int64_t end = int64_t{s.q_start} + s.n_q;
  if (!s.partial) return end;
  int64_t stored = 0;
  for (size_t r = 0; r < s.run_first.size(); ++r) {
    if (s.run_count[r] < 1 || s.run_first[r] < 0 ||
        (r > 0 && s.run_first[r] < int64_t{s.run_first[r - 1]} + s.run_count[r - 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("partial attention: sequence ", si, " run ", r, " (first ", s.run_first[r],
                       ", count ", s.run_count[r], ") is empty, negative or out of order"));
    }
    stored += s.run_count[r];
  }
  return stored;
}

// Blocks of the table that hold `stored` keys.
int64_t UsedBlocks(int64_t stored, const AttentionPlanShape& shape) {
  return (stored + shape.block_size - 1) / shape.block_size;
}

// INVALID_ARGUMENT naming sequence si where its rows lie outside q, its block
// table cannot hold its `stored` keys, its DCA parameters are out of range or a
// block it reads lies outside the arena.
absl::Status CheckSeq(const PlanSeq& s, size_t si, int64_t stored,
                      const AttentionPlanShape& shape) {
  if (s.n_q < 0 || s.q_start < 0 || s.q_row < 0 || int64_t{s.q_row} + s.n_q > shape.q_rows) {
    return absl::InvalidArgumentError(absl::StrCat("attention: sequence ", si, " rows [", s.q_row,
                                                   ", ", s.q_row + s.n_q, ") outside the ",
                                                   shape.q_rows, " query rows"));
  }
  if (static_cast<int64_t>(s.block_table.size()) * shape.block_size < stored) {
    return absl::InvalidArgumentError(absl::StrCat("attention: sequence ", si, " block table of ",
                                                   s.block_table.size(), " blocks cannot hold ",
                                                   stored, " tokens"));
  }
  if (s.dca.chunk_len < 1 || s.dca.chunk_size < 0) {
    return absl::InvalidArgumentError(absl::StrCat("attention: sequence ", si, " has chunk_len ",
                                                   s.dca.chunk_len, ", chunk_size ",
                                                   s.dca.chunk_size));
  }
  if (!s.partial && s.dca.sink_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention: sequence ", si, " has sink_tokens ", s.dca.sink_tokens));
  }
  const int64_t used_blocks = UsedBlocks(stored, shape);
  for (int64_t b = 0; b < used_blocks; ++b) {
    // Blocks wholly inside the Infini window's absent range are never read.
    if (!s.partial && b * shape.block_size >= s.dca.sink_tokens &&
        (b + 1) * shape.block_size <= s.dca.window_start) {
      continue;
    }
    if (s.block_table[b] < 0 || s.block_table[b] >= shape.n_blocks) {
      return absl::InvalidArgumentError(absl::StrCat("attention: sequence ", si, " names block ",
                                                     s.block_table[b], " outside the arena of ",
                                                     shape.n_blocks));
    }
  }
  return absl::OkStatus();
}

// Appends the (checked) sequence's descriptor, its held runs with their local
// indices, and the first used_blocks entries of its block table.
void AddSeqDesc(const PlanSeq& s, int64_t used_blocks, AttentionPlan* plan) {
  cuda::DcaSeqDesc d;
  d.q_row = s.q_row;
  d.n_q = s.n_q;
  d.q_start = s.q_start;
  d.block_table_offset = static_cast<int>(plan->block_tables.size());
  d.chunk_len = s.dca.chunk_len;
  d.chunk_size = s.dca.chunk_size;
  d.softmax_scale = s.dca.softmax_scale;
  if (s.partial) {
    d.run_offset = static_cast<int>(plan->runs.size());
    d.n_runs = static_cast<int>(s.run_first.size());
    int local = 0;
    for (size_t r = 0; r < s.run_first.size(); ++r) {
      plan->runs.push_back({s.run_first[r], s.run_count[r], local});
      local += s.run_count[r];
    }
  } else {
    d.sink_tokens = s.dca.sink_tokens;
    d.window_start = s.dca.window_start;
  }
  plan->seqs.push_back(d);
  plan->block_tables.insert(plan->block_tables.end(), s.block_table.begin(),
                            s.block_table.begin() + used_blocks);
}

// Queues the row tiles of sequence si on the kernel chosen for it. Split-KV
// sequences are only noted in split_seqs: their work is cut once all are known.
void AddRowTiles(const PlanSeq& s, size_t si, const AttentionPlanShape& shape, AttentionPlan* plan,
                 std::vector<int>* split_seqs) {
  if (s.n_q == 0) return;
  switch (ChooseKernel(s, shape)) {
    case Kernel::kSimple:
      for (int r = 0; r < s.n_q; r += cuda::kDcaSimpleRows) {
        plan->simple_tiles.push_back({static_cast<int>(si), r});
      }
      break;
    case Kernel::kTiled:
      for (int r = 0; r < s.n_q; r += cuda::kDcaTiledRows) {
        plan->tiled_tiles.push_back({static_cast<int>(si), r});
      }
      break;
    case Kernel::kSplit:
      split_seqs->push_back(static_cast<int>(si));
      break;
  }
}

// Longest key ranges first, so the short tiles fill the tail of the grid.
void SortTiledTiles(AttentionPlan* plan) {
  auto tile_end = [&](const cuda::DcaRowTile& t) {
    const cuda::DcaSeqDesc& d = plan->seqs[t.seq];
    return int64_t{d.q_start} + std::min(t.row0 + cuda::kDcaTiledRows, d.n_q);
  };
  std::stable_sort(plan->tiled_tiles.begin(), plan->tiled_tiles.end(),
                   [&](const cuda::DcaRowTile& a, const cuda::DcaRowTile& b) {
                     return tile_end(a) > tile_end(b);
                   });
}

// Split-KV: row groups of kDcaSplitRows (query, head-in-group) rows; their key
// tiles cut into splits of equal length, enough blocks to fill the device.
// Splits count only present key tiles: those wholly inside an Infini
// window's absent range cost nothing.
// Held runs of a partial count the same way: only their tiles are present.
struct RowGroup {
  int seq, rr0, n_rows, n_tiles;
  std::vector<std::pair<int, int>> spans;  // present tiles [first, end), ascending
  int present() const {
    int n = 0;
    for (const auto& [a, b] : spans) n += b - a;
    return n;
  }
  // Tile index of the k-th present tile (n_tiles past the last).
  int Tile(int64_t k) const {
    for (const auto& [a, b] : spans) {
      if (k < b - a) return static_cast<int>(a + k);
      k -= b - a;
    }
    return n_tiles;
  }
};

// The row groups of the split-KV sequences, in order, with their present
// tiles; *total_tiles: the present tiles of all of them.
std::vector<RowGroup> SplitRowGroups(const AttentionPlan& plan, std::span<const int> split_seqs,
                                     int group, int64_t* total_tiles) {
  std::vector<RowGroup> groups;
  *total_tiles = 0;
  for (int si : split_seqs) {
    const cuda::DcaSeqDesc& d = plan.seqs[si];
    const int rows = d.n_q * group;
    for (int rr0 = 0; rr0 < rows; rr0 += cuda::kDcaSplitRows) {
      const int n_rows = std::min(cuda::kDcaSplitRows, rows - rr0);
      const int i_max = d.q_start + (rr0 + n_rows - 1) / group;
      const int n_tiles = i_max / cuda::kDcaKeyTile + 1;
      RowGroup rg{si, rr0, n_rows, n_tiles, {}};
      if (d.run_offset >= 0) {
        for (int r = 0; r < d.n_runs; ++r) {
          const cuda::DcaKeyRun& run = plan.runs[d.run_offset + r];
          const int t0 = run.first / cuda::kDcaKeyTile;
          const int t1 =
              std::min<int64_t>(n_tiles, (int64_t{run.first} + run.count + cuda::kDcaKeyTile - 1) /
                                             cuda::kDcaKeyTile);
          if (t0 < t1) rg.spans.push_back({t0, t1});
        }
      } else if (d.window_start > d.sink_tokens) {
        const int absent_t0 =
            std::min(n_tiles, (d.sink_tokens + cuda::kDcaKeyTile - 1) / cuda::kDcaKeyTile);
        const int absent_t1 = std::clamp(d.window_start / cuda::kDcaKeyTile, absent_t0, n_tiles);
        if (absent_t0 > 0) rg.spans.push_back({0, absent_t0});
        if (absent_t1 < n_tiles) rg.spans.push_back({absent_t1, n_tiles});
      } else {
        rg.spans.push_back({0, n_tiles});
      }
      *total_tiles += rg.present();
      groups.push_back(std::move(rg));
    }
  }
  return groups;
}

// How many splits each of the (non-empty) row groups is cut into.
//
// One wave: S = num_sms x resident / n_kv_heads splits per kv head in all
// (resident: the blocks that fit on an SM at once, at most
// kSplitBlocksPerSm), so no block waits for a slot while the rest of the
// device idles. (Cutting 129 tiles at a fixed length of 32 once made a
// fifth, one-tile split per row group: 480 blocks for 396 slots, a second
// wave of full blocks.) The S splits go to the row groups in proportion to
// their present tiles (largest remainders), none shorter than
// kMinTilesPerSplit; a group's splits are of near-equal length. Where the
// row groups are few, each is cut into many splits that one block merges
// slot after slot: two blocks per SM then (bytes enough in flight), not
// more. (One session at 32k, D 64: 128 splits on three blocks per SM took
// 0.053 ms per layer on an H200, 86 on two 0.043 ms.)
std::vector<int64_t> SplitsPerGroup(std::span<const RowGroup> groups, int64_t total_tiles,
                                    const AttentionPlanShape& shape) {
  int resident = std::clamp(shape.split_resident_blocks, 1, kSplitBlocksPerSm);
  if (int64_t{shape.num_sms} * resident / shape.n_kv_heads >
      kManySplitsPerGroup * static_cast<int64_t>(groups.size())) {
    resident = std::min(resident, 2);
  }
  const int64_t S = std::max<int64_t>(1, int64_t{shape.num_sms} * resident / shape.n_kv_heads);
  std::vector<int64_t> n_splits(groups.size());
  std::vector<std::pair<double, size_t>> remainders;
  int64_t given = 0;
  for (size_t i = 0; i < groups.size(); ++i) {
    const int64_t present = groups[i].present();
    const int64_t most = std::max<int64_t>(1, present / kMinTilesPerSplit);
    const double share = total_tiles > 0 ? static_cast<double>(present) * S / total_tiles : 1;
    n_splits[i] = std::clamp<int64_t>(static_cast<int64_t>(share), 1, most);
    given += n_splits[i];
    if (n_splits[i] < most) remainders.push_back({share - static_cast<double>(n_splits[i]), i});
  }
  std::stable_sort(remainders.begin(), remainders.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  for (const auto& [rem, i] : remainders) {
    if (given >= S) break;
    ++n_splits[i];
    ++given;
  }
  return n_splits;
}

// Appends each row group's split items (and, for a group of several splits,
// its combine item and partial-output slots).
void AddSplitItems(std::span<const RowGroup> groups, std::span<const int64_t> n_splits,
                   AttentionPlan* plan) {
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const RowGroup& g = groups[gi];
    const int64_t present = g.present();
    const int n = static_cast<int>(n_splits[gi]);
    const int first_slot = plan->split_slots;
    for (int k = 0; k < n; ++k) {
      cuda::DcaSplitItem item;
      item.seq = g.seq;
      item.rr0 = g.rr0;
      item.n_rows = g.n_rows;
      // The split's first present tile up to the next split's (absent tiles
      // in between are skipped by the kernel).
      item.tile_begin = k == 0 ? 0 : g.Tile(present * k / n);
      item.tile_end = k + 1 == n ? g.n_tiles : g.Tile(present * (k + 1) / n);
      item.out_slot = n == 1 ? -1 : first_slot + k;
      item.combine = n == 1 ? -1 : static_cast<int>(plan->combine_items.size());
      plan->split_items.push_back(item);
    }
    if (n > 1) {
      plan->combine_items.push_back({g.seq, g.rr0, g.n_rows, first_slot, n});
      plan->split_slots += n;
    }
  }
}

absl::StatusOr<AttentionPlan> Plan(std::span<const PlanSeq> seqs, const AttentionPlanShape& shape) {
  if (shape.head_dim != 64 && shape.head_dim != 128 && shape.head_dim != 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention: head_dim ", shape.head_dim,
                     " not supported by the CUDA kernels (64, 128, 256)"));
  }
  AttentionPlan plan;
  plan.seqs.reserve(seqs.size());
  const int group = shape.n_heads / shape.n_kv_heads;
  std::vector<int> split_seqs;
  for (size_t si = 0; si < seqs.size(); ++si) {
    const PlanSeq& s = seqs[si];
    ASSIGN_OR_RETURN(const int64_t stored, StoredKeys(s, si));
    RETURN_IF_ERROR(CheckSeq(s, si, stored, shape));
    AddSeqDesc(s, UsedBlocks(stored, shape), &plan);
    AddRowTiles(s, si, shape, &plan, &split_seqs);
  }
  SortTiledTiles(&plan);
  int64_t total_tiles = 0;
  const std::vector<RowGroup> groups = SplitRowGroups(plan, split_seqs, group, &total_tiles);
  if (!groups.empty()) AddSplitItems(groups, SplitsPerGroup(groups, total_tiles, shape), &plan);
  return plan;
}

}  // namespace

absl::StatusOr<AttentionPlan> PlanAttention(std::span<const AttentionSeq> seqs,
                                            const AttentionPlanShape& shape) {
  std::vector<PlanSeq> all(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    all[i].q_row = seqs[i].q_row;
    all[i].n_q = seqs[i].n_q;
    all[i].q_start = seqs[i].q_start;
    all[i].block_table = seqs[i].block_table;
    all[i].dca = seqs[i].dca;
  }
  return Plan(all, shape);
}

absl::StatusOr<AttentionPlan> PlanPartialAttention(std::span<const PartialAttentionSeq> seqs,
                                                   const AttentionPlanShape& shape) {
  std::vector<PlanSeq> all(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    const PartialAttentionSeq& s = seqs[i];
    if (s.run_first.size() != s.run_count.size()) {
      return absl::InvalidArgumentError(absl::StrCat("partial attention: sequence ", i, " has ",
                                                     s.run_first.size(), " run starts and ",
                                                     s.run_count.size(), " run counts"));
    }
    all[i].q_row = s.q_row;
    all[i].n_q = s.n_q;
    all[i].q_start = s.q_start;
    all[i].block_table = s.block_table;
    all[i].dca = s.dca;
    all[i].partial = true;
    all[i].run_first = s.run_first;
    all[i].run_count = s.run_count;
  }
  return Plan(all, shape);
}

}  // namespace longctx

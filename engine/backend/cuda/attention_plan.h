// Host-side planning of one batched attention call on the CUDA backend: checks
// every sequence against the cache and the query tensor, picks a kernel per
// sequence and builds the kernels' work lists (kernels/cuda/ops_cuda.h).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/backend/cuda/cuda_options.h"
#include "kernels/cuda/ops_cuda.h"

namespace longctx {

struct AttentionPlanShape {
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int block_size = 0;
  int64_t n_blocks = 0;  // physical blocks in the arena
  int64_t q_rows = 0;    // rows of q and out
  int num_sms = 132;     // spreads split-KV work over the device
  // Split-KV blocks one SM runs at once: the planner aims at up to 2 per SM,
  // never more than fit (so that the work is one wave, not two).
  int split_resident_blocks = 2;
  CudaAttentionKernels kernels = CudaAttentionKernels::kAuto;
};

struct AttentionPlan {
  std::vector<cuda::DcaSeqDesc> seqs;
  std::vector<int32_t> block_tables;
  std::vector<cuda::DcaKeyRun> runs;  // held key runs of partial attention
  std::vector<cuda::DcaRowTile> simple_tiles;
  std::vector<cuda::DcaRowTile> tiled_tiles;  // longest rows first
  std::vector<cuda::DcaSplitItem> split_items;
  std::vector<cuda::DcaCombineItem> combine_items;
  int split_slots = 0;
};

// INVALID_ARGUMENT for a head dim the kernels lack (not 64, 128 or 256) or
// naming the first bad sequence (rows outside q, a block table
// too short or naming a block outside the arena, a chunk length below 1).
absl::StatusOr<AttentionPlan> PlanAttention(std::span<const AttentionSeq> seqs,
                                            const AttentionPlanShape& shape);

// The same for context-parallel partial attention: each sequence's queries see
// only its held key runs (ascending, disjoint, non-empty, INVALID_ARGUMENT
// otherwise), whose Σ count keys its block table must hold. The Infini window
// fields of the DCA parameters are ignored, as cpu::DcaPartialAttention does.
// The fast kernels also need every run to start on a key tile and every run but
// the last to fill whole tiles; other sequences run the simple kernel.
absl::StatusOr<AttentionPlan> PlanPartialAttention(std::span<const PartialAttentionSeq> seqs,
                                                   const AttentionPlanShape& shape);

}  // namespace longctx

// The CUDA backend's attention: planning and staging a call's work lists,
// the split prefill, context-parallel partials and their merge.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "engine/backend/cuda/cuda_backend_internal.h"

namespace longctx::cuda_backend_internal {

namespace {

// Appends `v` to a byte pack at a 16-byte boundary; returns its offset.
template <typename T>
size_t PackAppend(std::vector<unsigned char>& pack, const std::vector<T>& v) {
  const size_t at = (pack.size() + 15) / 16 * 16;
  pack.resize(at + v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(pack.data() + at, v.data(), v.size() * sizeof(T));
  return at;
}

}  // namespace

absl::Status CudaBackend::CheckAttention(Tensor q, int layer, int n_heads,
                                         std::span<const float> inv_freq,
                                         AttentionPlanShape* shape) {
  const KvGeometry& g = kv_geometry_;
  if (kv_ == nullptr)
    return absl::FailedPreconditionError("cuda backend: KV arena not initialised");
  RETURN_IF_ERROR(RequireF32(q, "Attention", "q"));
  const int D = g.head_dim;
  RETURN_IF_ERROR(RequireShape(
      q.cols == int64_t{n_heads} * D && n_heads > 0 && n_heads % g.n_kv_heads == 0 &&
          static_cast<int>(inv_freq.size()) * 2 == D && layer >= 0 && layer < g.n_layers,
      "Attention"));
  shape->n_heads = n_heads;
  shape->n_kv_heads = g.n_kv_heads;
  shape->head_dim = D;
  shape->block_size = g.block_size;
  shape->n_blocks = g.n_blocks;
  shape->q_rows = q.rows;
  shape->num_sms = num_sms_;
  shape->split_resident_blocks = D == 64 ? split_blocks_per_sm_[0] : split_blocks_per_sm_[1];
  shape->kernels = options_.attention;
  return absl::OkStatus();
}

absl::Status CudaBackend::StageAttention(const AttentionPlan& plan, std::span<const float> inv_freq,
                                         StagedAttention* w) {
  // One staged upload carries every table of the call. The block tables, the
  // only part that grows while a batch decodes, go last, so a recorded step
  // keeps its layout and has room to grow at the end.
  std::vector<unsigned char> pack;
  *w = StagedAttention{};
  w->at_seqs = PackAppend(pack, plan.seqs);
  w->at_freq = PackAppend(pack, std::vector<float>(inv_freq.begin(), inv_freq.end()));
  w->at_runs = PackAppend(pack, plan.runs);
  w->at_simple = PackAppend(pack, plan.simple_tiles);
  w->at_tiled = PackAppend(pack, plan.tiled_tiles);
  w->at_split = PackAppend(pack, plan.split_items);
  w->at_combine = PackAppend(pack, plan.combine_items);
  w->at_tables = PackAppend(pack, plan.block_tables);
  const size_t table_bytes = pack.size() - w->at_tables;
  const size_t capacity = pack.size() + table_bytes / 4 + 4096;
  ASSIGN_OR_RETURN(void* staged, StageArgs(pack.data(), pack.size(), capacity));
  w->base = static_cast<unsigned char*>(staged);
  w->n_descs = static_cast<int>(plan.seqs.size());
  w->n_simple = static_cast<int>(plan.simple_tiles.size());
  w->n_tiled = static_cast<int>(plan.tiled_tiles.size());
  w->n_split = static_cast<int>(plan.split_items.size());
  w->n_combine = static_cast<int>(plan.combine_items.size());
  w->split_slots = plan.split_slots;
  return absl::OkStatus();
}

absl::Status CudaBackend::Attention(Tensor out, Tensor q, int layer, int n_heads,
                                    std::span<const AttentionSeq> seqs,
                                    std::span<const float> inv_freq) {
  RETURN_IF_ERROR(RequireF32(out, "Attention", "out"));
  RETURN_IF_ERROR(RequireShape(out.rows == q.rows && out.cols == q.cols, "Attention"));
  AttentionPlanShape shape;
  RETURN_IF_ERROR(CheckAttention(q, layer, n_heads, inv_freq, &shape));
  if (const int parts = PrefillKeySplits(seqs, n_heads); parts > 1) {
    return SplitPrefillAttention(out, q, layer, n_heads, seqs[0], parts, inv_freq, shape);
  }
  // The layers of one recorded step pass the same sequences: plan and stage once.
  StagedAttention& w = staged_attention_;
  const bool reuse = graph_.deferred() && w.step == graph_.step_serial() && w.seqs == seqs.data() &&
                     w.n_seqs == seqs.size() && w.inv_freq == inv_freq.data() &&
                     w.n_heads == n_heads && w.q_rows == q.rows;
  if (!reuse) {
    ASSIGN_OR_RETURN(AttentionPlan plan, PlanAttention(seqs, shape));
    RETURN_IF_ERROR(StageAttention(plan, inv_freq, &w));
    if (graph_.deferred()) {
      w.step = graph_.step_serial();
      w.seqs = seqs.data();
      w.n_seqs = seqs.size();
      w.inv_freq = inv_freq.data();
      w.n_heads = n_heads;
      w.q_rows = q.rows;
    }
  }
  return LaunchAttention(w, static_cast<float*>(out.data), nullptr, q, layer, n_heads);
}

int CudaBackend::PrefillKeySplits(std::span<const AttentionSeq> seqs, int n_heads) const {
  // Only op by op (a recorded step keeps its launches fixed), with the automatic
  // kernel choice, for one sequence without an Infini window (partials read
  // every key of their runs).
  if (graph_.deferred() || !AutomaticKernels(options_.attention) || seqs.size() != 1) {
    return 1;
  }
  const AttentionSeq& s = seqs[0];
  if (s.n_q < cuda::kDcaTiledRows || s.dca.window_start > s.dca.sink_tokens) return 1;
  constexpr int kMinKeysPerPart = 4096;
  constexpr int kMaxParts = 8;
  const int64_t blocks = int64_t{(s.n_q + cuda::kDcaTiledRows - 1) / cuda::kDcaTiledRows} * n_heads;
  const int64_t keys = int64_t{s.q_start} + s.n_q;
  // Aim at 6 query tiles per SM: the tiled kernel keeps 1-2 blocks per SM
  // resident, and a few waves even out the tail (the prefill of a 135M model
  // at 128k went from 30k to 51k tok/s between pieces of 4096 and 32768). A
  // 7B-shaped piece of 4096 (1024 tiles) is left alone: cut in two it ran 6 %
  // slower.
  const int64_t target = 6 * int64_t{num_sms_};
  if (blocks >= target) return 1;
  const int64_t want = (target + blocks - 1) / blocks;
  return static_cast<int>(std::min<int64_t>({want, keys / kMinKeysPerPart, kMaxParts}));
}

absl::Status CudaBackend::SplitPrefillAttention(Tensor out, Tensor q, int layer, int n_heads,
                                                const AttentionSeq& s, int parts,
                                                std::span<const float> inv_freq,
                                                AttentionPlanShape shape) {
  const int64_t n = s.n_q, D = kv_geometry_.head_dim, bs = kv_geometry_.block_size;
  const int64_t keys = int64_t{s.q_start} + n;
  // Parts start on whole key tiles and KV blocks.
  const int64_t align = std::max<int64_t>(64, bs);
  const size_t q_floats = static_cast<size_t>(n * q.cols);
  const size_t o_floats = static_cast<size_t>(n * n_heads * D);
  const size_t lse_floats = static_cast<size_t>(n * n_heads);
  RETURN_IF_ERROR(ReserveScratch(
      prefill_split_, static_cast<size_t>(parts) * (q_floats + o_floats + lse_floats) * 4));
  float* q_rep = prefill_split_.as<float>();
  float* o = q_rep + parts * q_floats;
  float* lse = o + parts * o_floats;
  std::vector<PartialAttentionSeq> part(static_cast<size_t>(parts));
  std::vector<int32_t> first(static_cast<size_t>(parts)), count(static_cast<size_t>(parts));
  for (int p = 0; p < parts; ++p) {
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(q_rep + p * q_floats, q.data, q_floats * sizeof(float),
                                         cudaMemcpyDeviceToDevice, stream_));
    const int64_t b0 = keys * p / parts / align * align;
    const int64_t b1 = p + 1 == parts ? keys : keys * (p + 1) / parts / align * align;
    first[static_cast<size_t>(p)] = static_cast<int32_t>(b0);
    count[static_cast<size_t>(p)] = static_cast<int32_t>(b1 - b0);
    PartialAttentionSeq& ps = part[static_cast<size_t>(p)];
    ps.q_row = static_cast<int>(p * n);
    ps.n_q = static_cast<int>(n);
    ps.q_start = s.q_start;
    ps.block_table = s.block_table.subspan(static_cast<size_t>(b0 / bs),
                                           static_cast<size_t>((b1 - b0 + bs - 1) / bs));
    ps.run_first = std::span<const int32_t>(&first[static_cast<size_t>(p)], 1);
    ps.run_count = std::span<const int32_t>(&count[static_cast<size_t>(p)], 1);
    ps.dca = s.dca;
  }
  shape.q_rows = parts * n;
  ASSIGN_OR_RETURN(AttentionPlan plan, PlanPartialAttention(part, shape));
  StagedAttention w;
  RETURN_IF_ERROR(StageAttention(plan, inv_freq, &w));
  const Tensor q_all{q_rep, DType::kF32, parts * n, q.cols};
  RETURN_IF_ERROR(LaunchAttention(w, o, lse, q_all, layer, n_heads));
  CUDA_RETURN_IF_ERROR(
      cuda::MergeAttentionStrided(static_cast<float*>(out.data), o, static_cast<int64_t>(o_floats),
                                  lse, static_cast<int64_t>(lse_floats), parts, static_cast<int>(n),
                                  n_heads, static_cast<int>(D), stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::PartialAttention(Tensor partial, Tensor q, int layer, int n_heads,
                                           std::span<const PartialAttentionSeq> seqs,
                                           std::span<const float> inv_freq) {
  // Context-parallel steps run op by op (they talk to other ranks between layers).
  RETURN_IF_ERROR(RequireNotDeferred("PartialAttention"));
  RETURN_IF_ERROR(RequireF32(partial, "PartialAttention", "partial"));
  const int64_t D = kv_geometry_.head_dim;
  RETURN_IF_ERROR(RequireShape(partial.rows == q.rows && partial.cols == n_heads * (D + 1),
                               "PartialAttention"));
  AttentionPlanShape shape;
  RETURN_IF_ERROR(CheckAttention(q, layer, n_heads, inv_freq, &shape));
  ASSIGN_OR_RETURN(AttentionPlan plan, PlanPartialAttention(seqs, shape));
  StagedAttention w;
  RETURN_IF_ERROR(StageAttention(plan, inv_freq, &w));
  // o [rows, H, D], then lse [rows, H].
  float* o = static_cast<float*>(partial.data);
  return LaunchAttention(w, o, o + q.rows * n_heads * D, q, layer, n_heads);
}

absl::Status CudaBackend::MergeAttention(Tensor out, Tensor partials, int n_parts, int n_heads) {
  RETURN_IF_ERROR(RequireNotDeferred("MergeAttention"));
  RETURN_IF_ERROR(RequireF32(out, "MergeAttention", "out"));
  RETURN_IF_ERROR(RequireF32(partials, "MergeAttention", "partials"));
  RETURN_IF_ERROR(RequireShape(n_parts >= 1 && n_heads >= 1 && out.cols % n_heads == 0 &&
                                   partials.rows == n_parts * out.rows &&
                                   partials.cols == out.cols + n_heads,
                               "MergeAttention"));
  CUDA_RETURN_IF_ERROR(cuda::MergeAttention(
      static_cast<float*>(out.data), static_cast<const float*>(partials.data), n_parts,
      static_cast<int>(out.rows), n_heads, static_cast<int>(out.cols / n_heads), stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::LaunchAttention(const StagedAttention& w, float* out, float* lse,
                                          Tensor q, int layer, int n_heads) {
  const KvGeometry& g = kv_geometry_;
  const int D = g.head_dim;
  unsigned char* base = w.base;
  if (w.n_split > 0) {
    const size_t slot_rows =
        static_cast<size_t>(std::max(w.split_slots, 1)) * g.n_kv_heads * cuda::kDcaSplitRows;
    RETURN_IF_ERROR(ReserveScratch(split_o_, slot_rows * D * sizeof(float)));
    RETURN_IF_ERROR(ReserveScratch(split_ml_, slot_rows * 2 * sizeof(float)));
    // The splits' arrival counts start at 0 and every launch leaves them so;
    // only a fresh allocation needs clearing (outside recorded steps: inside
    // one, growth breaks the step and the op-by-op redo clears it).
    const size_t counts_bytes =
        static_cast<size_t>(std::max(w.n_combine, 1)) * g.n_kv_heads * sizeof(int);
    const size_t had = split_counts_.bytes();
    RETURN_IF_ERROR(ReserveScratch(split_counts_, counts_bytes));
    if (split_counts_.bytes() != had) {
      CUDA_RETURN_IF_ERROR(
          cudaMemsetAsync(split_counts_.as<void>(), 0, split_counts_.bytes(), stream_));
    }
  }
  Trace({U(OpId::kAttention), U(out), U(q.data), U(kv_), static_cast<uint64_t>(layer),
         static_cast<uint64_t>(n_heads), static_cast<uint64_t>(q.rows),
         static_cast<uint64_t>(w.n_descs), static_cast<uint64_t>(w.n_simple),
         static_cast<uint64_t>(w.n_tiled), static_cast<uint64_t>(w.n_split),
         static_cast<uint64_t>(w.n_combine), static_cast<uint64_t>(w.split_slots), U(base),
         w.at_tables, U(split_o_.as<void>()), U(split_ml_.as<void>()),
         U(split_counts_.as<void>())});
  if (Replaying()) return absl::OkStatus();

  cuda::DcaAttentionParams p;
  p.out = out;
  p.lse = lse;
  p.q = static_cast<const float*>(q.data);
  p.kv.k = KvLayer(layer);
  p.kv.v = p.kv.k + KvPlane();
  p.kv.block_stride = KvBlockStride();
  p.kv.block_size = g.block_size;
  p.kv.n_kv_heads = g.n_kv_heads;
  p.block_tables = reinterpret_cast<const int32_t*>(base + w.at_tables);
  p.seqs = reinterpret_cast<const cuda::DcaSeqDesc*>(base + w.at_seqs);
  if (lse != nullptr) p.runs = reinterpret_cast<const cuda::DcaKeyRun*>(base + w.at_runs);
  p.inv_freq = reinterpret_cast<const float*>(base + w.at_freq);
  p.H = n_heads;
  p.D = D;

  CUDA_RETURN_IF_ERROR(cuda::DcaAttentionSimple(
      p, reinterpret_cast<const cuda::DcaRowTile*>(base + w.at_simple), w.n_simple, stream_));
  const auto* tiled = reinterpret_cast<const cuda::DcaRowTile*>(base + w.at_tiled);
  const cuda::WgmmaSchedule schedule =
      options_.attention == CudaAttentionKernels::kAutoWgmmaOverlapped
          ? cuda::WgmmaSchedule::kOverlapped
          : cuda::WgmmaSchedule::kSerial;
  CUDA_RETURN_IF_ERROR(wgmma_ ? cuda::DcaAttentionWgmma(p, tiled, w.n_tiled, schedule, stream_)
                              : cuda::DcaAttentionTiled(p, tiled, w.n_tiled, stream_));
  if (w.n_split > 0) {
    cuda::DcaSplitScratch scratch{split_o_.as<float>(), split_ml_.as<float>(),
                                  split_counts_.as<int>()};
    CUDA_RETURN_IF_ERROR(cuda::DcaAttentionSplit(
        p, reinterpret_cast<const cuda::DcaSplitItem*>(base + w.at_split), w.n_split,
        reinterpret_cast<const cuda::DcaCombineItem*>(base + w.at_combine), scratch, stream_));
  }
  return absl::OkStatus();
}

}  // namespace longctx::cuda_backend_internal

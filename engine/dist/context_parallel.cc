#include "engine/dist/context_parallel.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

constexpr size_t kAlign = 256;  // keeps every scratch tensor aligned for device loads

size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

}  // namespace

ContextParallelAttention::ContextParallelAttention(Communicator* comm, Backend* backend,
                                                   KvCache* kv, int n_heads,
                                                   std::vector<float> inv_freq)
    : comm_(comm),
      backend_(backend),
      kv_(kv),
      n_heads_(n_heads),
      n_kv_heads_(kv->geometry().n_kv_heads),
      head_dim_(kv->geometry().head_dim),
      inv_freq_(std::move(inv_freq)) {}

absl::Status ContextParallelAttention::Fail(absl::Status why) {
  comm_->Abort(why.message());
  return why;
}

absl::Status ContextParallelAttention::EnsureScratch(int tokens) {
  if (tokens <= scratch_tokens_) return absl::OkStatus();
  const DType act = backend_->ActivationType();
  const int64_t n = tokens, q_cols = int64_t{n_heads_} * head_dim_,
                kv_cols = int64_t{n_kv_heads_} * head_dim_,
                part_cols = int64_t{n_heads_} * (head_dim_ + 1);
  const int64_t world = comm_->world_size();
  const size_t q_bytes = AlignUp(static_cast<size_t>(n * q_cols) * DTypeSize(act));
  const size_t kv_bytes = AlignUp(static_cast<size_t>(n * kv_cols) * DTypeSize(act));
  const size_t part_bytes = AlignUp(static_cast<size_t>(world * n * part_cols) * sizeof(float));
  // The old scratch goes first: two copies of it may not fit.
  scratch_ = DeviceBuffer();
  scratch_tokens_ = 0;
  ASSIGN_OR_RETURN(scratch_, backend_->Allocate(q_bytes + 4 * kv_bytes + part_bytes));
  char* p = static_cast<char*>(scratch_.data());
  auto take = [&p](DType t, int64_t rows, int64_t cols, size_t bytes) {
    Tensor x{p, t, rows, cols};
    p += bytes;
    return x;
  };
  q_ = take(act, n, q_cols, q_bytes);
  k_ = take(act, n, kv_cols, kv_bytes);
  v_ = take(act, n, kv_cols, kv_bytes);
  k_mine_ = take(act, n, kv_cols, kv_bytes);
  v_mine_ = take(act, n, kv_cols, kv_bytes);
  gathered_ = take(DType::kF32, world * n, part_cols, part_bytes);
  scratch_tokens_ = tokens;
  return absl::OkStatus();
}

absl::Status ContextParallelAttention::BeginStep(ShardedSequence& seq, int n_new) {
  if (seq.step_.n_new != 0) {
    return absl::FailedPreconditionError("context parallel: a step of this session is in flight");
  }
  if (n_new < 1) {
    return absl::InvalidArgumentError(absl::StrCat("context parallel: step of ", n_new, " tokens"));
  }
  const ChunkPlacement& place = seq.placement();
  const int rank = comm_->rank(), world = comm_->world_size();
  if (place.world_size() != world) {
    return absl::InvalidArgumentError(absl::StrCat("context parallel: placement over ",
                                                   place.world_size(), " ranks, group of ", world));
  }
  ShardedSequence::Step step;
  step.n_new = n_new;
  step.local_before = seq.local_.length();
  for (int r = 0; r < n_new; ++r) {
    if (place.OwnerOf(int64_t{seq.length_} + r) == rank) step.rows.push_back(r);
  }
  absl::Status mine = EnsureScratch(n_new);
  if (mine.ok() && !step.rows.empty()) {
    mine = kv_->Append(seq.local_, static_cast<int>(step.rows.size()), &step.slots);
  }

  // Agreement: every rank learns every rank's outcome (status codes as f32).
  auto undo = [&] { kv_->Truncate(seq.local_, step.local_before); };
  absl::Status s;
  if (status_buf_.data() == nullptr) {
    auto buf = backend_->Allocate(sizeof(float) * world);
    s = buf.status();
    if (s.ok()) status_buf_ = *std::move(buf);
  }
  Tensor codes{status_buf_.data(), DType::kF32, 1, world};
  std::vector<float> host(static_cast<size_t>(world), 0.f);
  host[static_cast<size_t>(rank)] = static_cast<float>(static_cast<int>(mine.code()));
  if (s.ok()) s = backend_->Upload(codes, host.data());
  if (s.ok()) s = backend_->Synchronize();
  if (!s.ok()) {
    undo();
    return Fail(std::move(s));
  }
  s = comm_->AllGather(static_cast<float*>(status_buf_.data()) + rank, status_buf_.data(),
                       sizeof(float));
  if (!s.ok()) {  // the communicator is broken already
    undo();
    return s;
  }
  if (s = backend_->Download(host.data(), codes); !s.ok()) {
    undo();
    return Fail(std::move(s));
  }
  for (int r = 0; r < world; ++r) {
    const auto code = static_cast<absl::StatusCode>(static_cast<int>(host[static_cast<size_t>(r)]));
    if (code == absl::StatusCode::kOk) continue;
    undo();
    if (r == rank) return mine;
    return absl::Status(code,
                        absl::StrCat("context parallel: rank ", r, " could not prepare the step (",
                                     absl::StatusCodeToString(code), ")"));
  }
  place.HeldRuns(rank, int64_t{seq.length_} + n_new, &step.run_first, &step.run_count);
  seq.step_ = std::move(step);
  return absl::OkStatus();
}

absl::Status ContextParallelAttention::Attend(ShardedSequence& seq, int layer,
                                              const cpu::DcaParams& dca, Tensor out, Tensor q,
                                              Tensor k, Tensor v) {
  const ShardedSequence::Step& step = seq.step_;
  const int n = step.n_new;
  if (n == 0)
    return Fail(absl::FailedPreconditionError("context parallel: Attend before BeginStep"));
  const int rank = comm_->rank(), world = comm_->world_size();
  const int home = seq.placement().home();
  const int64_t q_cols = int64_t{n_heads_} * head_dim_, kv_cols = int64_t{n_kv_heads_} * head_dim_;
  // q, k and v travel in one broadcast, packed back to back in the scratch
  // (its q, k and v regions hold at least that much).
  char* packed = static_cast<char*>(q_.data);
  const Tensor qp{packed, q_.dtype, n, q_cols};
  const Tensor kp{packed + qp.bytes(), k_.dtype, n, kv_cols};
  const Tensor vp{packed + qp.bytes() + kp.bytes(), v_.dtype, n, kv_cols};
  if (rank == home) RETURN_IF_ERROR(PackForBroadcast(layer, n, out, q, k, v, qp, kp, vp));
  q = qp;
  k = kp;
  v = vp;
  ++stats_.layers;
  absl::Time t0 = absl::Now();
  RETURN_IF_ERROR(comm_->Broadcast(packed, qp.bytes() + kp.bytes() + vp.bytes(), home));
  absl::Time t1 = absl::Now();
  stats_.broadcast_s += absl::ToDoubleSeconds(t1 - t0);

  absl::Status s = WriteHeldKv(seq, layer, k, v);

  // This rank's partial goes straight into its block of the gather buffer.
  const int64_t part_rows = n;
  Tensor all = gathered_.Rows(0, world * part_rows);
  Tensor partial = all.Rows(rank * part_rows, part_rows);
  PartialAttentionSeq ps;
  ps.q_row = 0;
  ps.n_q = n;
  ps.q_start = seq.length_;
  ps.block_table = seq.local_.block_table();
  ps.run_first = step.run_first;
  ps.run_count = step.run_count;
  ps.dca = dca;
  if (ps.dca.softmax_scale == 0.f) {
    ps.dca.softmax_scale = 1.f / std::sqrt(static_cast<float>(head_dim_));
  }
  if (s.ok()) s = backend_->PartialAttention(partial, q, layer, n_heads_, {&ps, 1}, inv_freq_);
  if (s.ok()) s = backend_->Synchronize();
  if (!s.ok()) return Fail(std::move(s));
  t0 = absl::Now();
  stats_.partial_s += absl::ToDoubleSeconds(t0 - t1);

  RETURN_IF_ERROR(comm_->Gather(partial.data, all.data, partial.bytes(), home));
  stats_.gather_s += absl::ToDoubleSeconds(absl::Now() - t0);
  if (rank != home) return absl::OkStatus();
  if (s = backend_->MergeAttention(out, all, world, n_heads_); !s.ok()) return Fail(std::move(s));
  return absl::OkStatus();
}

absl::Status ContextParallelAttention::PackForBroadcast(int layer, int n, const Tensor& out,
                                                        const Tensor& q, const Tensor& k,
                                                        const Tensor& v, const Tensor& qp,
                                                        const Tensor& kp, const Tensor& vp) {
  const int64_t q_cols = qp.cols, kv_cols = kp.cols;
  if (q.rows != n || q.cols != q_cols || out.rows != n || out.cols != q_cols || k.rows != n ||
      k.cols != kv_cols || v.rows != n || v.cols != kv_cols) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("context parallel: layer ", layer,
                                                        " needs q/out [", n, ", ", q_cols,
                                                        "] and k/v [", n, ", ", kv_cols, "]")));
  }
  if (static_cast<int>(identity_.size()) < n) {
    identity_.resize(static_cast<size_t>(n));
    for (int r = 0; r < n; ++r) identity_[static_cast<size_t>(r)] = r;
  }
  const std::span<const int32_t> all_rows(identity_.data(), static_cast<size_t>(n));
  absl::Status s = backend_->GatherRows(qp, q, all_rows);
  if (s.ok()) s = backend_->GatherRows(kp, k, all_rows);
  if (s.ok()) s = backend_->GatherRows(vp, v, all_rows);
  // The broadcast reads the packed tensors straight from the device.
  if (s.ok()) s = backend_->Synchronize();
  if (!s.ok()) return Fail(std::move(s));
  return absl::OkStatus();
}

absl::Status ContextParallelAttention::WriteHeldKv(const ShardedSequence& seq, int layer,
                                                   const Tensor& k, const Tensor& v) {
  const ShardedSequence::Step& step = seq.step_;
  if (static_cast<int>(step.rows.size()) == step.n_new) {
    return backend_->KvWrite(layer, k, v, step.slots);
  }
  if (step.rows.empty()) return absl::OkStatus();
  const int64_t m = static_cast<int64_t>(step.rows.size());
  Tensor km = k_mine_.Rows(0, m), vm = v_mine_.Rows(0, m);
  absl::Status s = backend_->GatherRows(km, k, step.rows);
  if (s.ok()) s = backend_->GatherRows(vm, v, step.rows);
  if (s.ok()) s = backend_->KvWrite(layer, km, vm, step.slots);
  return s;
}

void ContextParallelAttention::EndStep(ShardedSequence& seq, bool commit) {
  if (seq.step_.n_new == 0) return;
  if (commit) {
    seq.length_ += seq.step_.n_new;
  } else {
    kv_->Truncate(seq.local_, seq.step_.local_before);
  }
  seq.step_ = ShardedSequence::Step();
}

void ContextParallelAttention::Truncate(ShardedSequence& seq, int length) {
  EndStep(seq, false);
  if (length >= seq.length_) return;
  // Local KV holds this rank's tokens in ascending order: keep those below length.
  const int64_t held = seq.placement().CountHeld(comm_->rank(), 0, std::max(length, 0));
  kv_->Truncate(seq.local_, static_cast<int>(held));
  seq.length_ = std::max(length, 0);
}

void ContextParallelAttention::Release(ShardedSequence& seq) {
  EndStep(seq, false);
  kv_->Release(seq.local_);
  seq.length_ = 0;
}

absl::Status ContextParallelAttention::ServeStep(ShardedSequence& seq, int n_new, int n_layers,
                                                 const cpu::DcaParams& dca) {
  RETURN_IF_ERROR(BeginStep(seq, n_new));
  for (int l = 0; l < n_layers; ++l) {
    if (absl::Status s = Attend(seq, l, dca, Tensor(), Tensor(), Tensor(), Tensor()); !s.ok()) {
      EndStep(seq, false);
      return s;
    }
  }
  EndStep(seq, true);
  return absl::OkStatus();
}

absl::Status ContextParallelStep::Attend(int layer, Tensor out, Tensor q, Tensor k, Tensor v) {
  if (layer != layers_done_) {
    return absl::FailedPreconditionError(
        absl::StrCat("context parallel: layer ", layer, " after ", layers_done_, " layers"));
  }
  RETURN_IF_ERROR(cp_->Attend(*seq_, layer, dca_, out, q, k, v));
  ++layers_done_;
  return absl::OkStatus();
}

absl::Status ContextParallelStep::Finish(absl::Status forward_status) {
  const bool complete = layers_done_ == n_layers_;
  if (!complete && cp_->comm().health().ok()) {
    cp_->comm().Abort(absl::StrCat("home forward stopped after ", layers_done_, " of ", n_layers_,
                                   " layers: ", forward_status.ToString()));
  }
  cp_->EndStep(*seq_, complete);
  if (!complete && forward_status.ok()) {
    return absl::InternalError(absl::StrCat("context parallel: forward attended ", layers_done_,
                                            " of ", n_layers_, " layers"));
  }
  return forward_status;
}

}  // namespace longctx

// One step of the engine thread: plan, prepare, forward, dispatch, stats.
#include <algorithm>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "engine/scheduler/batch_planner.h"
#include "engine/scheduler/jobs.h"
#include "engine/scheduler/scheduler.h"
#include "engine/scheduler/scheduler_internal.h"

namespace longctx {

void Scheduler::Step() {
  const absl::Time step_start = absl::Now();
  StepBatch batch = Plan();
  Prepare(batch);
  for (auto& [q, status] : batch.failures) Finish(*q, std::move(status));
  if (batch.pieces.empty()) return;
  if (!Forward(batch)) return;
  Dispatch(batch);
  RecordStep(batch, step_start);
}

Scheduler::StepBatch Scheduler::Plan() {
  std::vector<SessionQueue*> heads;
  std::vector<PlanJob> snapshot;
  for (auto& [key, q] : queues_) {
    heads.push_back(q.get());
    snapshot.push_back(Describe(*q));
  }
  const PlanLimits limits = Limits();
  // A restore point that fails to apply refuses its job; planning again
  // without it gives the jobs it would have met the budget it would have taken.
  std::vector<bool> resumed(heads.size());
  std::vector<absl::Status> unready(heads.size());
  BatchPlan plan = PlanBatch(snapshot, limits);
  while (std::optional<size_t> failed = ApplyResumes(plan, heads, &resumed, &unready)) {
    snapshot[*failed].unready = true;
    plan = PlanBatch(snapshot, limits);
  }
  decode_cursor_ = plan.decode_cursor;
  StepBatch batch;
  for (const PlanRefused& r : plan.refused) {
    batch.failures.emplace_back(heads[r.job], RefusalStatus(*heads[r.job], r, unready[r.job]));
  }
  for (const PlanPiece& p : plan.pieces) {
    Job* job = heads[p.job]->jobs.front().get();
    batch.pieces.push_back({heads[p.job], job, p.start, p.n, Mode(*job, p.logits), p.decode});
  }
  return batch;
}

std::optional<size_t> Scheduler::ApplyResumes(const BatchPlan& plan,
                                              const std::vector<SessionQueue*>& heads,
                                              std::vector<bool>* resumed,
                                              std::vector<absl::Status>* unready) {
  for (size_t i : plan.resumes) {
    if ((*resumed)[i]) continue;
    (*resumed)[i] = true;
    if (absl::Status s = PrepareWindow(*heads[i]->session); !s.ok()) {
      (*unready)[i] = std::move(s);
      return i;
    }
  }
  return std::nullopt;
}

PlanLimits Scheduler::Limits() const {
  const KvCache& kv = model_->kv_cache();
  PlanLimits limits;
  limits.prefill_budget = options_.prefill_budget;
  limits.prefill_budget_decoding = options_.prefill_budget_decoding;
  limits.max_decode_batch = options_.max_decode_batch;
  limits.max_logit_rows = options_.max_logit_rows;
  limits.block_size = kv.geometry().block_size;
  limits.free_blocks = kv.free_blocks();
  limits.decode_cursor = decode_cursor_;
  return limits;
}

PlanJob Scheduler::Describe(const SessionQueue& q) const {
  const Job& job = *q.jobs.front();
  const SessionEngineState& st = q.session->engine_state();
  const KvSequence& seq = st.sequence();
  PlanJob p;
  p.work = *job.handler->work();
  p.order = job.id;
  p.tenant = absl::HashOf(q.session->tenant());
  p.decoding = job.handler->decoding();
  p.length = seq.length();
  p.target = job.target;
  // Segments started behind the head (StartFollowers) extend its piece.
  for (size_t i = 1; i < q.jobs.size() && q.jobs[i]->started; ++i) {
    p.target = q.jobs[i]->target;
  }
  p.held_blocks = static_cast<int64_t>(seq.block_table().size());
  if (st.window) {
    PlanWindow w;
    w.chunk_len = st.window->config().windowed() ? st.window->dca().chunk_len : 0;
    w.sink_tokens = q.session->settings().sink_tokens;
    if (st.resume) w.resume_to = st.resume->evicted_end;
    p.window = w;
  }
  return p;
}

absl::Status Scheduler::RefusalStatus(const SessionQueue& q, const PlanRefused& refused,
                                      const absl::Status& unready) {
  switch (refused.why) {
    case PlanRefusal::kUnready:
      return unready;
    case PlanRefusal::kEmpty: {  // the window says why
      InfiniWindow& window = *q.session->engine_state().window;
      return window.StepCapacity(static_cast<int>(refused.want)).status();
    }
    case PlanRefusal::kKvFull:
      break;
  }
  const KvCache& kv = model_->kv_cache();
  return absl::ResourceExhaustedError(absl::StrCat(
      "KV cache is full: ", refused.want, " more tokens for session ", q.session->id(),
      " do not fit (", kv.free_blocks(), " free blocks of ", kv.geometry().block_size, " tokens)"));
}

// Greedy sampling needs only the argmax: the device finds it and no logits
// come back.
LogitsMode Scheduler::Mode(const Job& job, PieceLogits logits) const {
  switch (logits) {
    case PieceLogits::kNone:
      return LogitsMode::kNone;
    case PieceLogits::kAll:
      return LogitsMode::kAll;
    case PieceLogits::kSample:
      break;
  }
  return model_->greedy_tokens() && job.handler->greedy() ? LogitsMode::kGreedy : LogitsMode::kLast;
}

void Scheduler::Prepare(StepBatch& batch) {
  std::vector<StepBatch::Piece> planned = std::move(batch.pieces);
  batch.pieces.clear();
  batch.pieces.reserve(planned.size());
  batch.items.reserve(planned.size());
  batch.greedy.assign(planned.size(), -1);
  for (const StepBatch::Piece& p : planned) {
    Session& session = *p.q->session;
    SessionEngineState& st = session.engine_state();
    StepItem item;
    item.seq = &st.kv;
    item.tokens = std::span<const int32_t>(st.log.data() + p.start, static_cast<size_t>(p.n));
    item.logits = p.mode;
    item.greedy_token = &batch.greedy[batch.pieces.size()];
    item.dca =
        session.settings().attention.ToParams(model_->head_dim(), static_cast<int>(p.start + p.n));
    if (st.window) {
      if (absl::Status s = AdvanceWindow(st, static_cast<int>(p.n), &item); !s.ok()) {
        batch.failures.emplace_back(p.q, std::move(s));
        continue;
      }
    }
    batch.items.push_back(item);
    batch.pieces.push_back(p);
    batch.tokens += p.n;
  }
}

// Evicts what leaves the window (fold or drop, blocks freed) and points the
// item at the window's sequence.
absl::Status Scheduler::AdvanceWindow(SessionEngineState& st, int n, StepItem* item) {
  const InfiniCounters before = st.window->counters();
  absl::Status s = st.window->PrepareStep(n, item);
  const InfiniCounters& after = st.window->counters();
  stats_->infini_folded_tokens_total.fetch_add(after.folded_tokens - before.folded_tokens);
  stats_->infini_evictions_compress_total.fetch_add(after.chunks_folded - before.chunks_folded);
  stats_->infini_evictions_slide_total.fetch_add(after.chunks_dropped - before.chunks_dropped);
  return s;
}

bool Scheduler::Forward(StepBatch& batch) {
  const absl::Time forward_start = absl::Now();
  const absl::Status status = model_->Forward(batch.items, &logits_);
  const double forward_s = absl::ToDoubleSeconds(absl::Now() - forward_start);
  stats_->forward_seconds.Observe(forward_s);
  if (std::all_of(batch.pieces.begin(), batch.pieces.end(),
                  [](const StepBatch::Piece& p) { return p.decode; })) {
    stats_->decode_forward_seconds.Observe(forward_s);
  }
  if (status.ok()) return true;
  for (const StepBatch::Piece& p : batch.pieces) Finish(*p.q, status);
  return false;
}

void Scheduler::Dispatch(const StepBatch& batch) {
  const size_t vocab = static_cast<size_t>(model_->vocab_size());
  const absl::Time now = absl::Now();
  size_t row = 0;
  for (size_t i = 0; i < batch.pieces.size(); ++i) {
    const StepBatch::Piece& p = batch.pieces[i];
    const size_t rows = p.mode == LogitsMode::kAll    ? static_cast<size_t>(p.n)
                        : p.mode == LogitsMode::kLast ? 1
                                                      : 0;
    JobStepOutput out;
    out.start = p.start;
    out.n = p.n;
    out.mode = p.mode;
    out.logits = std::span<const float>(logits_.data() + row * vocab, rows * vocab);
    out.vocab = static_cast<int>(vocab);
    out.greedy_token = batch.greedy[i];
    out.now = now;
    row += rows;
    // The head, then the segments started behind it that the step
    // prefilled whole.
    Job* job = p.job;
    while (job->handler->OnStep(Context(*job), out)) {
      Finish(*p.q, absl::OkStatus());
      if (p.q->jobs.empty()) break;
      job = p.q->jobs.front().get();
      if (!job->started || !job->handler->starts_early()) break;
    }
  }
}

void Scheduler::RecordStep(const StepBatch& batch, absl::Time step_start) {
  const KvCache& kv = model_->kv_cache();
  stats_->steps_total.fetch_add(1);
  stats_->step_batch_tokens.Observe(static_cast<double>(batch.tokens));
  stats_->kv_blocks_used.store(kv.total_blocks() - kv.free_blocks());
  model_->PublishLoad(*stats_);
  stats_->step_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - step_start));
}

}  // namespace longctx

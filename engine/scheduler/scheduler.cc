#include "engine/scheduler/scheduler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/scheduler/batch_planner.h"
#include "engine/scheduler/jobs.h"
#include "engine/util/status_macros.h"

namespace longctx {

struct Scheduler::Job {
  uint64_t id = 0;  // admission order
  std::shared_ptr<Session> session;
  std::shared_ptr<WorkHandle> handle;
  std::unique_ptr<JobHandler> handler;  // the kind's work
  absl::Time submitted;
  absl::Time deadline = absl::InfiniteFuture();

  bool started = false;
  int64_t mark = 0;  // log size when the job started: where rollback returns to
  // Windowed sessions: where the window stood when the job started, to rebuild
  // from should the job move it past `mark` and then roll back.
  int window_mark = 0;
  std::optional<InfiniMemory> memory_mark;
  int64_t target = 0;  // log size to prefill up to
};

struct Scheduler::SessionQueue {
  std::shared_ptr<Session> session;
  std::deque<std::unique_ptr<Job>> jobs;
};

// One step's work, from the plan to the dispatch of its logits.
struct Scheduler::StepBatch {
  struct Piece {
    SessionQueue* q;
    Job* job;       // q's head
    int64_t start;  // sequence length before the step
    int64_t n;      // tokens
    LogitsMode mode;
    bool decode;  // a decode row
  };
  std::vector<Piece> pieces;  // what runs, in item order
  std::vector<StepItem> items;
  std::vector<int32_t> greedy;  // kGreedy tokens, by index in `pieces`
  std::vector<std::pair<SessionQueue*, absl::Status>> failures;  // jobs that end before the step
  int64_t tokens = 0;
};

namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

Scheduler::Scheduler(StepModel* model, SchedulerOptions options, EngineStats* stats)
    : model_(model), options_(options), stats_(stats) {
  stats_->kv_blocks_total.store(model_->kv_cache().total_blocks());
  thread_ = std::thread([this] { Loop(); });
}

Scheduler::~Scheduler() { Stop(); }

void Scheduler::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  absl::MutexLock lock(&mu_);
  stopped_ = true;
}

template <typename Request>
std::shared_ptr<WorkHandle> Scheduler::Submit(Request request) {
  auto job = std::make_unique<Job>();
  job->session = request.session;
  if constexpr (requires { request.deadline; }) job->deadline = request.deadline;
  job->handler = MakeJobHandler(std::move(request));
  job->handle = std::make_shared<WorkHandle>();
  std::shared_ptr<WorkHandle> handle = job->handle;
  Enqueue(std::move(job));
  return handle;
}

std::shared_ptr<WorkHandle> Scheduler::SubmitIngest(IngestJob job) {
  return Submit(std::move(job));
}

std::shared_ptr<WorkHandle> Scheduler::SubmitGenerate(GenerateJob job) {
  return Submit(std::move(job));
}

std::shared_ptr<WorkHandle> Scheduler::SubmitScore(ScoreJob job) { return Submit(std::move(job)); }

void Scheduler::SubmitRead(ReadJob job) { Submit(std::move(job)); }

void Scheduler::Enqueue(std::unique_ptr<Job> job) {
  job->submitted = absl::Now();
  const bool counted = job->handler->counted();
  if (counted) stats_->requests_waiting.fetch_add(1);
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      incoming_.push_back(std::move(job));
      return;
    }
  }
  if (counted) stats_->requests_waiting.fetch_sub(1);
  job->handler->Deliver(Context(*job), absl::UnavailableError("the engine is shutting down"));
}

void Scheduler::Release(std::shared_ptr<Session> session) {
  absl::MutexLock lock(&mu_);
  releases_.push_back(std::move(session));
}

void Scheduler::Loop() {
  while (RunOnce()) {
  }
}

bool Scheduler::RunOnce() {
  std::deque<std::unique_ptr<Job>> incoming;
  std::vector<std::shared_ptr<Session>> releases;
  bool stopping = false;
  {
    const bool busy = !queues_.empty();
    absl::MutexLock lock(&mu_);
    if (!busy) {
      auto has_news = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !incoming_.empty() || !releases_.empty();
      };
      mu_.AwaitWithTimeout(absl::Condition(&has_news), model_->idle_interval());
    }
    incoming.swap(incoming_);
    releases.swap(releases_);
    stopping = stopping_;
  }
  Admit(&incoming, &releases);
  if (queues_.empty() && !stopping) model_->Idle();
  if (stopping) {
    const absl::Status unavailable = absl::UnavailableError("the engine is shutting down");
    for (auto& [session, q] : queues_) FailQueue(*q, unavailable);
    queues_.clear();
    return false;
  }
  StartHeads();
  if (!queues_.empty()) Step();
  return true;
}

void Scheduler::Admit(std::deque<std::unique_ptr<Job>>* incoming,
                      std::vector<std::shared_ptr<Session>>* releases) {
  for (auto& job : *incoming) {
    if (job->session->closed()) {
      // Released already (or about to be): refuse rather than grow its state.
      SessionQueue orphan;
      orphan.session = job->session;
      Complete(orphan, std::move(job), orphan.session->CheckOpen());
      continue;
    }
    Session* key = job->session.get();
    auto it = queues_.find(key);
    if (it == queues_.end()) {
      auto q = std::make_unique<SessionQueue>();
      q->session = job->session;
      it = queues_.emplace(key, std::move(q)).first;
    }
    job->id = next_job_id_++;
    it->second->jobs.push_back(std::move(job));
  }
  for (auto& session : *releases) ReleaseSession(*session);
  if (!releases->empty()) {
    KvCache& kv = model_->kv_cache();
    stats_->kv_blocks_used.store(kv.total_blocks() - kv.free_blocks());
    model_->PublishLoad(*stats_);
  }
}

void Scheduler::ReleaseSession(Session& session) {
  auto it = queues_.find(&session);
  if (it != queues_.end()) {
    FailQueue(*it->second, session.CheckOpen());
    queues_.erase(it);
  }
  SessionEngineState& st = session.engine_state();
  model_->ReleaseSequence(st.kv);
  DropWindow(st);
  st.resume.reset();
  st.log.clear();
  st.log.shrink_to_fit();
  session.PublishCounters(0, 0);
}

void Scheduler::StartHeads() {
  const absl::Time now = absl::Now();
  for (auto it = queues_.begin(); it != queues_.end();) {
    SessionQueue& q = *it->second;
    if (q.session->closed()) {
      // Its Release is on the way; nothing more runs on it.
      FailQueue(q, q.session->CheckOpen());
    }
    DropAbandoned(q, now);
    while (!q.jobs.empty()) {
      Job& head = *q.jobs.front();
      if (head.handle->cancelled()) {
        Finish(q, absl::CancelledError("cancelled by the client"));
        continue;
      }
      if (now > head.deadline) {
        Finish(q, absl::DeadlineExceededError(head.handler->DeadlineMessage()));
        continue;
      }
      if (head.started) break;
      if (StartJob(q, head)) break;
    }
    if (q.jobs.empty()) {
      queues_.erase(it++);
    } else {
      ++it;
    }
  }
}

void Scheduler::DropAbandoned(SessionQueue& q, absl::Time now) {
  for (size_t i = 1; i < q.jobs.size();) {
    const Job& j = *q.jobs[i];
    absl::Status why;
    if (j.handle->cancelled()) why = absl::CancelledError("cancelled by the client");
    if (now > j.deadline) why = absl::DeadlineExceededError("deadline exceeded while queued");
    if (why.ok()) {
      ++i;
      continue;
    }
    std::unique_ptr<Job> job = std::move(q.jobs[i]);
    q.jobs.erase(q.jobs.begin() + static_cast<long>(i));
    Complete(q, std::move(job), why);
  }
}

void Scheduler::DropWindow(SessionEngineState& st) {
  if (!st.window) return;
  if (const InfiniMemory* m = st.window->memory())
    stats_->infini_memory_bytes.fetch_sub(m->bytes());
  st.window.reset();
}

absl::Status Scheduler::MakeWindow(Session& session) {
  SessionEngineState& st = session.engine_state();
  const SessionSettings& settings = session.settings();
  auto w = model_->CreateWindow(settings.ToInfiniConfig(model_->has_infini_gates()),
                                settings.attention.ToParams(model_->head_dim(), 1));
  if (!w.ok()) return w.status();
  st.window = std::move(*w);
  if (const InfiniMemory* m = st.window->memory())
    stats_->infini_memory_bytes.fetch_add(m->bytes());
  return absl::OkStatus();
}

absl::Status Scheduler::PrepareWindow(Session& session) {
  SessionEngineState& st = session.engine_state();
  if (!st.resume || st.window->length() != session.settings().sink_tokens) {
    return absl::OkStatus();
  }
  SessionEngineState::Resume r = *std::move(st.resume);
  st.resume.reset();
  return st.window->Resume(r.evicted_end, std::move(r.memory));
}

absl::Status Scheduler::OpenWindow(Session& session, Job& job) {
  SessionEngineState& st = session.engine_state();
  if (session.settings().windowed() && !st.window) {
    RETURN_IF_ERROR(MakeWindow(session));
    PublishSession(session);
  }
  if (!st.window) return absl::OkStatus();
  RETURN_IF_ERROR(PrepareWindow(session));
  if (job.handler->work()) {  // a job that runs steps may move the window
    job.window_mark = st.window->evicted_end();
    if (const InfiniMemory* m = st.window->memory()) job.memory_mark = *m;
  }
  return absl::OkStatus();
}

bool Scheduler::StartJob(SessionQueue& q, Job& job) {
  Session& session = *q.session;
  SessionEngineState& st = session.engine_state();
  if (absl::Status s = OpenWindow(session, job); !s.ok()) {
    Finish(q, s);
    return false;
  }
  job.started = true;
  job.mark = static_cast<int64_t>(st.log.size());
  if (job.handler->counted()) {
    stats_->requests_waiting.fetch_sub(1);
    stats_->requests_running.fetch_add(1);
  }
  // A job that runs no steps (a read) is done once started.
  absl::Status s = job.handler->Start(Context(job));
  if (!s.ok() || !job.handler->work()) {
    Finish(q, s);
    return false;
  }
  job.target = static_cast<int64_t>(st.log.size());
  s = CheckKvRoom(session, job);
  if (s.ok()) s = RewindForLogits(st, job);
  if (!s.ok()) {
    Finish(q, s);
    return false;
  }
  return true;
}

// Refuses up front what cannot fit the KV blocks free now (others may still
// take blocks meanwhile; a step that runs out fails the job then).
absl::Status Scheduler::CheckKvRoom(Session& session, const Job& job) {
  const SessionEngineState& st = session.engine_state();
  // A windowed session frees blocks as its window moves: steps check it.
  if (st.window) return absl::OkStatus();
  KvCache& kv = model_->kv_cache();
  const int64_t bs = kv.geometry().block_size;
  const int64_t blocks_needed = CeilDiv(job.target + job.handler->reserve(), bs) -
                                static_cast<int64_t>(st.sequence().block_table().size());
  if (blocks_needed <= kv.free_blocks()) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "KV cache is full: ", job.target - job.mark, " more tokens for session ", session.id(),
      " need ", blocks_needed, " blocks of ", bs, " tokens, ", kv.free_blocks(), " are free"));
}

// The step that reaches the target must compute logits for the position just
// before the first token of interest; if the KV already holds it, recompute
// that one token (KV is append-only: truncate and re-feed).
absl::Status Scheduler::RewindForLogits(SessionEngineState& st, const Job& job) {
  const std::optional<int64_t> from = job.handler->first_logits(job.target);
  if (!from || st.sequence().length() <= *from) return absl::OkStatus();
  if (st.window) return st.window->Rollback(static_cast<int>(*from));
  model_->TruncateSequence(st.kv, static_cast<int>(*from));
  return absl::OkStatus();
}

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
  const KvCache& kv = model_->kv_cache();
  PlanLimits limits;
  limits.prefill_budget = options_.prefill_budget;
  limits.prefill_budget_decoding = options_.prefill_budget_decoding;
  limits.max_decode_batch = options_.max_decode_batch;
  limits.max_logit_rows = options_.max_logit_rows;
  limits.block_size = kv.geometry().block_size;
  limits.free_blocks = kv.free_blocks();
  limits.decode_cursor = decode_cursor_;
  // A restore point that fails to apply refuses its job; planning again
  // without it gives the jobs it would have met the budget it would have taken.
  std::vector<bool> resumed(heads.size());
  std::vector<absl::Status> unready(heads.size());
  BatchPlan plan = PlanBatch(snapshot, limits);
  while (std::optional<size_t> failed = ApplyResumes(plan, heads, resumed, unready)) {
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
                                              std::vector<bool>& resumed,
                                              std::vector<absl::Status>& unready) {
  for (size_t i : plan.resumes) {
    if (resumed[i]) continue;
    resumed[i] = true;
    if (absl::Status s = PrepareWindow(*heads[i]->session); !s.ok()) {
      unready[i] = std::move(s);
      return i;
    }
  }
  return std::nullopt;
}

PlanJob Scheduler::Describe(const SessionQueue& q) const {
  const Job& job = *q.jobs.front();
  const SessionEngineState& st = q.session->engine_state();
  const KvSequence& seq = st.sequence();
  PlanJob p;
  p.work = *job.handler->work();
  p.order = job.id;
  p.decoding = job.handler->decoding();
  p.length = seq.length();
  p.target = job.target;
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
    if (p.job->handler->OnStep(Context(*p.job), out)) Finish(*p.q, absl::OkStatus());
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

JobContext Scheduler::Context(const Job& job) {
  return JobContext{*job.session, *stats_, job.submitted, job.mark, job.target};
}

void Scheduler::Rollback(SessionQueue& q, Job& job) {
  SessionEngineState& st = q.session->engine_state();
  st.log.resize(static_cast<size_t>(job.mark));
  if (!st.window) {
    if (st.kv.length() > job.mark) model_->TruncateSequence(st.kv, static_cast<int>(job.mark));
    return;
  }
  if (st.window->length() <= job.mark) return;
  if (st.window->Rollback(static_cast<int>(job.mark)).ok()) return;
  // The job moved the window past where it began: rebuild the window as it
  // stood then; the session's next job re-prefills the log from there.
  DropWindow(st);
  st.resume = SessionEngineState::Resume{job.window_mark, std::move(job.memory_mark)};
  // Should this fail, the next job creates the window again and reports why.
  MakeWindow(*q.session).IgnoreError();
}

void Scheduler::Finish(SessionQueue& q, absl::Status status) {
  std::unique_ptr<Job> job = std::move(q.jobs.front());
  q.jobs.pop_front();
  Complete(q, std::move(job), std::move(status));
}

void Scheduler::Complete(SessionQueue& q, std::unique_ptr<Job> job, absl::Status status) {
  JobHandler& handler = *job->handler;
  if (handler.counted()) {
    (job->started ? stats_->requests_running : stats_->requests_waiting).fetch_sub(1);
    if (!status.ok()) stats_->request_failure_total.fetch_add(1);
  }
  // Only a started job (the head) changes the session; queued ones leave it alone.
  if (job->started) {
    if (!status.ok() || !handler.keeps_tokens()) Rollback(q, *job);
    PublishSession(*q.session);
  }
  // Later segments of this session build on this one: they fail too.
  if (!status.ok() && handler.segment() > 0) AbortLaterSegments(q, handler.segment());
  handler.Deliver(Context(*job), status);
}

void Scheduler::AbortLaterSegments(SessionQueue& q, int64_t seq) {
  for (size_t i = 0; i < q.jobs.size();) {
    const int64_t later_seq = q.jobs[i]->handler->segment();
    if (later_seq <= seq) {
      ++i;
      continue;
    }
    std::unique_ptr<Job> later = std::move(q.jobs[i]);
    q.jobs.erase(q.jobs.begin() + static_cast<long>(i));
    Complete(q, std::move(later),
             absl::AbortedError(absl::StrCat("segment ", later_seq, " not applied: segment ", seq,
                                             " before it failed")));
  }
}

void Scheduler::FailQueue(SessionQueue& q, const absl::Status& status) {
  while (!q.jobs.empty()) Finish(q, status);
}

void Scheduler::PublishSession(Session& session) {
  SessionEngineState& st = session.engine_state();
  session.PublishCounters(static_cast<int64_t>(st.log.size()),
                          st.sequence().resident_blocks() * model_->kv_cache().BytesPerBlock());
  if (st.window) {
    const InfiniMemory* m = st.window->memory();
    const InfiniCounters& c = st.window->counters();
    // The memory counts its folds across export and import; the counters
    // only this window's.
    session.PublishInfini(m ? m->bytes() : 0, m ? m->folded_tokens() : c.folded_tokens,
                          c.dropped_tokens);
  }
}

}  // namespace longctx

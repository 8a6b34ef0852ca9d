// The engine thread's queues and each job's lifecycle: submit, admit, start,
// finish, roll back. One step's batch is scheduler_step.cc.
#include "engine/scheduler/scheduler.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/scheduler/jobs.h"
#include "engine/scheduler/scheduler_internal.h"
#include "engine/util/status_macros.h"

namespace longctx {

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
std::shared_ptr<WorkHandle> Scheduler::Submit(Request request, std::shared_ptr<WorkHandle> handle) {
  auto job = std::make_unique<Job>();
  job->session = request.session;
  if constexpr (requires { request.deadline; }) job->deadline = request.deadline;
  job->handler = MakeJobHandler(std::move(request));
  if (handle == nullptr) handle = std::make_shared<WorkHandle>();
  job->handle = handle;
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

std::shared_ptr<WorkHandle> Scheduler::SubmitIngest(IngestJob job,
                                                    std::shared_ptr<WorkHandle> handle) {
  return Submit(std::move(job), std::move(handle));
}

std::shared_ptr<WorkHandle> Scheduler::SubmitGenerate(GenerateJob job,
                                                      std::shared_ptr<WorkHandle> handle) {
  return Submit(std::move(job), std::move(handle));
}

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

// The engine thread's queues and each job's lifecycle: submit, admit, start,
// finish, roll back. One step's batch is scheduler_step.cc.
#include "engine/scheduler/scheduler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/scheduler/jobs.h"
#include "engine/scheduler/scheduler_internal.h"
#include "engine/util/status_macros.h"

namespace longctx {

namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Host memory a request's token vectors hold while it waits.
template <typename Request>
int64_t QueuedBytes(const Request& r) {
  int64_t tokens = 0;
  if constexpr (requires { r.tokens; }) tokens = static_cast<int64_t>(r.tokens.size());
  if constexpr (requires { r.prompt; }) {
    tokens = static_cast<int64_t>(r.prompt.size()) + r.max_tokens;
  }
  return tokens * static_cast<int64_t>(sizeof(int32_t));
}

}  // namespace

std::optional<absl::Duration> RetryAfter(const absl::Status& status) {
  auto payload = status.GetPayload(kRetryAfterPayload);
  int64_t ms = 0;
  if (!payload || !absl::SimpleAtoi(std::string(*payload), &ms)) return std::nullopt;
  return absl::Milliseconds(ms);
}

Scheduler::Scheduler(StepModel* model, SchedulerOptions options, EngineStats* stats)
    : model_(model), options_(options), stats_(stats) {
  stats_->kv_blocks_total.store(model_->kv_cache().total_blocks());
  stats_->host_memory.set_limit(options_.host_memory_budget);
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
  background_.Stop();
  absl::MutexLock lock(&mu_);
  stopped_ = true;
}

template <typename Request>
std::shared_ptr<WorkHandle> Scheduler::Submit(Request request, std::shared_ptr<WorkHandle> handle) {
  auto job = std::make_unique<Job>();
  job->session = request.session;
  if constexpr (requires { request.deadline; }) job->deadline = request.deadline;
  std::shared_ptr<WorkHandle> given;
  if constexpr (requires { request.handle; }) given = request.handle;
  job->queued_bytes = QueuedBytes(request);
  job->handler = MakeJobHandler(std::move(request));
  if (handle == nullptr) handle = std::move(given);
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

std::shared_ptr<WorkHandle> Scheduler::SubmitRead(ReadJob job) { return Submit(std::move(job)); }

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
  absl::Status refused;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      refused = absl::UnavailableError("the engine is shutting down");
    } else if (counted) {
      refused = AdmitLocked(*job);
    }
    if (refused.ok()) {
      if (counted) stats_->requests_waiting.fetch_add(1);
      incoming_.push_back(std::move(job));
      return;
    }
  }
  if (absl::IsResourceExhausted(refused)) stats_->admission_rejections_total.fetch_add(1);
  job->handler->Deliver(Context(*job), refused);
}

absl::Status Scheduler::QueueFull(absl::string_view why) const {
  const int64_t ms = std::clamp<int64_t>(recent_request_us_.load() / 1000, 100, 30000);
  absl::Status s = absl::ResourceExhaustedError(absl::StrCat(why, "; retry after ", ms, " ms"));
  s.SetPayload(kRetryAfterPayload, absl::Cord(absl::StrCat(ms)));
  return s;
}

absl::Status Scheduler::AdmitLocked(Job& job) {
  const std::string& tenant = job.session->tenant();
  const int total_limit = options_.max_queued_requests;
  const int tenant_limit = options_.max_queued_requests_per_tenant;
  if (total_limit > 0 && admitted_ >= total_limit) {
    return QueueFull(absl::StrCat("the server's max_queued_requests (", total_limit,
                                  ") requests are queued or running"));
  }
  auto it = admitted_by_tenant_.find(tenant);
  if (tenant_limit > 0 && it != admitted_by_tenant_.end() && it->second >= tenant_limit) {
    return QueueFull(absl::StrCat("the tenant's max_queued_requests_per_tenant (", tenant_limit,
                                  ") requests are queued or running"));
  }
  absl::Status budget =
      stats_->host_memory.TryCharge(HostMemoryKind::kQueued, job.queued_bytes, "the request");
  if (!budget.ok()) return QueueFull(budget.message());
  ++admitted_;
  ++admitted_by_tenant_[tenant];
  job.admitted = true;
  return absl::OkStatus();
}

void Scheduler::EndAdmission(Job& job) {
  if (!job.admitted) return;
  job.admitted = false;
  stats_->host_memory.Release(HostMemoryKind::kQueued, job.queued_bytes);
  const int64_t us = absl::ToInt64Microseconds(absl::Now() - job.submitted);
  const int64_t avg = recent_request_us_.load(std::memory_order_relaxed);
  recent_request_us_.store(avg + (us - avg) / 8, std::memory_order_relaxed);
  absl::MutexLock lock(&mu_);
  --admitted_;
  auto it = admitted_by_tenant_.find(job.session->tenant());
  if (it != admitted_by_tenant_.end() && --it->second <= 0) admitted_by_tenant_.erase(it);
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
  if (auto held = log_bytes_.find(&session); held != log_bytes_.end()) {
    stats_->host_memory.Release(HostMemoryKind::kTokenLog, held->second);
    log_bytes_.erase(held);
  }
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
    if (!q.jobs.empty() && q.jobs.front()->started) StartFollowers(q);
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

absl::StatusOr<bool> Scheduler::BeginJob(Session& session, Job& job) {
  SessionEngineState& st = session.engine_state();
  RETURN_IF_ERROR(OpenWindow(session, job));
  job.started = true;
  job.mark = static_cast<int64_t>(st.log.size());
  if (job.handler->counted()) {
    stats_->requests_waiting.fetch_sub(1);
    stats_->requests_running.fetch_add(1);
  }
  // A job that runs no steps (a read) is done once started.
  RETURN_IF_ERROR(job.handler->Start(Context(job)));
  if (!job.handler->work()) return false;
  job.target = static_cast<int64_t>(st.log.size());
  RETURN_IF_ERROR(CheckKvRoom(session, job));
  RETURN_IF_ERROR(RewindForLogits(st, job));
  return true;
}

bool Scheduler::StartJob(SessionQueue& q, Job& job) {
  const absl::StatusOr<bool> runs = BeginJob(*q.session, job);
  if (runs.ok() && *runs) return true;
  Finish(q, runs.status());
  return false;
}

void Scheduler::StartFollowers(SessionQueue& q) {
  Session& session = *q.session;
  SessionEngineState& st = session.engine_state();
  const absl::Time now = absl::Now();
  size_t i = 0;  // the last started job
  while (i + 1 < q.jobs.size() && q.jobs[i + 1]->started) ++i;
  while (i + 1 < q.jobs.size()) {
    const Job& last = *q.jobs[i];
    if (!last.handler->starts_early() || !last.handler->work()) return;
    if (last.target - st.sequence().length() >= options_.prefill_budget) return;
    Job& next = *q.jobs[i + 1];
    // Cancelled or late ones end by the usual path once at the head.
    if (!next.handler->starts_early() || next.handle->cancelled() || now > next.deadline) return;
    // A windowed session's window mark is taken now: where a failure of this
    // job alone rebuilds it from (Rollback).
    const absl::StatusOr<bool> runs = BeginJob(session, next);
    if (runs.ok() && *runs) {
      ++i;
      continue;
    }
    // A check (done once started) or a failure: it ends here, out of line.
    std::unique_ptr<Job> done = std::move(q.jobs[i + 1]);
    q.jobs.erase(q.jobs.begin() + static_cast<long>(i + 1));
    Complete(q, std::move(done), runs.status());
    if (!runs.ok()) return;
  }
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
  // A segment started early may find the log cut back already (a failure
  // ahead of it).
  if (static_cast<int64_t>(st.log.size()) > job.mark) st.log.resize(static_cast<size_t>(job.mark));
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
  EndAdmission(*job);
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
  // The log's whole allocation counts: that is what the process holds.
  const int64_t log_bytes = static_cast<int64_t>(st.log.capacity() * sizeof(int32_t));
  int64_t& held = log_bytes_[&session];
  stats_->host_memory.Charge(HostMemoryKind::kTokenLog, log_bytes - held);
  held = log_bytes;
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

#include "engine/scheduler/scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"

namespace longctx {

struct Scheduler::Job {
  enum class Kind { kIngest, kGenerate, kScore, kRead };
  Kind kind = Kind::kIngest;
  uint64_t id = 0;
  std::shared_ptr<Session> session;
  std::shared_ptr<WorkHandle> handle;
  bool counted = false;  // a request in the waiting/running gauges (not a read)
  absl::Time submitted;
  absl::Time deadline = absl::InfiniteFuture();
  IngestJob ingest;
  GenerateJob generate;
  ScoreJob score;
  ReadJob read;

  bool started = false;
  int64_t mark = 0;    // log size when the job started: where rollback returns to
  // Windowed sessions: where the window stood when the job started, to rebuild
  // from should the job move it past `mark` and then roll back.
  int window_mark = 0;
  std::optional<InfiniMemory> memory_mark;
  int64_t target = 0;  // log size to prefill up to

  // Generate.
  std::unique_ptr<Sampler> sampler;
  bool decoding = false;
  int generated = 0;
  absl::Time first_token;
  absl::Time last_token;

  // Score: rows for positions >= score_from predict a continuation token.
  int64_t score_from = 0;
  std::vector<float> logprobs;

  GenerateResult result;  // filled when generation ends
};

struct Scheduler::SessionQueue {
  std::shared_ptr<Session> session;
  std::deque<std::unique_ptr<Job>> jobs;
};

namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

float LogProb(std::span<const float> row, int32_t token) {
  float max = -std::numeric_limits<float>::infinity();
  for (float x : row) max = std::max(max, x);
  double sum = 0;
  for (float x : row) sum += std::exp(static_cast<double>(x - max));
  return static_cast<float>(row[token] - max - std::log(sum));
}

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

void Scheduler::Enqueue(std::unique_ptr<Job> job) {
  job->submitted = absl::Now();
  job->counted = job->kind != Job::Kind::kRead;
  if (job->counted) stats_->requests_waiting.fetch_add(1);
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      incoming_.push_back(std::move(job));
      return;
    }
  }
  if (job->counted) stats_->requests_waiting.fetch_sub(1);
  const absl::Status unavailable = absl::UnavailableError("the engine is shutting down");
  switch (job->kind) {
    case Job::Kind::kIngest:
      job->ingest.done(unavailable);
      break;
    case Job::Kind::kGenerate:
      job->generate.done(unavailable);
      break;
    case Job::Kind::kScore:
      job->score.done(unavailable);
      break;
    case Job::Kind::kRead:
      job->read.fn(unavailable, nullptr);
      break;
  }
}

std::shared_ptr<WorkHandle> Scheduler::SubmitIngest(IngestJob job) {
  auto j = std::make_unique<Job>();
  j->kind = Job::Kind::kIngest;
  j->session = job.session;
  j->deadline = job.deadline;
  j->ingest = std::move(job);
  j->handle = std::make_shared<WorkHandle>();
  auto handle = j->handle;
  Enqueue(std::move(j));
  return handle;
}

std::shared_ptr<WorkHandle> Scheduler::SubmitGenerate(GenerateJob job) {
  auto j = std::make_unique<Job>();
  j->kind = Job::Kind::kGenerate;
  j->session = job.session;
  j->deadline = job.deadline;
  j->generate = std::move(job);
  j->handle = std::make_shared<WorkHandle>();
  auto handle = j->handle;
  Enqueue(std::move(j));
  return handle;
}

std::shared_ptr<WorkHandle> Scheduler::SubmitScore(ScoreJob job) {
  auto j = std::make_unique<Job>();
  j->kind = Job::Kind::kScore;
  j->session = job.session;
  j->deadline = job.deadline;
  j->score = std::move(job);
  j->handle = std::make_shared<WorkHandle>();
  auto handle = j->handle;
  Enqueue(std::move(j));
  return handle;
}

void Scheduler::SubmitRead(ReadJob job) {
  auto j = std::make_unique<Job>();
  j->kind = Job::Kind::kRead;
  j->session = job.session;
  j->read = std::move(job);
  j->handle = std::make_shared<WorkHandle>();
  Enqueue(std::move(j));
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
  for (auto& session : *releases) {
    auto it = queues_.find(session.get());
    if (it != queues_.end()) {
      FailQueue(*it->second, session->CheckOpen());
      queues_.erase(it);
    }
    SessionEngineState& st = session->engine_state();
    model_->ReleaseSequence(st.kv);
    DropWindow(st);
    st.resume.reset();
    st.log.clear();
    st.log.shrink_to_fit();
    session->PublishCounters(0, 0);
  }
  if (!releases->empty()) {
    KvCache& kv = model_->kv_cache();
    stats_->kv_blocks_used.store(kv.total_blocks() - kv.free_blocks());
    model_->PublishLoad(*stats_);
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
    // Queued jobs that were cancelled or timed out leave without waiting.
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
    while (!q.jobs.empty()) {
      Job& head = *q.jobs.front();
      if (head.handle->cancelled()) {
        Finish(q, absl::CancelledError("cancelled by the client"));
        continue;
      }
      if (now > head.deadline) {
        Finish(q,
               absl::DeadlineExceededError(head.kind == Job::Kind::kGenerate
                                               ? absl::StrCat("deadline exceeded after ",
                                                              head.generated, " generated tokens")
                                               : std::string("deadline exceeded")));
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

bool Scheduler::StartJob(SessionQueue& q, Job& job) {
  Session& session = *q.session;
  SessionEngineState& st = session.engine_state();
  const int64_t window = session.settings().max_tokens;
  const int64_t len = static_cast<int64_t>(st.log.size());
  if (session.settings().windowed() && !st.window) {
    if (absl::Status s = MakeWindow(session); !s.ok()) {
      Finish(q, s);
      return false;
    }
    PublishSession(session);
  }
  if (st.window) {
    if (absl::Status s = PrepareWindow(session); !s.ok()) {
      Finish(q, s);
      return false;
    }
    if (job.kind != Job::Kind::kRead) {
      job.window_mark = st.window->evicted_end();
      if (const InfiniMemory* m = st.window->memory()) job.memory_mark = *m;
    }
  }
  job.started = true;
  job.mark = len;
  if (job.counted) {
    stats_->requests_waiting.fetch_sub(1);
    stats_->requests_running.fetch_add(1);
  }
  switch (job.kind) {
    case Job::Kind::kRead:
      job.read.fn(absl::OkStatus(), &st);
      Finish(q, absl::OkStatus());
      return false;
    case Job::Kind::kIngest: {
      const auto& tokens = job.ingest.tokens;
      if (len + static_cast<int64_t>(tokens.size()) > window) {
        Finish(q, absl::ResourceExhaustedError(
                      absl::StrCat("segment of ", tokens.size(), " tokens would bring session ",
                                   session.id(), " to ", len + static_cast<int64_t>(tokens.size()),
                                   " tokens, over its limit of ", window)));
        return false;
      }
      st.log.insert(st.log.end(), tokens.begin(), tokens.end());
      break;
    }
    case Job::Kind::kGenerate: {
      const auto& prompt = job.generate.prompt;
      if (len + static_cast<int64_t>(prompt.size()) + 1 > window) {
        Finish(q, absl::ResourceExhaustedError(absl::StrCat(
                      "session ", session.id(), " holds ", len, " tokens; a prompt of ",
                      prompt.size(), " tokens and an answer do not fit its limit of ", window)));
        return false;
      }
      if (len + static_cast<int64_t>(prompt.size()) == 0) {
        Finish(q, absl::InvalidArgumentError(
                      "prompt is empty and the session holds no tokens: nothing to "
                      "continue"));
        return false;
      }
      st.log.insert(st.log.end(), prompt.begin(), prompt.end());
      job.sampler = std::make_unique<Sampler>(job.generate.sampling);
      for (int32_t t : prompt) job.sampler->Observe(t);
      stats_->prompt_tokens_total.fetch_add(static_cast<int64_t>(prompt.size()));
      break;
    }
    case Job::Kind::kScore: {
      const auto& tokens = job.score.tokens;
      st.log.insert(st.log.end(), tokens.begin(), tokens.end());
      job.score_from = std::max<int64_t>(len - 1, 0);
      job.logprobs.assign(tokens.size(), std::numeric_limits<float>::quiet_NaN());
      break;
    }
  }
  job.target = static_cast<int64_t>(st.log.size());
  // Refuse up front what cannot fit the KV blocks free now (others may still
  // take blocks meanwhile; a step that runs out fails the job then).
  KvCache& kv = model_->kv_cache();
  const int64_t bs = kv.geometry().block_size;
  const int64_t blocks_needed =
      CeilDiv(job.target + (job.kind == Job::Kind::kGenerate ? 1 : 0), bs) -
      static_cast<int64_t>(st.sequence().block_table().size());
  // A windowed session frees blocks as its window moves: steps check it.
  if (!st.window && blocks_needed > kv.free_blocks()) {
    const int64_t added = job.target - job.mark;
    Finish(q, absl::ResourceExhaustedError(absl::StrCat(
                  "KV cache is full: ", added, " more tokens for session ", session.id(), " need ",
                  blocks_needed, " blocks of ", bs, " tokens, ", kv.free_blocks(), " are free")));
    return false;
  }
  // The step that reaches the target must compute logits for the position
  // just before the first token of interest; if the KV already holds it,
  // recompute that one token (KV is append-only: truncate and re-feed).
  const int64_t need_from = job.kind == Job::Kind::kScore      ? job.score_from
                            : job.kind == Job::Kind::kGenerate ? job.target - 1
                                                               : st.sequence().length();
  if (st.sequence().length() > need_from) {
    if (st.window) {
      if (absl::Status s = st.window->Rollback(static_cast<int>(need_from)); !s.ok()) {
        Finish(q, s);
        return false;
      }
    } else {
      model_->TruncateSequence(st.kv, static_cast<int>(need_from));
    }
  }
  return true;
}

void Scheduler::Step() {
  const absl::Time step_start = absl::Now();
  KvCache& kv = model_->kv_cache();
  const int64_t block_size = kv.geometry().block_size;
  int64_t free_blocks = kv.free_blocks();

  struct Plan {
    SessionQueue* q;
    Job* job;
    int64_t start;  // kv length before the step
    int n;
    LogitsMode mode;
  };
  std::vector<Plan> plans;
  // Logits of a Generate job's sampling step. Greedy sampling needs only the
  // argmax: the device finds it and no logits come back.
  auto sample_mode = [&](const Job& job) {
    return model_->greedy_tokens() && job.sampler->greedy() ? LogitsMode::kGreedy
                                                            : LogitsMode::kLast;
  };

  // Returns how many of `want` tokens fit the free KV blocks, and takes them.
  auto fit = [&](const KvSequence& seq, int64_t want) -> int64_t {
    const int64_t held = static_cast<int64_t>(seq.block_table().size()) * block_size;
    const int64_t room = held - seq.length() + free_blocks * block_size;
    const int64_t n = std::min(want, room);
    if (n > 0) {
      free_blocks -= std::max<int64_t>(0, CeilDiv(seq.length() + n, block_size) -
                                              static_cast<int64_t>(seq.block_table().size()));
    }
    return n;
  };
  std::vector<std::pair<SessionQueue*, absl::Status>> failures;
  auto kv_full = [&](SessionQueue* q, int64_t want) {
    failures.emplace_back(
        q, absl::ResourceExhaustedError(absl::StrCat(
               "KV cache is full: ", want, " more tokens for session ", q->session->id(),
               " do not fit (", kv.free_blocks(), " free blocks of ", block_size, " tokens)")));
  };

  // Decode: one token of each generating request, round-robin past the cap.
  std::vector<SessionQueue*> decoders, prefills;
  for (auto& [key, q] : queues_) {
    Job& head = *q->jobs.front();
    if (head.kind == Job::Kind::kGenerate && head.decoding) {
      decoders.push_back(q.get());
    } else {
      prefills.push_back(q.get());
    }
  }
  std::sort(decoders.begin(), decoders.end(), [](SessionQueue* a, SessionQueue* b) {
    return a->jobs.front()->id < b->jobs.front()->id;
  });
  if (static_cast<int>(decoders.size()) > options_.max_decode_batch) {
    decode_cursor_ %= decoders.size();
    std::rotate(decoders.begin(), decoders.begin() + static_cast<long>(decode_cursor_),
                decoders.end());
    decoders.resize(static_cast<size_t>(options_.max_decode_batch));
    decode_cursor_ += static_cast<size_t>(options_.max_decode_batch);
  }
  for (SessionQueue* q : decoders) {
    const KvSequence& seq = q->session->engine_state().sequence();
    if (fit(seq, 1) < 1) {
      kv_full(q, 1);
      continue;
    }
    Job* job = q->jobs.front().get();
    plans.push_back({q, job, seq.length(), 1, sample_mode(*job)});
  }

  // Prefill: Generate prompts first (oldest first), then the rest shortest
  // remaining first.
  auto rank = [](const SessionQueue* q) {
    const Job& j = *q->jobs.front();
    const int64_t remaining = j.target - q->session->engine_state().sequence().length();
    return std::make_tuple(j.kind == Job::Kind::kGenerate ? 0 : 1,
                           j.kind == Job::Kind::kGenerate ? 0 : remaining, j.id);
  };
  std::sort(prefills.begin(), prefills.end(),
            [&](SessionQueue* a, SessionQueue* b) { return rank(a) < rank(b); });
  // While any Generate is under way (its prompt or its answer), steps stay
  // short so that its tokens come quickly.
  const bool generating =
      !decoders.empty() ||
      (!prefills.empty() && prefills.front()->jobs.front()->kind == Job::Kind::kGenerate);
  int64_t budget = generating ? std::min(options_.prefill_budget, options_.prefill_budget_decoding)
                              : options_.prefill_budget;
  int64_t logit_rows = options_.max_logit_rows;
  for (SessionQueue* q : prefills) {
    if (budget <= 0) break;
    Job& job = *q->jobs.front();
    SessionEngineState& st = q->session->engine_state();
    if (st.window) {
      if (absl::Status s = PrepareWindow(*q->session); !s.ok()) {
        failures.emplace_back(q, s);
        continue;
      }
    }
    const KvSequence& seq = st.sequence();
    int64_t want = std::min(job.target - seq.length(), budget);
    if (job.kind == Job::Kind::kScore) {
      if (logit_rows <= 0) continue;
      want = std::min(want, logit_rows);
    }
    if (st.window) {
      // An import prefills its sinks alone, then resumes past the evicted tokens.
      const int sink = q->session->settings().sink_tokens;
      if (st.resume && seq.length() < sink) want = std::min<int64_t>(want, sink - seq.length());
      // Steps of a windowed session stop at chunk boundaries.
      auto cap = st.window->StepCapacity(static_cast<int>(want));
      if (!cap.ok()) {
        failures.emplace_back(q, cap.status());
        continue;
      }
      want = *cap;
    }
    const int64_t n = fit(seq, want);
    if (n < 1) {
      kv_full(q, want);
      continue;
    }
    budget -= n;
    LogitsMode mode = LogitsMode::kNone;
    if (job.kind == Job::Kind::kScore) {
      mode = LogitsMode::kAll;
      logit_rows -= n;
    } else if (job.kind == Job::Kind::kGenerate && seq.length() + n == job.target) {
      mode = sample_mode(job);
    }
    plans.push_back({q, &job, seq.length(), static_cast<int>(n), mode});
  }
  std::vector<StepItem> items;
  items.reserve(plans.size());
  // Greedy tokens of kGreedy items, by index in `ready` (the plans that run).
  std::vector<int32_t> greedy(plans.size(), -1);
  std::vector<Plan> ready;
  ready.reserve(plans.size());
  int64_t batch_tokens = 0;
  for (const Plan& p : plans) {
    Session& session = *p.q->session;
    SessionEngineState& st = session.engine_state();
    StepItem item;
    item.seq = &st.kv;
    item.tokens = std::span<const int32_t>(st.log.data() + p.start, static_cast<size_t>(p.n));
    item.logits = p.mode;
    item.greedy_token = &greedy[ready.size()];
    item.dca =
        session.settings().attention.ToParams(model_->head_dim(), static_cast<int>(p.start + p.n));
    if (st.window) {
      // Evicts what leaves the window (fold or drop, blocks freed) and points
      // the item at the window's sequence.
      const InfiniCounters before = st.window->counters();
      absl::Status s = st.window->PrepareStep(p.n, &item);
      const InfiniCounters& after = st.window->counters();
      stats_->infini_folded_tokens_total.fetch_add(after.folded_tokens - before.folded_tokens);
      stats_->infini_evictions_compress_total.fetch_add(after.chunks_folded - before.chunks_folded);
      stats_->infini_evictions_slide_total.fetch_add(after.chunks_dropped - before.chunks_dropped);
      if (!s.ok()) {
        failures.emplace_back(p.q, std::move(s));
        continue;
      }
    }
    items.push_back(item);
    ready.push_back(p);
    batch_tokens += p.n;
  }
  plans = std::move(ready);
  for (auto& [q, status] : failures) Finish(*q, status);
  if (plans.empty()) return;

  const absl::Time forward_start = absl::Now();
  const absl::Status status = model_->Forward(items, &logits_);
  const double forward_s = absl::ToDoubleSeconds(absl::Now() - forward_start);
  stats_->forward_seconds.Observe(forward_s);
  if (batch_tokens == static_cast<int64_t>(plans.size()) &&
      std::all_of(plans.begin(), plans.end(), [](const Plan& p) { return p.job->decoding; })) {
    stats_->decode_forward_seconds.Observe(forward_s);
  }
  if (!status.ok()) {
    for (const Plan& p : plans) Finish(*p.q, status);
    return;
  }

  const int vocab = model_->vocab_size();
  const absl::Time now = absl::Now();
  size_t row = 0;
  for (size_t i = 0; i < plans.size(); ++i) {
    const Plan& p = plans[i];
    SessionQueue& q = *p.q;
    Job& job = *p.job;
    Session& session = *q.session;
    SessionEngineState& st = session.engine_state();
    const size_t rows = p.mode == LogitsMode::kAll    ? static_cast<size_t>(p.n)
                        : p.mode == LogitsMode::kLast ? 1
                                                      : 0;
    const float* first_row = logits_.data() + row * static_cast<size_t>(vocab);
    row += rows;
    if (job.kind == Job::Kind::kIngest) {
      if (st.sequence().length() == job.target) Finish(q, absl::OkStatus());
      continue;
    }
    if (job.kind == Job::Kind::kScore) {
      for (int r = 0; r < p.n; ++r) {
        const int64_t pos = p.start + r;  // this row predicts log[pos + 1]
        if (pos < job.score_from || pos + 1 >= job.target) continue;
        const std::span<const float> logits(first_row + static_cast<size_t>(r) * vocab,
                                            static_cast<size_t>(vocab));
        job.logprobs[static_cast<size_t>(pos + 1 - job.mark)] =
            LogProb(logits, st.log[static_cast<size_t>(pos + 1)]);
      }
      if (st.sequence().length() == job.target) Finish(q, absl::OkStatus());
      continue;
    }
    // Generate: sample once the whole context is in.
    if (p.mode != LogitsMode::kLast && p.mode != LogitsMode::kGreedy) continue;
    GenerateJob& g = job.generate;
    const int32_t token =
        p.mode == LogitsMode::kGreedy
            ? greedy[i]
            : job.sampler->Sample(std::span<const float>(first_row, static_cast<size_t>(vocab)));
    if (job.generated == 0) {
      job.first_token = now;
      stats_->time_to_first_token.Observe(absl::ToDoubleSeconds(now - job.submitted));
    } else {
      stats_->inter_token_latency.Observe(absl::ToDoubleSeconds(now - job.last_token));
    }
    job.last_token = now;
    job.sampler->Observe(token);
    ++job.generated;
    stats_->generation_tokens_total.fetch_add(1);
    st.log.push_back(token);
    job.decoding = true;
    std::optional<FinishReason> reason;
    if (std::find(g.stop_tokens.begin(), g.stop_tokens.end(), token) != g.stop_tokens.end()) {
      reason = FinishReason::kStop;
    } else if (g.on_token && !g.on_token(token)) {
      reason = FinishReason::kStopString;
    } else if (job.generated >= g.max_tokens) {
      reason = FinishReason::kLength;
    } else if (static_cast<int64_t>(st.log.size()) >= session.settings().max_tokens) {
      reason = FinishReason::kContext;
    }
    if (!reason) continue;
    GenerateResult& result = job.result;
    result.finish_reason = *reason;
    result.prompt_tokens = static_cast<int64_t>(g.prompt.size());
    result.generated_tokens = job.generated;
    result.time_to_first_token = job.first_token - job.submitted;
    result.total_time = now - job.submitted;
    if (g.persist && g.persist_suffix) {
      const std::vector<int32_t> suffix = g.persist_suffix(*reason);
      const int64_t room = session.settings().max_tokens - static_cast<int64_t>(st.log.size());
      if (static_cast<int64_t>(suffix.size()) <= room) {
        st.log.insert(st.log.end(), suffix.begin(), suffix.end());
      }
    }
    stats_->request_success_total[static_cast<int>(*reason)].fetch_add(1);
    stats_->e2e_request_latency.Observe(absl::ToDoubleSeconds(result.total_time));
    Finish(q, absl::OkStatus());
  }

  stats_->steps_total.fetch_add(1);
  stats_->step_batch_tokens.Observe(static_cast<double>(batch_tokens));
  stats_->kv_blocks_used.store(kv.total_blocks() - kv.free_blocks());
  model_->PublishLoad(*stats_);
  stats_->step_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - step_start));
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
  Session& session = *q.session;
  const bool keep = status.ok() && (job->kind == Job::Kind::kIngest ||
                                    (job->kind == Job::Kind::kGenerate && job->generate.persist));
  if (job->counted) {
    (job->started ? stats_->requests_running : stats_->requests_waiting).fetch_sub(1);
    if (!status.ok()) stats_->request_failure_total.fetch_add(1);
  }
  if (job->started && !keep) Rollback(q, *job);
  // Only a started job (the head) changes the session; queued ones leave it alone.
  if (job->started) PublishSession(session);
  const int64_t position = static_cast<int64_t>(session.engine_state().log.size());
  switch (job->kind) {
    case Job::Kind::kIngest:
      if (status.ok()) {
        if (job->ingest.seq > 0) {  // client segments, not internal appends
          const int64_t n = static_cast<int64_t>(job->ingest.tokens.size());
          stats_->ingested_tokens_total.fetch_add(n);
          stats_->ingested_segments_total.fetch_add(1);
          session.AddIngested(n);
        }
        job->ingest.done(position);
        break;
      }
      // Later segments of this session build on this one: they fail too.
      if (job->ingest.seq > 0) {
        for (size_t i = 0; i < q.jobs.size();) {
          if (q.jobs[i]->kind != Job::Kind::kIngest || q.jobs[i]->ingest.seq <= job->ingest.seq) {
            ++i;
            continue;
          }
          std::unique_ptr<Job> later = std::move(q.jobs[i]);
          q.jobs.erase(q.jobs.begin() + static_cast<long>(i));
          const int64_t later_seq = later->ingest.seq;
          Complete(q, std::move(later),
                   absl::AbortedError(absl::StrCat("segment ", later_seq, " not applied: segment ",
                                                   job->ingest.seq, " before it failed")));
        }
      }
      job->ingest.done(status);
      break;
    case Job::Kind::kGenerate:
      if (status.ok()) {
        job->result.session_tokens = position;
        job->generate.done(job->result);
      } else {
        job->generate.done(status);
      }
      break;
    case Job::Kind::kScore:
      if (status.ok()) {
        ScoreResult result;
        result.logprobs = std::move(job->logprobs);
        result.session_tokens = position;
        stats_->scored_tokens_total.fetch_add(static_cast<int64_t>(job->score.tokens.size()));
        job->score.done(std::move(result));
      } else {
        job->score.done(status);
      }
      break;
    case Job::Kind::kRead:
      if (!status.ok()) job->read.fn(status, nullptr);
      break;
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

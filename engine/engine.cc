#include "engine/engine.h"

#include <cmath>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/conversation/answer_stream.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

uint64_t RandomSeed() {
  static std::random_device rd;
  static absl::Mutex mu(absl::kConstInit);
  absl::MutexLock lock(&mu);
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

// A GPU step costs little more for thousands of prefill tokens than for
// hundreds; a CPU step grows with them.
void DefaultPrefillBudgets(bool gpu, SchedulerOptions& s) {
  if (s.prefill_budget <= 0) s.prefill_budget = gpu ? 8192 : 512;
  if (s.prefill_budget_decoding <= 0) s.prefill_budget_decoding = gpu ? 1024 : 128;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(EngineConfig config) {
  const bool group = config.group.dist.world_size > 1;
  // The store first: a second server on the same state_dir stops here, before
  // it spends time loading the model.
  std::unique_ptr<SessionStore> store;
  StoreLoad load;
  const absl::Time open_start = absl::Now();
  if (config.store.durability != Durability::kNone) {
    ASSIGN_OR_RETURN(store, SessionStore::Open(config.store, &load));
  }
  const absl::Duration open_time = absl::Now() - open_start;
  ASSIGN_OR_RETURN(LoadedModel loaded,
                   LoadModel(config.model, config.backend, config.options.kv, /*keep_host=*/true,
                             config.cpu, config.infini_gates));
  const std::string backend_name = loaded.backend->Name();
  DefaultPrefillBudgets(backend_name != "cpu", config.options.scheduler);
  std::unique_ptr<StepModel> step;
  std::unique_ptr<LeaderGroup> leader;
  if (group) {
    ASSIGN_OR_RETURN(leader, LeaderGroup::Form(config.group, loaded.host, config.options.kv,
                                               loaded.model.get()));
    step = leader->MakeStepModel();
  } else {
    step = std::make_unique<LlamaStepModel>(std::move(loaded.model));
  }
  const std::string name =
      group ? absl::StrCat(backend_name, " x", config.group.dist.world_size, " ranks")
            : backend_name;
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                   CreateWithModel(loaded.host, std::move(step), name, std::move(config.options)));
  if (engine->info_.memory_mixing) engine->info_.infini_gates = loaded.infini_gates;
  engine->backend_ = std::move(loaded.backend);
  engine->leader_model_ = std::move(loaded.model);  // null without a group
  engine->group_ = std::move(leader);
  engine->on_store_event_ = std::move(config.on_store_event);
  if (store) RETURN_IF_ERROR(engine->AttachStore(std::move(store), std::move(load), open_time));
  return engine;
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::CreateWithModel(const HostModel& host,
                                                                std::unique_ptr<StepModel> model,
                                                                std::string backend_name,
                                                                EngineOptions options) {
  // The server's attention defaults must make a valid session on their own.
  auto dca = DcaConfig::Resolve(host.config, options.dca_defaults);
  if (dca.ok()) {
    if (absl::Status v = dca->Validate(options.kv.block_size); !v.ok()) dca = v;
  }
  if (!dca.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config attention/dca_*: ", dca.status().message()));
  }
  ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::Create(host.vocab));
  std::optional<ChatTemplate> chat;
  if (auto t = ChatTemplateFromJinja(host.vocab.chat_template); t.ok()) chat = *t;
  return std::unique_ptr<Engine>(new Engine(std::move(model), std::move(tokenizer), std::move(chat),
                                            host.config, std::move(backend_name),
                                            std::move(options)));
}

Engine::Engine(std::unique_ptr<StepModel> model, Tokenizer tokenizer,
               std::optional<ChatTemplate> chat, ModelConfig config, std::string backend_name,
               EngineOptions options)
    : options_(std::move(options)),
      model_(std::move(model)),
      tokenizer_(std::move(tokenizer)),
      manager_(options_.sessions) {
  // A template we cannot cut into pieces leaves the model RAW only.
  if (chat) chat_ = ChatPrompt::Create(&tokenizer_, *chat);
  info_.model = std::move(config);
  info_.backend = std::move(backend_name);
  info_.chat_template = chat_ ? std::string(ChatStyleName(chat->style)) : "none";
  KvCache& kv = model_->kv_cache();
  info_.block_size = kv.geometry().block_size;
  info_.total_blocks = kv.total_blocks();
  info_.bytes_per_token = kv.BytesPerBlock() / kv.geometry().block_size;
  info_.memory_mixing = model_->has_infini_gates();
  if (auto s = ResolveSession(SessionRequest(), session_context()); s.ok()) {
    info_.default_attention = s->attention;
  }
  scheduler_ = std::make_unique<Scheduler>(model_.get(), options_.scheduler, &stats_);
  reaper_ = std::thread([this] { ReapLoop(); });
}

Engine::~Engine() { Shutdown(); }

void Engine::Shutdown() {
  if (!stop_reaper_.HasBeenNotified()) stop_reaper_.Notify();
  if (reaper_.joinable()) reaper_.join();
  scheduler_->Stop();
  // After the engine: its last callbacks may still write.
  if (store_) store_->Close();
}

void Engine::ReapLoop() {
  while (!stop_reaper_.WaitForNotificationWithTimeout(options_.expiry_interval)) {
    for (auto& s : manager_.ExpireIdle()) {
      ForgetStored(s->id(), /*wait=*/false).IgnoreError();
      scheduler_->Release(std::move(s));
    }
  }
}

SessionContext Engine::session_context() const {
  SessionContext c;
  c.options = &options_;
  c.model = &info_.model;
  c.block_size = model_->kv_cache().geometry().block_size;
  c.has_chat = chat_.has_value();
  return c;
}

// ---------------------------------------------------------------- lifecycle

void Engine::StartSession(const std::string& tenant, const std::string& id,
                          SessionSettings settings, std::vector<int32_t> initial,
                          const std::function<void(Session&)>& prepare, StartOptions start,
                          std::function<void(absl::StatusOr<SessionInfo>)> done) {
  auto created = manager_.Create(tenant, id, std::move(settings));
  if (!created.ok()) return done(created.status());
  std::shared_ptr<Session> session = *created;
  if (start.recovered) session->set_recovering(true);
  if (prepare) prepare(*session);
  if (!store_) {
    return PrefillSession(session, std::move(initial), start.recovered, std::move(done),
                          std::move(start.handle));
  }
  SessionStore::Batch batch;
  batch.PutSession(session->id(), tenant, session->create_time(), start.base);
  store_->Commit(std::move(batch), [this, session, initial = std::move(initial),
                                    recovered = start.recovered, handle = std::move(start.handle),
                                    done = std::move(done)](absl::Status s) mutable {
    if (!s.ok()) {
      if (manager_.Delete(session->tenant(), session->id()).ok()) scheduler_->Release(session);
      return done(s);
    }
    PrefillSession(session, std::move(initial), recovered, std::move(done), std::move(handle));
  });
}

void Engine::PrefillSession(const std::shared_ptr<Session>& session, std::vector<int32_t> initial,
                            bool recovered, std::function<void(absl::StatusOr<SessionInfo>)> done,
                            std::shared_ptr<WorkHandle> handle) {
  const std::string tenant = session->tenant();
  // A session that fails here is gone; a recovered one keeps its stored data
  // (a later start may rebuild it).
  auto drop = [this, session, tenant, recovered](const absl::Status&) {
    if (manager_.Delete(tenant, session->id()).ok()) scheduler_->Release(session);
    if (!recovered) ForgetStored(session->id(), /*wait=*/false).IgnoreError();
  };
  if (recovered) {
    done = [session, done = std::move(done)](absl::StatusOr<SessionInfo> info) {
      session->set_recovering(false);
      done(info.ok() ? session->Info() : info);
    };
  }
  if (initial.empty()) return done(session->Info());
  const int64_t n = static_cast<int64_t>(initial.size());
  if (absl::Status s = session->Reserve(n); !s.ok()) {
    drop(s);
    return done(s);
  }
  session->BeginUse();
  IngestJob job;
  job.session = session;
  job.tokens = std::move(initial);
  job.handle = std::move(handle);
  job.done = [this, session, n, drop, recovered,
              done = std::move(done)](absl::StatusOr<int64_t> r) {
    session->EndUse(manager_.Now());
    if (!r.ok()) {
      session->Unreserve(n);
      // Deleted (or expired) while being rebuilt: not a loss.
      const bool deleted = recovered && session->closed();
      drop(r.status());
      return done(deleted ? absl::CancelledError("deleted while being rebuilt") : r.status());
    }
    session->engine_state().stored_end = *r;
    session->CompleteAppend(n, *r);
    done(session->Info());
  };
  scheduler_->SubmitIngest(std::move(job));
}

void Engine::CreateSession(const std::string& tenant, const SessionRequest& request,
                           std::function<void(absl::StatusOr<SessionInfo>)> done) {
  auto settings = ResolveSession(request, session_context());
  if (!settings.ok()) return done(settings.status());
  std::vector<int32_t> prefix;
  if (settings->prompt_format == PromptFormat::kChat) {
    prefix = chat_->SessionPrefix(settings->system_prompt);
  }
  const int64_t turn = static_cast<int64_t>(prefix.size());
  StartOptions start;
  if (store_) {
    SessionSnapshot base;
    base.model = Fingerprint();
    base.settings = *settings;
    base.user_turn_start = turn;
    base.tokens = prefix;
    start.base = EncodeSessionSnapshot(base);
  }
  StartSession(
      tenant, request.id, std::move(*settings), std::move(prefix),
      [turn](Session& s) { s.set_user_turn_start(turn); }, std::move(start), std::move(done));
}

absl::StatusOr<std::shared_ptr<Session>> Engine::FindSession(const std::string& tenant,
                                                             const std::string& id) {
  return Lookup(tenant, id);
}

absl::StatusOr<SessionInfo> Engine::GetSession(const std::string& tenant, const std::string& id) {
  ASSIGN_OR_RETURN(std::shared_ptr<Session> s, Lookup(tenant, id));
  return s->Info();
}

absl::StatusOr<Engine::ListResult> Engine::ListSessions(
    const std::string& tenant, int page_size, const std::string& page_token,
    const std::map<std::string, std::string>& selector) {
  if (page_size < 0) return absl::InvalidArgumentError("page_size must not be negative");
  if (page_size > 1000) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size ", page_size, " is over the maximum of 1000"));
  }
  if (page_size == 0) page_size = 50;
  if (!page_token.empty()) RETURN_IF_ERROR(ValidateSessionId(page_token));
  auto page = manager_.List(tenant, page_size, page_token, selector);
  ListResult out;
  for (const auto& s : page.sessions) out.sessions.push_back(s->Info());
  out.next_page_token = std::move(page.next_page_token);
  return out;
}

absl::Status Engine::DeleteSession(const std::string& tenant, const std::string& id) {
  auto removed = manager_.Delete(tenant, id);
  if (!removed.ok()) {
    {
      // A lost session can be deleted: its damaged data goes too.
      absl::MutexLock lock(&lost_mu_);
      auto it = lost_.find(id);
      if (it == lost_.end() || !absl::IsNotFound(removed.status()) ||
          (!it->second.tenant.empty() && it->second.tenant != tenant)) {
        return removed.status();
      }
      lost_.erase(it);
    }
    return ForgetStored(id, /*wait=*/true);
  }
  scheduler_->Release(*removed);
  return ForgetStored(id, /*wait=*/true);
}

// ---------------------------------------------------------------- ingest

std::shared_ptr<WorkHandle> Engine::Ingest(const std::shared_ptr<Session>& session,
                                           SegmentInput input,
                                           std::function<void(absl::StatusOr<IngestAck>)> done) {
  auto fail = [&](absl::Status s) -> std::shared_ptr<WorkHandle> {
    done(std::move(s));
    return nullptr;
  };
  if (input.has_tokens ? input.tokens.empty() : input.text.empty()) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("segment ", input.seq, " is empty: segment.",
                     input.has_tokens ? "tokens" : "text", " must not be empty")));
  }
  auto ids = TokenizeInput("segment", input.has_tokens, input.text, input.tokens,
                           input.parse_special, tokenizer_, options_);
  if (!ids.ok()) return fail(ids.status());
  if (ids->empty()) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("segment ", input.seq, " has no tokens after tokenization")));
  }
  if (store_) {
    return IngestDurable(session, input.seq, std::move(*ids), input.deadline, std::move(done));
  }
  IngestAck ack;
  auto claim = session->ClaimSegment(input.seq, static_cast<int64_t>(ids->size()), &ack);
  if (!AnswerClaim(session, input.seq, claim, ack, done)) return nullptr;
  return scheduler_->SubmitIngest(
      SegmentJob(session, input.seq, std::move(*ids), input.deadline, -1, std::move(done)));
}

bool Engine::AnswerClaim(const std::shared_ptr<Session>& session, int64_t seq,
                         const absl::StatusOr<Session::SegmentClaim>& claim, const IngestAck& ack,
                         std::function<void(absl::StatusOr<IngestAck>)>& done) {
  if (absl::IsResourceExhausted(claim.status()) && !session->settings().windowed()) {
    stats_.infini_rejections_total.fetch_add(1);
  }
  if (!claim.ok()) {
    done(claim.status());
    return false;
  }
  if (*claim == Session::SegmentClaim::kDuplicate) {
    done(ack);
    return false;
  }
  if (*claim == Session::SegmentClaim::kInFlight) {
    AckResend(session, seq, std::move(done));
    return false;
  }
  return true;
}

IngestJob Engine::SegmentJob(const std::shared_ptr<Session>& session, int64_t seq,
                             std::vector<int32_t> tokens, absl::Time deadline, int64_t rec,
                             std::function<void(absl::StatusOr<IngestAck>)> done,
                             std::shared_ptr<std::atomic<bool>> stale) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  session->BeginUse();
  IngestJob job;
  job.session = session;
  job.seq = seq;
  job.tokens = std::move(tokens);
  job.deadline = deadline;
  job.done = [this, session, seq, n, rec, stale,
              done = std::move(done)](absl::StatusOr<int64_t> r) {
    session->EndUse(manager_.Now());
    if (!r.ok()) {
      if (rec < 0) {
        session->FailSegment(seq, n);
      } else {
        DurableSegmentFailed(session, seq, n, rec, stale != nullptr && stale->load());
      }
      return done(r.status());
    }
    IngestAck a;
    a.seq = seq;
    a.tokens_ingested = n;
    a.session_tokens = *r;
    session->engine_state().stored_end = *r;
    session->CompleteSegment(a);
    // Acknowledged once a persisted turn before it is durable too.
    AfterDurable([done, a] { done(a); });
  };
  return job;
}

void Engine::AckResend(const std::shared_ptr<Session>& session, int64_t seq,
                       std::function<void(absl::StatusOr<IngestAck>)> done) {
  // Queued after the first copy, so it runs once that one is done. With a
  // store, the first copy reaches the scheduler only once its record is
  // written: the read is queued after every write before it is done.
  auto job = std::make_shared<ReadJob>();
  job->session = session;
  job->fn = [this, session, seq, done = std::move(done)](absl::Status st,
                                                         const SessionEngineState*) {
    IngestAck again;
    if (!st.ok()) return done(st);
    if (session->LookupAck(seq, &again)) return AfterDurable([done, again] { done(again); });
    done(absl::AbortedError(absl::StrCat(
        "segment ", seq, " failed before its resend could be acknowledged; resend it")));
  };
  AfterDurable([this, job] { scheduler_->SubmitRead(std::move(*job)); });
}

// ---------------------------------------------------------------- generate

std::vector<int32_t> Engine::PromptIds(const Session& session, const GenerateInput& input) const {
  if (session.settings().prompt_format != PromptFormat::kChat) {
    return tokenizer_.Encode(input.prompt, input.parse_special);
  }
  const bool has_document = session.tokens() > session.user_turn_start();
  return chat_->Question(input.prompt, has_document, input.parse_special);
}

std::shared_ptr<WorkHandle> Engine::Generate(const std::string& tenant, const std::string& id,
                                             GenerateInput input, GenerateCallbacks callbacks) {
  auto fail = [&](absl::Status s) -> std::shared_ptr<WorkHandle> {
    callbacks.done(std::move(s));
    return nullptr;
  };
  auto found = Lookup(tenant, id);
  if (!found.ok()) return fail(found.status());
  std::shared_ptr<Session> session = *found;
  const PromptFormat format = session->settings().prompt_format;
  if (absl::Status s = input.Validate(options_, tokenizer_.vocab_size(), format); !s.ok()) {
    return fail(s);
  }
  std::vector<int32_t> prompt = PromptIds(*session, input);
  if (static_cast<int64_t>(prompt.size()) > options_.max_segment_tokens) {
    return fail(absl::ResourceExhaustedError(
        absl::StrCat("prompt is ", prompt.size(), " tokens, over the server's ",
                     "max_segment_tokens of ", options_.max_segment_tokens)));
  }
  if (!input.has_seed) input.sampling.seed = RandomSeed();

  // Detokenization and stop strings run on the engine thread, token by token.
  auto stream = std::make_shared<AnswerStream>(&tokenizer_, input.stop, callbacks.on_chunk);
  GenerateJob job;
  job.session = session;
  job.prompt = std::move(prompt);
  job.sampling = input.sampling;
  job.max_tokens = input.max_tokens ? input.max_tokens : options_.default_max_tokens;
  job.stop_tokens = tokenizer_.eog_ids();
  job.persist = input.persist;
  job.deadline = input.deadline;
  job.on_token = [stream](int32_t token) { return stream->Push(token); };
  if (input.persist && format == PromptFormat::kChat) {
    job.persist_suffix = [this](FinishReason reason) { return chat_->AfterAnswer(reason); };
  }
  session->BeginUse();
  const bool durable_turn = store_ && input.persist;
  job.done = [this, session, stream, persist = input.persist,
              done = std::move(callbacks.done)](absl::StatusOr<GenerateResult> r) {
    session->EndUse(manager_.Now());
    if (!r.ok()) return done(r.status());
    stream->Finish();
    if (persist) session->set_user_turn_start(r->session_tokens);
    GenerateSummary summary;
    summary.result = *r;
    summary.stop_string = stream->stop_string();
    done(summary);
  };
  if (durable_turn) return GenerateDurable(std::move(job));
  return scheduler_->SubmitGenerate(std::move(job));
}

// ---------------------------------------------------------------- score

std::shared_ptr<WorkHandle> Engine::Score(const std::string& tenant, const std::string& id,
                                          ScoreInput input,
                                          std::function<void(absl::StatusOr<ScoreOutput>)> done) {
  auto fail = [&](absl::Status s) -> std::shared_ptr<WorkHandle> {
    done(std::move(s));
    return nullptr;
  };
  auto found = Lookup(tenant, id);
  if (!found.ok()) return fail(found.status());
  std::shared_ptr<Session> session = *found;
  if (input.has_tokens ? input.tokens.empty() : input.text.empty()) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "continuation is empty: ", input.has_tokens ? "tokens" : "text", " must not be empty")));
  }
  auto ids = TokenizeInput("continuation", input.has_tokens, input.text, input.tokens,
                           input.parse_special, tokenizer_, options_);
  if (!ids.ok()) return fail(ids.status());
  session->BeginUse();
  ScoreJob job;
  job.session = session;
  job.tokens = *ids;
  job.deadline = input.deadline;
  job.done = [this, session, ids = *ids, done = std::move(done)](absl::StatusOr<ScoreResult> r) {
    session->EndUse(manager_.Now());
    if (!r.ok()) return done(r.status());
    ScoreOutput out;
    out.ids = ids;
    out.logprobs = std::move(r->logprobs);
    for (float lp : out.logprobs) {
      if (std::isnan(lp)) continue;
      out.logprob += lp;
      ++out.scored_tokens;
    }
    out.perplexity = out.scored_tokens ? std::exp(-out.logprob / out.scored_tokens) : 0.0;
    out.session_tokens = r->session_tokens;
    done(std::move(out));
  };
  return scheduler_->SubmitScore(std::move(job));
}

}  // namespace longctx

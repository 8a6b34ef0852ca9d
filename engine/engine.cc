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
  ASSIGN_OR_RETURN(LoadedModel loaded,
                   LoadModel(config.model, config.backend, config.options.kv, /*keep_host=*/true));
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
  engine->backend_ = std::move(loaded.backend);
  engine->leader_model_ = std::move(loaded.model);  // null without a group
  engine->group_ = std::move(leader);
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
}

void Engine::ReapLoop() {
  while (!stop_reaper_.WaitForNotificationWithTimeout(options_.expiry_interval)) {
    for (auto& s : manager_.ExpireIdle()) scheduler_->Release(std::move(s));
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
                          const std::function<void(Session&)>& prepare,
                          std::function<void(absl::StatusOr<SessionInfo>)> done) {
  auto created = manager_.Create(tenant, id, std::move(settings));
  if (!created.ok()) return done(created.status());
  std::shared_ptr<Session> session = *created;
  if (prepare) prepare(*session);
  if (initial.empty()) return done(session->Info());
  const int64_t n = static_cast<int64_t>(initial.size());
  if (absl::Status s = session->Reserve(n); !s.ok()) {
    if (manager_.Delete(tenant, session->id()).ok()) scheduler_->Release(session);
    return done(s);
  }
  session->BeginUse();
  IngestJob job;
  job.session = session;
  job.tokens = std::move(initial);
  job.done = [this, session, n, tenant, done = std::move(done)](absl::StatusOr<int64_t> r) {
    session->EndUse(manager_.Now());
    if (!r.ok()) {
      session->Unreserve(n);
      if (manager_.Delete(tenant, session->id()).ok()) scheduler_->Release(session);
      return done(r.status());
    }
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
  StartSession(
      tenant, request.id, std::move(*settings), std::move(prefix),
      [turn](Session& s) { s.set_user_turn_start(turn); }, std::move(done));
}

absl::StatusOr<std::shared_ptr<Session>> Engine::FindSession(const std::string& tenant,
                                                             const std::string& id) {
  return manager_.Get(tenant, id);
}

absl::StatusOr<SessionInfo> Engine::GetSession(const std::string& tenant, const std::string& id) {
  ASSIGN_OR_RETURN(std::shared_ptr<Session> s, manager_.Get(tenant, id));
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
  ASSIGN_OR_RETURN(std::shared_ptr<Session> s, manager_.Delete(tenant, id));
  scheduler_->Release(std::move(s));
  return absl::OkStatus();
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
  const int64_t n = static_cast<int64_t>(ids->size());
  IngestAck ack;
  auto claim = session->ClaimSegment(input.seq, n, &ack);
  if (absl::IsResourceExhausted(claim.status()) && !session->settings().windowed()) {
    stats_.infini_rejections_total.fetch_add(1);
  }
  if (!claim.ok()) return fail(claim.status());
  if (*claim == Session::SegmentClaim::kDuplicate) {
    done(ack);
    return nullptr;
  }
  if (*claim == Session::SegmentClaim::kInFlight) {
    AckResend(session, input.seq, std::move(done));
    return nullptr;
  }
  session->BeginUse();
  IngestJob job;
  job.session = session;
  job.seq = input.seq;
  job.tokens = std::move(*ids);
  job.deadline = input.deadline;
  job.done = [this, session, seq = input.seq, n,
              done = std::move(done)](absl::StatusOr<int64_t> r) {
    session->EndUse(manager_.Now());
    if (!r.ok()) {
      session->FailSegment(seq, n);
      return done(r.status());
    }
    IngestAck a;
    a.seq = seq;
    a.tokens_ingested = n;
    a.session_tokens = *r;
    session->CompleteSegment(a);
    done(a);
  };
  return scheduler_->SubmitIngest(std::move(job));
}

void Engine::AckResend(const std::shared_ptr<Session>& session, int64_t seq,
                       std::function<void(absl::StatusOr<IngestAck>)> done) {
  // Queued after the first copy, so it runs once that one is done.
  ReadJob job;
  job.session = session;
  job.fn = [session, seq, done = std::move(done)](absl::Status st, const SessionEngineState*) {
    IngestAck again;
    if (!st.ok()) return done(st);
    if (session->LookupAck(seq, &again)) return done(again);
    done(absl::AbortedError(absl::StrCat(
        "segment ", seq, " failed before its resend could be acknowledged; resend it")));
  };
  scheduler_->SubmitRead(std::move(job));
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
  auto found = manager_.Get(tenant, id);
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
  auto found = manager_.Get(tenant, id);
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

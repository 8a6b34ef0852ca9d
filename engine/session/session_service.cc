#include "engine/session/session_service.h"

#include <cmath>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/model/llama_model.h"
#include "engine/session/session_codec.h"
#include "engine/session/stop_matcher.h"
#include "engine/tokenizer/stream_decoder.h"
#include "engine/tokenizer/unicode.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

constexpr int kMaxLabels = 32;
constexpr size_t kMaxLabelBytes = 256;
constexpr size_t kMaxStops = 8;
constexpr size_t kMaxStopBytes = 256;
constexpr float kMaxTemperature = 100.f;

// Placeholders cut out of formatted chat templates to find their pieces.
constexpr char kSystemMark[] = "\x1e\x1fsystem\x1f\x1e";
constexpr char kUserMark[] = "\x1e\x1fuser\x1f\x1e";
constexpr char kAnswerMark[] =
    "\x1e\x1f"
    "answer\x1f\x1e";
constexpr char kNextMark[] = "\x1e\x1fnext\x1f\x1e";

uint64_t RandomSeed() {
  static std::random_device rd;
  static absl::Mutex mu(absl::kConstInit);
  absl::MutexLock lock(&mu);
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

ModelFingerprint Fingerprint(const ModelConfig& config, const Tokenizer& tok) {
  ModelFingerprint f;
  f.name = config.name;
  f.vocab_size = tok.vocab_size();
  f.n_layers = config.n_layers;
  f.d_model = config.d_model;
  uint64_t h = Fnv1a64("");
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    h = Fnv1a64(tok.TokenPiece(id), h);
    h = Fnv1a64(absl::string_view("\0", 1), h);
  }
  f.vocab_hash = h;
  return f;
}

// Splits `text` at each of `marks` in order.
std::vector<std::string> SplitAt(const std::string& text, const std::vector<std::string>& marks) {
  std::vector<std::string> parts;
  size_t from = 0;
  for (const std::string& m : marks) {
    const size_t at = text.find(m, from);
    if (at == std::string::npos) return {};
    parts.push_back(text.substr(from, at - from));
    from = at + m.size();
  }
  parts.push_back(text.substr(from));
  return parts;
}

}  // namespace

absl::Status ValidateUtf8(const std::string& field, absl::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    uint32_t cp = 0;
    const size_t n = DecodeUtf8(text, pos, &cp);
    if (cp == kInvalidCodepoint) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, " is not valid UTF-8 (bad byte at offset ", pos, ")"));
    }
    pos += n;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SessionService>> SessionService::Create(const HostModel& host,
                                                                       Backend* backend,
                                                                       EngineOptions options) {
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model,
                   LlamaModel::Create(host, backend, options.kv));
  return CreateWithModel(host, std::make_unique<LlamaStepModel>(std::move(model)),
                         backend->Name(), std::move(options));
}

absl::StatusOr<std::unique_ptr<SessionService>> SessionService::CreateWithModel(
    const HostModel& host, std::unique_ptr<StepModel> model, std::string backend_name,
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
  return std::make_unique<SessionService>(std::move(model), std::move(tokenizer), std::move(chat),
                                          host.config, std::move(backend_name),
                                          std::move(options));
}

SessionService::SessionService(std::unique_ptr<StepModel> model, Tokenizer tokenizer,
                               std::optional<ChatTemplate> chat, ModelConfig config,
                               std::string backend_name, EngineOptions options)
    : options_(std::move(options)),
      model_(std::move(model)),
      tokenizer_(std::move(tokenizer)),
      chat_(std::move(chat)),
      manager_(options_.sessions) {
  if (chat_) {
    // [system_open] S [user_open] D [assistant_open] A [next_user] N ...
    const std::vector<ChatMessage> conv = {{"system", kSystemMark},
                                           {"user", kUserMark},
                                           {"assistant", kAnswerMark},
                                           {"user", kNextMark}};
    const auto parts = SplitAt(FormatChat(conv, /*add_generation_prompt=*/false, *chat_),
                               {kSystemMark, kUserMark, kAnswerMark, kNextMark});
    const auto gen = SplitAt(FormatChat(std::vector<ChatMessage>(conv.begin(), conv.begin() + 2),
                                        /*add_generation_prompt=*/true, *chat_),
                             {kSystemMark, kUserMark});
    if (parts.size() == 5 && gen.size() == 3) {
      chat_system_open_ = tokenizer_.Encode(parts[0], /*parse_special=*/true);
      chat_user_open_ = tokenizer_.Encode(parts[1], true);
      chat_assistant_open_ = tokenizer_.Encode(gen[2], true);
      chat_next_user_ = tokenizer_.Encode(parts[3], true);
    } else {
      chat_.reset();  // a template we cannot cut into pieces: RAW only
    }
  }
  info_.model = std::move(config);
  info_.backend = std::move(backend_name);
  info_.chat_template = chat_ ? "chatml" : "none";
  KvCache& kv = model_->kv_cache();
  info_.block_size = kv.geometry().block_size;
  info_.total_blocks = kv.total_blocks();
  info_.bytes_per_token = kv.BytesPerBlock() / kv.geometry().block_size;
  info_.memory_mixing = model_->has_infini_gates();
  SessionRequest defaults;
  if (auto s = Resolve(defaults); s.ok()) info_.default_attention = s->attention;
  scheduler_ = std::make_unique<Scheduler>(model_.get(), options_.scheduler, &stats_);
  reaper_ = std::thread([this] { ReapLoop(); });
}

SessionService::~SessionService() { Shutdown(); }

void SessionService::Shutdown() {
  if (!stop_reaper_.HasBeenNotified()) stop_reaper_.Notify();
  if (reaper_.joinable()) reaper_.join();
  scheduler_->Stop();
}

void SessionService::ReapLoop() {
  while (!stop_reaper_.WaitForNotificationWithTimeout(options_.expiry_interval)) {
    for (auto& s : manager_.ExpireIdle()) scheduler_->Release(std::move(s));
  }
}

absl::StatusOr<SessionSettings> SessionService::Resolve(const SessionRequest& r) const {
  SessionSettings s;
  if (static_cast<int>(r.labels.size()) > kMaxLabels) {
    return absl::InvalidArgumentError(
        absl::StrCat("labels: at most ", kMaxLabels, " (got ", r.labels.size(), ")"));
  }
  for (const auto& [k, v] : r.labels) {
    if (k.empty() || k.size() > kMaxLabelBytes || v.size() > kMaxLabelBytes) {
      return absl::InvalidArgumentError(absl::StrCat("labels: keys must be 1 to ", kMaxLabelBytes,
                                                     " bytes and values at most ", kMaxLabelBytes,
                                                     " bytes"));
    }
  }
  s.labels = r.labels;

  s.ttl = r.ttl.value_or(options_.default_ttl);
  if (s.ttl <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ttl must be positive");
  }
  if (s.ttl > options_.max_ttl) {
    return absl::InvalidArgumentError(absl::StrCat("ttl ", absl::FormatDuration(s.ttl),
                                                   " is over the server's max_ttl of ",
                                                   absl::FormatDuration(options_.max_ttl)));
  }

  // Attention: the model's defaults, then the server's, then the request's.
  auto dca = DcaConfig::Resolve(info_.model, options_.dca_defaults.Then(r.attention));
  if (!dca.ok())
    return absl::InvalidArgumentError(absl::StrCat("attention: ", dca.status().message()));
  if (absl::Status v = dca->Validate(model_->kv_cache().geometry().block_size); !v.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("attention: ", v.message()));
  }
  s.attention = *dca;

  s.overflow = r.overflow;
  if (r.window_tokens < 0) {
    return absl::InvalidArgumentError("memory.window_tokens must not be negative");
  }
  if (s.windowed() && r.window_tokens == 0) {
    return absl::InvalidArgumentError(
        "memory.window_tokens is required with SLIDE and COMPRESS (a multiple of the DCA "
        "chunk length)");
  }
  s.window_tokens = r.window_tokens ? r.window_tokens : options_.max_session_tokens;
  if (s.window_tokens > options_.max_session_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("memory.window_tokens ", s.window_tokens,
                                                   " is over the server's max_session_tokens of ",
                                                   options_.max_session_tokens));
  }
  if (!s.windowed()) {
    if (r.sink_tokens != 0) {
      return absl::InvalidArgumentError("memory.sink_tokens applies only to SLIDE and COMPRESS");
    }
    s.max_tokens = s.window_tokens;
  } else {
    // The Infini window (DESIGN §4): W a multiple of L, sinks whole KV blocks.
    s.sink_tokens = r.sink_tokens;
    if (s.sink_tokens < 0 || s.sink_tokens > s.window_tokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("memory.sink_tokens ", s.sink_tokens, " must be in [0, window_tokens]"));
    }
    const absl::Status v = s.ToInfiniConfig(false).Validate(
        s.attention.ToParams(info_.model.head_dim, 1), model_->kv_cache().geometry().block_size);
    if (!v.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("memory: ", v.message(), " (window_tokens ", s.window_tokens,
                       ", sink_tokens ", s.sink_tokens, ", attention chunk_len ",
                       s.attention.ToParams(info_.model.head_dim, 1).chunk_len, ")"));
    }
    s.max_tokens = options_.max_windowed_session_tokens;
  }

  s.prompt_format = r.prompt_format.value_or(chat_ ? PromptFormat::kChat : PromptFormat::kRaw);
  if (s.prompt_format == PromptFormat::kChat && !chat_) {
    return absl::FailedPreconditionError(
        "prompt_format CHAT: the model has no supported chat template; use RAW");
  }
  if (!r.system_prompt.empty() && s.prompt_format != PromptFormat::kChat) {
    return absl::InvalidArgumentError("system_prompt applies only to CHAT sessions");
  }
  if (static_cast<int64_t>(r.system_prompt.size()) > options_.max_segment_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "system_prompt is ", r.system_prompt.size(),
        " bytes, over the server's max_segment_bytes of ", options_.max_segment_bytes));
  }
  RETURN_IF_ERROR(ValidateUtf8("system_prompt", r.system_prompt));
  s.system_prompt = r.system_prompt;
  return s;
}

std::vector<int32_t> SessionService::ChatPrefix(const SessionSettings& settings) const {
  std::vector<int32_t> out;
  if (settings.prompt_format != PromptFormat::kChat) return out;
  const std::string& system =
      settings.system_prompt.empty() ? chat_->default_system_prompt : settings.system_prompt;
  out = chat_system_open_;
  const auto sys = tokenizer_.Encode(system, /*parse_special=*/false);
  out.insert(out.end(), sys.begin(), sys.end());
  out.insert(out.end(), chat_user_open_.begin(), chat_user_open_.end());
  return out;
}

absl::StatusOr<std::vector<int32_t>> SessionService::Tokenize(const std::string& field,
                                                              bool has_tokens,
                                                              const std::string& text,
                                                              const std::vector<int32_t>& tokens,
                                                              bool parse_special) const {
  std::vector<int32_t> ids;
  if (has_tokens) {
    const int32_t v = tokenizer_.vocab_size();
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] < 0 || tokens[i] >= v) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".tokens.ids[", i, "] = ", tokens[i],
                                                       " is outside the vocabulary [0, ", v, ")"));
      }
    }
    ids = tokens;
  } else {
    if (static_cast<int64_t>(text.size()) > options_.max_segment_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          field, ".text is ", text.size(), " bytes, over the server's max_segment_bytes of ",
          options_.max_segment_bytes));
    }
    RETURN_IF_ERROR(ValidateUtf8(absl::StrCat(field, ".text"), text));
    ids = tokenizer_.Encode(text, parse_special);
  }
  if (static_cast<int64_t>(ids.size()) > options_.max_segment_tokens) {
    return absl::ResourceExhaustedError(
        absl::StrCat(field, " is ", ids.size(), " tokens, over the server's max_segment_tokens of ",
                     options_.max_segment_tokens));
  }
  return ids;
}

// ---------------------------------------------------------------- lifecycle

void SessionService::StartSession(const std::string& tenant, const std::string& id,
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

void SessionService::CreateSession(const std::string& tenant, const SessionRequest& request,
                                   std::function<void(absl::StatusOr<SessionInfo>)> done) {
  auto settings = Resolve(request);
  if (!settings.ok()) return done(settings.status());
  std::vector<int32_t> prefix = ChatPrefix(*settings);
  const int64_t turn = static_cast<int64_t>(prefix.size());
  StartSession(
      tenant, request.id, std::move(*settings), std::move(prefix),
      [turn](Session& s) { s.set_user_turn_start(turn); }, std::move(done));
}

absl::StatusOr<std::shared_ptr<Session>> SessionService::FindSession(const std::string& tenant,
                                                                     const std::string& id) {
  return manager_.Get(tenant, id);
}

absl::StatusOr<SessionInfo> SessionService::GetSession(const std::string& tenant,
                                                       const std::string& id) {
  ASSIGN_OR_RETURN(std::shared_ptr<Session> s, manager_.Get(tenant, id));
  return s->Info();
}

absl::StatusOr<SessionService::ListResult> SessionService::ListSessions(
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

absl::Status SessionService::DeleteSession(const std::string& tenant, const std::string& id) {
  ASSIGN_OR_RETURN(std::shared_ptr<Session> s, manager_.Delete(tenant, id));
  scheduler_->Release(std::move(s));
  return absl::OkStatus();
}

// ---------------------------------------------------------------- ingest

std::shared_ptr<WorkHandle> SessionService::Ingest(
    const std::shared_ptr<Session>& session, SegmentInput input,
    std::function<void(absl::StatusOr<IngestAck>)> done) {
  if (input.has_tokens ? input.tokens.empty() : input.text.empty()) {
    done(absl::InvalidArgumentError(absl::StrCat("segment ", input.seq, " is empty: segment.",
                                                 input.has_tokens ? "tokens" : "text",
                                                 " must not be empty")));
    return nullptr;
  }
  auto ids = Tokenize("segment", input.has_tokens, input.text, input.tokens, input.parse_special);
  if (!ids.ok()) {
    done(ids.status());
    return nullptr;
  }
  if (ids->empty()) {
    done(absl::InvalidArgumentError(
        absl::StrCat("segment ", input.seq, " has no tokens after tokenization")));
    return nullptr;
  }
  const int64_t n = static_cast<int64_t>(ids->size());
  IngestAck ack;
  auto claim = session->ClaimSegment(input.seq, n, &ack);
  if (absl::IsResourceExhausted(claim.status()) && !session->settings().windowed()) {
    stats_.infini_rejections_total.fetch_add(1);
  }
  if (!claim.ok()) {
    done(claim.status());
    return nullptr;
  }
  if (*claim == Session::SegmentClaim::kDuplicate) {
    done(ack);
    return nullptr;
  }
  if (*claim == Session::SegmentClaim::kInFlight) {
    // Re-acknowledge once the first copy (queued before this) is done.
    ReadJob job;
    job.session = session;
    job.fn = [session, seq = input.seq, done = std::move(done)](absl::Status st,
                                                                const SessionEngineState*) {
      IngestAck again;
      if (!st.ok()) return done(st);
      if (session->LookupAck(seq, &again)) return done(again);
      done(absl::AbortedError(absl::StrCat("segment ", seq,
                                           " failed before its resend could be acknowledged; "
                                           "resend it")));
    };
    scheduler_->SubmitRead(std::move(job));
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

// ---------------------------------------------------------------- generate

std::shared_ptr<WorkHandle> SessionService::Generate(const std::string& tenant,
                                                     const std::string& id, GenerateInput input,
                                                     GenerateCallbacks callbacks) {
  auto fail = [&](absl::Status s) -> std::shared_ptr<WorkHandle> {
    callbacks.done(std::move(s));
    return nullptr;
  };
  auto found = manager_.Get(tenant, id);
  if (!found.ok()) return fail(found.status());
  std::shared_ptr<Session> session = *found;
  const SessionSettings& settings = session->settings();

  // Validation, field by field.
  SamplingParams& sp = input.sampling;
  if (!std::isfinite(sp.temperature) || sp.temperature < 0 || sp.temperature > kMaxTemperature) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "sampling.temperature must be in [0, ", kMaxTemperature, "] (got ", sp.temperature, ")")));
  }
  if (sp.top_k < 0 || sp.top_k > tokenizer_.vocab_size()) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "sampling.top_k must be in [0, ", tokenizer_.vocab_size(), "] (got ", sp.top_k, ")")));
  }
  if (!(sp.top_p > 0.f && sp.top_p <= 1.f)) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("sampling.top_p must be in (0, 1] (got ", sp.top_p, ")")));
  }
  if (!(sp.repetition_penalty > 0.f && sp.repetition_penalty <= kMaxRepetitionPenalty)) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("sampling.repetition_penalty must be in (0, ", kMaxRepetitionPenalty,
                     "] (got ", sp.repetition_penalty, ")")));
  }
  if (absl::Status s = sp.Validate(); !s.ok()) {
    return fail(absl::InvalidArgumentError(absl::StrCat("sampling: ", s.message())));
  }
  if (!input.has_seed) sp.seed = RandomSeed();
  if (input.max_tokens < 0) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("max_tokens must not be negative (got ", input.max_tokens, ")")));
  }
  if (input.max_tokens > options_.max_generate_tokens) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "max_tokens ", input.max_tokens, " is over the server's max_generate_tokens of ",
        options_.max_generate_tokens)));
  }
  const int max_tokens = input.max_tokens ? input.max_tokens : options_.default_max_tokens;
  if (input.stop.size() > kMaxStops) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("stop: at most ", kMaxStops, " strings (got ", input.stop.size(), ")")));
  }
  for (size_t i = 0; i < input.stop.size(); ++i) {
    if (input.stop[i].empty() || input.stop[i].size() > kMaxStopBytes) {
      return fail(absl::InvalidArgumentError(
          absl::StrCat("stop[", i, "] must be 1 to ", kMaxStopBytes, " bytes")));
    }
  }
  if (settings.prompt_format == PromptFormat::kChat && input.prompt.empty()) {
    return fail(absl::InvalidArgumentError("prompt is required for CHAT sessions"));
  }
  if (static_cast<int64_t>(input.prompt.size()) > options_.max_segment_bytes) {
    return fail(absl::ResourceExhaustedError(
        absl::StrCat("prompt is ", input.prompt.size(), " bytes, over the server's ",
                     "max_segment_bytes of ", options_.max_segment_bytes)));
  }
  if (absl::Status s = ValidateUtf8("prompt", input.prompt); !s.ok()) return fail(s);

  std::vector<int32_t> prompt;
  if (settings.prompt_format == PromptFormat::kChat) {
    const bool has_document = session->tokens() > session->user_turn_start();
    prompt = tokenizer_.Encode(has_document ? absl::StrCat("\n\n", input.prompt) : input.prompt,
                               input.parse_special);
    prompt.insert(prompt.end(), chat_assistant_open_.begin(), chat_assistant_open_.end());
  } else {
    prompt = tokenizer_.Encode(input.prompt, input.parse_special);
  }
  if (static_cast<int64_t>(prompt.size()) > options_.max_segment_tokens) {
    return fail(absl::ResourceExhaustedError(
        absl::StrCat("prompt is ", prompt.size(), " tokens, over the server's ",
                     "max_segment_tokens of ", options_.max_segment_tokens)));
  }

  // Detokenization and stop strings run on the engine thread, token by token.
  struct Stream {
    Stream(const Tokenizer* t, std::vector<std::string> stops)
        : decoder(t, /*skip_special=*/true), matcher(std::move(stops)) {}
    StreamDecoder decoder;
    StopMatcher matcher;
    std::vector<int32_t> ids;  // sampled, not yet sent
    std::string stop_string;
  };
  auto stream = std::make_shared<Stream>(&tokenizer_, input.stop);
  auto on_chunk = callbacks.on_chunk;

  GenerateJob job;
  job.session = session;
  job.prompt = std::move(prompt);
  job.sampling = sp;
  job.max_tokens = max_tokens;
  job.stop_tokens = tokenizer_.eog_ids();
  job.persist = input.persist;
  job.deadline = input.deadline;
  job.on_token = [stream, on_chunk](int32_t token) {
    stream->ids.push_back(token);
    StopMatcher::Result r = stream->matcher.Push(stream->decoder.Feed(token));
    if (r.matched) {
      stream->stop_string = *r.matched;
      on_chunk(std::move(r.emit), std::move(stream->ids));
      stream->ids.clear();
      return false;
    }
    if (!r.emit.empty()) {
      on_chunk(std::move(r.emit), std::move(stream->ids));
      stream->ids.clear();
    }
    return true;
  };
  if (input.persist && settings.prompt_format == PromptFormat::kChat) {
    job.persist_suffix = [this](FinishReason reason) {
      std::vector<int32_t> suffix = chat_next_user_;
      // A turn that ended with its end token already has it.
      if (reason == FinishReason::kStop && !suffix.empty() && tokenizer_.IsEog(suffix.front())) {
        suffix.erase(suffix.begin());
      }
      return suffix;
    };
  }
  session->BeginUse();
  job.done = [this, session, stream, on_chunk, persist = input.persist,
              done = std::move(callbacks.done)](absl::StatusOr<GenerateResult> r) {
    session->EndUse(manager_.Now());
    if (!r.ok()) return done(r.status());
    if (stream->stop_string.empty()) {
      std::string tail = stream->matcher.Push(stream->decoder.Flush()).emit;
      tail += stream->matcher.Flush();
      if (!tail.empty() || !stream->ids.empty()) on_chunk(std::move(tail), std::move(stream->ids));
    }
    if (persist) session->set_user_turn_start(r->session_tokens);
    GenerateSummary summary;
    summary.result = *r;
    summary.stop_string = stream->stop_string;
    done(summary);
  };
  return scheduler_->SubmitGenerate(std::move(job));
}

// ---------------------------------------------------------------- score

std::shared_ptr<WorkHandle> SessionService::Score(
    const std::string& tenant, const std::string& id, ScoreInput input,
    std::function<void(absl::StatusOr<ScoreOutput>)> done) {
  auto found = manager_.Get(tenant, id);
  if (!found.ok()) {
    done(found.status());
    return nullptr;
  }
  std::shared_ptr<Session> session = *found;
  if (input.has_tokens ? input.tokens.empty() : input.text.empty()) {
    done(absl::InvalidArgumentError(absl::StrCat(
        "continuation is empty: ", input.has_tokens ? "tokens" : "text", " must not be empty")));
    return nullptr;
  }
  auto ids =
      Tokenize("continuation", input.has_tokens, input.text, input.tokens, input.parse_special);
  if (!ids.ok()) {
    done(ids.status());
    return nullptr;
  }
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

// ---------------------------------------------------------------- export/import

void SessionService::Export(const std::string& tenant, const std::string& id,
                            std::function<void(absl::StatusOr<std::string>)> done) {
  auto found = manager_.Get(tenant, id);
  if (!found.ok()) return done(found.status());
  std::shared_ptr<Session> session = *found;
  const absl::Time start = absl::Now();
  session->BeginUse();
  ReadJob job;
  job.session = session;
  job.fn = [this, session, start, done = std::move(done)](absl::Status st,
                                                          const SessionEngineState* state) {
    session->EndUse(manager_.Now());
    if (!st.ok()) return done(st);
    SessionSnapshot snap;
    snap.model = Fingerprint(info_.model, tokenizer_);
    snap.settings = session->settings();
    const SessionInfo info = session->Info();
    snap.applied_seq = info.next_seq - 1;
    snap.segments = info.segments;
    snap.ingested_tokens = info.ingested_tokens;
    snap.user_turn_start = session->user_turn_start();
    snap.tokens = state->log;
    if (state->resume) {
      // Rebuilt after a rollback, not yet re-prefilled: its restore point.
      snap.evicted_end = state->resume->evicted_end;
      if (state->resume->memory) snap.memory = state->resume->memory->Serialize();
    } else if (state->window) {
      snap.evicted_end = state->window->evicted_end();
      if (const InfiniMemory* m = state->window->memory()) snap.memory = m->Serialize();
    }
    std::string bytes = EncodeSessionSnapshot(snap);
    stats_.export_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - start));
    done(std::move(bytes));
  };
  scheduler_->SubmitRead(std::move(job));
}

void SessionService::Import(const std::string& tenant, ImportInput input,
                            std::function<void(absl::StatusOr<SessionInfo>)> done) {
  const absl::Time start = absl::Now();
  auto snap = DecodeSessionSnapshot(input.data);
  if (!snap.ok()) return done(snap.status());
  if (!(snap->model == Fingerprint(info_.model, tokenizer_))) {
    return done(absl::FailedPreconditionError(
        absl::StrCat("the session was exported from model '", snap->model.name,
                     "', which is not the model this server serves ('", info_.model.name, "')")));
  }
  SessionSettings settings = snap->settings;
  if (!input.labels.empty()) settings.labels = input.labels;
  // The exported settings must be valid here too (limits may differ).
  SessionRequest check;
  check.labels = settings.labels;
  check.ttl = std::min(settings.ttl, options_.max_ttl);
  check.attention.mode = settings.attention.mode;
  check.attention.pretrain_len = settings.attention.pretrain_len;
  check.attention.chunk_size = settings.attention.chunk_size;
  check.attention.local_window = settings.attention.local_window;
  check.attention.length_temperature = settings.attention.length_temperature;
  check.attention.compose_rope_scaling = settings.attention.compose_rope_scaling;
  check.window_tokens = settings.window_tokens;
  check.sink_tokens = settings.sink_tokens;
  check.overflow = settings.overflow;
  check.prompt_format = settings.prompt_format;
  check.system_prompt = settings.system_prompt;
  auto resolved = Resolve(check);
  if (!resolved.ok()) return done(resolved.status());
  if (static_cast<int64_t>(snap->tokens.size()) > resolved->max_tokens) {
    return done(absl::ResourceExhaustedError(absl::StrCat("the session holds ", snap->tokens.size(),
                                                          " tokens, over this server's ",
                                                          "limit of ", resolved->max_tokens)));
  }
  // The Infini window's restore point; the engine checks it against the model.
  std::optional<SessionEngineState::Resume> resume;
  if (resolved->windowed()) {
    resume.emplace();
    resume->evicted_end = static_cast<int>(snap->evicted_end);
    const bool compress = resolved->overflow == OverflowPolicy::kCompress;
    if (compress != !snap->memory.empty()) {
      return done(absl::InvalidArgumentError(
          compress ? "session data: a COMPRESS session without its Infini memory"
                   : "session data: an Infini memory in a session that keeps none"));
    }
    if (compress) {
      auto memory = InfiniMemory::Deserialize(snap->memory);
      if (!memory.ok()) {
        return done(absl::InvalidArgumentError(
            absl::StrCat("session data: Infini memory: ", memory.status().message())));
      }
      resume->memory = *std::move(memory);
    }
  } else if (snap->evicted_end != 0 || !snap->memory.empty()) {
    return done(
        absl::InvalidArgumentError("session data: an Infini window state in a REJECT session"));
  }
  for (int32_t t : snap->tokens) {
    if (t < 0 || t >= tokenizer_.vocab_size()) {
      return done(absl::InvalidArgumentError("session data holds a token outside the vocabulary"));
    }
  }
  const SessionSnapshot& restore = *snap;
  auto prepare = [&restore, &resume](Session& s) {
    s.RestoreIngestState(restore.applied_seq, restore.segments, restore.ingested_tokens);
    s.set_user_turn_start(restore.user_turn_start);
    // No job has reached the engine for this new session yet: queuing the
    // first one publishes this to the engine thread.
    if (resume) s.engine_state().resume = std::move(resume);
  };
  StartSession(tenant, input.id, std::move(*resolved), std::move(snap->tokens), prepare,
               [this, start, done = std::move(done)](absl::StatusOr<SessionInfo> info) {
                 if (info.ok()) {
                   stats_.import_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - start));
                 }
                 done(std::move(info));
               });
}

}  // namespace longctx

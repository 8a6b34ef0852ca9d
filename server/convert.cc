#include "server/convert.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"

namespace longctx::server {

void ToProto(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t ns = absl::ToUnixNanos(t);
  out->set_seconds(ns / 1'000'000'000);
  out->set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
}

void ToProto(absl::Duration d, google::protobuf::Duration* out) {
  const int64_t ns = absl::ToInt64Nanoseconds(d);
  out->set_seconds(ns / 1'000'000'000);
  out->set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
}

absl::StatusOr<absl::Duration> FromProto(const google::protobuf::Duration& d, const char* field) {
  if (d.nanos() <= -1'000'000'000 || d.nanos() >= 1'000'000'000 ||
      (d.seconds() > 0 && d.nanos() < 0) || (d.seconds() < 0 && d.nanos() > 0) ||
      d.seconds() > 315'576'000'000 || d.seconds() < -315'576'000'000) {
    return absl::InvalidArgumentError(absl::StrCat(field, " is not a valid duration"));
  }
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

// ---------------------------------------------------------------- server info

void ToProto(const DcaConfig& a, v1::AttentionConfig* out) {
  out->set_mode(a.mode == DcaMode::kDca ? v1::ATTENTION_MODE_DCA : v1::ATTENTION_MODE_ROPE);
  out->set_pretrain_length(a.pretrain_len);
  out->set_chunk_size(a.chunk_size);
  out->set_local_window(a.local_window);
  out->set_length_temperature(a.length_temperature);
}

void ToProto(const ServerConfig& c, v1::Limits* out) {
  out->set_max_message_bytes(c.max_message_bytes);
  out->set_max_segment_bytes(c.max_segment_bytes);
  out->set_max_segment_tokens(c.max_segment_tokens);
  out->set_max_session_tokens(c.max_session_tokens);
  out->set_max_sessions(c.max_sessions);
  out->set_max_sessions_per_tenant(c.max_sessions_per_tenant);
  out->set_max_concurrent_streams(c.max_concurrent_streams);
  out->set_max_generate_tokens(c.max_generate_tokens);
  ToProto(c.session_ttl, out->mutable_default_ttl());
  ToProto(c.max_session_ttl, out->mutable_max_ttl());
}

namespace {

// `path`: the model's file name, not where the server keeps it.
void ToProto(const EngineInfo& e, const std::string& path, v1::ModelInfo* out) {
  out->set_name(e.model.name);
  out->set_architecture(e.model.architecture);
  const size_t slash = path.find_last_of('/');
  out->set_path(slash == std::string::npos ? path : path.substr(slash + 1));
  out->set_n_layers(e.model.n_layers);
  out->set_d_model(e.model.d_model);
  out->set_n_heads(e.model.n_heads);
  out->set_n_kv_heads(e.model.n_kv_heads);
  out->set_head_dim(e.model.head_dim);
  out->set_vocab_size(e.model.vocab_size);
  out->set_context_length(e.model.context_length);
  out->set_rope_theta(e.model.rope_theta);
  out->set_chat_template(e.chat_template);
}

}  // namespace

void ToProto(const Engine& engine, const ServerConfig& config, const BuildInfo& build,
             bool auth_required, absl::Time start_time, v1::ServerInfo* out) {
  const EngineInfo& e = engine.info();
  out->set_version(build.version);
  out->set_git_commit(build.git_commit);
  out->set_build_type(build.build_type);
  out->set_backend(e.backend);
  ToProto(e, config.model, out->mutable_model());
  ToProto(e.default_attention, out->mutable_default_attention());
  ToProto(config, out->mutable_limits());
  v1::KvCacheInfo* kv = out->mutable_kv_cache();
  kv->set_block_size(e.block_size);
  kv->set_total_blocks(e.total_blocks);
  const EngineStats& st = engine.stats();
  kv->set_free_blocks(st.kv_blocks_total.load() - st.kv_blocks_used.load());
  kv->set_bytes_per_token(e.bytes_per_token);
  out->set_prefill_budget_tokens(engine.options().scheduler.prefill_budget);
  out->set_memory_mixing(e.memory_mixing);
  out->set_infini_gates(e.infini_gates);
  out->set_auth_required(auth_required);
  out->set_replica_id(config.replica_id);
  ToProto(start_time, out->mutable_start_time());
}

// ---------------------------------------------------------------- sessions

void ToProto(const SessionInfo& info, v1::Session* out) {
  out->set_id(info.id);
  for (const auto& [k, v] : info.settings.labels) (*out->mutable_labels())[k] = v;
  out->set_state(info.expired ? v1::SESSION_STATE_EXPIRED : v1::SESSION_STATE_ACTIVE);
  ToProto(info.create_time, out->mutable_create_time());
  ToProto(info.expire_time, out->mutable_expire_time());
  ToProto(info.settings.ttl, out->mutable_ttl());
  ToProto(info.settings.attention, out->mutable_attention());
  v1::MemoryConfig* mem = out->mutable_memory();
  mem->set_window_tokens(info.settings.window_tokens);
  mem->set_sink_tokens(info.settings.sink_tokens);
  mem->set_overflow(info.settings.overflow == OverflowPolicy::kReject ? v1::OVERFLOW_POLICY_REJECT
                    : info.settings.overflow == OverflowPolicy::kCompress
                        ? v1::OVERFLOW_POLICY_COMPRESS
                        : v1::OVERFLOW_POLICY_SLIDE);
  out->set_prompt_format(info.settings.prompt_format == PromptFormat::kChat
                             ? v1::PROMPT_FORMAT_CHAT
                             : v1::PROMPT_FORMAT_RAW);
  out->set_system_prompt(info.settings.system_prompt);
  out->set_tokens(info.tokens);
  out->set_ingested_tokens(info.ingested_tokens);
  out->set_segments(info.segments);
  out->set_next_seq(info.next_seq);
  out->set_recovering(info.recovering);
  (*out->mutable_state_bytes())["device"] = info.device_bytes;
  (*out->mutable_state_bytes())["host"] = info.host_bytes;
  if (info.settings.windowed()) {
    (*out->mutable_state_bytes())["infini_memory"] = info.memory_bytes;
    out->set_folded_tokens(info.folded_tokens);
    out->set_dropped_tokens(info.dropped_tokens);
  }
}

namespace {

absl::Status FromProto(const v1::AttentionConfig& a, DcaOverrides* out) {
  switch (a.mode()) {
    case v1::ATTENTION_MODE_UNSPECIFIED:
      break;
    case v1::ATTENTION_MODE_ROPE:
      out->mode = DcaMode::kRope;
      break;
    case v1::ATTENTION_MODE_DCA:
      out->mode = DcaMode::kDca;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("attention.mode ", a.mode(), " is unknown"));
  }
  // Zero fields take the defaults.
  if (a.pretrain_length() != 0) out->pretrain_len = a.pretrain_length();
  if (a.chunk_size() != 0) out->chunk_size = a.chunk_size();
  if (a.local_window() != 0) out->local_window = a.local_window();
  if (a.length_temperature()) out->length_temperature = true;
  return absl::OkStatus();
}

absl::Status FromProto(const v1::MemoryConfig& m, SessionRequest* out) {
  out->window_tokens = m.window_tokens();
  out->sink_tokens = m.sink_tokens();
  switch (m.overflow()) {
    case v1::OVERFLOW_POLICY_UNSPECIFIED:
    case v1::OVERFLOW_POLICY_REJECT:
      out->overflow = OverflowPolicy::kReject;
      break;
    case v1::OVERFLOW_POLICY_COMPRESS:
      out->overflow = OverflowPolicy::kCompress;
      break;
    case v1::OVERFLOW_POLICY_SLIDE:
      out->overflow = OverflowPolicy::kSlide;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("memory.overflow ", m.overflow(), " is unknown"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<PromptFormat>> FromProto(v1::PromptFormat f) {
  switch (f) {
    case v1::PROMPT_FORMAT_UNSPECIFIED:
      return std::nullopt;
    case v1::PROMPT_FORMAT_CHAT:
      return PromptFormat::kChat;
    case v1::PROMPT_FORMAT_RAW:
      return PromptFormat::kRaw;
    default:
      return absl::InvalidArgumentError(absl::StrCat("prompt_format ", f, " is unknown"));
  }
}

}  // namespace

absl::StatusOr<SessionRequest> FromProto(const v1::CreateSessionRequest& req) {
  SessionRequest r;
  r.id = req.session_id();
  r.labels.insert(req.labels().begin(), req.labels().end());
  if (req.has_ttl()) {
    auto ttl = FromProto(req.ttl(), "ttl");
    if (!ttl.ok()) return ttl.status();
    r.ttl = *ttl;
  }
  if (absl::Status s = FromProto(req.attention(), &r.attention); !s.ok()) return s;
  if (absl::Status s = FromProto(req.memory(), &r); !s.ok()) return s;
  auto format = FromProto(req.prompt_format());
  if (!format.ok()) return format.status();
  r.prompt_format = *format;
  r.system_prompt = req.system_prompt();
  return r;
}

std::map<std::string, std::string> LabelSelector(const v1::ListSessionsRequest& req) {
  return std::map<std::string, std::string>(req.label_selector().begin(),
                                            req.label_selector().end());
}

void ToProto(const Engine::ListResult& page, v1::ListSessionsResponse* out) {
  for (const SessionInfo& info : page.sessions) ToProto(info, out->add_sessions());
  out->set_next_page_token(page.next_page_token);
}

ImportInput FromProto(const v1::ImportSessionRequest& first) {
  ImportInput in;
  in.id = first.session_id();
  in.labels.insert(first.labels().begin(), first.labels().end());
  return in;
}

// ---------------------------------------------------------------- ingest

absl::StatusOr<SegmentInput> TakeSegment(v1::IngestRequest* req) {
  if (!req->has_segment()) return absl::InvalidArgumentError("segment is required");
  v1::Segment* seg = req->mutable_segment();
  SegmentInput input;
  input.seq = seg->seq();
  input.parse_special = seg->parse_special();
  switch (seg->content_case()) {
    case v1::Segment::kText:
      input.text = std::move(*seg->mutable_text());
      break;
    case v1::Segment::kTokens:
      input.has_tokens = true;
      input.tokens.assign(seg->tokens().ids().begin(), seg->tokens().ids().end());
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "segment ", seg->seq(), " is empty: segment.text or segment.tokens is required"));
  }
  return input;
}

void ToProto(const IngestAck& ack, v1::IngestResponse* out) {
  out->set_seq(ack.seq);
  out->set_tokens_ingested(ack.tokens_ingested);
  out->set_session_tokens(ack.session_tokens);
  out->set_duplicate(ack.duplicate);
}

// ---------------------------------------------------------------- generate

GenerateInput FromProto(const v1::GenerateRequest& req) {
  GenerateInput in;
  in.prompt = req.prompt();
  in.parse_special = req.parse_special();
  const v1::SamplingParams& s = req.sampling();
  in.sampling.temperature = s.temperature();
  in.sampling.top_k = s.top_k();
  in.sampling.top_p = s.has_top_p() ? s.top_p() : 1.f;
  in.sampling.repetition_penalty = s.has_repetition_penalty() ? s.repetition_penalty() : 1.f;
  in.has_seed = s.has_seed();
  in.sampling.seed = s.seed();
  in.max_tokens = req.max_tokens();
  in.stop.assign(req.stop().begin(), req.stop().end());
  in.persist = req.persist();
  return in;
}

void AppendToProto(const std::string& text, const std::vector<int32_t>& ids,
                   v1::GenerateChunk* out) {
  out->mutable_text()->append(text);
  for (int32_t id : ids) out->add_token_ids(id);
}

v1::FinishReason ToProto(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStopString:
      return v1::FINISH_REASON_STOP_STRING;
    case FinishReason::kContext:
      return v1::FINISH_REASON_CONTEXT;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void ToProto(const GenerateSummary& summary, v1::GenerateComplete* out) {
  const GenerateResult& r = summary.result;
  out->set_finish_reason(ToProto(r.finish_reason));
  out->mutable_usage()->set_prompt_tokens(r.prompt_tokens);
  out->mutable_usage()->set_generated_tokens(r.generated_tokens);
  out->mutable_usage()->set_session_tokens(r.session_tokens);
  out->set_stop_string(summary.stop_string);
  ToProto(r.time_to_first_token, out->mutable_time_to_first_token());
  ToProto(r.total_time, out->mutable_total_time());
}

// ---------------------------------------------------------------- score

absl::StatusOr<ScoreInput> FromProto(const v1::ScoreRequest& req) {
  ScoreInput input;
  switch (req.continuation_case()) {
    case v1::ScoreRequest::kText:
      input.text = req.text();
      break;
    case v1::ScoreRequest::kTokens:
      input.has_tokens = true;
      input.tokens.assign(req.tokens().ids().begin(), req.tokens().ids().end());
      break;
    default:
      return absl::InvalidArgumentError("text or tokens is required");
  }
  input.parse_special = req.parse_special();
  return input;
}

void ToProto(const ScoreOutput& score, bool per_token, const Tokenizer& tokenizer,
             v1::ScoreResponse* out) {
  out->set_logprob(score.logprob);
  out->set_perplexity(score.perplexity);
  out->set_scored_tokens(score.scored_tokens);
  out->set_session_tokens(score.session_tokens);
  if (!per_token) return;
  for (size_t i = 0; i < score.ids.size(); ++i) {
    v1::TokenLogprob* t = out->add_tokens();
    t->set_id(score.ids[i]);
    t->set_text(tokenizer.Decode({score.ids[i]}));
    t->set_logprob(score.logprobs[i]);
  }
}

}  // namespace longctx::server

#include "server/convert.h"

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

void ToProto(const DcaConfig& a, v1::AttentionConfig* out) {
  out->set_mode(a.mode == DcaMode::kDca ? v1::ATTENTION_MODE_DCA : v1::ATTENTION_MODE_ROPE);
  out->set_pretrain_length(a.pretrain_len);
  out->set_chunk_size(a.chunk_size);
  out->set_local_window(a.local_window);
  out->set_length_temperature(a.length_temperature);
}

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
  (*out->mutable_state_bytes())["device"] = info.device_bytes;
  (*out->mutable_state_bytes())["host"] = info.host_bytes;
  if (info.settings.windowed()) {
    (*out->mutable_state_bytes())["infini_memory"] = info.memory_bytes;
    out->set_folded_tokens(info.folded_tokens);
    out->set_dropped_tokens(info.dropped_tokens);
  }
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

absl::StatusOr<SessionRequest> FromProto(const v1::CreateSessionRequest& req) {
  SessionRequest r;
  r.id = req.session_id();
  r.labels.insert(req.labels().begin(), req.labels().end());
  if (req.has_ttl()) {
    auto ttl = FromProto(req.ttl(), "ttl");
    if (!ttl.ok()) return ttl.status();
    r.ttl = *ttl;
  }
  const v1::AttentionConfig& a = req.attention();
  switch (a.mode()) {
    case v1::ATTENTION_MODE_UNSPECIFIED:
      break;
    case v1::ATTENTION_MODE_ROPE:
      r.attention.mode = DcaMode::kRope;
      break;
    case v1::ATTENTION_MODE_DCA:
      r.attention.mode = DcaMode::kDca;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("attention.mode ", a.mode(), " is unknown"));
  }
  // Zero fields take the defaults.
  if (a.pretrain_length() != 0) r.attention.pretrain_len = a.pretrain_length();
  if (a.chunk_size() != 0) r.attention.chunk_size = a.chunk_size();
  if (a.local_window() != 0) r.attention.local_window = a.local_window();
  if (a.length_temperature()) r.attention.length_temperature = true;
  const v1::MemoryConfig& m = req.memory();
  r.window_tokens = m.window_tokens();
  r.sink_tokens = m.sink_tokens();
  switch (m.overflow()) {
    case v1::OVERFLOW_POLICY_UNSPECIFIED:
    case v1::OVERFLOW_POLICY_REJECT:
      r.overflow = OverflowPolicy::kReject;
      break;
    case v1::OVERFLOW_POLICY_COMPRESS:
      r.overflow = OverflowPolicy::kCompress;
      break;
    case v1::OVERFLOW_POLICY_SLIDE:
      r.overflow = OverflowPolicy::kSlide;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("memory.overflow ", m.overflow(), " is unknown"));
  }
  switch (req.prompt_format()) {
    case v1::PROMPT_FORMAT_UNSPECIFIED:
      break;
    case v1::PROMPT_FORMAT_CHAT:
      r.prompt_format = PromptFormat::kChat;
      break;
    case v1::PROMPT_FORMAT_RAW:
      r.prompt_format = PromptFormat::kRaw;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("prompt_format ", req.prompt_format(), " is unknown"));
  }
  r.system_prompt = req.system_prompt();
  return r;
}

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

}  // namespace longctx::server

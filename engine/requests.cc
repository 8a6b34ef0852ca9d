#include "engine/requests.h"

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/unicode.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

constexpr int kMaxLabels = 32;
constexpr size_t kMaxLabelBytes = 256;
constexpr size_t kMaxStops = 8;
constexpr size_t kMaxStopBytes = 256;

absl::Status ValidateLabels(const std::map<std::string, std::string>& labels) {
  if (static_cast<int>(labels.size()) > kMaxLabels) {
    return absl::InvalidArgumentError(
        absl::StrCat("labels: at most ", kMaxLabels, " (got ", labels.size(), ")"));
  }
  for (const auto& [k, v] : labels) {
    if (k.empty() || k.size() > kMaxLabelBytes || v.size() > kMaxLabelBytes) {
      return absl::InvalidArgumentError(absl::StrCat("labels: keys must be 1 to ", kMaxLabelBytes,
                                                     " bytes and values at most ", kMaxLabelBytes,
                                                     " bytes"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<absl::Duration> ResolveTtl(const SessionRequest& r, const EngineOptions& o) {
  const absl::Duration ttl = r.ttl.value_or(o.default_ttl);
  if (ttl <= absl::ZeroDuration()) return absl::InvalidArgumentError("ttl must be positive");
  if (ttl > o.max_ttl) {
    return absl::InvalidArgumentError(absl::StrCat("ttl ", absl::FormatDuration(ttl),
                                                   " is over the server's max_ttl of ",
                                                   absl::FormatDuration(o.max_ttl)));
  }
  return ttl;
}

absl::StatusOr<DcaConfig> ResolveAttention(const SessionRequest& r, const SessionContext& c) {
  auto dca = DcaConfig::Resolve(*c.model, c.options->dca_defaults.Then(r.attention));
  if (!dca.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("attention: ", dca.status().message()));
  }
  if (absl::Status v = dca->Validate(c.block_size); !v.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("attention: ", v.message()));
  }
  return *dca;
}

// The window (and the Infini window of SLIDE and COMPRESS) into `s`, whose
// attention is resolved.
absl::Status ResolveWindow(const SessionRequest& r, const SessionContext& c, SessionSettings& s) {
  const EngineOptions& o = *c.options;
  s.overflow = r.overflow;
  if (r.window_tokens < 0) {
    return absl::InvalidArgumentError("memory.window_tokens must not be negative");
  }
  if (s.windowed() && r.window_tokens == 0) {
    return absl::InvalidArgumentError(
        "memory.window_tokens is required with SLIDE and COMPRESS (a multiple of the DCA "
        "chunk length)");
  }
  s.window_tokens = r.window_tokens ? r.window_tokens : o.max_session_tokens;
  if (s.window_tokens > o.max_session_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("memory.window_tokens ", s.window_tokens,
                                                   " is over the server's max_session_tokens of ",
                                                   o.max_session_tokens));
  }
  if (!s.windowed()) {
    if (r.sink_tokens != 0) {
      return absl::InvalidArgumentError("memory.sink_tokens applies only to SLIDE and COMPRESS");
    }
    s.max_tokens = s.window_tokens;
    return absl::OkStatus();
  }
  // The Infini window (docs/design.md §4): W a multiple of L, sinks whole KV blocks.
  s.sink_tokens = r.sink_tokens;
  if (s.sink_tokens < 0 || s.sink_tokens > s.window_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory.sink_tokens ", s.sink_tokens, " must be in [0, window_tokens]"));
  }
  const cpu::DcaParams params = s.attention.ToParams(c.model->head_dim, 1);
  if (absl::Status v = s.ToInfiniConfig(false).Validate(params, c.block_size); !v.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory: ", v.message(), " (window_tokens ", s.window_tokens, ", sink_tokens ",
                     s.sink_tokens, ", attention chunk_len ", params.chunk_len, ")"));
  }
  s.max_tokens = o.max_windowed_session_tokens;
  return absl::OkStatus();
}

absl::Status ResolvePrompt(const SessionRequest& r, const SessionContext& c, SessionSettings& s) {
  s.prompt_format = r.prompt_format.value_or(c.has_chat ? PromptFormat::kChat : PromptFormat::kRaw);
  if (s.prompt_format == PromptFormat::kChat && !c.has_chat) {
    return absl::FailedPreconditionError(
        "prompt_format CHAT: the model has no supported chat template; use RAW");
  }
  if (!r.system_prompt.empty() && s.prompt_format != PromptFormat::kChat) {
    return absl::InvalidArgumentError("system_prompt applies only to CHAT sessions");
  }
  if (static_cast<int64_t>(r.system_prompt.size()) > c.options->max_segment_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "system_prompt is ", r.system_prompt.size(),
        " bytes, over the server's max_segment_bytes of ", c.options->max_segment_bytes));
  }
  RETURN_IF_ERROR(ValidateUtf8("system_prompt", r.system_prompt));
  s.system_prompt = r.system_prompt;
  return absl::OkStatus();
}

}  // namespace

SessionRequest SessionRequest::FromSettings(const SessionSettings& s, absl::Duration max_ttl) {
  SessionRequest r;
  r.labels = s.labels;
  r.ttl = std::min(s.ttl, max_ttl);
  r.attention.mode = s.attention.mode;
  r.attention.pretrain_len = s.attention.pretrain_len;
  r.attention.chunk_size = s.attention.chunk_size;
  r.attention.local_window = s.attention.local_window;
  r.attention.length_temperature = s.attention.length_temperature;
  r.attention.compose_rope_scaling = s.attention.compose_rope_scaling;
  r.window_tokens = s.window_tokens;
  r.sink_tokens = s.sink_tokens;
  r.overflow = s.overflow;
  r.prompt_format = s.prompt_format;
  r.system_prompt = s.system_prompt;
  return r;
}

absl::StatusOr<SessionSettings> ResolveSession(const SessionRequest& r, const SessionContext& c) {
  SessionSettings s;
  RETURN_IF_ERROR(ValidateLabels(r.labels));
  s.labels = r.labels;
  ASSIGN_OR_RETURN(s.ttl, ResolveTtl(r, *c.options));
  ASSIGN_OR_RETURN(s.attention, ResolveAttention(r, c));
  RETURN_IF_ERROR(ResolveWindow(r, c, s));
  RETURN_IF_ERROR(ResolvePrompt(r, c, s));
  return s;
}

absl::Status GenerateInput::Validate(const EngineOptions& o, int32_t vocab_size,
                                     PromptFormat format) const {
  RETURN_IF_ERROR(sampling.Validate(vocab_size));
  if (max_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must not be negative (got ", max_tokens, ")"));
  }
  if (max_tokens > o.max_generate_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens ", max_tokens,
                                                   " is over the server's max_generate_tokens of ",
                                                   o.max_generate_tokens));
  }
  if (stop.size() > kMaxStops) {
    return absl::InvalidArgumentError(
        absl::StrCat("stop: at most ", kMaxStops, " strings (got ", stop.size(), ")"));
  }
  for (size_t i = 0; i < stop.size(); ++i) {
    if (stop[i].empty() || stop[i].size() > kMaxStopBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop[", i, "] must be 1 to ", kMaxStopBytes, " bytes"));
    }
  }
  if (format == PromptFormat::kChat && prompt.empty()) {
    return absl::InvalidArgumentError("prompt is required for CHAT sessions");
  }
  if (static_cast<int64_t>(prompt.size()) > o.max_segment_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("prompt is ", prompt.size(),
                                                     " bytes, over the server's ",
                                                     "max_segment_bytes of ", o.max_segment_bytes));
  }
  return ValidateUtf8("prompt", prompt);
}

absl::StatusOr<std::vector<int32_t>> TokenizeInput(const std::string& field, bool has_tokens,
                                                   const std::string& text,
                                                   const std::vector<int32_t>& tokens,
                                                   bool parse_special, const Tokenizer& tokenizer,
                                                   const EngineOptions& options) {
  std::vector<int32_t> ids;
  if (has_tokens) {
    const int32_t v = tokenizer.vocab_size();
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] < 0 || tokens[i] >= v) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".tokens.ids[", i, "] = ", tokens[i],
                                                       " is outside the vocabulary [0, ", v, ")"));
      }
    }
    ids = tokens;
  } else {
    if (static_cast<int64_t>(text.size()) > options.max_segment_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          field, ".text is ", text.size(), " bytes, over the server's max_segment_bytes of ",
          options.max_segment_bytes));
    }
    RETURN_IF_ERROR(ValidateUtf8(absl::StrCat(field, ".text"), text));
    ids = tokenizer.Encode(text, parse_special);
  }
  if (static_cast<int64_t>(ids.size()) > options.max_segment_tokens) {
    return absl::ResourceExhaustedError(
        absl::StrCat(field, " is ", ids.size(), " tokens, over the server's max_segment_tokens of ",
                     options.max_segment_tokens));
  }
  return ids;
}

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

}  // namespace longctx

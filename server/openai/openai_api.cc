#include "server/openai/openai_api.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/util/json_util.h"
#include "engine/util/status_macros.h"
#include "server/routing.h"

namespace longctx::server::openai {
namespace {

using nlohmann::json;

absl::Status Bad(absl::string_view message) { return absl::InvalidArgumentError(message); }

// Options of OpenAI's API that change the answer and that the door does not
// implement: refused when set to anything but their neutral value.
absl::Status RefuseUnsupported(const json& body) {
  static constexpr const char* kObjects[] = {"tools", "functions", "tool_choice", "function_call",
                                             "logit_bias"};
  for (const char* key : kObjects) {
    const json* v = JsonFind(body, key);
    if (v != nullptr && !v->is_null() && !v->empty()) {
      return Bad(absl::StrCat(key, " is not supported by this server"));
    }
  }
  for (const char* key : {"logprobs", "echo"}) {
    const json* v = JsonFind(body, key);
    if (v != nullptr && !v->is_null() && !(v->is_boolean() && !v->get<bool>())) {
      return Bad(absl::StrCat(key, " is not supported by this server"));
    }
  }
  for (const char* key : {"presence_penalty", "frequency_penalty"}) {
    const json* v = JsonFind(body, key);
    if (v != nullptr && !v->is_null() && !(v->is_number() && v->get<double>() == 0)) {
      return Bad(absl::StrCat(key, " is not supported by this server (only 0)"));
    }
  }
  const json* suffix = JsonFind(body, "suffix");
  if (suffix != nullptr && !suffix->is_null() && !(suffix->is_string() && suffix->empty())) {
    return Bad("suffix is not supported by this server");
  }
  const json* format = JsonFind(body, "response_format");
  if (format != nullptr && !format->is_null() &&
      JsonStringOr(JsonFind(*format, "type"), "text") != "text") {
    return Bad("response_format: only {\"type\": \"text\"} is supported by this server");
  }
  return absl::OkStatus();
}

// `count` fields: absent, null or 1.
absl::Status OnlyOne(const json& body, const char* key) {
  const json* v = JsonFind(body, key);
  if (v == nullptr || v->is_null()) return absl::OkStatus();
  if (JsonInt(*v) != 1) {
    return Bad(absl::StrCat(key, ": only 1 is supported by this server (got ", v->dump(), ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<double>> Number(const json& body, const char* key) {
  const json* v = JsonFind(body, key);
  if (v == nullptr || v->is_null()) return std::nullopt;
  if (!v->is_number()) return Bad(absl::StrCat(key, " must be a number"));
  return v->get<double>();
}

absl::StatusOr<std::optional<int64_t>> Integer(const json& body, const char* key) {
  const json* v = JsonFind(body, key);
  if (v == nullptr || v->is_null()) return std::nullopt;
  std::optional<int64_t> i = JsonInt(*v);
  if (!i) return Bad(absl::StrCat(key, " must be an integer"));
  return i;
}

absl::StatusOr<std::optional<bool>> Boolean(const json& body, const char* key) {
  const json* v = JsonFind(body, key);
  if (v == nullptr || v->is_null()) return std::nullopt;
  if (!v->is_boolean()) return Bad(absl::StrCat(key, " must be true or false"));
  return v->get<bool>();
}

absl::StatusOr<std::string> String(const json& body, const char* key) {
  const json* v = JsonFind(body, key);
  if (v == nullptr || v->is_null()) return std::string();
  if (!v->is_string()) return Bad(absl::StrCat(key, " must be a string"));
  return v->get<std::string>();
}

// "stop": a string or an array of strings.
absl::StatusOr<std::vector<std::string>> Stops(const json& body) {
  const json* v = JsonFind(body, "stop");
  if (v == nullptr || v->is_null()) return std::vector<std::string>();
  if (v->is_string()) return std::vector<std::string>{v->get<std::string>()};
  if (!v->is_array()) return Bad("stop must be a string or an array of strings");
  std::vector<std::string> out;
  for (const json& s : *v) {
    if (!s.is_string()) return Bad("stop must be a string or an array of strings");
    out.push_back(s.get<std::string>());
  }
  return out;
}

// Sampling, max_tokens, stop and seed into `in`. OpenAI's defaults:
// temperature 1, top_p 1.
absl::Status ParseSampling(const json& body, GenerateInput& in) {
  ASSIGN_OR_RETURN(std::optional<double> temperature, Number(body, "temperature"));
  ASSIGN_OR_RETURN(std::optional<double> top_p, Number(body, "top_p"));
  in.sampling.temperature = static_cast<float>(temperature.value_or(1.0));
  in.sampling.top_p = static_cast<float>(top_p.value_or(1.0));
  ASSIGN_OR_RETURN(std::optional<int64_t> max_tokens, Integer(body, "max_completion_tokens"));
  if (!max_tokens) {
    ASSIGN_OR_RETURN(max_tokens, Integer(body, "max_tokens"));
  }
  if (max_tokens) {
    if (*max_tokens < 1) return Bad("max_tokens must be at least 1");
    // Over the server's maximum it fails GenerateInput::Validate, which names it.
    in.max_tokens = static_cast<int>(std::min<int64_t>(*max_tokens, INT32_MAX));
  }
  ASSIGN_OR_RETURN(in.stop, Stops(body));
  ASSIGN_OR_RETURN(std::optional<int64_t> seed, Integer(body, "seed"));
  in.has_seed = seed.has_value();
  if (seed) in.sampling.seed = static_cast<uint64_t>(*seed);
  return absl::OkStatus();
}

// A message's content: a string, null, or an array of text parts.
absl::StatusOr<std::string> Content(const json& message, size_t i) {
  const json* c = JsonFind(message, "content");
  if (c == nullptr || c->is_null()) return std::string();
  if (c->is_string()) return c->get<std::string>();
  const std::string field = absl::StrCat("messages[", i, "].content");
  if (!c->is_array()) return Bad(absl::StrCat(field, " must be a string or an array of parts"));
  std::string text;
  for (const json& part : *c) {
    const json* t = JsonFind(part, "text");
    if (JsonStringOr(JsonFind(part, "type"), "") != "text" || t == nullptr || !t->is_string()) {
      return Bad(absl::StrCat(field, ": only text parts are supported by this server"));
    }
    text += t->get<std::string>();
  }
  return text;
}

absl::StatusOr<std::vector<ChatMessage>> Messages(const json& body) {
  const json* v = JsonFind(body, "messages");
  if (v == nullptr || !v->is_array() || v->empty()) {
    return Bad("messages must be a non-empty array");
  }
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    const json* role = JsonFind(m, "role");
    if (role == nullptr || !role->is_string() || role->get<std::string>().empty()) {
      return Bad(absl::StrCat("messages[", i, "].role must be a non-empty string"));
    }
    ChatMessage msg;
    msg.role = role->get<std::string>();
    // OpenAI's newer name of the system role.
    if (msg.role == "developer") msg.role = "system";
    ASSIGN_OR_RETURN(msg.content, Content(m, i));
    out.push_back(std::move(msg));
  }
  return out;
}

// A completion's prompt: a string, or an array holding one string.
absl::StatusOr<std::string> Prompt(const json& body) {
  const json* v = JsonFind(body, "prompt");
  if (v != nullptr && v->is_array() && v->size() == 1) v = &(*v)[0];
  if (v == nullptr || !v->is_string()) {
    return Bad("prompt must be a string (one prompt per request; token arrays are not supported)");
  }
  return v->get<std::string>();
}

absl::Status ParseStream(const json& body, CompletionRequest& r) {
  ASSIGN_OR_RETURN(std::optional<bool> stream, Boolean(body, "stream"));
  r.stream = stream.value_or(false);
  const json* options = JsonFind(body, "stream_options");
  if (options != nullptr && !options->is_null()) {
    if (!options->is_object()) return Bad("stream_options must be an object");
    ASSIGN_OR_RETURN(std::optional<bool> usage, Boolean(*options, "include_usage"));
    r.include_usage = usage.value_or(false);
  }
  return absl::OkStatus();
}

json Choice(ApiKind kind, const std::string& text, bool stream, bool first) {
  json choice = {{"index", 0}, {"logprobs", nullptr}};
  if (kind == ApiKind::kCompletion) {
    choice["text"] = text;
  } else if (!stream) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["delta"] =
        first ? json{{"role", "assistant"}, {"content", text}} : json{{"content", text}};
  }
  return choice;
}

json Envelope(const ResponseMeta& meta, bool chunk) {
  const char* object = meta.kind == ApiKind::kCompletion ? "text_completion"
                       : chunk                           ? "chat.completion.chunk"
                                                         : "chat.completion";
  return {{"id", meta.id}, {"object", object}, {"created", meta.created}, {"model", meta.model}};
}

json UsageJson(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

}  // namespace

absl::StatusOr<CompletionRequest> ParseCompletionRequest(ApiKind kind, std::string_view body) {
  JsonParseOptions options;
  options.max_depth = 16;
  options.max_values = int64_t{1} << 20;
  ASSIGN_OR_RETURN(json doc, ParseJson(body, options));
  if (!doc.is_object()) return Bad("the request body must be a JSON object");
  CompletionRequest r;
  r.kind = kind;
  RETURN_IF_ERROR(RefuseUnsupported(doc));
  RETURN_IF_ERROR(OnlyOne(doc, "n"));
  RETURN_IF_ERROR(OnlyOne(doc, "best_of"));
  ASSIGN_OR_RETURN(r.model, String(doc, "model"));
  ASSIGN_OR_RETURN(r.session_id, String(doc, "session_id"));
  RETURN_IF_ERROR(ParseStream(doc, r));
  RETURN_IF_ERROR(ParseSampling(doc, r.input));
  if (kind == ApiKind::kChat) {
    ASSIGN_OR_RETURN(r.messages, Messages(doc));
  } else {
    ASSIGN_OR_RETURN(r.prompt, Prompt(doc));
  }
  return r;
}

absl::StatusOr<std::string> LastUserMessage(const std::vector<ChatMessage>& messages) {
  for (auto it = messages.rbegin(); it != messages.rend(); ++it) {
    if (it->role == "user") return it->content;
  }
  return Bad("messages: a question over a session needs a user message");
}

const char* FinishReasonText(FinishReason reason) {
  return reason == FinishReason::kStop || reason == FinishReason::kStopString ? "stop" : "length";
}

json RenderCompletion(const ResponseMeta& meta, const std::string& text, FinishReason reason,
                      const Usage& usage) {
  json out = Envelope(meta, /*chunk=*/false);
  json choice = Choice(meta.kind, text, /*stream=*/false, /*first=*/true);
  choice["finish_reason"] = FinishReasonText(reason);
  out["choices"] = json::array({std::move(choice)});
  out["usage"] = UsageJson(usage);
  return out;
}

json RenderChunk(const ResponseMeta& meta, const std::string& text, bool first,
                 std::optional<FinishReason> reason) {
  json out = Envelope(meta, /*chunk=*/true);
  json choice = Choice(meta.kind, text, /*stream=*/true, first);
  choice["finish_reason"] = reason ? json(FinishReasonText(*reason)) : json(nullptr);
  out["choices"] = json::array({std::move(choice)});
  return out;
}

json RenderUsageChunk(const ResponseMeta& meta, const Usage& usage) {
  json out = Envelope(meta, /*chunk=*/true);
  out["choices"] = json::array();
  out["usage"] = UsageJson(usage);
  return out;
}

json RenderModels(const std::string& model, int64_t created) {
  return {
      {"object", "list"},
      {"data",
       json::array(
           {{{"id", model}, {"object", "model"}, {"created", created}, {"owned_by", "longctx"}}})}};
}

int HttpStatus(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

int HttpStatus(const absl::Status& status) {
  if (!MisdirectedHome(status).empty()) return 421;
  return HttpStatus(status.code());
}

json RenderError(const absl::Status& status) {
  const int http = HttpStatus(status);
  const char* type = http == 401   ? "authentication_error"
                     : http == 403 ? "permission_error"
                     : http == 429 ? "rate_limit_error"
                     : http < 500  ? "invalid_request_error"
                                   : "server_error";
  return {{"error",
           {{"message", std::string(status.message())},
            {"type", type},
            {"code", absl::AsciiStrToLower(absl::StatusCodeToString(status.code()))}}}};
}

}  // namespace longctx::server::openai

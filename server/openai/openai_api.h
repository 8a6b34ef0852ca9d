// The JSON of the OpenAI-compatible HTTP door (docs/service.md, "OpenAI-
// compatible HTTP"): request bodies of /v1/chat/completions and
// /v1/completions parsed into engine inputs, and the responses, stream chunks
// and errors rendered in OpenAI's shapes. Nothing here talks to the engine or
// the network, so every rule is testable on its own.
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/requests.h"
#include "engine/stats.h"
#include "engine/tokenizer/chat_template.h"
#include "nlohmann/json.hpp"

namespace longctx::server::openai {

enum class ApiKind { kChat, kCompletion };

// One request of either route, checked for shape and for what the door
// supports; the engine checks the values (GenerateInput::Validate).
struct CompletionRequest {
  ApiKind kind = ApiKind::kChat;
  std::string model;                  // as asked; empty: the served model
  std::vector<ChatMessage> messages;  // kChat: the conversation, in order
  std::string prompt;                 // kCompletion: the text to continue
  // Extension: answer over this ingested session instead of a transient one.
  std::string session_id;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with usage
  // Sampling, max_tokens, stop and seed; its prompt is set by the caller.
  GenerateInput input;
};

// Parses a request body. INVALID_ARGUMENT names the field at fault: malformed
// JSON, a wrong type, n other than 1, or an option the door does not
// implement (tools, logprobs, echo, penalties, ...), which is refused rather
// than ignored so that a client never gets an answer it did not ask for.
absl::StatusOr<CompletionRequest> ParseCompletionRequest(ApiKind kind, std::string_view body);

// The text of the last user message: the question asked over a session.
// INVALID_ARGUMENT when there is none.
absl::StatusOr<std::string> LastUserMessage(const std::vector<ChatMessage>& messages);

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// What every response and chunk of one request repeats.
struct ResponseMeta {
  ApiKind kind = ApiKind::kChat;
  std::string id;       // "chatcmpl-..." or "cmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;
};

// "stop" (an end token or a stop string) or "length" (max_tokens, or the
// session's limit).
const char* FinishReasonText(FinishReason reason);

// A whole (non-streamed) answer.
nlohmann::json RenderCompletion(const ResponseMeta& meta, const std::string& text,
                                FinishReason reason, const Usage& usage);
// One streamed chunk: `text` (a chat's first chunk also carries the role),
// and on the last one the finish reason.
nlohmann::json RenderChunk(const ResponseMeta& meta, const std::string& text, bool first,
                           std::optional<FinishReason> reason);
// The extra last chunk of stream_options.include_usage: no choices, the usage.
nlohmann::json RenderUsageChunk(const ResponseMeta& meta, const Usage& usage);
// GET /v1/models: the one served model.
nlohmann::json RenderModels(const std::string& model, int64_t created);

// The HTTP status of a failed request: INVALID_ARGUMENT 400,
// UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404,
// RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, else 500.
int HttpStatus(absl::StatusCode code);
// The HTTP status of `status`: as its code says, but 421 Misdirected Request
// for a session whose home is another replica (server/routing.h).
int HttpStatus(const absl::Status& status);
// {"error": {"message", "type", "code"}}: type as OpenAI names the class of
// error, code the status code's name in lower case ("not_found").
nlohmann::json RenderError(const absl::Status& status);

}  // namespace longctx::server::openai

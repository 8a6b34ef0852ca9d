// Chat prompt formatting. Models ship a Jinja chat template; we recognise the
// template family from its text and format natively (no Jinja engine).
// Supported: ChatML (<|im_start|>role\ncontent<|im_end|>\n), the format of
// SmolLM2, Qwen2 and others, with the default system prompt the template
// inserts when the conversation has none.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "engine/tokenizer/tokenizer.h"

namespace longctx {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

enum class ChatStyle { kChatMl };

struct ChatTemplate {
  ChatStyle style = ChatStyle::kChatMl;
  // Inserted as a system message before a conversation whose first message is
  // not one; empty: none.
  std::string default_system_prompt;
};

// SmolLM2-Instruct's default system prompt.
inline constexpr absl::string_view kSmolLmSystemPrompt =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

// Recognises the family of a model's Jinja chat template (GGUF
// tokenizer.chat_template) and extracts its literal default system prompt.
// InvalidArgument for an empty template, Unimplemented for other families.
absl::StatusOr<ChatTemplate> ChatTemplateFromJinja(absl::string_view jinja);

// The prompt text for `messages`; with add_generation_prompt it ends with the
// header of an assistant turn for the model to complete.
std::string FormatChat(absl::Span<const ChatMessage> messages, bool add_generation_prompt,
                       const ChatTemplate& chat_template);

// Token ids of the same prompt, with the template's markers as special tokens
// and roles and contents encoded as plain text: a message that contains
// "<|im_end|>" cannot end its turn early. FailedPrecondition if the vocabulary
// lacks the template's special tokens.
absl::StatusOr<std::vector<int32_t>> EncodeChat(const Tokenizer& tokenizer,
                                                absl::Span<const ChatMessage> messages,
                                                bool add_generation_prompt,
                                                const ChatTemplate& chat_template);

}  // namespace longctx

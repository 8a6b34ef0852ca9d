// Chat prompt formatting. Models ship a Jinja chat template; we recognise the
// template family from its text and format natively (no Jinja engine), as the
// family's published template renders (tests/fixtures/chat_templates/ holds
// those templates and their renders by transformers' apply_chat_template):
//   kChatMl   <|im_start|>role\ncontent<|im_end|>\n (SmolLM2, Qwen 2/2.5), with
//             the default system prompt the template inserts when the
//             conversation has none
//   kLlama3   <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\n
//             content<|eot_id|> (Llama 3; Llama 3.1 adds a system turn with
//             its knowledge and today dates to every conversation)
//   kMistral  <s> [INST] user [/INST] answer</s> (Mistral 7B Instruct v0.2);
//             no system role: the system message opens the first user turn.
//             Any [INST] template without Llama 2's <<SYS>> is taken for this
//             one (other Mistral revisions differ in spaces around [INST])
//   kGemma    <bos><start_of_turn>user\ncontent<end_of_turn>\n, the assistant
//             is "model" (Gemma 3); no system role: as Mistral
//   kPhi3     <|user|>\ncontent<|end|>\n (Phi-3, Phi-3.5); an empty system
//             message is left out; without a generation prompt the text ends
//             with <|endoftext|>
// Template literals such as the BOS text are the family's (the GGUF vocabulary
// of such a model names them the same).
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

enum class ChatStyle { kChatMl, kLlama3, kMistral, kGemma, kPhi3 };

// The family's name as ServerInfo reports it: "chatml", "llama3", "mistral",
// "gemma", "phi3".
absl::string_view ChatStyleName(ChatStyle style);

struct ChatTemplate {
  ChatStyle style = ChatStyle::kChatMl;
  // Inserted as a system message before a conversation whose first message is
  // not one; empty: none.
  std::string default_system_prompt;
  // kLlama3 only. Non-empty (Llama 3.1): every conversation opens with a
  // system turn holding this text and then the system message, if any.
  std::string system_preamble;
};

// SmolLM2-Instruct's default system prompt.
inline constexpr absl::string_view kSmolLmSystemPrompt =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

// Recognises the family of a model's Jinja chat template (GGUF
// tokenizer.chat_template) and extracts its literal default system prompt
// (ChatML) or system preamble (Llama 3.1). InvalidArgument for an empty
// template, Unimplemented for other families.
absl::StatusOr<ChatTemplate> ChatTemplateFromJinja(absl::string_view jinja);

// A message's content as the family's template writes it: Llama 3 trims
// every content (Jinja's trim), Gemma every one but the system message it
// folds into the first user turn; the others write it as is.
std::string RenderedContent(const ChatTemplate& chat_template, absl::string_view role,
                            absl::string_view content);

// The prompt text for `messages`; with add_generation_prompt it ends with the
// header of an assistant turn for the model to complete.
std::string FormatChat(absl::Span<const ChatMessage> messages, bool add_generation_prompt,
                       const ChatTemplate& chat_template);

// Token ids of the same prompt, with the template's text parsed for special
// tokens and each message's content encoded on its own as plain text: a
// message that contains "<|im_end|>" cannot end its turn early.
// FailedPrecondition if the vocabulary lacks the template's special tokens.
absl::StatusOr<std::vector<int32_t>> EncodeChat(const Tokenizer& tokenizer,
                                                absl::Span<const ChatMessage> messages,
                                                bool add_generation_prompt,
                                                const ChatTemplate& chat_template);

}  // namespace longctx

// A session's conversation in a chat template, as token pieces: the engine
// never formats a whole conversation again, it appends pieces to the session's
// token log as the conversation goes.
//
//   [system_open] system [user_open] document [question ...] question
//   [assistant_open] answer [next_user] (the next question) ...
//
// or, without a system message, [no_system_open] document ...
//
// The pieces are cut out of the template's own formatting of a conversation
// with placeholder contents, so any template FormatChat knows yields them.
//
// Thread safety: immutable after Create; safe from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/stats.h"
#include "engine/tokenizer/chat_template.h"
#include "engine/tokenizer/tokenizer.h"

namespace longctx {

class ChatPrompt {
 public:
  // The pieces of `chat_template` under `tokenizer` (which must outlive the
  // prompt); nullopt for a template that cannot be cut into them.
  static std::optional<ChatPrompt> Create(const Tokenizer* tokenizer,
                                          const ChatTemplate& chat_template);

  // A new session's opening: the system message (`system_prompt`, or the
  // template's default when empty) and the opening of the user turn. With no
  // system message at all, the opening the template gives a conversation
  // without one (Mistral and Gemma fold the system message into the user
  // turn, Phi-3 leaves an empty one out, Llama 3.1 keeps its preamble).
  std::vector<int32_t> SessionPrefix(const std::string& system_prompt) const;
  // A question in the open user turn, closed and followed by the opening of
  // the assistant's answer. `after_document`: the turn already holds text,
  // from which the question is set apart by a blank line.
  std::vector<int32_t> Question(const std::string& prompt, bool after_document,
                                bool parse_special) const;
  // What follows a kept answer: the end of the assistant turn (unless the
  // answer ended with that end token itself) and the opening of the next
  // user turn.
  std::vector<int32_t> AfterAnswer(FinishReason reason) const;
  // The template the pieces were cut from (to format a whole conversation).
  const ChatTemplate& chat_template() const { return template_; }

 private:
  ChatPrompt(const Tokenizer* tokenizer, ChatTemplate chat_template)
      : tokenizer_(tokenizer), template_(std::move(chat_template)) {}

  const Tokenizer* tokenizer_;
  ChatTemplate template_;
  std::vector<int32_t> system_open_, user_open_, assistant_open_, next_user_;
  std::vector<int32_t> no_system_open_;  // the opening without a system message
};

}  // namespace longctx

#include "engine/tokenizer/chat_template.h"

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace longctx {
namespace {

constexpr absl::string_view kImStart = "<|im_start|>";
constexpr absl::string_view kImEnd = "<|im_end|>";

// The literal system prompt of a ChatML template: the text between
// "<|im_start|>system" + newline and "<|im_end|>" inside a string literal, in
// the first place where it contains no template expression.
std::string FindDefaultSystemPrompt(absl::string_view jinja) {
  const std::string header = absl::StrCat(kImStart, "system");
  for (size_t pos = jinja.find(header); pos != absl::string_view::npos;
       pos = jinja.find(header, pos + 1)) {
    absl::string_view rest = jinja.substr(pos + header.size());
    // The newline is a real one in some files and the escape \n in others.
    if (absl::StartsWith(rest, "\n")) {
      rest.remove_prefix(1);
    } else if (absl::StartsWith(rest, "\\n")) {
      rest.remove_prefix(2);
    } else {
      continue;
    }
    const size_t end = rest.find(kImEnd);
    if (end == absl::string_view::npos) continue;
    const absl::string_view body = rest.substr(0, end);
    bool literal = !body.empty();
    for (const absl::string_view marker : {"{{", "{%", "'", "\""}) {
      if (absl::StrContains(body, marker)) literal = false;
    }
    if (literal) return absl::StrReplaceAll(body, {{"\\n", "\n"}});
  }
  return std::string();
}

// Messages with the template's default system prompt in front where it applies.
std::vector<ChatMessage> WithSystemPrompt(absl::Span<const ChatMessage> messages,
                                          const ChatTemplate& t) {
  std::vector<ChatMessage> out;
  out.reserve(messages.size() + 1);
  if (!messages.empty() && messages[0].role != "system" && !t.default_system_prompt.empty()) {
    out.push_back({"system", t.default_system_prompt});
  }
  out.insert(out.end(), messages.begin(), messages.end());
  return out;
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplateFromJinja(absl::string_view jinja) {
  if (jinja.empty()) return absl::InvalidArgumentError("model has no chat template");
  if (absl::StrContains(jinja, kImStart) && absl::StrContains(jinja, kImEnd)) {
    ChatTemplate t;
    t.style = ChatStyle::kChatMl;
    t.default_system_prompt = FindDefaultSystemPrompt(jinja);
    return t;
  }
  return absl::UnimplementedError(
      "unsupported chat template: only ChatML (<|im_start|> ... <|im_end|>) is implemented");
}

std::string FormatChat(absl::Span<const ChatMessage> messages, bool add_generation_prompt,
                       const ChatTemplate& chat_template) {
  std::string out;
  for (const ChatMessage& m : WithSystemPrompt(messages, chat_template)) {
    absl::StrAppend(&out, kImStart, m.role, "\n", m.content, kImEnd, "\n");
  }
  if (add_generation_prompt) absl::StrAppend(&out, kImStart, "assistant\n");
  return out;
}

absl::StatusOr<std::vector<int32_t>> EncodeChat(const Tokenizer& tokenizer,
                                                absl::Span<const ChatMessage> messages,
                                                bool add_generation_prompt,
                                                const ChatTemplate& chat_template) {
  const int32_t start = tokenizer.SpecialTokenId(kImStart);
  const int32_t end = tokenizer.SpecialTokenId(kImEnd);
  if (start < 0 || end < 0) {
    return absl::FailedPreconditionError(
        "ChatML template but the vocabulary has no <|im_start|>/<|im_end|> tokens");
  }
  std::vector<int32_t> ids;
  const auto append = [&](absl::string_view text) {
    const std::vector<int32_t> part = tokenizer.Encode(text, /*parse_special=*/false);
    ids.insert(ids.end(), part.begin(), part.end());
  };
  for (const ChatMessage& m : WithSystemPrompt(messages, chat_template)) {
    ids.push_back(start);
    append(absl::StrCat(m.role, "\n", m.content));
    ids.push_back(end);
    append("\n");
  }
  if (add_generation_prompt) {
    ids.push_back(start);
    append("assistant\n");
  }
  return ids;
}

}  // namespace longctx

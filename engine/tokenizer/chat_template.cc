#include "engine/tokenizer/chat_template.h"

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace longctx {
namespace {

constexpr absl::string_view kImStart = "<|im_start|>";
constexpr absl::string_view kImEnd = "<|im_end|>";
constexpr absl::string_view kLlamaBos = "<|begin_of_text|>";
constexpr absl::string_view kHeaderStart = "<|start_header_id|>";
constexpr absl::string_view kHeaderEnd = "<|end_header_id|>";
constexpr absl::string_view kEotId = "<|eot_id|>";
constexpr absl::string_view kMistralBos = "<s>";
constexpr absl::string_view kMistralEos = "</s>";
constexpr absl::string_view kGemmaBos = "<bos>";
constexpr absl::string_view kTurnStart = "<start_of_turn>";
constexpr absl::string_view kTurnEnd = "<end_of_turn>";
constexpr absl::string_view kPhiEnd = "<|end|>";
constexpr absl::string_view kPhiEos = "<|endoftext|>";

// The Jinja string literal starting right after `key` in `jinja` (up to the
// next `quote`), with the escape \n as a newline; empty if absent.
std::string LiteralAfter(absl::string_view jinja, absl::string_view key, char quote) {
  const size_t at = jinja.find(key);
  if (at == absl::string_view::npos) return std::string();
  const absl::string_view rest = jinja.substr(at + key.size());
  const size_t end = rest.find(quote);
  if (end == absl::string_view::npos) return std::string();
  return absl::StrReplaceAll(rest.substr(0, end), {{"\\n", "\n"}});
}

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

// Llama 3.1's system preamble: "Cutting Knowledge Date: <literal>\n" and
// "Today Date: " + date_string (the template's default) + "\n\n".
std::string FindLlamaPreamble(absl::string_view jinja) {
  const std::string knowledge = LiteralAfter(jinja, "\"Cutting Knowledge Date: ", '"');
  if (knowledge.empty()) return std::string();
  const std::string today = LiteralAfter(jinja, "set date_string = \"", '"');
  return absl::StrCat("Cutting Knowledge Date: ", knowledge, "Today Date: ", today, "\n\n");
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

// A conversation's leading system message, split off.
struct SplitSystem {
  const std::string* system = nullptr;  // null: none
  absl::Span<const ChatMessage> rest;
};
SplitSystem TakeSystem(absl::Span<const ChatMessage> messages) {
  if (!messages.empty() && messages[0].role == "system") {
    return {&messages[0].content, messages.subspan(1)};
  }
  return {nullptr, messages};
}

std::string FormatChatMl(absl::Span<const ChatMessage> messages, bool gen, const ChatTemplate& t) {
  std::string out;
  for (const ChatMessage& m : WithSystemPrompt(messages, t)) {
    absl::StrAppend(&out, kImStart, m.role, "\n", m.content, kImEnd, "\n");
  }
  if (gen) absl::StrAppend(&out, kImStart, "assistant\n");
  return out;
}

std::string FormatLlama3(absl::Span<const ChatMessage> messages, bool gen, const ChatTemplate& t) {
  const auto header = [](absl::string_view role) {
    return absl::StrCat(kHeaderStart, role, kHeaderEnd, "\n\n");
  };
  std::string out;
  if (!t.system_preamble.empty()) {
    // Llama 3.1: BOS and the system turn whatever the conversation.
    const SplitSystem s = TakeSystem(messages);
    absl::StrAppend(&out, kLlamaBos, header("system"), t.system_preamble,
                    s.system ? RenderedContent(t, "system", *s.system) : "", kEotId);
    messages = s.rest;
  } else if (!messages.empty()) {
    out = std::string(kLlamaBos);
  }
  for (const ChatMessage& m : messages) {
    absl::StrAppend(&out, header(m.role), RenderedContent(t, m.role, m.content), kEotId);
  }
  if (gen) absl::StrAppend(&out, header("assistant"));
  return out;
}

std::string FormatMistral(absl::Span<const ChatMessage> messages) {
  const SplitSystem s = TakeSystem(messages);
  std::string out(kMistralBos);
  bool first = true;
  for (const ChatMessage& m : s.rest) {
    if (m.role == "assistant") {
      absl::StrAppend(&out, " ", m.content, kMistralEos);
    } else {
      const std::string system = first && s.system ? absl::StrCat(*s.system, "\n\n") : "";
      absl::StrAppend(&out, " [INST] ", system, m.content, " [/INST]");
    }
    first = false;
  }
  return out;
}

std::string FormatGemma(absl::Span<const ChatMessage> messages, bool gen, const ChatTemplate& t) {
  const SplitSystem s = TakeSystem(messages);
  std::string out(kGemmaBos);
  bool first = true;
  for (const ChatMessage& m : s.rest) {
    const std::string system = first && s.system ? absl::StrCat(*s.system, "\n\n") : "";
    absl::StrAppend(&out, kTurnStart, m.role == "assistant" ? "model" : m.role, "\n", system,
                    RenderedContent(t, m.role, m.content), kTurnEnd, "\n");
    first = false;
  }
  if (gen) absl::StrAppend(&out, kTurnStart, "model\n");
  return out;
}

std::string FormatPhi3(absl::Span<const ChatMessage> messages, bool gen) {
  std::string out;
  for (const ChatMessage& m : messages) {
    if (m.role == "system" && m.content.empty()) continue;
    absl::StrAppend(&out, "<|", m.role, "|>\n", m.content, kPhiEnd, "\n");
  }
  absl::StrAppend(&out, gen ? absl::string_view("<|assistant|>\n") : kPhiEos);
  return out;
}

// Special tokens a vocabulary must have for the family's markers.
std::vector<absl::string_view> RequiredSpecials(ChatStyle style) {
  switch (style) {
    case ChatStyle::kChatMl:
      return {kImStart, kImEnd};
    case ChatStyle::kLlama3:
      return {kHeaderStart, kHeaderEnd, kEotId};
    case ChatStyle::kMistral:
      return {kMistralBos, kMistralEos};
    case ChatStyle::kGemma:
      return {kTurnStart, kTurnEnd};
    case ChatStyle::kPhi3:
      return {"<|user|>", "<|assistant|>", kPhiEnd};
  }
  return {};
}

// Stands for message `i`'s content when cutting a formatted conversation.
std::string ContentMark(size_t i) { return absl::StrCat("\x1e\x1f", i, "\x1f\x1e"); }

}  // namespace

absl::string_view ChatStyleName(ChatStyle style) {
  switch (style) {
    case ChatStyle::kChatMl:
      return "chatml";
    case ChatStyle::kLlama3:
      return "llama3";
    case ChatStyle::kMistral:
      return "mistral";
    case ChatStyle::kGemma:
      return "gemma";
    case ChatStyle::kPhi3:
      return "phi3";
  }
  return "none";
}

std::string RenderedContent(const ChatTemplate& chat_template, absl::string_view role,
                            absl::string_view content) {
  const ChatStyle style = chat_template.style;
  // Gemma writes the system message it folds into the first user turn as is.
  if (style == ChatStyle::kLlama3 || (style == ChatStyle::kGemma && role != "system")) {
    return std::string(absl::StripAsciiWhitespace(content));
  }
  return std::string(content);
}

absl::StatusOr<ChatTemplate> ChatTemplateFromJinja(absl::string_view jinja) {
  if (jinja.empty()) return absl::InvalidArgumentError("model has no chat template");
  const auto has = [&](absl::string_view a, absl::string_view b) {
    return absl::StrContains(jinja, a) && absl::StrContains(jinja, b);
  };
  ChatTemplate t;
  if (has(kImStart, kImEnd)) {
    t.style = ChatStyle::kChatMl;
    t.default_system_prompt = FindDefaultSystemPrompt(jinja);
  } else if (has(kHeaderStart, kEotId)) {
    t.style = ChatStyle::kLlama3;
    t.system_preamble = FindLlamaPreamble(jinja);
  } else if (has(kTurnStart, kTurnEnd)) {
    t.style = ChatStyle::kGemma;
  } else if (has("<|user|>", kPhiEnd)) {
    t.style = ChatStyle::kPhi3;
  } else if (has("[INST]", "[/INST]") && !absl::StrContains(jinja, "<<SYS>>")) {
    t.style = ChatStyle::kMistral;
  } else {
    return absl::UnimplementedError(
        "unsupported chat template: ChatML, Llama 3, Mistral, Gemma and Phi-3 are implemented");
  }
  return t;
}

std::string FormatChat(absl::Span<const ChatMessage> messages, bool add_generation_prompt,
                       const ChatTemplate& chat_template) {
  switch (chat_template.style) {
    case ChatStyle::kChatMl:
      return FormatChatMl(messages, add_generation_prompt, chat_template);
    case ChatStyle::kLlama3:
      return FormatLlama3(messages, add_generation_prompt, chat_template);
    case ChatStyle::kMistral:
      // The model answers after [/INST]: no generation prompt of its own.
      return FormatMistral(messages);
    case ChatStyle::kGemma:
      return FormatGemma(messages, add_generation_prompt, chat_template);
    case ChatStyle::kPhi3:
      return FormatPhi3(messages, add_generation_prompt);
  }
  return std::string();
}

absl::StatusOr<std::vector<int32_t>> EncodeChat(const Tokenizer& tokenizer,
                                                absl::Span<const ChatMessage> messages,
                                                bool add_generation_prompt,
                                                const ChatTemplate& chat_template) {
  for (const absl::string_view special : RequiredSpecials(chat_template.style)) {
    if (tokenizer.SpecialTokenId(special) < 0) {
      return absl::FailedPreconditionError(absl::StrCat(ChatStyleName(chat_template.style),
                                                        " chat template but the vocabulary has no ",
                                                        special, " token"));
    }
  }
  // Format with a mark in place of each content, then encode the template's
  // text around the marks with special tokens and each content as plain text.
  std::vector<ChatMessage> marked;
  for (size_t i = 0; i < messages.size(); ++i) {
    marked.push_back({messages[i].role, messages[i].content.empty() ? "" : ContentMark(i)});
  }
  const std::string text = FormatChat(marked, add_generation_prompt, chat_template);
  std::vector<int32_t> ids;
  const auto append = [&](absl::string_view part, bool special) {
    const std::vector<int32_t> p = tokenizer.Encode(part, special);
    ids.insert(ids.end(), p.begin(), p.end());
  };
  size_t from = 0;
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string mark = ContentMark(i);
    const size_t at = text.find(mark, from);
    if (at == std::string::npos) continue;  // left out by the template
    append(absl::string_view(text).substr(from, at - from), true);
    append(RenderedContent(chat_template, messages[i].role, messages[i].content), false);
    from = at + mark.size();
  }
  append(absl::string_view(text).substr(from), true);
  return ids;
}

}  // namespace longctx

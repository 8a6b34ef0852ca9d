#include "engine/conversation/chat_prompt.h"

#include "absl/strings/str_cat.h"

namespace longctx {
namespace {

// Placeholders cut out of formatted chat templates to find their pieces.
constexpr char kSystemMark[] = "\x1e\x1fsystem\x1f\x1e";
constexpr char kUserMark[] = "\x1e\x1fuser\x1f\x1e";
constexpr char kAnswerMark[] =
    "\x1e\x1f"
    "answer\x1f\x1e";
constexpr char kNextMark[] = "\x1e\x1fnext\x1f\x1e";

// Splits `text` at each of `marks` in order; empty if one is missing.
std::vector<std::string> SplitAt(const std::string& text, const std::vector<std::string>& marks) {
  std::vector<std::string> parts;
  size_t from = 0;
  for (const std::string& m : marks) {
    const size_t at = text.find(m, from);
    if (at == std::string::npos) return {};
    parts.push_back(text.substr(from, at - from));
    from = at + m.size();
  }
  parts.push_back(text.substr(from));
  return parts;
}

}  // namespace

std::optional<ChatPrompt> ChatPrompt::Create(const Tokenizer* tokenizer,
                                             const ChatTemplate& chat_template) {
  const std::vector<ChatMessage> conv = {{"system", kSystemMark},
                                         {"user", kUserMark},
                                         {"assistant", kAnswerMark},
                                         {"user", kNextMark}};
  const auto parts = SplitAt(FormatChat(conv, /*add_generation_prompt=*/false, chat_template),
                             {kSystemMark, kUserMark, kAnswerMark, kNextMark});
  const auto gen = SplitAt(FormatChat(std::vector<ChatMessage>(conv.begin(), conv.begin() + 2),
                                      /*add_generation_prompt=*/true, chat_template),
                           {kSystemMark, kUserMark});
  const auto bare = SplitAt(FormatChat(std::vector<ChatMessage>(conv.begin() + 1, conv.begin() + 2),
                                       /*add_generation_prompt=*/true, chat_template),
                            {kUserMark});
  if (parts.size() != 5 || gen.size() != 3 || bare.size() != 2) return std::nullopt;
  ChatPrompt p(tokenizer, chat_template);
  p.no_system_open_ = tokenizer->Encode(bare[0], /*parse_special=*/true);
  p.system_open_ = tokenizer->Encode(parts[0], /*parse_special=*/true);
  p.user_open_ = tokenizer->Encode(parts[1], true);
  p.assistant_open_ = tokenizer->Encode(gen[2], true);
  p.next_user_ = tokenizer->Encode(parts[3], true);
  return p;
}

std::vector<int32_t> ChatPrompt::SessionPrefix(const std::string& system_prompt) const {
  const std::string& system =
      system_prompt.empty() ? template_.default_system_prompt : system_prompt;
  if (system.empty()) return no_system_open_;
  std::vector<int32_t> out = system_open_;
  const auto sys =
      tokenizer_->Encode(RenderedContent(template_, "system", system), /*parse_special=*/false);
  out.insert(out.end(), sys.begin(), sys.end());
  out.insert(out.end(), user_open_.begin(), user_open_.end());
  return out;
}

std::vector<int32_t> ChatPrompt::Question(const std::string& prompt, bool after_document,
                                          bool parse_special) const {
  std::vector<int32_t> out =
      tokenizer_->Encode(after_document ? absl::StrCat("\n\n", prompt) : prompt, parse_special);
  out.insert(out.end(), assistant_open_.begin(), assistant_open_.end());
  return out;
}

std::vector<int32_t> ChatPrompt::AfterAnswer(FinishReason reason) const {
  std::vector<int32_t> suffix = next_user_;
  // A turn that ended with its end token already has it.
  if (reason == FinishReason::kStop && !suffix.empty() && tokenizer_->IsEog(suffix.front())) {
    suffix.erase(suffix.begin());
  }
  return suffix;
}

}  // namespace longctx

#include "engine/tokenizer/tokenizer.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/unicode.h"
#include "engine/util/status_macros.h"

namespace longctx {
namespace {

absl::Status CheckSpecialId(const char* name, int32_t id, size_t n) {
  if (id < -1 || id >= static_cast<int64_t>(n)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer ", name, " id ", id, " is outside the vocabulary of ", n));
  }
  return absl::OkStatus();
}

// Control tokens that end a turn or a document in the vocabularies we serve.
constexpr const char* kEogTexts[] = {"<|im_end|>", "<|endoftext|>", "<|eot_id|>",
                                     "<|eom_id|>", "<|end|>",       "<end_of_turn>"};

}  // namespace

absl::StatusOr<Tokenizer> Tokenizer::Create(const VocabData& vocab) {
  const size_t n = vocab.tokens.size();
  if (n == 0) return absl::InvalidArgumentError("tokenizer vocabulary is empty");
  if (n > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer vocabulary too large: ", n));
  }
  if (!vocab.scores.empty() && vocab.scores.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer has ", vocab.scores.size(), " scores for ", n, " tokens"));
  }
  if (!vocab.types.empty() && vocab.types.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer has ", vocab.types.size(), " token types for ", n, " tokens"));
  }
  RETURN_IF_ERROR(CheckSpecialId("bos", vocab.bos_id, n));
  RETURN_IF_ERROR(CheckSpecialId("eos", vocab.eos_id, n));
  RETURN_IF_ERROR(CheckSpecialId("unknown", vocab.unk_id, n));
  RETURN_IF_ERROR(CheckSpecialId("padding", vocab.pad_id, n));

  Tokenizer t;
  t.pieces_ = vocab.tokens;
  t.bos_id_ = vocab.bos_id;
  t.eos_id_ = vocab.eos_id;
  t.unk_id_ = vocab.unk_id;
  t.pad_id_ = vocab.pad_id;
  t.add_bos_ = vocab.add_bos;
  t.add_space_prefix_ = vocab.add_space_prefix;
  if (vocab.types.empty()) {
    // Without types, the ids the model names as special are its control tokens.
    t.types_.assign(n, TokenType::kNormal);
    for (const int32_t id : {t.bos_id_, t.eos_id_, t.unk_id_, t.pad_id_}) {
      if (id >= 0) t.types_[id] = TokenType::kControl;
    }
  } else {
    t.types_ = vocab.types;
    for (size_t i = 0; i < n; ++i) {
      const auto v = static_cast<int32_t>(t.types_[i]);
      if (v < 0 || v > static_cast<int32_t>(TokenType::kByte)) {
        return absl::InvalidArgumentError(absl::StrCat("token ", i, " has unknown token type ", v));
      }
    }
  }
  t.piece_to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    // Duplicate pieces keep their lowest id, as Hugging Face vocabularies do.
    t.piece_to_id_.emplace(t.pieces_[i], static_cast<int32_t>(i));
  }

  if (vocab.model == "gpt2") {
    t.kind_ = Kind::kByteLevelBpe;
    RETURN_IF_ERROR(t.BuildByteLevel(vocab));
  } else if (vocab.model == "llama") {
    t.kind_ = Kind::kSentencePieceBpe;
    RETURN_IF_ERROR(t.BuildSentencePiece(vocab));
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported tokenizer model '", vocab.model, "' (supported: gpt2, llama)"));
  }
  t.BuildSpecialTokens();
  return t;
}

void Tokenizer::BuildSpecialTokens() {
  for (int32_t id = 0; id < vocab_size(); ++id) {
    const TokenType type = types_[id];
    const bool control = type == TokenType::kControl || type == TokenType::kUnknown;
    if (!control && type != TokenType::kUserDefined) continue;
    if (pieces_[id].empty()) continue;
    auto& group = specials_by_byte_[static_cast<uint8_t>(pieces_[id][0])];
    // A piece listed twice keeps its lowest id.
    const bool seen = std::any_of(group.begin(), group.end(),
                                  [&](const SpecialToken& s) { return s.text == pieces_[id]; });
    if (!seen) group.push_back({pieces_[id], id, control});
    has_specials_ = true;
  }
  for (auto& group : specials_by_byte_) {
    std::stable_sort(group.begin(), group.end(), [](const SpecialToken& a, const SpecialToken& b) {
      return a.text.size() > b.text.size();
    });
  }
  if (eos_id_ >= 0) eog_ids_.push_back(eos_id_);
  for (const char* text : kEogTexts) {
    const int32_t id = SpecialTokenId(text);
    if (id >= 0 && std::find(eog_ids_.begin(), eog_ids_.end(), id) == eog_ids_.end()) {
      eog_ids_.push_back(id);
    }
  }
}

int32_t Tokenizer::PieceToId(absl::string_view piece) const {
  const auto it = piece_to_id_.find(piece);
  return it == piece_to_id_.end() ? -1 : it->second;
}

int32_t Tokenizer::SpecialTokenId(absl::string_view text) const {
  if (text.empty()) return -1;
  for (const SpecialToken& s : specials_by_byte_[static_cast<uint8_t>(text[0])]) {
    if (s.text == text) return s.id;
  }
  return -1;
}

bool Tokenizer::IsControl(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return false;
  return types_[id] == TokenType::kControl || types_[id] == TokenType::kUnknown;
}

bool Tokenizer::IsEog(int32_t id) const {
  return std::find(eog_ids_.begin(), eog_ids_.end(), id) != eog_ids_.end();
}

std::vector<Tokenizer::Fragment> Tokenizer::SplitSpecial(absl::string_view text,
                                                         bool parse_special) const {
  std::vector<Fragment> out;
  if (!has_specials_) {
    if (!text.empty()) out.push_back({text, -1});
    return out;
  }
  size_t text_begin = 0;
  for (size_t pos = 0; pos < text.size();) {
    const SpecialToken* match = nullptr;
    for (const SpecialToken& s : specials_by_byte_[static_cast<uint8_t>(text[pos])]) {
      if (s.control && !parse_special) continue;
      if (text.compare(pos, s.text.size(), s.text) == 0) {
        match = &s;
        break;  // longest first
      }
    }
    if (match == nullptr) {
      ++pos;
      continue;
    }
    if (pos > text_begin) out.push_back({text.substr(text_begin, pos - text_begin), -1});
    out.push_back({text.substr(pos, match->text.size()), match->id});
    pos += match->text.size();
    text_begin = pos;
  }
  if (text_begin < text.size()) out.push_back({text.substr(text_begin), -1});
  return out;
}

std::vector<int32_t> Tokenizer::Encode(absl::string_view text, bool parse_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  std::string prefixed;
  for (const Fragment& f : SplitSpecial(text, parse_special)) {
    if (f.special_id >= 0) {
      out.push_back(f.special_id);
      continue;
    }
    absl::string_view piece = f.text;
    // The space prefix marks the start of the text only (Hugging Face's
    // prepend_scheme "first"): text after a special token gets none.
    if (add_space_prefix_ && f.text.data() == text.data()) {
      prefixed = absl::StrCat(" ", f.text);
      piece = prefixed;
    }
    if (kind_ == Kind::kByteLevelBpe) {
      EncodeByteLevel(piece, &out);
    } else {
      EncodeSentencePiece(piece, &out);
    }
  }
  return out;
}

bool Tokenizer::SkipsInDecode(int32_t id, bool skip_special) const {
  return id < 0 || id >= vocab_size() || (skip_special && IsControl(id));
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special) const {
  std::string raw;
  bool strip_space = add_space_prefix_;
  for (const int32_t id : ids) {
    if (SkipsInDecode(id, skip_special)) continue;
    absl::string_view b = bytes_[id];
    if (strip_space && !IsControl(id)) {
      strip_space = false;
      if (!b.empty() && b[0] == ' ') b.remove_prefix(1);
    }
    raw.append(b.data(), b.size());
  }
  std::string out;
  out.reserve(raw.size());
  AppendUtf8Lossy(raw, &out);
  return out;
}

}  // namespace longctx

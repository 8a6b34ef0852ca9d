// Text <-> token ids for the vocabularies a model file carries (VocabData):
//   - byte-level BPE ("gpt2" in GGUF): GPT-2 bytes-to-unicode alphabet, merges
//     applied by rank inside pre-tokens (pre_tokenizer.h);
//   - SentencePiece BPE ("llama" in GGUF): merges chosen by piece score, spaces
//     as U+2581, optional space prefix, <0xNN> byte fallback.
// Control and user-defined tokens (<|im_start|>, ...) are matched in the text
// before either algorithm runs.
//
// A Tokenizer is immutable after Create(); Encode/Decode are const and safe to
// call from many threads at once.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "engine/tokenizer/pre_tokenizer.h"
#include "engine/tokenizer/vocab.h"

namespace longctx {

class Tokenizer {
 public:
  enum class Kind { kByteLevelBpe, kSentencePieceBpe };

  // Validates `vocab` and builds the lookup tables. Errors (InvalidArgument)
  // name the problem: empty vocabulary, sizes of scores/types that disagree with
  // tokens, merges naming unknown pieces, special ids out of
  // range, unsupported model or pre-tokenizer, a SentencePiece vocabulary with
  // neither byte tokens nor an unknown token.
  static absl::StatusOr<Tokenizer> Create(const VocabData& vocab);

  Tokenizer(Tokenizer&&) = default;
  Tokenizer& operator=(Tokenizer&&) = default;
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Token ids of `text` (any bytes; ill-formed UTF-8 is encoded byte by byte;
  // bytes a byte-level vocabulary has no token for are dropped).
  // With parse_special, control tokens written in the text (<|im_start|>) become
  // their ids; user-defined tokens are always matched. Never adds BOS/EOS: see
  // add_bos().
  std::vector<int32_t> Encode(absl::string_view text, bool parse_special) const;

  // Text of `ids`, read as the start of a text (the space prefix the encoder adds
  // is removed). Control tokens appear as their text unless skip_special. Byte
  // sequences that are not UTF-8 come out as U+FFFD, as Hugging Face decoders do,
  // so the result is always valid UTF-8. Ids out of range are skipped.
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special = false) const;

  // The vocabulary entry of `id` as stored (GPT-2 alphabet, U+2581, <0x0A>, ...).
  // REQUIRES: 0 <= id < vocab_size().
  const std::string& TokenPiece(int32_t id) const { return pieces_[id]; }
  // The bytes `id` stands for in text; may be part of a UTF-8 sequence.
  // REQUIRES: 0 <= id < vocab_size().
  const std::string& TokenBytes(int32_t id) const { return bytes_[id]; }
  TokenType Type(int32_t id) const { return types_[id]; }
  // Id of an exact vocabulary piece, or -1.
  int32_t PieceToId(absl::string_view piece) const;

  int32_t vocab_size() const { return static_cast<int32_t>(pieces_.size()); }
  Kind kind() const { return kind_; }
  int32_t bos_id() const { return bos_id_; }  // -1 when the model has none
  int32_t eos_id() const { return eos_id_; }
  int32_t unk_id() const { return unk_id_; }
  int32_t pad_id() const { return pad_id_; }
  // Whether prompts should start with bos_id() (GGUF add_bos_token).
  bool add_bos() const { return add_bos_; }
  bool add_space_prefix() const { return add_space_prefix_; }

  // Id of a control or user-defined token by its text ("<|im_start|>"), or -1.
  int32_t SpecialTokenId(absl::string_view text) const;
  bool IsControl(int32_t id) const;
  // End of generation: eos, and the control tokens that end a turn or document
  // (<|im_end|>, <|endoftext|>, <|eot_id|>, <|eom_id|>, <|end|>, <end_of_turn>).
  bool IsEog(int32_t id) const;
  const std::vector<int32_t>& eog_ids() const { return eog_ids_; }

 private:
  friend class StreamDecoder;

  struct MergeRule {
    int32_t rank;    // lower merges first
    int32_t merged;  // id of the concatenation
  };
  struct SpecialToken {
    std::string text;
    int32_t id;
    bool control;  // matched only when parsing special tokens
  };
  // A piece of the input: raw text, or a special token already resolved.
  struct Fragment {
    absl::string_view text;
    int32_t special_id;  // -1 for text
  };

  Tokenizer() = default;

  absl::Status BuildByteLevel(const VocabData& vocab);
  absl::Status BuildSentencePiece(const VocabData& vocab);
  void BuildSpecialTokens();

  std::vector<Fragment> SplitSpecial(absl::string_view text, bool parse_special) const;
  void EncodeByteLevel(absl::string_view text, std::vector<int32_t>* out) const;
  void MergeWord(absl::string_view word, std::vector<int32_t>* out) const;
  void EncodeSentencePiece(absl::string_view text, std::vector<int32_t>* out) const;
  // Whether the text of `id` is left out of decoded output.
  bool SkipsInDecode(int32_t id, bool skip_special) const;

  Kind kind_ = Kind::kByteLevelBpe;
  PreTokenizerKind pre_ = PreTokenizerKind::kGpt2;
  bool ignore_merges_ = false;  // llama-bpe: a whole pre-token in the vocabulary wins
  std::vector<std::string> pieces_;
  std::vector<std::string> bytes_;
  std::vector<TokenType> types_;
  std::vector<float> scores_;
  absl::flat_hash_map<std::string, int32_t> piece_to_id_;
  // (left id << 32 | right id) -> rule, byte-level BPE only.
  absl::flat_hash_map<uint64_t, MergeRule> merges_;
  // Byte-level: the token of each byte's GPT-2 character. SentencePiece: <0xNN>.
  // -1 when the vocabulary has none.
  std::array<int32_t, 256> byte_ids_{};
  // Special tokens grouped by first byte, longest first within a group.
  std::array<std::vector<SpecialToken>, 256> specials_by_byte_;
  bool has_specials_ = false;
  std::vector<int32_t> eog_ids_;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  int32_t unk_id_ = -1;
  int32_t pad_id_ = -1;
  bool add_bos_ = false;
  bool add_space_prefix_ = false;
};

}  // namespace longctx
